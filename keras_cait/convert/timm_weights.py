"""keras-cait variables <-> timm CaiT tensors: the one mapping, both ways.

`keras_cait_base.schema.checkpoint_layout` is the table (timm key, timm shape,
transpose, Keras variable path); `model_weight_map` pairs it with a model's
variables. Reading: KerasHub's `port_weight` pattern, `load_timm_weights`
reads each variable's timm key from a source of timm-layout tensors
(`SafetensorsFile`, `StateDict` or `ModelTensors`), transposes it
(`to_keras`) and assigns it. Writing: `ModelTensors` reads a model's
variables back in timm's layout (`to_timm`), for `convert.timm_export`.
"""

import ctypes
import functools
import math

import keras
import numpy as np

from keras_cait.convert.resample import resample_position_embedding
from keras_cait_base.errors import CaiTWeightsError
from keras_cait_base.io.safetensors_io import FLOAT_DTYPES, checked_array
from keras_cait_base.schema import BACKBONE_DEFAULTS, checkpoint_layout, keras_shape


def model_weight_map(model, load_backbone=True, load_head=True, ignore=()):
    """`(CheckpointTensor, variable)` pairs of a `CaiTBackbone` or a
    `CaiTImageClassifier` (its head is timm's `head`), in layout order, for
    the backbone and/or the head; `CaiTWeightsError` when the model's
    variables are not its CaiT layout's (e.g. a quantized model), besides
    the variable paths in `ignore`."""

    backbone = getattr(model, "backbone", model)
    head = getattr(model, "output_dense", None) if model is not backbone else None
    layout = checkpoint_layout(
        {key: getattr(backbone, key) for key in BACKBONE_DEFAULTS},
        head.units if head is not None else 0,
    )
    ignore = set(ignore)
    variables = {v.path: v for v in model.weights if v.path not in ignore}
    differences = set(variables) ^ {tensor.path for tensor in layout}
    if differences:
        raise CaiTWeightsError(
            f"{model.name}: the model's variables differ from CaiT's layout "
            f"at {sorted(differences)[:5]}; only plain (not quantized) "
            "CaiT models can be filled with timm weights."
        )
    return [
        (tensor, variables[tensor.path])
        for tensor in layout
        if (load_head if tensor.key.startswith("head.") else load_backbone)
    ]


def to_keras(tensor, array):
    """A timm-layout array of `tensor` (a `CheckpointTensor`) in Keras
    layout, as float32: the array itself, or a backend tensor transposed by
    the backend (several times faster than NumPy's transposed copy)."""
    array = np.asarray(array, dtype=np.float32)
    if tensor.axes is None:
        return array
    return keras.ops.transpose(array, tensor.axes)


def to_timm(tensor, array):
    """A Keras-layout array of `tensor` (a `CheckpointTensor`) in timm's
    layout: the inverse of `to_keras`, as a NumPy array."""
    array = np.asarray(array)
    if tensor.axes is None:
        return array
    return np.ascontiguousarray(np.transpose(array, np.argsort(tensor.axes)))


class StateDict:
    """A timm state dict (timm key to array-like, timm layout) as a tensor
    source for `load_timm_weights`; its floating-point tensors are checked
    (`checked_array`) when it is created, before anything is assigned."""

    def __init__(self, state_dict, source="state dict", allow_non_finite=False):
        self._arrays = {}
        for key, value in state_dict.items():
            array = np.asarray(value)
            if array.dtype.name in FLOAT_DTYPES:
                array = checked_array(array, key, source, allow_non_finite)
            self._arrays[key] = array

    def keys(self):
        return list(self._arrays)

    def shape(self, key):
        return tuple(self._arrays[key].shape)

    def dtype(self, key):
        return self._arrays[key].dtype.name

    def read(self, key):
        return self._arrays[key]


def lora_layers(model):
    """`{kernel variable path: layer}` of the `keras.layers.Dense` layers of
    `model` with LoRA enabled (`enable_lora`)."""
    # Private Keras API (keras 3.15): every nested layer.
    return {
        layer._kernel.path: layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.Dense) and getattr(layer, "lora_enabled", False)
    }


class ModelTensors:
    """A built keras-cait model's weights as timm-layout tensors, read one
    at a time (to copy them into a model of another shape, or to write them
    in timm's format).

    Args:
        model: a `CaiTBackbone` or `CaiTImageClassifier`.
        merge_lora: bool. Read the kernel of a LoRA-enabled `Dense` as what
            the layer computes with, `kernel + (lora_alpha / lora_rank) *
            lora_kernel_a @ lora_kernel_b` (its `kernel` property), and leave
            the adapters out. Without it, LoRA adapters are unexpected
            variables (`CaiTWeightsError`).
    """

    def __init__(self, model, merge_lora=False):
        adapted = lora_layers(model) if merge_lora else {}
        adapters = [
            path
            for layer in adapted.values()
            for path in (layer.lora_kernel_a.path, layer.lora_kernel_b.path)
        ]
        self._merged = adapted
        self._entries = {
            tensor.key: (tensor, v) for tensor, v in model_weight_map(model, ignore=adapters)
        }

    def keys(self):
        return list(self._entries)

    def shape(self, key):
        return self._entries[key][0].shape

    def dtype(self, key):
        return keras.backend.standardize_dtype(self._entries[key][1].dtype)

    def read(self, key):
        tensor, variable = self._entries[key]
        layer = self._merged.get(variable.path)
        value = variable.value if layer is None else layer.kernel
        return to_timm(tensor, keras.ops.convert_to_numpy(value))


