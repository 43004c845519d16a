"""Sharding CaiT over several accelerators with `keras.distribution`.

`keras.distribution.DataParallel` needs nothing from the model: every device
holds all the weights and a slice of the batch. For the large variants
(`cait_m36_384`, 271M parameters, and `cait_m48_448`, 356M), the weights, their
gradients and two AdamW moments (about 16 bytes per parameter in float32,
4.3 GB and 5.7 GB) plus the activations of 577 or 785 tokens no longer fit
comfortably on one device: `keras.distribution.ModelParallel` with the layout
map below splits the large kernels over a `"model"` mesh axis (and, as
KerasHub's Gemma and Llama maps do, over the `"batch"` axis too).

The map follows the usual tensor-parallel pattern: the projections that fan
out (query/key/value, fused `qkv`, the MLP's `fc1`) are split along their
output features; those that fan back in (the attention output `proj`, the
MLP's `fc2`) along their input features. Everything small (LayerNorms,
LayerScale, the 4x4..16x16 talking-heads mixes, the patch embedding, the
position embedding, the class token, the head) stays replicated.
"""

import keras

from keras_cait.errors import CaiTConfigError


def get_layout_map(
    device_mesh,
    model_parallel_dim_name="model",
    data_parallel_dim_name="batch",
):
    """A `keras.distribution.LayoutMap` sharding CaiT's large kernels.

    Dense kernels are `(in_features, out_features)`:

    | variables (variable path ends with) | layout |
    | --- | --- |
    | `attn/(qkv|q|k|v)/kernel`, `mlp/fc1/kernel` | `(batch, model)` |
    | `attn/(qkv|q|k|v)/bias`, `mlp/fc1/bias` | `(model,)` |
    | `attn/proj/kernel`, `mlp/fc2/kernel` | `(model, batch)` |
    | everything else | replicated |

    Every sharded axis must be divisible by the size of its mesh axis:
    `hidden_dim`, `3 * hidden_dim` and the MLP width by the `"model"` axis,
    `hidden_dim` and the MLP width by the `"batch"` axis. All CaiT variants
    have `hidden_dim` a multiple of 96 (m36/m48: 768, MLP 3072), so any
    power-of-two axis up to 32 works.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh`.
        model_parallel_dim_name: str. The mesh axis the kernels are split
            over for tensor parallelism.
        data_parallel_dim_name: str. The mesh axis the batch is split over;
            the kernels' other axis is split over it too (fully sharded
            weights). Pass `None` to keep the kernels replicated across it.

    Returns:
        A `keras.distribution.LayoutMap`, for
        `keras.distribution.ModelParallel(layout_map=...,
        batch_dim_name=data_parallel_dim_name)`.

    Raises:
        CaiTConfigError: a dimension name is not an axis of `device_mesh`.

    Example:
    ```python
    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
    layout_map = CaiTBackbone.get_layout_map(mesh)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        )
    )
    classifier = CaiTImageClassifier.from_preset("cait_m36_384", num_classes=10)
    ```
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise CaiTConfigError(
            "`device_mesh` must be a keras.distribution.DeviceMesh, got "
            f"{type(device_mesh).__name__}."
        )
    axis_names = tuple(device_mesh.axis_names)
    for argument, name in (
        ("model_parallel_dim_name", model_parallel_dim_name),
        ("data_parallel_dim_name", data_parallel_dim_name),
    ):
        if name is None and argument == "data_parallel_dim_name":
            continue
        if name not in axis_names:
            raise CaiTConfigError(
                f"`{argument}={name!r}` is not an axis of the device mesh; "
                f"its axes are {axis_names}."
            )
    model_dim = model_parallel_dim_name
    data_dim = data_parallel_dim_name

    layout_map = keras.distribution.LayoutMap(device_mesh)
    # Fan-out projections: split the output features.
    layout_map[r".*attn/(qkv|q|k|v)/kernel"] = (data_dim, model_dim)
    layout_map[r".*attn/(qkv|q|k|v)/bias"] = (model_dim,)
    layout_map[r".*mlp/fc1/kernel"] = (data_dim, model_dim)
    layout_map[r".*mlp/fc1/bias"] = (model_dim,)
    # Fan-in projections: split the input features.
    layout_map[r".*attn/proj/kernel"] = (model_dim, data_dim)
    layout_map[r".*mlp/fc2/kernel"] = (model_dim, data_dim)
    return layout_map
