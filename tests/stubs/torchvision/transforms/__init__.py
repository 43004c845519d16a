"""`torchvision.transforms` names timm imports (see the package docstring)."""

from torchvision import unavailable

ToTensor = unavailable("transforms.ToTensor")
