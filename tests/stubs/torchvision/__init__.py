"""A test-only stand-in for torchvision: the names `import timm` (1.0.31) reads at
import time (no torchvision build matches the CPU torch the tests use), put on
`sys.path` by `tests.timm_support.import_timm()`. Its classes refuse to be
instantiated, so code that really needs torchvision fails loudly."""

__version__ = "0.0.0+keras-cait-test-stand-in"


def unavailable(name):
    """A class named `name` that raises `ImportError` when instantiated."""

    def refuse(cls, *args, **kwargs):
        raise ImportError(
            f"torchvision.{name} is not available: this is keras-cait's "
            "test-only torchvision stand-in (tests/stubs/torchvision)."
        )

    return type(name.rsplit(".", 1)[-1], (), {"__new__": refuse})
