"""CaiT models: the backbone and the image classifier task."""

from keras_cait.models.cait_backbone import CaiTBackbone
from keras_cait.models.cait_image_classifier import CaiTImageClassifier

__all__ = ["CaiTBackbone", "CaiTImageClassifier"]
