"""`torchvision.datasets` names timm imports (see the package docstring)."""

from torchvision import unavailable

CIFAR10 = unavailable("datasets.CIFAR10")
CIFAR100 = unavailable("datasets.CIFAR100")
MNIST = unavailable("datasets.MNIST")
KMNIST = unavailable("datasets.KMNIST")
FashionMNIST = unavailable("datasets.FashionMNIST")
ImageFolder = unavailable("datasets.ImageFolder")
