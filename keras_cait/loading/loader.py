"""`from_preset` for keras-cait's backbone, classifier, preprocessor and
image converter.

A preset is one of:

1. a preset name (`keras_cait.list_presets()`): the architecture and the
   preprocessing come from the shipped JSON, the weights from its timm repo;
2. `hf://timm/<repo>`: a timm-format repo (`config.json` + `model.safetensors`);
3. `hf://<user>/<repo>`: a keras-cait preset saved with `save_to_preset`;
4. a local directory of either kind;
5. any `hf://` handle with `@<revision>` (a branch, tag or commit).

timm-format sources are handled by `CaiTTimmPresetLoader` below (converted
weights are cached, see `conversion_cache`); keras-cait presets by KerasHub's
own `KerasPresetLoader`.

A timm checkpoint is converted and loaded one tensor at a time: its header
is checked against the architecture, each tensor is read, transposed and
written into the conversion cache's file (`_convert_state_dict`); the cache
entry's shapes are then checked against the model and its tensors read and
assigned one at a time (`assign_weights`). Besides the model's own
variables, memory holds about one tensor, never a second copy of the
weights.
"""

import ctypes
import functools
import math
import os
import threading

import keras
import numpy as np
from keras_hub.layers import ImageConverter
from keras_hub.models import Backbone, Preprocessor, Task

from keras_cait.convert.resample import resample_position_embedding
from keras_cait.convert.timm_weights import (
    check_timm_header,
    keras_shape,
    model_weight_map,
    timm_weight_layout,
    to_keras_array,
)
from keras_cait.errors import (
    CaiTConfigError,
    CaiTFileNotFoundError,
    CaiTIntegrityError,
    CaiTWeightsError,
)
from keras_cait.io import hub
from keras_cait.io.files import read_json
from keras_cait.io.safetensors_io import SafetensorsReader
from keras_cait.loading import handles, registry, safe_loading, timm_repo
from keras_cait.loading.conversion_cache import (
    ConversionCache,
    SourceIdentity,
    TensorStream,
)
from keras_cait.serialization import registered_class

# Private KerasHub APIs, checked against keras-hub 0.32.0 (pinned in
# pyproject.toml): the preset-loader base classes and the subclass lookup.
from keras_hub.src.utils.preset_utils import (  # isort: skip
    KerasPresetLoader,
    PresetLoader,
    find_subclass,
)

# Backbone arguments that decide the shapes of the weights.
_SHAPE_ARGUMENTS = (
    "image_shape",
    "patch_size",
    "hidden_dim",
    "num_layers",
    "num_heads",
    "num_class_attention_layers",
    "mlp_ratio",
    "class_attention_mlp_ratio",
    "use_qkv_bias",
)


# Backbone arguments `from_preset` passes to the backbone besides KerasHub's
# `dtype` and `image_shape`: regularisation chosen at load time (fine-tuning).
BACKBONE_LOAD_ARGUMENTS = ("drop_path_rate", "dropout_rate", "attention_dropout")


def split_backbone_kwargs(backbone_kwargs, kwargs):
    """Moves `BACKBONE_LOAD_ARGUMENTS` from task kwargs to backbone kwargs."""
    backbone_kwargs = dict(backbone_kwargs)
    kwargs = dict(kwargs)
    for name in BACKBONE_LOAD_ARGUMENTS:
        if name in kwargs:
            backbone_kwargs[name] = kwargs.pop(name)
    return backbone_kwargs, kwargs


class TimmPreset:
    """A timm-format checkpoint: its architecture, preprocessing and where
    its weights are.

    Args:
        label: string naming the source in errors and in the cache.
        backbone_kwargs: dict. `CaiTBackbone` arguments of the checkpoint.
        classifier_kwargs: dict. `num_classes`, `pooling` and `dropout` of
            the checkpoint's head.
        preprocessing: dict. `image_size`, `crop_pct`, `interpolation`,
            `mean`, `std`.
        fetch_weights: callable returning `(local_path, SourceIdentity)` of
            the checkpoint's `model.safetensors` (it may download).
        timm_arguments: `(architecture, model_args)`: how
            `timm.create_model` builds the same model (for checks).
    """

    def __init__(
        self,
        label,
        backbone_kwargs,
        classifier_kwargs,
        preprocessing,
        fetch_weights,
        timm_arguments=None,
    ):
        self.label = label
        self.backbone_kwargs = dict(backbone_kwargs)
        self.backbone_kwargs["image_shape"] = tuple(self.backbone_kwargs["image_shape"])
        self.classifier_kwargs = dict(classifier_kwargs)
        self.preprocessing = dict(preprocessing)
        self.fetch_weights = fetch_weights
        self.timm_arguments = timm_arguments

    @classmethod
    def from_checkpoint(cls, checkpoint, fetch_weights):
        return cls(
            checkpoint.source,
            checkpoint.backbone_kwargs(),
            checkpoint.classifier_kwargs(),
            checkpoint.preprocessing(),
            fetch_weights,
            (checkpoint.architecture, dict(checkpoint.config.get("model_args") or {})),
        )


