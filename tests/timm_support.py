"""timm (1.0.31, installed without its dependencies) for tests that check
keras-cait against timm itself.

`import_timm()` puts `tests/stubs` on `sys.path` first, so that a missing
torchvision is served by the test-only stand-in `tests/stubs/torchvision`
(the names timm reads when imported; timm's CaiT runs no torchvision code).
A real torchvision, where installed, is used instead. CI installs timm and
torch on every backend, so these tests run there; they do not skip.
"""

import importlib.util
import pathlib
import sys

STUBS = pathlib.Path(__file__).resolve().parent / "stubs"


def import_timm():
    """The `timm` module, imported through the torchvision stand-in when
    torchvision is not installed.

    Raises:
        ImportError: timm or torch is not installed.
    """
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        if str(STUBS) not in sys.path:
            sys.path.insert(0, str(STUBS))
    import timm

    return timm


def timm_logits(directory, images_nhwc):
    """timm's logits (float32 NumPy) for NHWC `images_nhwc` of the model
    `timm.create_model("local-dir:<directory>", pretrained=True)` loads."""
    timm = import_timm()
    import torch

    model = timm.create_model(f"local-dir:{directory}", pretrained=True).eval()
    with torch.no_grad():
        batch = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
        return model(batch).numpy()
