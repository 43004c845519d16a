"""`from_preset` for keras-cait's backbone, classifier, preprocessor and
image converter.

A preset is a preset name (`keras_cait.list_presets()`: architecture and
preprocessing from the shipped JSON, weights from its timm repo), an
`hf://owner/repo[@revision]` handle or a local directory, of a timm
checkpoint (`config.json` + `model.safetensors`, by `CaiTTimmPresetLoader`
through `keras_cait.convert.timm_weights.load_timm_weights`) or of a
keras-cait preset (`save_to_preset`, by KerasHub's `KerasPresetLoader`).
"""

import functools
import os
import threading

import keras
from keras_hub.layers import ImageConverter
from keras_hub.models import Backbone, Preprocessor, Task

from keras_cait.arguments import check_preset_arguments
from keras_cait.convert.timm_config import (
    backbone_kwargs_from_timm,
    classifier_kwargs_from_timm,
    resolve_timm_arguments,
)
from keras_cait.convert.timm_weights import ModelTensors, load_timm_weights
from keras_cait.loading import safe_loading, timm_repo
from keras_cait.serialization import registered_class
from keras_cait_base import handles, registry
from keras_cait_base.errors import (
    CaiTConfigError,
    CaiTFileNotFoundError,
    CaiTWeightsError,
)
from keras_cait_base.io import hub
from keras_cait_base.io.files import read_json
from keras_cait_base.io.safetensors_io import SafetensorsFile, verify_sha256

# Private KerasHub APIs, checked against keras-hub 0.32.0 (pinned in
# pyproject.toml): the preset-loader base classes and the subclass lookup.
from keras_hub.src.utils.preset_utils import (  # isort: skip
    KerasPresetLoader,
    PresetLoader,
    find_subclass,
)

# Backbone arguments `from_preset` passes to the backbone besides KerasHub's
# `dtype` and `image_shape`: regularisation chosen at load time (fine-tuning),
# the images' layout and the position embedding's stored size.
BACKBONE_LOAD_ARGUMENTS = (
    "drop_path_rate",
    "dropout_rate",
    "attention_dropout",
    "data_format",
    "position_embedding_shape",
)


def split_backbone_kwargs(backbone_kwargs, kwargs):
    """Moves `BACKBONE_LOAD_ARGUMENTS` from task kwargs to backbone kwargs."""
    backbone_kwargs = dict(backbone_kwargs)
    kwargs = dict(kwargs)
    for name in BACKBONE_LOAD_ARGUMENTS:
        if name in kwargs:
            backbone_kwargs[name] = kwargs.pop(name)
    return backbone_kwargs, kwargs


def stored_size(backbone_kwargs, stored_shape):
    """`backbone_kwargs` with `position_embedding_shape` set, unless given:
    to the stored `(height, width)` when `image_shape` asks for any size
    (`None` sides; the model keeps the checkpoint's position embedding), to
    `None` when it asks for a fixed size (resampled once, at load)."""
    shape = backbone_kwargs.get("image_shape")
    if shape is None or backbone_kwargs.get("position_embedding_shape"):
        return backbone_kwargs
    backbone_kwargs = dict(backbone_kwargs)
    backbone_kwargs["position_embedding_shape"] = (
        tuple(stored_shape[:2]) if shape[0] is None else None
    )
    return backbone_kwargs


def converter_size(backbone, default):
    """The image converter's size for `backbone`: its input size, or
    `default` (the checkpoint's) for a model of any input size."""
    size = tuple(backbone.image_shape[:2])
    return tuple(default) if size[0] is None else size


def converter_follows_backbone(task):
    """Gives `task`'s image converter its backbone's `data_format` (a preset
    loaded with `data_format=` saved the converter with another)."""
    converter = getattr(task.preprocessor, "image_converter", None)
    if converter is not None:
        converter.data_format = task.backbone.data_format
    return task


def _hub_weights_fetcher(repo_id, revision, commit):
    def fetch():
        # The same commit as the config.json that was read, if one was.
        path, _ = hub.download_file(
            repo_id,
            timm_repo.WEIGHTS_FILE,
            revision=commit or revision,
            label=(repo_id, revision),
        )
        return path

    return fetch


def _local_weights_fetcher(directory):
    def fetch():
        path = os.path.join(directory, timm_repo.WEIGHTS_FILE)
        if not os.path.isfile(path):
            raise CaiTFileNotFoundError(
                f"{directory}: '{timm_repo.WEIGHTS_FILE}' is missing; a timm "
                "directory holds config.json and model.safetensors."
            )
        return path

    return fetch


