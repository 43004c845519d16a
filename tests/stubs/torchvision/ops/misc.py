"""`torchvision.ops.misc` names timm imports (see the package docstring)."""

from torchvision import unavailable

FrozenBatchNorm2d = unavailable("ops.misc.FrozenBatchNorm2d")