def _hub_weights_fetcher(repo_id, revision, commit):
    def fetch():
        # The same commit as the config.json that was read.
        path, got = hub.download_file(
            repo_id,
            timm_repo.WEIGHTS_FILE,
            revision=commit or revision,
            label=(repo_id, revision),
        )
        return path, SourceIdentity.of_file(
            path, repo_id, revision=revision, commit=got or commit
        )

    return fetch


def _local_weights_fetcher(directory):
    def fetch():
        path = os.path.join(directory, timm_repo.WEIGHTS_FILE)
        if not os.path.isfile(path):
            raise CaiTFileNotFoundError(
                f"{directory}: '{timm_repo.WEIGHTS_FILE}' is missing; a timm "
                "directory holds config.json and model.safetensors."
            )
        return path, SourceIdentity.of_file(path, f"local:{directory}")

    return fetch


def _named_preset(name):
    """A `TimmPreset` from a shipped preset JSON."""
    data = registry.get_preset(name)
    source = handles.parse_hf_handle(data["weights"]["source"])
    classifier = dict(data["classifier"], dropout=0.0)

    def fetch():
        config_path, commit = hub.download_file(
            source.repo_id, timm_repo.CONFIG_FILE, revision=source.revision
        )
        checkpoint = timm_repo.TimmCheckpoint(
            read_json(config_path, f"{source.text} config.json"),
            f"{source.text} config.json",
        )
        _check_agrees(name, data, checkpoint)
        path, identity = _hub_weights_fetcher(source.repo_id, source.revision, commit)()
        expected = data["weights"].get("sha256")
        if expected and identity.sha256 != expected:
            raise CaiTIntegrityError(
                f"{path}: SHA-256 mismatch: the file's digest is "
                f"{identity.sha256}, preset {name!r} expects {expected}. The "
                "file was modified, truncated or corrupted; delete it from the "
                "Hugging Face cache and download it again."
            )
        return path, identity

    return TimmPreset(
        f"{name} ({source.text})",
        data["backbone"],
        classifier,
        data["preprocessing"],
        fetch,
        (data["architecture"], {}),
    )


def _check_agrees(name, data, checkpoint):
    """The repo's config.json must describe the preset's model."""
    expected = dict(data["backbone"], image_shape=tuple(data["backbone"]["image_shape"]))
    found = checkpoint.backbone_kwargs()
    found_classifier = checkpoint.classifier_kwargs()
    differences = [
        f"{key}: preset {expected[key]!r}, repo {found[key]!r}"
        for key in _SHAPE_ARGUMENTS
        if expected[key] != found[key]
    ]
    for key in ("num_classes", "pooling"):
        if data["classifier"][key] != found_classifier[key]:
            differences.append(
                f"{key}: preset {data['classifier'][key]!r}, repo "
                f"{found_classifier[key]!r}"
            )
    if differences:
        raise CaiTConfigError(
            f"{checkpoint.source} does not describe preset {name!r}: "
            + "; ".join(differences)
            + ". Pin the preset's revision or load the repo by its handle."
        )


def _timm_preset_from_config(handle, config, config_source, commit=None):
    checkpoint = timm_repo.TimmCheckpoint(config, config_source)
    if handle.kind == "local":
        fetch = _local_weights_fetcher(handle.path)
    else:
        fetch = _hub_weights_fetcher(handle.repo_id, handle.revision, commit)
    return TimmPreset.from_checkpoint(checkpoint, fetch)


