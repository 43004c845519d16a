"""A test-only stand-in for torchvision: the names `import timm` (1.0.31)
reads at import time, nothing more.

timm's CaiT runs no torchvision code, but timm imports torchvision's
datasets, transforms and ops modules when it is imported, and no
torchvision build matches the CPU torch the tests use. Put `tests/stubs`
on `sys.path` (`tests.timm_support.import_timm()` does) before importing
timm. Every class here refuses to be instantiated, so code that really
needs torchvision fails loudly instead of computing something else.
Never imported by keras-cait itself.
"""

__version__ = "0.0.0+keras-cait-test-stand-in"


def unavailable(name):
    """A class named `name` that raises `ImportError` when instantiated."""

    def refuse(cls, *args, **kwargs):
        raise ImportError(
            f"torchvision.{name} is not available: this is keras-cait's "
            "test-only torchvision stand-in (tests/stubs/torchvision)."
        )

    return type(name.rsplit(".", 1)[-1], (), {"__new__": refuse})
