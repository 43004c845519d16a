"""CaiTImageClassifier: a CaiT backbone with a pooling and a linear head."""

import keras
from keras import ops
from keras_hub.models import ImageClassifier, Task

from keras_cait.loading.loader import load_preset
from keras_cait.model_extensions import TaskMixin
from keras_cait.model_extensions.derived_models import (
    block_indices,
    derived_model,
    run_in_batches,
)
from keras_cait.model_extensions.image_lists import model_inputs
from keras_cait.models.cait_backbone import CaiTBackbone
from keras_cait.models.cait_image_classifier_preprocessor import (
    CaiTImageClassifierPreprocessor,
)
from keras_cait.runtime import RuntimeMixin
from keras_cait.serialization import register
from keras_cait_base.schema import check_classifier_config


@register
class CaiTImageClassifier(TaskMixin, RuntimeMixin, ImageClassifier):
    """CaiT image classification task.

    Pools the backbone's final tokens (`"token"`: the class token, as timm's
    `global_pool="token"`; `"avg"`: the mean of the patch tokens), applies
    dropout and a dense head. Calling the model never preprocesses:
    `model(images)` takes normalised NHWC images and returns one tensor
    `(batch, num_classes)`. `predict()`/`fit()` run the `preprocessor` first
    when one is attached.

    Args:
        backbone: a `keras_cait.CaiTBackbone`.
        num_classes: int. Number of classes. `0` gives no head: the model
            returns the pooled features (timm's `num_classes=0`).
        preprocessor: `None` or a `keras_cait.CaiTImageClassifierPreprocessor`
            run by `predict()`, `fit()` and `evaluate()`.
        pooling: `"token"` or `"avg"`.
        activation: `None`, string or callable applied to the head's output.
            `None` (default) returns logits.
        dropout: float. Dropout before the head (timm's `drop_rate`).
        head_dtype: `None`, string or `keras.DTypePolicy` for the head;
            defaults to the backbone's policy.
        compile: bool. Whether to compile with the defaults of
            `keras_hub.models.ImageClassifier.compile()`; the default loss's
            `from_logits` follows `activation`.
        **kwargs: other keyword arguments passed to `keras.Model`.

    Raises:
        CaiTConfigError: (a `ValueError`) `num_classes`, `pooling` or
            `dropout` is invalid (see `keras_cait_base.schema`).

    Example:
    ```python
    classifier = keras_cait.CaiTImageClassifier(backbone, num_classes=10)
    logits = classifier(images)  # (batch, 10)
    ```
    """

    backbone_cls = CaiTBackbone
    preprocessor_cls = CaiTImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes,
        preprocessor=None,
        pooling="token",
        activation=None,
        dropout=0.0,
        head_dtype=None,
        compile=True,
        **kwargs,
    ):
        check_classifier_config(
            dict(num_classes=num_classes, pooling=pooling, dropout=dropout),
            "CaiTImageClassifier",
            limits=False,
        )
        head_dtype = head_dtype or backbone.dtype_policy

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=head_dtype, name="output_dropout"
        )
        if num_classes > 0:
            self.output_dense = keras.layers.Dense(
                num_classes, activation=activation, dtype=head_dtype, name="predictions"
            )
        else:
            self.output_dense = None

        # === Functional model ===
        inputs = self.backbone.input
        outputs = self._head(self.backbone(inputs), pooling)
        # KerasHub's ImageClassifier builds a global-average-pooling graph;
        # like its ViT, skip it and build ours.
        Task.__init__(self, inputs=inputs, outputs=outputs, compile=False, **kwargs)

        # === Config ===
        # Stored before compiling: the default loss reads `self.activation`.
        self.num_classes = num_classes
        self.pooling = pooling
        self.activation = activation
        self.dropout = dropout
        if compile:
            self.compile()

    def _head(self, tokens, pooling):
        """Pooling, dropout and the dense head on the backbone's `tokens`."""
        if pooling == "token":
            pooled = tokens[:, 0]
        else:
            pooled = ops.mean(tokens[:, 1:], axis=1)
        outputs = self.output_dropout(pooled)
        if self.output_dense is not None:
            outputs = self.output_dense(outputs)
        return outputs

    def attention_model(self, indices=()):
        """`CaiTBackbone.attention_model()` with `"predictions"` (this
        model's output) in place of `"features"`."""
        blocks = block_indices(self.backbone.num_layers, indices, allow_empty=True)
        return derived_model(
            self, ("attention", blocks), lambda: self._build_attention_model(blocks)
        )

    def _build_attention_model(self, indices):
        backbone_model = self.backbone.attention_model(indices)
        outputs = dict(backbone_model.output)
        features = outputs.pop("features")
        outputs = {"predictions": self._head(features, self.pooling), **outputs}
        return keras.Model(backbone_model.input, outputs, name=f"{self.name}_attention")

    def get_attention_maps(self, images, indices=(), batch_size=8, preprocess=None):
        """`CaiTBackbone.get_attention_maps()` with `"predictions"`;
        `preprocess` (default: when there is a `preprocessor`, as
        `predict()`) runs the preprocessor first.

        Example:

        ```python
        maps = classifier.get_attention_maps(images, indices=[-1])
        maps["predictions"].shape                # (batch, num_classes)
        maps["talking_head_attention_23"].shape  # (batch, heads, N, N)
        ```
        """
        images = model_inputs(self, images, preprocess, "get_attention_maps")
        return run_in_batches(self.attention_model(indices), images, batch_size)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Instantiates a `CaiTImageClassifier` (with its preprocessor) from
        a preset; `preset` and `load_weights` as `CaiTBackbone.from_preset`.

        Args:
            **kwargs: `CaiTImageClassifier` arguments. `num_classes`
                different from the checkpoint's gives a fresh head;
                `image_shape` and `dtype` go to the backbone.

        Example:
        ```python
        model = keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_224")
        logits = model.predict(uint8_photos)  # (batch, 1000), timm's logits
        ```
        """
        return load_preset(cls, preset, load_weights=load_weights, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "pooling": self.pooling,
                "activation": None if self.activation is None else
                keras.activations.serialize(keras.activations.get(self.activation)),
                "dropout": self.dropout,
                "head_dtype": keras.dtype_policies.serialize(self._head_dtype()),
            }
        )
        return config

    def _head_dtype(self):
        """The head's dtype policy; a `DTypePolicyMap` (as KerasHub's
        `Backbone.get_config`) once `quantize()` has quantized the head."""
        policy = self.output_dropout.dtype_policy
        dense = self.output_dense
        if dense is None or dense.quantization_mode is None:
            return policy
        policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=policy)
        policy_map[dense.path] = dense.dtype_policy
        return policy_map
