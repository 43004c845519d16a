"""Filling keras-cait models from a timm CaiT state dict.

The state dict maps timm's keys (as written in timm's `model.safetensors`)
to arrays in PyTorch layout. Every tensor is checked before anything is
assigned, so a bad state dict leaves the model untouched.

`timm_weight_layout` gives a checkpoint's keys, shapes and layouts from its
architecture alone, and `to_keras_array` converts one tensor: the preset
loader uses them to convert a checkpoint one tensor at a time, without
building a reference model (see `keras_cait.loading.loader`).
"""

import warnings

import numpy as np

from keras_cait.errors import CaiTWeightsError
from keras_cait.io.safetensors_io import FLOAT_DTYPES, SAFETENSORS_DTYPES

# How a timm tensor becomes a Keras variable.
_SAME = "same"  # identical layout
_DENSE = "dense"  # nn.Linear (out, in) -> Dense kernel (in, out)
_CONV = "conv"  # nn.Conv2d (out, in, kh, kw) -> Conv2D kernel (kh, kw, in, out)


def _to_keras(kind, array):
    if kind == _DENSE:
        return array.T
    if kind == _CONV:
        return array.transpose(2, 3, 1, 0)
    return array


def _timm_shape(kind, keras_shape):
    keras_shape = tuple(keras_shape)
    if kind == _DENSE:
        return keras_shape[::-1]
    if kind == _CONV:
        kh, kw, cin, cout = keras_shape
        return (cout, cin, kh, kw)
    return keras_shape


def keras_shape(layout, timm_shape):
    """The Keras-layout shape of a timm tensor of shape `timm_shape`."""
    timm_shape = tuple(timm_shape)
    if layout == _DENSE:
        return timm_shape[::-1]
    if layout == _CONV:
        cout, cin, kh, kw = timm_shape
        return (kh, kw, cin, cout)
    return timm_shape


def _dense(prefix, layer):
    entries = [(f"{prefix}.weight", layer.kernel, _DENSE)]
    if layer.use_bias:
        entries.append((f"{prefix}.bias", layer.bias, _SAME))
    return entries


def _norm(prefix, layer):
    return [
        (f"{prefix}.weight", layer.gamma, _SAME),
        (f"{prefix}.bias", layer.beta, _SAME),
    ]


def _block_common(prefix, block):
    return [
        (f"{prefix}.gamma_1", block.layer_scale_1.gamma, _SAME),
        (f"{prefix}.gamma_2", block.layer_scale_2.gamma, _SAME),
        *_norm(f"{prefix}.norm1", block.norm1),
        *_norm(f"{prefix}.norm2", block.norm2),
        *_dense(f"{prefix}.mlp.fc1", block.mlp.fc1),
        *_dense(f"{prefix}.mlp.fc2", block.mlp.fc2),
    ]


def backbone_weight_map(backbone):
    """Lists `(timm_key, keras_variable, layout)` for a `CaiTBackbone`."""
    embedding = backbone.get_layer("patch_embedding")
    entries = [
        ("cls_token", backbone.get_layer("class_token").class_token, _SAME),
        ("pos_embed", embedding.position_embedding, _SAME),
        ("patch_embed.proj.weight", embedding.projection.kernel, _CONV),
        ("patch_embed.proj.bias", embedding.projection.bias, _SAME),
    ]
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"self_attention_block_{i}")
        prefix = f"blocks.{i}"
        entries += _block_common(prefix, block)
        entries += _dense(f"{prefix}.attn.qkv", block.attn.qkv)
        entries += _dense(f"{prefix}.attn.proj", block.attn.proj)
        entries += _dense(f"{prefix}.attn.proj_l", block.attn.proj_l)
        entries += _dense(f"{prefix}.attn.proj_w", block.attn.proj_w)
    for i in range(backbone.num_class_attention_layers):
        block = backbone.get_layer(f"class_attention_block_{i}")
        prefix = f"blocks_token_only.{i}"
        entries += _block_common(prefix, block)
        for name in ("q", "k", "v", "proj"):
            entries += _dense(f"{prefix}.attn.{name}", getattr(block.attn, name))
    entries += _norm("norm", backbone.get_layer("final_layernorm"))
    return entries


