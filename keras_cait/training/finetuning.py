"""The CaiT/DeiT fine-tuning recipe for Keras (docs/finetuning.md): AdamW
without weight decay on 1-D parameters and learned embeddings, drop path,
and optional layer-wise learning-rate decay grouped as timm groups CaiT.
"""

import keras
from keras import ops

from keras_cait.arguments import (
    KERAS_BASE_ARGUMENTS,
    check_keyword_arguments,
    parameter_names,
)
from keras_cait.models.cait_backbone import CaiTBackbone, cait_backbone_of
from keras_cait.models.cait_image_classifier import CaiTImageClassifier
from keras_cait.serialization import register
from keras_cait_base.errors import CaiTConfigError

# Variable names (Keras `variable.name`) that get no weight decay: biases,
# LayerNorm `gamma`/`beta`, LayerScale `gamma`, the position embedding and the
# class token. Only the dense and convolution kernels are decayed.
NO_WEIGHT_DECAY_NAMES = (
    "bias",
    "beta",
    "gamma",
    "position_embedding",
    "class_token",
)


def uses_weight_decay(variable, no_weight_decay_names=NO_WEIGHT_DECAY_NAMES):
    """Whether the recipe decays the `keras.Variable` `variable`: its name
    contains none of `no_weight_decay_names`."""

    return not any(name in variable.name for name in no_weight_decay_names)


def layer_decay_multipliers(model, layer_decay):
    """Per-variable learning-rate multipliers for layer-wise decay, grouped
    as timm groups CaiT (`Cait.group_matcher` and
    `param_groups_layer_decay`).

    timm orders the parameters: 0 for the class token, position and patch
    embedding, `i + 1` for self-attention block `i`, `j + num_layers -
    num_class_attention_layers + 1` for class-attention block `j` (the
    class-attention blocks overlap the last self-attention blocks), then
    `num_layers` for the final LayerNorm and last the head. Equal orders
    share a group; the groups are numbered `0..top` in order and a variable
    of group `g` gets `layer_decay ** (top - g)`. For `cait_xxs24_224` the
    exponents are 25 for the embeddings, `24 - i` for block `i`, `2 - j` for
    class-attention block `j`, 1 for the final norm and 0 for the head (a
    backbone without head: one less each).

    Args:
        model: a `CaiTBackbone` or `CaiTImageClassifier`.
        layer_decay: float in `(0, 1]`; e.g. 0.65 to 0.85 for CaiT-XXS/S.

    Returns:
        A dict `{variable.path: multiplier}` over the model's variables.

    Raises:
        CaiTConfigError: `layer_decay` out of range, or `model` has no
            `CaiTBackbone`.

    Example:
    ```python
    multipliers = layer_decay_multipliers(classifier, 0.75)
    multipliers["patch_embedding/projection/kernel"]  # 0.75 ** 25 for xxs24
    ```
    """
    if not 0.0 < float(layer_decay) <= 1.0:
        raise CaiTConfigError(
            f"`layer_decay` must be in (0, 1], got {layer_decay!r}."
        )
    backbone = cait_backbone_of(model)
    orders = {v.path: _timm_order(v.path, backbone) for v in model.weights}
    groups = {order: group for group, order in enumerate(sorted(set(orders.values())))}
    top = len(groups) - 1
    return {
        path: float(layer_decay) ** (top - groups[order])
        for path, order in orders.items()
    }


def _timm_order(path, backbone):
    """The order timm's `Cait.group_matcher` gives the variable at `path`."""
    for name in path.split("/"):
        if name in ("patch_embedding", "class_token"):  # patch/pos embed, cls
            return 0
        if name.startswith("self_attention_block_"):  # blocks.i
            return int(name.rsplit("_", 1)[1]) + 1
        if name.startswith("class_attention_block_"):  # blocks_token_only.j
            offset = backbone.num_layers - backbone.num_class_attention_layers
            return int(name.rsplit("_", 1)[1]) + offset + 1
        if name == "final_layernorm":  # norm
            return backbone.num_layers
    return float("inf")  # the head


