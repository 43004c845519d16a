"""CaiT's kernels sharded over a device mesh, for
`keras.distribution.ModelParallel` (`CaiTBackbone.get_layout_map`)."""

import keras

from keras_cait_base.errors import CaiTConfigError


def cait_layout_map(
    device_mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch"
):
    """A `keras.distribution.LayoutMap` sharding CaiT's large kernels,
    for `keras.distribution.ModelParallel` (as KerasHub's
    `GemmaBackbone.get_layout_map`): fan-out projections (`qkv`,
    `q`/`k`/`v`, `fc1`) split along their output features, fan-in ones
    (`proj`, `fc2`) along their input features, the rest replicated
    (docs/finetuning.md, "Multi-device training").

    Args:
        device_mesh: a `keras.distribution.DeviceMesh`.
        model_parallel_dim_name: str. The mesh axis the kernels are split
            over for tensor parallelism.
        data_parallel_dim_name: str. The mesh axis the batch is split over;
            the kernels' other axis is split over it too (fully sharded
            weights). Pass `None` to keep the kernels replicated across it.

    Returns:
        A `keras.distribution.LayoutMap`.

    Raises:
        CaiTConfigError: a dimension name is not an axis of `device_mesh`.

    Example:
    ```python
    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
    keras.distribution.set_distribution(keras.distribution.ModelParallel(
        layout_map=CaiTBackbone.get_layout_map(mesh), batch_dim_name="batch"
    ))
    ```
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise CaiTConfigError(
            "`device_mesh` must be a keras.distribution.DeviceMesh, got "
            f"{type(device_mesh).__name__}."
        )
    axis_names = tuple(device_mesh.axis_names)
    model_dim, data_dim = model_parallel_dim_name, data_parallel_dim_name
    for argument, name in (("model", model_dim), ("data", data_dim)):
        if name not in axis_names and (name, argument) != (None, "data"):
            raise CaiTConfigError(
                f"`{argument}_parallel_dim_name={name!r}` is not an axis of "
                f"the device mesh; its axes are {axis_names}."
            )

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