def model_arguments(name):
    """The model a preset builds: `(backbone_kwargs, classifier_kwargs)`
    of its timm `architecture`, as timm's `cait.py` registers it
    (`keras_cait.convert.timm_config.TIMM_ARCHITECTURES`, the one place the
    variants' hyper-parameters are written; the JSON names the architecture).

    Args:
        name: a name from `list_presets()`.

    Returns:
        Two dicts: every `CaiTBackbone` argument, checked by
        `keras_cait_base.schema.check_backbone_config`, and the head's
        `num_classes`, `pooling` and `dropout`.

    Raises:
        CaiTConfigError: `name` is not a preset.
    """
    source = f"preset {name!r}"
    arguments = resolve_timm_arguments(
        registry.get_preset(name)["architecture"], source=source
    )
    return (
        backbone_kwargs_from_timm(arguments, source),
        classifier_kwargs_from_timm(arguments, source),
    )


def _named_preset(name):
    """The `TimmCheckpoint` of a shipped preset: the model of its
    architecture (`model_arguments`), the JSON's preprocessing;
    only the repo's `model.safetensors` is downloaded."""
    data = registry.get_preset(name)
    source = handles.parse_hf_handle(data["weights"]["source"])
    backbone_kwargs, classifier_kwargs = model_arguments(name)
    return timm_repo.TimmCheckpoint(
        f"preset {name!r} ({source.text})",
        data["architecture"],
        backbone_kwargs,
        classifier_kwargs,
        data["preprocessing"],
        _hub_weights_fetcher(source.repo_id, source.revision, None),
        sha256=data["weights"].get("sha256"),
    )


def get_loader(preset, config=None):
    """The KerasHub `PresetLoader` of a `from_preset` argument, the one
    dispatch point of every `from_preset` (keras-cait's classes, and
    KerasHub's through `keras_hub_dispatch`, which passes the `config.json`
    it read as `config`): a `CaiTTimmPresetLoader` for preset names and
    timm checkpoints, a `KerasCaiTPresetLoader` for keras-cait presets."""
    handle = handles.parse_handle(preset)
    if handle.kind == "name":
        return CaiTTimmPresetLoader(preset, _named_preset(handle.name))
    commit = None
    if handle.kind == "local":
        directory = handle.path
        config_source = os.path.join(directory, timm_repo.CONFIG_FILE)
        if config is None:
            config = read_json(config_source)
    else:
        directory = None
        config_source = f"{handle.text} {timm_repo.CONFIG_FILE}"
        if config is None:
            config_path, commit = hub.download_file(
                handle.repo_id, timm_repo.CONFIG_FILE, revision=handle.revision
            )
            config = read_json(config_path, config_source)
    if "registered_name" in config:
        if directory is None:
            directory = hub.download_repo(handle.repo_id, revision=commit or handle.revision)
        # Every JSON and HDF5 file is checked before KerasHub reads it.
        safe_loading.check_preset_directory(directory)
        return KerasCaiTPresetLoader(directory, config)
    if "architecture" not in config:
        raise CaiTConfigError(
            f"{config_source}: neither a timm config (no `architecture`) nor "
            "a keras-cait preset (no `registered_name`)."
        )
    if handle.kind == "local":
        fetch = _local_weights_fetcher(handle.path)
    else:
        fetch = _hub_weights_fetcher(handle.repo_id, handle.revision, commit)
    checkpoint = timm_repo.TimmCheckpoint.from_config(config, config_source, fetch)
    return CaiTTimmPresetLoader(preset, checkpoint)