def model_weight_map(model):
    """Lists `(timm_key, keras_variable, layout)` for a backbone or a
    classifier (whose head is timm's `head`)."""
    backbone = getattr(model, "backbone", model)
    entries = backbone_weight_map(backbone)
    head = getattr(model, "output_dense", None)
    if model is not backbone and head is not None:
        entries += _dense("head", head)
    return entries


def timm_weight_layout(backbone_kwargs, num_classes):
    """Lists `(timm_key, timm_shape, layout)` of a checkpoint, computed from
    the architecture alone (no model is built, nothing is allocated).

    The keys, their order and the shapes are those of `model_weight_map`
    for a `CaiTImageClassifier(CaiTBackbone(**backbone_kwargs),
    num_classes=num_classes)`, with shapes in timm (PyTorch) layout.

    Args:
        backbone_kwargs: dict of `CaiTBackbone` arguments (`hidden_dim`,
            `num_layers` and `num_heads` are required; the others default
            as in `CaiTBackbone`).
        num_classes: int. `0` means no `head.*` tensors.

    Returns:
        A list of `(timm_key, timm_shape_tuple, layout)`.
    """
    k = backbone_kwargs
    height, width, channels = tuple(k.get("image_shape", (224, 224, 3)))
    p = int(k.get("patch_size", 16))
    d, heads = int(k["hidden_dim"]), int(k["num_heads"])
    qkv_bias = bool(k.get("use_qkv_bias", True))
    layout = []

    def dense(prefix, in_dim, out_dim, bias=True):
        layout.append((f"{prefix}.weight", (out_dim, in_dim), _DENSE))
        if bias:
            layout.append((f"{prefix}.bias", (out_dim,), _SAME))

    def norm(prefix):
        layout.append((f"{prefix}.weight", (d,), _SAME))
        layout.append((f"{prefix}.bias", (d,), _SAME))

    def common(prefix, mlp_ratio):
        layout.append((f"{prefix}.gamma_1", (d,), _SAME))
        layout.append((f"{prefix}.gamma_2", (d,), _SAME))
        norm(f"{prefix}.norm1")
        norm(f"{prefix}.norm2")
        hidden = int(d * mlp_ratio)
        dense(f"{prefix}.mlp.fc1", d, hidden)
        dense(f"{prefix}.mlp.fc2", hidden, d)

    layout += [
        ("cls_token", (1, 1, d), _SAME),
        ("pos_embed", (1, (height // p) * (width // p), d), _SAME),
        ("patch_embed.proj.weight", (d, channels, p, p), _CONV),
        ("patch_embed.proj.bias", (d,), _SAME),
    ]
    for i in range(int(k["num_layers"])):
        prefix = f"blocks.{i}"
        common(prefix, float(k.get("mlp_ratio", 4.0)))
        dense(f"{prefix}.attn.qkv", d, 3 * d, qkv_bias)
        dense(f"{prefix}.attn.proj", d, d)
        dense(f"{prefix}.attn.proj_l", heads, heads)
        dense(f"{prefix}.attn.proj_w", heads, heads)
    for i in range(int(k.get("num_class_attention_layers", 2))):
        prefix = f"blocks_token_only.{i}"
        common(prefix, float(k.get("class_attention_mlp_ratio", 4.0)))
        for name in ("q", "k", "v"):
            dense(f"{prefix}.attn.{name}", d, d, qkv_bias)
        dense(f"{prefix}.attn.proj", d, d)
    norm("norm")
    if num_classes:
        dense("head", d, int(num_classes))
    return layout


def to_keras_array(layout, array):
    """A timm (PyTorch-layout) array in Keras layout, as C-contiguous
    float32 (one copy of the tensor).

    Args:
        layout: the third field of a `model_weight_map` or
            `timm_weight_layout` entry.
        array: NumPy array (float16, bfloat16, float32) in timm layout.
    """
    return np.asarray(_to_keras(layout, np.asarray(array)), dtype=np.float32, order="C")


def check_keys(source, expected_keys, found_keys):
    """Raises `CaiTWeightsError` naming missing and unexpected tensors."""
    expected_keys = set(expected_keys)
    found_keys = list(found_keys)
    found = set(found_keys)
    missing = [key for key in expected_keys if key not in found]
    unexpected = [key for key in found_keys if key not in expected_keys]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {sorted(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {sorted(unexpected)}")
        raise CaiTWeightsError(
            f"{source} does not match the model: " + "; ".join(parts) + "."
        )


def check_timm_header(source, layout, entries):
    """Checks a timm checkpoint's safetensors header against the layout its
    architecture needs, before any tensor is read.

    Args:
        source: string quoted in errors (the file's path).
        layout: list of `(timm_key, timm_shape, layout)` (`timm_weight_layout`).
        entries: dict of name to `(dtype_code, shape, begin, end)`
            (`keras_cait.io.safetensors_io.read_safetensors_header`).

    Raises:
        CaiTWeightsError: a tensor is missing or unexpected, not floating
            point, or of the wrong shape (the same messages as
            `load_timm_state_dict`).
    """
    check_keys(source, [key for key, _, _ in layout], entries)
    for key, shape, _ in layout:
        code, found, _, _ = entries[key]
        if code not in FLOAT_DTYPES:
            raise CaiTWeightsError(
                f"{source}: tensor '{key}' has dtype "
                f"{SAFETENSORS_DTYPES[code]}; expected a floating-point tensor."
            )
        if tuple(found) != tuple(shape):
            raise CaiTWeightsError(
                f"{source}: tensor '{key}' has shape {tuple(found)}; "
                f"the model expects {tuple(shape)}."
            )


def _checked_array(key, value, allow_non_finite, source):
    array = np.asarray(value)
    if array.dtype == np.float64:
        warnings.warn(
            f"{source}: tensor '{key}' is float64; converting it to float32.",
            stacklevel=3,
        )
        array = array.astype(np.float32)
    elif not np.issubdtype(array.dtype, np.floating) and array.dtype.name != (
        "bfloat16"
    ):
        raise CaiTWeightsError(
            f"{source}: tensor '{key}' has dtype {array.dtype}; expected a "
            "floating-point tensor."
        )
    if not allow_non_finite and not np.all(np.isfinite(array.astype(np.float32))):
        raise CaiTWeightsError(
            f"{source}: tensor '{key}' contains NaN or Inf values; pass "
            "`allow_non_finite=True` to load it anyway."
        )
    return array


def load_timm_state_dict(
    model, state_dict, allow_non_finite=False, source="state dict"
):
    """Assigns a timm CaiT state dict to a keras-cait model.

    Args:
        model: a `keras_cait.CaiTBackbone` or `keras_cait.CaiTImageClassifier`.
            A classifier with `num_classes=0` takes no `head.*` tensors.
        state_dict: mapping of timm key to array-like in timm (PyTorch)
            layout, e.g. the contents of timm's `model.safetensors`.
        allow_non_finite: bool. Accept tensors holding NaN or Inf.
        source: string naming where the state dict comes from, quoted in
            errors (for example the file path).

    Raises:
        CaiTWeightsError: a tensor is missing, unexpected, of the wrong
            shape or dtype, or not finite. Nothing is assigned then.
    """
    entries = model_weight_map(model)
    check_keys(source, [key for key, _, _ in entries], state_dict)
    assignments = []
    for key, variable, kind in entries:
        array = _checked_array(key, state_dict[key], allow_non_finite, source)
        expected = _timm_shape(kind, variable.shape)
        if tuple(array.shape) != expected:
            raise CaiTWeightsError(
                f"{source}: tensor '{key}' has shape {tuple(array.shape)}; "
                f"the model expects {expected}."
            )
        assignments.append((variable, _to_keras(kind, array)))
    for variable, array in assignments:
        variable.assign(array.astype(np.float32))
    return model