@register
class LayerDecayAdamW(keras.optimizers.Adam):
    """AdamW with a learning-rate multiplier per variable.

    Decoupled weight decay as in `keras.optimizers.AdamW` (`variable -=
    variable * weight_decay * learning_rate * multiplier`, before the Adam
    step), skipped for variables whose name contains one of
    `no_weight_decay_names`; the Adam step uses `learning_rate *
    multiplier`. Keras optimizers take one learning rate, so the multipliers
    are applied in `update_step`.

    Args:
        learning_rate: float or `keras.optimizers.schedules` schedule.
        weight_decay: float. Decoupled weight decay.
        learning_rate_multipliers: dict `{variable.path: float}` (1 when
            absent), e.g. from `layer_decay_multipliers`.
        no_weight_decay_names: sequence of strings.
        **kwargs: other `keras.optimizers.Adam` arguments.
    """

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.004,
        learning_rate_multipliers=None,
        no_weight_decay_names=NO_WEIGHT_DECAY_NAMES,
        name="layer_decay_adamw",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.decoupled_weight_decay = float(weight_decay)
        self.learning_rate_multipliers = {
            str(path): float(value)
            for path, value in (learning_rate_multipliers or {}).items()
        }
        self.no_weight_decay_names = tuple(no_weight_decay_names)

    def build(self, var_list):
        super().build(var_list)
        # Looked up by variable index in `update_step`: some backends (TF)
        # pass the backend's own variables there, which have no Keras path.
        self._multipliers = [
            self.learning_rate_multipliers.get(v.path, 1.0) for v in var_list
        ]
        self._decayed = [
            bool(self.decoupled_weight_decay)
            and uses_weight_decay(v, self.no_weight_decay_names)
            for v in var_list
        ]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        learning_rate = ops.cast(learning_rate, variable.dtype) * self._multipliers[
            index
        ]
        if self._decayed[index]:
            decay = ops.cast(self.decoupled_weight_decay, variable.dtype)
            self.assign_sub(variable, variable * decay * learning_rate)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)
        config.update(
            {
                "weight_decay": self.decoupled_weight_decay,
                "learning_rate_multipliers": dict(self.learning_rate_multipliers),
                "no_weight_decay_names": list(self.no_weight_decay_names),
            }
        )
        return config


def finetuning_optimizer(
    model,
    learning_rate=5e-5,
    weight_decay=0.05,
    layer_decay=None,
    **kwargs,
):
    """AdamW for fine-tuning CaiT, following the CaiT/DeiT recipe.

    No weight decay on biases, norms, LayerScale, the position embedding and
    the class token. A `LayerDecayAdamW`: with `layer_decay`, its per-layer
    learning rates shrink geometrically from the head to the patch embedding;
    without, it steps as `keras.optimizers.AdamW` with
    `exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY_NAMES)`, and unlike
    it keeps those names through a `.keras` save.

    Args:
        model: the `CaiTImageClassifier` (or `CaiTBackbone`) to train.
        learning_rate: float or schedule.
        weight_decay: float. 0.05 in the CaiT/DeiT recipe.
        layer_decay: `None` or float in `(0, 1]`.
        **kwargs: other AdamW arguments (`beta_1`, `global_clipnorm`, ...).

    Example:
    ```python
    classifier.compile(
        optimizer=finetuning_optimizer(classifier, 1e-4, layer_decay=0.75),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ```
    """
    check_keyword_arguments(
        "finetuning_optimizer", kwargs, parameter_names(keras.optimizers.AdamW.__init__)
    )
    if layer_decay is None:
        cait_backbone_of(model)
    return LayerDecayAdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        learning_rate_multipliers=(
            None if layer_decay is None else layer_decay_multipliers(model, layer_decay)
        ),
        **kwargs,
    )


def load_for_finetuning(
    preset,
    num_classes,
    image_shape=None,
    drop_path_rate=0.0,
    dropout=0.0,
    **kwargs,
):
    """A pretrained classifier with a new head, ready to fine-tune.

    The backbone comes from `CaiTBackbone.from_preset` with the given
    `drop_path_rate` (and `image_shape`: the position embedding is resampled);
    the task (pooling, preprocessor) from `CaiTImageClassifier.from_preset`
    with that backbone and a freshly initialised `num_classes` head.

    Args:
        preset: a preset name, `hf://` handle or local directory.
        num_classes: int. Classes of the new head.
        image_shape: `None` (the checkpoint's) or `(height, width, 3)`.
        drop_path_rate: float. Stochastic depth for the self-attention
            blocks (CaiT fine-tunes with 0.1 for XXS/XS/S, more for M).
        dropout: float. Dropout before the head.
        **kwargs: other backbone arguments (e.g. `dtype`,
            `attention_dropout`).

    Returns:
        A `CaiTImageClassifier` compiled with KerasHub's defaults (compile
        it again with `finetuning_optimizer`).
    """

    check_keyword_arguments(
        "load_for_finetuning", kwargs,
        (*parameter_names(CaiTBackbone.__init__), *KERAS_BASE_ARGUMENTS),
    )
    backbone_kwargs = dict(kwargs, drop_path_rate=drop_path_rate)
    if image_shape is not None:
        backbone_kwargs["image_shape"] = tuple(image_shape)
    backbone = CaiTBackbone.from_preset(preset, **backbone_kwargs)
    return CaiTImageClassifier.from_preset(
        preset, backbone=backbone, num_classes=num_classes, dropout=dropout
    )
