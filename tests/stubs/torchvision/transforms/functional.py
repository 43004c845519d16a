"""`torchvision.transforms.functional` names timm imports (see the package
docstring): `InterpolationMode`, whose members timm maps to its own names
when imported."""

import enum


class InterpolationMode(enum.Enum):
    """torchvision's resize filters, by their torchvision values."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"
