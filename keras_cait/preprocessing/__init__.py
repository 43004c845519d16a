"""Preprocessing: timm's evaluation transform as KerasHub layers."""

from keras_cait.preprocessing.image_classifier_preprocessor import (
    CaiTImageClassifierPreprocessor,
)
from keras_cait.preprocessing.image_converter import CaiTImageConverter

__all__ = ["CaiTImageClassifierPreprocessor", "CaiTImageConverter"]
