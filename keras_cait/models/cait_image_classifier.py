"""CaiTImageClassifier: a CaiT backbone with a pooling and a linear head."""

import keras
from keras import ops
from keras_hub.models import ImageClassifier, Task

from keras_cait.errors import CaiTConfigError
from keras_cait.loading.loader import load_preset
from keras_cait.models.cait_backbone import (
    CaiTBackbone,
    attention_block_indices,
    derived_model,
    run_in_batches,
)
from keras_cait.models.cait_image_classifier_preprocessor import (
    CaiTImageClassifierPreprocessor,
)
from keras_cait.models.fast_inference import FastInferenceMixin
from keras_cait.schema import check_classifier_config
from keras_cait.serialization import register


@register
class CaiTImageClassifier(FastInferenceMixin, ImageClassifier):
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
            `dropout` is invalid (see `keras_cait.schema`).

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
                num_classes,
                activation=activation,
                dtype=head_dtype,
                name="predictions",
            )
        else:
            self.output_dense = None

        # === Functional model ===
        inputs = self.backbone.input
        tokens = self.backbone(inputs)
        if pooling == "token":
            pooled = tokens[:, 0]
        else:
            pooled = ops.mean(tokens[:, 1:], axis=1)
        outputs = self.output_dropout(pooled)
        if self.output_dense is not None:
            outputs = self.output_dense(outputs)
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

    def attention_model(self, self_attention_blocks=()):
        """A `keras.Model` returning predictions and attention maps in one
        pass.

        Its dict output holds `"predictions"` (this model's output),
        `"class_attention_{i}"` for every class-attention block and
        `"talking_head_attention_{i}"` for the chosen self-attention blocks
        (see `CaiTBackbone.attention_model()`). It shares this model's
        layers and weights and is cached per block selection.

        Args:
            self_attention_blocks: int (one block), iterable of ints,
                `"all"` or `()`; negative indices count from the end.
        """
        blocks = attention_block_indices(
            self_attention_blocks, self.backbone.num_layers
        )
        return derived_model(
            self,
            ("attention", blocks),
            lambda: self.backbone._build_attention_model(blocks, self._head()),
        )

    def _head(self):
        """The part of this model's graph after its backbone (pooling,
        dropout, dense head) as a `keras.Model` on the backbone's tokens,
        reusing this model's layers."""
        nodes = [
            node
            for depth_nodes in self._nodes_by_depth.values()
            for node in depth_nodes
            if node.operation is self.backbone
        ]
        if len(nodes) != 1:
            raise CaiTConfigError(
                f"`{self.name}` must call its backbone exactly once to expose "
                f"attention maps; it calls it {len(nodes)} times."
            )
        (tokens,) = nodes[0].output_tensors
        return keras.Model(tokens, self.output, name=f"{self.name}_head")

    def get_attention_maps(
        self, images, self_attention_blocks=(), batch_size=8, preprocess=None
    ):
        """Predictions and attention maps of `images`, as NumPy arrays.

        Args:
            images: array `(batch, height, width, channels)`.
            self_attention_blocks: see `attention_model()`.
            batch_size: int. Images per forward pass.
            preprocess: bool or `None`: run the `preprocessor` first
                (default: when there is one, like `predict()`).

        Returns:
            A dict of NumPy arrays named as in `attention_model()`.

        Example:
        ```python
        maps = classifier.get_attention_maps(images, self_attention_blocks=[-1])
        maps["predictions"].shape                # (batch, num_classes)
        maps["talking_head_attention_23"].shape  # (batch, heads, N, N)
        ```
        """
        if preprocess is None:
            preprocess = self.preprocessor is not None
        if preprocess:
            if self.preprocessor is None:
                raise CaiTConfigError(
                    "`preprocess=True` but the model has no `preprocessor`."
                )
            images = self.preprocessor(images)
        return run_in_batches(
            self.attention_model(self_attention_blocks), images, batch_size
        )

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Instantiates a `CaiTImageClassifier` (with its preprocessor) from
        a preset.

        Args:
            preset: string. A preset name from `keras_cait.list_presets()`
                (e.g. `"cait_xxs24_224"`), an `hf://owner/repo[@revision]`
                handle of a timm repo (`config.json` + `model.safetensors`)
                or of a keras-cait preset saved with `save_to_preset`, or a
                local directory of either kind.
            load_weights: bool. Load the pretrained weights. `False` builds
                the architecture alone (for a preset name, without network).
            **kwargs: `CaiTImageClassifier` arguments. `num_classes`
                different from the checkpoint's gives a fresh head on the
                pretrained backbone; `image_shape` and `dtype` go to the
                backbone.

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
                "activation": keras.activations.serialize(
                    keras.activations.get(self.activation)
                )
                if self.activation is not None
                else None,
                "dropout": self.dropout,
            }
        )
        return config
