"""CaiTImageClassifier: a CaiT backbone with a pooling and a linear head."""

import keras
import numpy as np
from keras import ops
from keras_hub.models import ImageClassifier, Task

from keras_cait.loading.loader import load_preset
from keras_cait.models.cait_backbone import (
    CaiTBackbone,
    block_indices,
    derived_model,
    run_in_batches,
)
from keras_cait.models.cait_image_classifier_preprocessor import (
    CaiTImageClassifierPreprocessor,
)
from keras_cait.models.cait_image_converter import (
    check_one_size,
    is_image_list,
    preprocess_image_list,
    run_by_size,
)
from keras_cait.models.shuffled_batches import (
    is_array_input,
    shuffled_batches,
    split_validation,
)
from keras_cait.runtime import RuntimeMixin
from keras_cait.serialization import register
from keras_cait_base.errors import CaiTConfigError, CaiTImageError
from keras_cait_base.schema import check_classifier_config


@register
class CaiTImageClassifier(RuntimeMixin, ImageClassifier):
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
        if preprocess is None:
            preprocess = self.preprocessor is not None
        if preprocess:
            if self.preprocessor is None:
                raise CaiTConfigError(
                    "`preprocess=True` but the model has no `preprocessor`."
                )
            if is_image_list(images):  # photos of any sizes, one at a time
                images = preprocess_image_list(self.preprocessor, images)
                if isinstance(images, list):  # `keep_aspect_ratio`
                    raise CaiTImageError(
                        f"{self.name}.get_attention_maps: the photos "
                        "preprocess to different sizes "
                        f"{sorted({x.shape for x in images})} "
                        "(keep_aspect_ratio); pass the photos of one size "
                        "at a time."
                    )
            else:
                images = self.preprocessor(images)
        elif is_image_list(images):
            check_one_size(images, f"{self.name}.get_attention_maps")
            images = np.stack([keras.ops.convert_to_numpy(x) for x in images])
        return run_in_batches(self.attention_model(indices), images, batch_size)

    def predict(
        self, x=None, batch_size=None, verbose="auto", steps=None, callbacks=None,
        **kwargs,
    ):
        """`keras.Model.predict` with this model's preprocessor; `x` may also
        be a list of photos `(height, width, channels)` of any sizes, each
        preprocessed on its own (a list of images of one size is a batch
        too)."""
        if is_image_list(x) and self.preprocessor is not None:
            images = preprocess_image_list(self.preprocessor, x)

            # Already preprocessed: Keras's own loop, without the
            # preprocessor that KerasHub's `predict` would apply again.
            def run(batch):
                return keras.Model.predict(
                    self, batch, batch_size=batch_size, verbose=verbose,
                    steps=steps, callbacks=callbacks, **kwargs,
                )

            # Sizes that differ (`keep_aspect_ratio`): one batch per size.
            if not isinstance(images, list):
                return run(images)
            if None not in tuple(self.backbone.image_shape[:2]):
                raise CaiTConfigError(
                    f"{self.name}.predict: the photos preprocess to different "
                    f"sizes {sorted({x.shape for x in images})} (the converter "
                    "keeps the aspect ratio), but the model takes "
                    f"{tuple(self.backbone.image_shape)}: load it with "
                    "`image_shape=(None, None, 3)`."
                )
            return run_by_size(run, images)
        return super().predict(
            x, batch_size=batch_size, verbose=verbose, steps=steps,
            callbacks=callbacks, **kwargs,
        )

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
                "activation": keras.activations.serialize(
                    keras.activations.get(self.activation)
                )
                if self.activation is not None
                else None,
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

    # === Training state (KerasHub 0.32 workarounds, docs/keras_hub_upstream.md) ===

    def compile_from_config(self, config):
        """Compiles with a `.keras` file's compile config, so that
        `keras.saving.load_model` restores the optimizer (class,
        hyper-parameters, then its variables: iteration, moments).

        Keras skips this for a model whose `compile()` is overridden, as
        KerasHub's `ImageClassifier.compile()` is; the saved config holds
        the resolved optimizer, loss and metrics, which it accepts.
        """
        if not config:
            return
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            # Built before Keras loads the saved optimizer variables.
            self.optimizer.build(self.trainable_variables)

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        sample_weight=None,
        shuffle=True,
        validation_split=0.0,
        validation_data=None,
        steps_per_epoch=None,
        **kwargs,
    ):
        """`keras.Model.fit()`, preprocessing as KerasHub's `Task.fit()`.

        Arrays or tensors are reshuffled each epoch when `shuffle` is true
        (as Keras does; KerasHub 0.32 batches them unshuffled), after
        `validation_split` takes the last samples. The order follows
        NumPy's global seed (`keras.utils.set_random_seed`).
        """
        if shuffle and is_array_input(x, y, sample_weight):
            arrays = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
            if validation_split and validation_data is None:
                arrays, validation_data = split_validation(arrays, validation_split)
            x, steps_per_epoch = shuffled_batches(
                arrays,
                batch_size or 32,
                seed=int(np.random.randint(2**31 - 1)),
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
            )
            y = sample_weight = batch_size = None
            validation_split = 0.0
            shuffle = False  # done; Keras would warn that it ignores it
        return super().fit(
            x=x,
            y=y,
            batch_size=batch_size,
            epochs=epochs,
            sample_weight=sample_weight,
            shuffle=shuffle,
            validation_split=validation_split,
            validation_data=validation_data,
            steps_per_epoch=steps_per_epoch,
            **kwargs,
        )