def get_loader(preset, config=None):
    """Resolves a `from_preset` argument to a KerasHub `PresetLoader`: the
    one dispatch point of every `from_preset` (keras-cait's classes and
    KerasHub's base classes, through `keras_hub_dispatch`).

    Args:
        preset: a preset name, an `hf://owner/repo[@revision]` handle or a
            local directory.
        config: `None`, or the source's `config.json` already read (as
            KerasHub's dispatch has it).

    Returns:
        A `CaiTTimmPresetLoader` for preset names and timm-format sources,
        or a `KerasCaiTPresetLoader` (KerasHub's `KerasPresetLoader`) for
        keras-cait presets.
    """
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
    spec = _timm_preset_from_config(handle, config, config_source, commit)
    return CaiTTimmPresetLoader(preset, spec)


def adapt_position_embedding(array, old_shape, new_shape, patch_size):
    """Resamples a checkpoint's position embedding `(1, old_h * old_w, D)`
    for a model built with another `image_shape` (see
    `keras_cait.convert.resample.resample_position_embedding`)."""
    old_grid = (old_shape[0] // patch_size, old_shape[1] // patch_size)
    new_grid = (new_shape[0] // patch_size, new_shape[1] // patch_size)
    return np.asarray(resample_position_embedding(array, old_grid, new_grid))


# Assigning frees each variable's initial value as its new value arrives;
# the allocator keeps freed blocks resident, and new values do not always
# reuse them (on JAX they never do), so without this the peak memory of
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


def _shape_of(arrays, key):
    if isinstance(arrays, SafetensorsReader):
        return tuple(arrays.shape(key))
    return tuple(np.shape(arrays[key]))


def _file_order(arrays, plan):
    """Reads a file in order (sequential reads); dicts keep the model's."""
    if not isinstance(arrays, SafetensorsReader):
        return plan
    return sorted(plan, key=lambda item: arrays.entries[item[0]][2])


def assign_weights(model, arrays, source, checkpoint_image_shape, load_head):
    """Assigns converted (Keras-layout) arrays, keyed by timm key, to a
    backbone or classifier.

    Every shape is checked before anything is assigned (from the file's
    header when `arrays` is a reader), so a bad source leaves the model
    untouched; then the tensors are read and assigned one at a time.

    Args:
        model: a `CaiTBackbone` or `CaiTImageClassifier`.
        arrays: dict of timm key to Keras-layout array, or an open
            `keras_cait.io.safetensors_io.SafetensorsReader` of such arrays (a
            conversion cache entry), read one tensor at a time.
        source: string quoted in errors.
        checkpoint_image_shape: the image shape the arrays were made for.
        load_head: bool. Whether to assign `head.*` (else it stays fresh).

    Raises:
        CaiTWeightsError: a tensor is missing or of the wrong shape.
    """
    backbone = getattr(model, "backbone", model)
    image_shape = tuple(backbone.image_shape)
    plan = []
    for key, variable, _ in model_weight_map(model):
        if key.startswith("head.") and not load_head:
            continue
        if key not in arrays:
            raise CaiTWeightsError(f"{source}: tensor '{key}' is missing.")
        shape = _shape_of(arrays, key)
        value = None  # read when assigned
        if key == "pos_embed" and shape != tuple(variable.shape):
            if image_shape[:2] != tuple(checkpoint_image_shape[:2]):
                # Small (one embedding): resampled now, so its new shape is
                # checked before anything is assigned.
                value = adapt_position_embedding(
                    arrays[key],
                    checkpoint_image_shape,
                    image_shape,
                    backbone.patch_size,
                )
                shape = tuple(value.shape)
        if shape != tuple(variable.shape):
            raise CaiTWeightsError(
                f"{source}: tensor '{key}' has shape {shape} "
                f"(in Keras layout); the model expects {tuple(variable.shape)}."
            )
        plan.append((key, variable, value))
    assigned = 0
    for key, variable, value in _file_order(arrays, plan):
        variable.assign(arrays[key] if value is None else value)
        assigned += math.prod(variable.shape) * 4
        if assigned >= _TRIM_EVERY_BYTES:
            release_freed_memory()
            assigned = 0
    release_freed_memory()


def _convert_state_dict(path, spec):
    """Checks a timm `model.safetensors` against the checkpoint's
    architecture and returns a `TensorStream` of its Keras-layout arrays by
    timm key, converted one tensor at a time as the cache writes them.

    The whole header is checked first (every key present and expected,
    floating-point dtypes, timm shapes from `timm_weight_layout`; no model
    is built); each tensor is then read (NaN/Inf, float64 and bfloat16
    handled by `SafetensorsReader`), transposed to Keras layout and handed
    to the writer.

    Raises:
        CaiTWeightsError: the file is corrupt or does not match the
            architecture (when called), or a tensor is not finite (while
            the stream is written).
    """
    layout = timm_weight_layout(
        spec.backbone_kwargs, spec.classifier_kwargs["num_classes"]
    )
    reader = SafetensorsReader(path)
    try:
        check_timm_header(path, layout, reader.entries)
    except BaseException:
        reader.close()
        raise
    kinds = {key: kind for key, _, kind in layout}

    def produce(key):
        return to_keras_array(kinds[key], reader.read(key))

    return TensorStream(
        {key: keras_shape(kind, shape) for key, shape, kind in layout},
        produce,
        close=reader.close,
    )


class CaiTTimmPresetLoader(PresetLoader):
    """Builds keras-cait models from a `TimmPreset` (a KerasHub
    `PresetLoader`, so KerasHub's base classes can use it too).

    Args:
        preset: the handle, as given.
        spec: a `TimmPreset`.
    """

    def __init__(self, preset, spec):
        super().__init__(preset, {})
        self.spec = spec

    def check_backbone_class(self):
        return registered_class("CaiTBackbone")

    def get_backbone_kwargs(self, **kwargs):
        return split_backbone_kwargs(*super().get_backbone_kwargs(**kwargs))

    def _build_backbone(self, cls, kwargs):
        arguments = dict(self.spec.backbone_kwargs)
        arguments.update({k: v for k, v in kwargs.items() if v is not None})
        if "image_shape" in arguments:
            arguments["image_shape"] = tuple(arguments["image_shape"])
        return cls(**arguments)

    def _open_converted(self):
        """`(path, reader)`: the checkpoint's conversion cache entry, made
        first if needed, as an open `SafetensorsReader`."""
        path, identity = self.spec.fetch_weights()
        reader, _ = ConversionCache().open_or_convert(
            identity, lambda: _convert_state_dict(path, self.spec)
        )
        return path, reader

    def _load_weights(self, model, load_head):
        path, reader = self._open_converted()
        with reader:
            assign_weights(
                model,
                reader,
                path,
                self.spec.backbone_kwargs["image_shape"],
                load_head=load_head,
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
        task_kwargs = dict(self.spec.classifier_kwargs)
        task_kwargs.update(kwargs)
        if "preprocessor" not in task_kwargs and cls.preprocessor_cls is not None:
            task_kwargs["preprocessor"] = self.load_preprocessor(
                cls.preprocessor_cls, image_size=tuple(backbone.image_shape[:2])
            )
        task = cls(backbone=backbone, **task_kwargs)
        if load_weights:
            checkpoint = self.spec.classifier_kwargs
            load_head = (
                task.num_classes == checkpoint["num_classes"]
                and task.pooling == checkpoint["pooling"]
                and task.num_classes > 0
            )
            if own_backbone:
                self._load_weights(task, load_head)
            elif load_head:
                # The caller's backbone stays as it is; only the head loads.
                path, reader = self._open_converted()
                with reader:
                    head = [
                        (key, variable)
                        for key, variable, _ in model_weight_map(task)
                        if key.startswith("head.")
                    ]
                    for key, variable in head:
                        if tuple(reader.shape(key)) != tuple(variable.shape):
                            raise CaiTWeightsError(
                                f"{path}: tensor '{key}' has shape "
                                f"{tuple(reader.shape(key))} (in Keras layout); "
                                "the given backbone's head expects "
                                f"{tuple(variable.shape)}."
                            )
                    for key, variable in head:
                        variable.assign(reader.read(key))
        return task

    def load_image_converter(self, cls, **kwargs):
        prep = self.spec.preprocessing
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


def _arrays_of(model):
    """A model's weights in Keras layout, keyed by timm key."""
    return {
        key: np.asarray(keras.ops.convert_to_numpy(variable.value))
        for key, variable, _ in model_weight_map(model)
    }


class KerasCaiTPresetLoader(KerasPresetLoader):
    """KerasHub's loader for keras-cait presets (`save_to_preset`), plus
    `image_shape=` different from the saved one: the preset is loaded as
    saved, then its weights go into a model of the new shape through
    `assign_weights` (which resamples the position embedding)."""

    def get_backbone_kwargs(self, **kwargs):
        return split_backbone_kwargs(*super().get_backbone_kwargs(**kwargs))

    def _resized(self, kwargs):
        shape = kwargs.get("image_shape")
        saved = self.config.get("config", {}).get("image_shape")
        return (
            shape is not None
            and saved is not None
            and tuple(shape)[:2] != tuple(saved)[:2]
        )

    def load_backbone(self, cls, load_weights, **kwargs):
        if not (load_weights and self._resized(kwargs)):
            return super().load_backbone(cls, load_weights, **kwargs)
        saved = super().load_backbone(cls, True)
        backbone = super().load_backbone(cls, False, **kwargs)
        assign_weights(
            backbone, _arrays_of(saved), self.preset, saved.image_shape, False
        )
        return backbone

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        if not (load_weights and self._resized(kwargs)):
            return super().load_task(cls, load_weights, load_task_weights, **kwargs)
        image_shape = tuple(kwargs["image_shape"])
        others = {k: v for k, v in kwargs.items() if k != "image_shape"}
        saved = super().load_task(cls, True, load_task_weights, **others)
        task = super().load_task(cls, False, load_task_weights, **kwargs)
        arrays = _arrays_of(saved)
        head = getattr(task, "output_dense", None)
        load_head = (
            head is not None
            and "head.weight" in arrays
            and tuple(arrays["head.weight"].shape) == tuple(head.kernel.shape)
        )
        assign_weights(task, arrays, self.preset, saved.backbone.image_shape, load_head)
        converter = getattr(task.preprocessor, "image_converter", None)
        if converter is not None:
            converter.image_size = image_shape[:2]
        return task


# Building a Keras functional subclass model rewrites its class's
# `__bases__` (Keras's `inject_functional_model_class`), which is not thread
# safe: concurrent constructions fail with "inheritance cycle" or `super()`
# errors. `from_preset` calls are therefore serialised within a process;
# across processes, the conversion cache's file lock does the same job.
_LOAD_LOCK = threading.RLock()


def _serialized(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with _LOAD_LOCK:
            return function(*args, **kwargs)

    return wrapper


@_serialized
def load_preset(cls, preset, load_weights=True, **kwargs):
    """Loads a keras-cait object of class `cls` from a preset.

    Args:
        cls: `CaiTBackbone`, `CaiTImageClassifier`,
            `CaiTImageClassifierPreprocessor`, `CaiTImageConverter` (or a
            KerasHub base class they subclass).
        preset: a preset name, an `hf://owner/repo[@revision]` handle, or a
            local directory (timm-format or keras-cait preset).
        load_weights: bool. Load the pretrained weights (models only);
            `False` builds the architecture from the preset alone (for a
            preset name, with no network access).
        **kwargs: passed to the constructor; `image_shape` and `dtype` go to
            the backbone, `num_classes` different from the checkpoint's gives
            a fresh head.

    Returns:
        The loaded object.
    """
    loader = get_loader(preset)
    backbone_cls = loader.check_backbone_class()
    if issubclass(cls, Backbone):
        if not issubclass(backbone_cls, cls):
            raise CaiTConfigError(
                f"Preset {preset!r} holds a {backbone_cls.__name__}, not a "
                f"{cls.__name__}."
            )
        return loader.load_backbone(backbone_cls, load_weights, **kwargs)
    if issubclass(cls, Task):
        if cls.backbone_cls is not backbone_cls:
            cls = find_subclass(preset, cls, backbone_cls)
        load_task_weights = "num_classes" not in kwargs
        return loader.load_task(cls, load_weights, load_task_weights, **kwargs)
    if issubclass(cls, Preprocessor):
        if cls.backbone_cls is not backbone_cls:
            cls = find_subclass(preset, cls, backbone_cls)
        return loader.load_preprocessor(cls, **kwargs)
    if issubclass(cls, ImageConverter):
        if cls.backbone_cls is not backbone_cls:
            cls = find_subclass(preset, cls, backbone_cls)
        return loader.load_image_converter(cls, **kwargs)
    raise CaiTConfigError(f"{cls.__name__} cannot be loaded from a preset.")
