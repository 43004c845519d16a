"""Filling keras-cait models with timm CaiT tensors: the one assignment path.

KerasHub's `port_weight` pattern: each variable of a model has a timm key
and a transpose (`keras_cait.schema.checkpoint_layout`, resolved on the
model by `model_weight_map`); `load_timm_weights` reads each key from a
source of timm-layout tensors, transposes it and assigns it. Every loader
goes through it, with one of three sources: a safetensors file
(`keras_cait.io.safetensors_io.SafetensorsFile`: timm repos and
directories), a state dict (`StateDict`: `load_timm_state_dict`) or another
model's weights (`ModelTensors`: `image_shape=` on a keras-cait preset and
`with_image_shape`).
"""

import ctypes
import functools
import math

import keras
import numpy as np

from keras_cait.convert.resample import resample_position_embedding
from keras_cait.errors import CaiTWeightsError
from keras_cait.io.safetensors_io import FLOAT_DTYPES, checked_array
from keras_cait.schema import BACKBONE_DEFAULTS, checkpoint_layout, keras_shape


def model_weight_map(model, load_backbone=True, load_head=True):
    """Lists `(CheckpointTensor, variable)` for a `CaiTBackbone` or a
    `CaiTImageClassifier` (whose head is timm's `head`), in layout order.

    Args:
        model: the model.
        load_backbone: bool. Include the backbone's variables.
        load_head: bool. Include the head's.

    Raises:
        CaiTWeightsError: the model's variables are not those of its CaiT
            layout (e.g. a quantized model).
    """
    backbone = getattr(model, "backbone", model)
    head = getattr(model, "output_dense", None) if model is not backbone else None
    layout = checkpoint_layout(
        {key: getattr(backbone, key) for key in BACKBONE_DEFAULTS},
        head.units if head is not None else 0,
    )
    variables = {variable.path: variable for variable in model.weights}
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


class StateDict:
    """A timm state dict as a tensor source for `load_timm_weights`.

    Its floating-point tensors are checked when it is created (float64 to
    float32, NaN/Inf refused: `checked_array`), so a bad value is found
    before anything is assigned.

    Args:
        state_dict: mapping of timm key to array-like in timm (PyTorch)
            layout.
        source: string naming it in errors.
        allow_non_finite: bool. Accept tensors holding NaN or Inf.
    """

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


class ModelTensors:
    """A built keras-cait model's weights as timm-layout tensors, read one
    at a time (to copy them into a model of another shape)."""

    def __init__(self, model):
        self._entries = {tensor.key: (tensor, v) for tensor, v in model_weight_map(model)}

    def keys(self):
        return list(self._entries)

    def shape(self, key):
        return self._entries[key][0].shape

    def dtype(self, key):
        return keras.backend.standardize_dtype(self._entries[key][1].dtype)

    def read(self, key):
        tensor, variable = self._entries[key]
        array = np.asarray(keras.ops.convert_to_numpy(variable.value))
        if tensor.axes is not None:
            array = np.transpose(array, np.argsort(tensor.axes))
        return array


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
        tensors: the source: an object with `keys()`, `shape(key)` (timm
            layout), `dtype(key)` (a NumPy dtype name) and `read(key)`
            (NumPy array): a `SafetensorsFile`, `StateDict` or
            `ModelTensors`.
        source: string naming the source in errors (e.g. the file's path).
        load_backbone: bool. Assign the backbone (else its tensors in the
            source are ignored).
        load_head: bool. Assign the head (else `head.*` in the source is
            ignored).
        source_grid: `None` or the patch grid `(rows, columns)` the source's
            `pos_embed` was made for; when it differs from the model's, the
            embedding is resampled (`resample_position_embedding`).

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

    Example:
    ```python
    from safetensors.numpy import load_file
    keras_cait.load_timm_state_dict(classifier, load_file("model.safetensors"))
    ```
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