def check_keys(source, expected_keys, found_keys, tolerated=()):
    """Raises `CaiTWeightsError` naming missing and unexpected tensors."""
    found = set(found_keys)
    missing = sorted(set(expected_keys) - found)
    unexpected = sorted(found - set(expected_keys) - set(tolerated))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected}")
        raise CaiTWeightsError(
            f"{source} does not match the model: " + "; ".join(parts) + "."
        )


def load_timm_weights(
    model, tensors, source, load_backbone=True, load_head=True, source_grid=None
):
    """Assigns timm-layout tensors to a keras-cait model, one at a time.

    Every key, dtype and shape is checked first, so a source that does not
    fit leaves the model untouched; then each tensor is read (in the
    source's order), transposed to Keras layout and assigned. Memory holds
    about one tensor besides the model.

    Args:
        model: a `CaiTBackbone` or `CaiTImageClassifier`.
        tensors: an object with `keys()`, `shape(key)` (timm layout),
            `dtype(key)` (a NumPy dtype name) and `read(key)` (NumPy).
        source: string naming the source in errors (e.g. the file's path).
        load_backbone, load_head: bool. Assign the backbone, the head (else
            their tensors in the source are ignored).
        source_grid: `None` or the patch grid `(rows, columns)` of the
            source's `pos_embed`, resampled when it differs from the model's.

    Raises:
        CaiTWeightsError: a tensor is missing, unexpected, not floating
            point or of the wrong shape (nothing is assigned then), or a
            tensor read holds NaN/Inf (from a file: found while reading).
    """
    entries = model_weight_map(model, load_backbone, load_head)
    keys = tensors.keys()
    tolerated = [
        key for key in keys if not (load_head if key.startswith("head.") else load_backbone)
    ]
    check_keys(source, [tensor.key for tensor, _ in entries], keys, tolerated)
    backbone = getattr(model, "backbone", model)
    plan = []
    for tensor, variable in entries:
        key = tensor.key
        if tensors.dtype(key) not in FLOAT_DTYPES:
            raise CaiTWeightsError(
                f"{source}: tensor '{key}' has dtype {tensors.dtype(key)}; "
                "expected a floating-point tensor."
            )
        shape = tuple(tensors.shape(key))
        value = None  # read when assigned
        if key == "pos_embed" and shape != tensor.shape and source_grid is not None:
            value = resample_position_embedding(
                tensors.read(key), source_grid, backbone.grid_size
            )
            shape = value.shape
        if shape != tensor.shape:
            raise CaiTWeightsError(
                f"{source}: tensor '{key}' has shape {shape}; the model "
                f"expects {tensor.shape}."
            )
        plan.append((tensor, variable, value))
    order = {key: i for i, key in enumerate(keys)}
    plan.sort(key=lambda item: order[item[0].key])
    assigned = 0
    for tensor, variable, value in plan:
        array = tensors.read(tensor.key) if value is None else value
        variable.assign(to_keras(tensor, array))
        assigned += math.prod(keras_shape(tensor)) * 4
        if assigned >= _TRIM_EVERY_BYTES:
            release_freed_memory()
            assigned = 0
    release_freed_memory()


def load_timm_state_dict(model, state_dict, allow_non_finite=False, source="state dict"):
    """Assigns a timm CaiT state dict to a keras-cait model.

    Args:
        model: a `keras_cait.CaiTBackbone` or `keras_cait.CaiTImageClassifier`.
            A classifier with `num_classes=0` takes no `head.*` tensors.
        state_dict: mapping of timm key to array-like in timm (PyTorch)
            layout, e.g. the contents of timm's `model.safetensors`.
        allow_non_finite: bool. Accept tensors holding NaN or Inf.
        source: string naming where the state dict comes from, quoted in
            errors (for example the file path).

    Returns:
        `model`.

    Raises:
        CaiTWeightsError: a tensor is missing, unexpected, of the wrong
            shape or dtype, or not finite. Nothing is assigned then.

    """

    load_timm_weights(model, StateDict(state_dict, source, allow_non_finite), source)
    return model


# Assigning frees each variable's initial value as its new value arrives;
# the allocator keeps freed blocks resident, and new values do not always
# reuse them (on JAX they never do), so without trimming the peak memory of
# assigning grows by up to the model's size.
_TRIM_EVERY_BYTES = 32 << 20


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc
        return None


def release_freed_memory():
    """Returns memory freed by the process's heap to the system (glibc's
    `malloc_trim(0)`; a no-op elsewhere). Best effort: never raises."""
    trim = _malloc_trim()
    if trim is not None:
        try:
            trim(0)
        except Exception:  # noqa: BLE001 - best effort
            pass
