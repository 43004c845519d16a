"""What keras-cait models change in Keras's `predict()` (`predict.py`, behind the
speed switch), `export()` (`export.py`) and `quantize()`, attached to each model
class in one line: `class CaiTBackbone(RuntimeMixin, Backbone)`."""

from keras_cait.model_extensions.quantization import OneCollectQuantize
from keras_cait.runtime.export import Export
from keras_cait.runtime.predict import FastPredict


class RuntimeMixin(FastPredict, Export, OneCollectQuantize):
    """`predict()`, `export()` and `quantize()` overrides for a Keras model. Put
    it before the Keras/KerasHub base class."""


__all__ = ["RuntimeMixin"]
