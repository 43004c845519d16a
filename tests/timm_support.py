"""timm (installed without its dependencies; CI has it with torch on every backend)
for tests that check keras-cait against timm itself."""

import importlib.util
import pathlib
import sys

STUBS = pathlib.Path(__file__).resolve().parent / "stubs"


def import_timm():
    """The `timm` module; without torchvision, through the test-only stand-in
    `tests/stubs/torchvision` (timm's CaiT runs no torchvision code)."""
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