class CaiTTimmPresetLoader(PresetLoader):
    """A KerasHub `PresetLoader` building keras-cait models from a
    `TimmCheckpoint` (`preset`: the handle, as given)."""

    def __init__(self, preset, checkpoint):
        super().__init__(preset, {})
        self.checkpoint = checkpoint

    def check_backbone_class(self):
        return registered_class("CaiTBackbone")

    def get_backbone_kwargs(self, **kwargs):
        return split_backbone_kwargs(*super().get_backbone_kwargs(**kwargs))

    def _build_backbone(self, cls, kwargs):
        arguments = dict(self.checkpoint.backbone_kwargs)
        arguments.update({k: v for k, v in kwargs.items() if v is not None})
        if "image_shape" in arguments:
            arguments["image_shape"] = tuple(arguments["image_shape"])
        stored = self.checkpoint.backbone_kwargs
        arguments = stored_size(
            arguments, stored.get("position_embedding_shape") or stored["image_shape"]
        )
        return cls(**arguments)

    def _load_weights(self, model, load_backbone=True, load_head=True):
        """Reads the checkpoint's `model.safetensors` into `model`
        (verifying its SHA-256 first when the preset gives one)."""
        checkpoint = self.checkpoint
        path = checkpoint.fetch_weights()
        if checkpoint.sha256:
            verify_sha256(path, checkpoint.sha256, expected_by=checkpoint.label)
        height, width, _ = checkpoint.backbone_kwargs["image_shape"]
        patch = checkpoint.backbone_kwargs["patch_size"]
        with SafetensorsFile(path) as tensors:
            load_timm_weights(
                model,
                tensors,
                path,
                load_backbone=load_backbone,
                load_head=load_head,
                source_grid=(height // patch, width // patch),
            )

    def load_backbone(self, cls, load_weights, **kwargs):
        backbone = self._build_backbone(cls, kwargs)
        if load_weights:
            self._load_weights(backbone, load_head=False)
        return backbone

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        backbone = kwargs.pop("backbone", None)
        backbone_kwargs, kwargs = self.get_backbone_kwargs(**kwargs)
        own_backbone = backbone is None
        if own_backbone:
            backbone = self._build_backbone(cls.backbone_cls, backbone_kwargs)
        task_kwargs = dict(self.checkpoint.classifier_kwargs)
        task_kwargs.update(kwargs)
        if "preprocessor" not in task_kwargs and cls.preprocessor_cls is not None:
            task_kwargs["preprocessor"] = self.load_preprocessor(
                cls.preprocessor_cls,
                image_size=converter_size(
                    backbone, self.checkpoint.preprocessing["image_size"]
                ),
            )
        task = cls(backbone=backbone, **task_kwargs)
        if load_weights:
            head = self.checkpoint.classifier_kwargs
            load_head = (
                task.num_classes == head["num_classes"]
                and task.pooling == head["pooling"]
                and task.num_classes > 0
            )
            # A backbone of the caller's stays as it is: only the head loads.
            if own_backbone or load_head:
                self._load_weights(task, load_backbone=own_backbone, load_head=load_head)
            if load_head and self.checkpoint.label_names is not None:
                task.label_names = list(self.checkpoint.label_names)
        return converter_follows_backbone(task)

    def load_image_converter(self, cls, **kwargs):
        prep = self.checkpoint.preprocessing
        arguments = dict(
            image_size=tuple(prep["image_size"]),
            crop_pct=prep["crop_pct"],
            interpolation=prep["interpolation"],
            mean=tuple(prep["mean"]),
            std=tuple(prep["std"]),
        )
        arguments.update(kwargs)
        return cls(**arguments)

    def load_preprocessor(self, cls, config_file=None, **kwargs):
        image_size = kwargs.pop("image_size", None)
        if "image_converter" not in kwargs and cls.image_converter_cls is not None:
            converter_kwargs = {} if image_size is None else {"image_size": image_size}
            kwargs["image_converter"] = self.load_image_converter(
                cls.image_converter_cls, **converter_kwargs
            )
        return cls(**kwargs)


def _deserializes(filename):
    """Runs a preset-loader method in Keras's `safe_mode`, naming the
    preset's `filename` when Keras refuses an object in it."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            with safe_loading.keras_safe_mode(os.path.join(self.preset, filename)):
                return method(self, *args, **kwargs)

        return wrapper

    return decorate


class KerasCaiTPresetLoader(KerasPresetLoader):
    """KerasHub's loader for keras-cait presets (`save_to_preset`), in
    Keras's `safe_mode`, plus `image_shape=` different from the saved one:
    the preset is loaded as saved, then its weights go into a model of the
    new shape through `load_timm_weights` (which resamples the position
    embedding)."""

    def get_backbone_kwargs(self, **kwargs):
        backbone_kwargs, kwargs = split_backbone_kwargs(
            *super().get_backbone_kwargs(**kwargs)
        )
        # KerasHub's `load_backbone` passes `dtype=None` over the saved
        # policy, which rebuilds a quantized backbone unquantized; keep a
        # saved quantization (its `load_task` does the same).
        if backbone_kwargs.get("dtype") is None and self._quantized():
            backbone_kwargs["dtype"] = self.config["config"]["dtype"]
        return backbone_kwargs, kwargs

    def _quantized(self):
        """Whether the saved backbone's dtype policy quantizes a layer."""
        saved = self.config.get("config", {}).get("dtype")
        if not isinstance(saved, dict):
            return False
        policy = keras.dtype_policies.deserialize(saved)
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            return any(p.quantization_mode for p in policy.values())
        return policy.quantization_mode is not None

    def _check_resizable(self):
        if self._quantized():
            raise CaiTWeightsError(
                f"{self.preset}: a quantized preset cannot be loaded with "
                "another `image_shape`; load it at its saved shape, or "
                "resize the float model and quantize it after."
            )

    def _stored_size(self, kwargs):
        saved = self.config.get("config", {})
        stored = saved.get("position_embedding_shape") or saved.get("image_shape")
        return kwargs if stored is None else stored_size(kwargs, stored)

    def _resized(self, kwargs):
        shape = kwargs.get("image_shape")
        saved = self.config.get("config", {}).get("image_shape")
        return (
            shape is not None
            and saved is not None
            and tuple(shape)[:2] != tuple(saved)[:2]
        )

    @_deserializes("config.json")
    def load_backbone(self, cls, load_weights, **kwargs):
        kwargs = self._stored_size(kwargs)
        if not (load_weights and self._resized(kwargs)):
            return super().load_backbone(cls, load_weights, **kwargs)
        self._check_resizable()
        saved = super().load_backbone(cls, True)
        backbone = super().load_backbone(cls, False, **kwargs)
        load_timm_weights(
            backbone, ModelTensors(saved), self.preset, source_grid=saved.grid_size
        )
        return backbone

    @_deserializes("task.json")
    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        kwargs = self._stored_size(kwargs)
        if not (load_weights and self._resized(kwargs)):
            return converter_follows_backbone(
                super().load_task(cls, load_weights, load_task_weights, **kwargs)
            )
        self._check_resizable()
        image_shape = tuple(kwargs["image_shape"])
        others = {
            k: v
            for k, v in kwargs.items()
            if k not in ("image_shape", "position_embedding_shape")
        }
        saved = super().load_task(cls, True, load_task_weights, **others)
        task = super().load_task(cls, False, load_task_weights, **kwargs)
        load_timm_weights(
            task,
            ModelTensors(saved),
            self.preset,
            load_head=task.num_classes > 0 and task.num_classes == saved.num_classes,
            source_grid=saved.backbone.grid_size,
        )
        converter = getattr(task.preprocessor, "image_converter", None)
        if converter is not None and image_shape[0] is not None:
            converter.image_size = image_shape[:2]
        return converter_follows_backbone(task)

    @_deserializes("preprocessor.json")
    def load_preprocessor(self, cls, **kwargs):
        return super().load_preprocessor(cls, **kwargs)

    @_deserializes("image_converter.json")
    def load_image_converter(self, cls, **kwargs):
        return super().load_image_converter(cls, **kwargs)


# Building a Keras functional subclass model rewrites its class's
# `__bases__` (Keras's `inject_functional_model_class`), which is not thread
# safe: `from_preset` calls are serialised within a process.
_LOAD_LOCK = threading.RLock()


def load_preset(cls, preset, load_weights=True, **kwargs):
    """Loads a keras-cait object of class `cls` (a keras-cait class or a
    KerasHub base class of one) from a preset, as `CaiTBackbone.from_preset`
    describes; `load_weights` applies to models only."""
    with _LOAD_LOCK:
        loader = get_loader(preset)
        backbone_cls = loader.check_backbone_class()
        if issubclass(cls, Backbone):
            if not issubclass(backbone_cls, cls):
                raise CaiTConfigError(
                    f"Preset {preset!r} holds a {backbone_cls.__name__}, not a "
                    f"{cls.__name__}."
                )
            check_preset_arguments(backbone_cls, kwargs, ("load_weights",))
            return loader.load_backbone(backbone_cls, load_weights, **kwargs)
        if not issubclass(cls, (Task, Preprocessor, ImageConverter)):
            raise CaiTConfigError(f"{cls.__name__} cannot be loaded from a preset.")
        if cls.backbone_cls is not backbone_cls:
            cls = find_subclass(preset, cls, backbone_cls)
        if issubclass(cls, Task):
            check_preset_arguments(
                cls, kwargs, (*BACKBONE_LOAD_ARGUMENTS, "image_shape", "load_weights")
            )
        else:
            check_preset_arguments(cls, kwargs, ("image_size",))
        if issubclass(cls, Task):
            load_task_weights = "num_classes" not in kwargs
            return loader.load_task(cls, load_weights, load_task_weights, **kwargs)
        if issubclass(cls, Preprocessor):
            return loader.load_preprocessor(cls, **kwargs)
        return loader.load_image_converter(cls, **kwargs)

