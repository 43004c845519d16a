"""keras-cait models written in timm's Hugging Face format: the inverse of
reading a timm checkpoint (`convert.timm_weights`, `convert.timm_config`).

A timm model directory is `config.json` (`architecture`, `num_classes`,
`global_pool`, `model_args`, `pretrained_cfg`, optional `label_names`) and
`model.safetensors` (timm's state dict). `timm.create_model("local-dir:DIR",
pretrained=True)` and `"hf-hub:user/repo"` load it; so does keras-cait's
`from_preset(DIR)`.
"""

import json
import math
import os

import numpy as np
from safetensors.numpy import save_file

from keras_cait.convert.timm_config import (
    TIMM_ARCHITECTURES,
    resolve_timm_arguments,
    timm_arguments_from_keras,
)
from keras_cait.convert.timm_weights import ModelTensors, lora_layers
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.io.files import staged_path
from keras_cait_base.schema import BACKBONE_DEFAULTS, IMAGENET_MEAN, IMAGENET_STD

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_CARD_FILE = "README.md"

# The `model_args` timm's own `save_for_hf` always writes; the others are
# written when they differ from the architecture's.
_ALWAYS_WRITTEN = ("img_size", "in_chans", "num_classes", "global_pool")
# The architecture closest to a model is the one agreeing on most of these.
_SHAPE_KEYWORDS = ("embed_dim", "depth", "num_heads", "img_size", "init_values")


def export_to_timm(model, directory, label_names=None, merge_lora=False):
    """Writes a CaiT backbone or classifier in timm's Hugging Face format.

    The directory holds `model.safetensors` (timm's keys and layouts, float32,
    from the same layout table `from_preset` reads with), `config.json`
    (timm's `architecture` closest to the model, `num_classes`,
    `global_pool`, `model_args` for what differs from that architecture,
    `pretrained_cfg` with the preprocessor's `input_size`, `crop_pct`,
    `interpolation`, `mean` and `std`, and `label_names`) and a model card
    `README.md`. It appears whole or not at all (written next to it, then
    renamed). timm loads it with `timm.create_model("local-dir:<directory>",
    pretrained=True)`, keras-cait with `CaiTImageClassifier.from_preset`.

    Args:
        model: a `keras_cait.CaiTImageClassifier` (its head is timm's `head`;
            `num_classes=0` writes a headless model) or a
            `keras_cait.CaiTBackbone` (written as timm's `num_classes=0`).
        directory: string. The folder to write; it must not exist.
        label_names: `None` or a sequence of `num_classes` strings, one per
            class in class-id order. Defaults to the model's `label_names`
            attribute when it has one.
        merge_lora: bool. For a model with LoRA enabled: write each adapted
            kernel merged with its adapters (what the model computes with).

    Returns:
        The written directory's absolute path.

    Raises:
        FileExistsError: `directory` exists.
        CaiTConfigError: `model` is not a CaiT backbone or classifier, or
            timm cannot express it: a head `activation` (timm's head returns
            logits), a `layer_norm_epsilon` other than 1e-6, a quantized
            model, LoRA adapters without `merge_lora=True`, a preprocessor
            whose `image_size` is not the model's or without antialiasing;
            or `label_names` are not `num_classes` strings.

    Example:
    ```python
    keras_cait.export_to_timm(classifier, "my-cait", label_names=names)
    model = timm.create_model("local-dir:my-cait", pretrained=True)
    ```
    """
    backbone = getattr(model, "backbone", model)
    if not all(hasattr(backbone, key) for key in BACKBONE_DEFAULTS):
        raise CaiTConfigError(
            "export_to_timm: `model` must be a keras_cait CaiTBackbone or "
            f"CaiTImageClassifier, got {type(model).__name__}."
        )
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        raise FileExistsError(f"{directory} already exists; choose a new directory.")
    _check_expressible(model, merge_lora)
    config = timm_config(model, label_names)
    tensors = ModelTensors(model, merge_lora=merge_lora)
    state_dict = {
        key: np.asarray(tensors.read(key), dtype=np.float32) for key in tensors.keys()
    }
    with staged_path(directory) as staged:
        os.makedirs(staged)
        # `format: pt` is the metadata transformers requires of a PyTorch
        # checkpoint; timm reads the file either way.
        save_file(state_dict, os.path.join(staged, WEIGHTS_FILE), metadata={"format": "pt"})
        with open(os.path.join(staged, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        with open(os.path.join(staged, MODEL_CARD_FILE), "w", encoding="utf-8") as f:
            f.write(model_card(config, _parameters(state_dict)))
    return directory


def _parameters(state_dict):
    return sum(math.prod(array.shape) for array in state_dict.values())


def _check_expressible(model, merge_lora):
    """Raises `CaiTConfigError` for what a timm CaiT cannot express."""
    name = f"export_to_timm: {model.name}"
    # Private Keras API (keras 3.15): every nested layer.
    modes = {getattr(layer, "quantization_mode", None) for layer in model._flatten_layers()}
    quantized = sorted(modes - {None})
    if quantized:
        raise CaiTConfigError(
            f"{name} is quantized ({', '.join(quantized)}); timm's CaiT holds "
            "float weights. Export the float model, before `quantize()`."
        )
    if lora_layers(model) and not merge_lora:
        raise CaiTConfigError(
            f"{name} has LoRA adapters, which timm's CaiT has no place for. "
            "Merge them into the kernels: `export_to_timm(..., "
            "merge_lora=True)` (`keras-cait export-timm --merge-lora`) writes "
            "each adapted kernel as kernel + (lora_alpha / lora_rank) * "
            "lora_kernel_a @ lora_kernel_b, what the model computes with."
        )
    if getattr(model, "activation", None) is not None:
        raise CaiTConfigError(
            f"{name} has the head activation {model.activation!r}; timm's "
            "CaiT head returns logits. Export a classifier built with "
            "`activation=None` (the same weights give the same logits)."
        )
    converter = _image_converter(model)
    if converter is None:
        return
    image_size = tuple(converter.image_size)
    expected = tuple(getattr(model, "backbone", model).image_shape[:2])
    if image_size != expected:
        raise CaiTConfigError(
            f"{name}: its preprocessor resizes to {image_size}, but the model "
            f"takes {expected} images; timm's `pretrained_cfg.input_size` is "
            "the model's input. Set the converter's `image_size` to the "
            "model's."
        )
    if not converter.antialias:
        raise CaiTConfigError(
            f"{name}: its preprocessor resizes without antialiasing; timm's "
            "evaluation transform always antialiases. Set `antialias=True`."
        )


def _image_converter(model):
    preprocessor = getattr(model, "preprocessor", None)
    return getattr(preprocessor, "image_converter", None)


def closest_architecture(arguments):
    """The timm CaiT architecture agreeing with the resolved timm keywords
    `arguments` on most of `embed_dim`, `depth`, `num_heads`, `img_size`
    and `init_values` (the first such, in timm's order)."""

    def agreement(architecture):
        base = resolve_timm_arguments(architecture)
        return sum(_same(base[key], arguments[key]) for key in _SHAPE_KEYWORDS)

    return max(TIMM_ARCHITECTURES, key=agreement)


def _same(a, b):
    """Equality of timm keyword values (`img_size` int or `[h, w]`)."""
    if isinstance(a, int) and isinstance(b, (list, tuple)):
        a = [a, a]
    if isinstance(b, int) and isinstance(a, (list, tuple)):
        b = [b, b]
    if isinstance(a, (list, tuple)):
        return list(a) == list(b)
    return a == b


def timm_config(model, label_names=None):
    """The `config.json` dict `export_to_timm` writes for `model` (see
    there); raises `CaiTConfigError` as it does for unexpressible values."""
    backbone = getattr(model, "backbone", model)
    backbone_kwargs = {key: getattr(backbone, key) for key in BACKBONE_DEFAULTS}
    if model is backbone:
        classifier_kwargs = dict(num_classes=0, pooling="token", dropout=0.0)
    else:
        classifier_kwargs = dict(
            num_classes=model.num_classes, pooling=model.pooling, dropout=model.dropout
        )
    arguments = timm_arguments_from_keras(backbone_kwargs, classifier_kwargs)
    height, width, channels = backbone.image_shape
    arguments["img_size"] = [height, width]
    architecture = closest_architecture(arguments)
    base = resolve_timm_arguments(architecture)
    model_args = {
        key: value
        for key, value in arguments.items()
        if key in _ALWAYS_WRITTEN or not _same(base[key], value)
    }
    num_classes = classifier_kwargs["num_classes"]
    config = {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": backbone.hidden_dim,
        "global_pool": classifier_kwargs["pooling"],
        "model_args": model_args,
        "pretrained_cfg": _pretrained_cfg(model, channels, height, width, num_classes),
    }
    if label_names is None:
        label_names = getattr(model, "label_names", None)
    if label_names is not None:
        config["label_names"] = _checked_label_names(label_names, num_classes)
    return config


def _pretrained_cfg(model, channels, height, width, num_classes):
    """timm's `pretrained_cfg`: the preprocessor's evaluation transform (or
    CaiT's, for a model without one) and the fields timm writes."""
    converter = _image_converter(model)
    if converter is None:
        preprocessing = dict(
            crop_pct=1.0, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
    else:
        preprocessing = dict(
            crop_pct=converter.crop_pct,
            interpolation=converter.interpolation,
            mean=converter.mean,
            std=converter.std,
        )
    return {
        "custom_load": False,
        "input_size": [channels, height, width],
        "fixed_input_size": True,
        "interpolation": preprocessing["interpolation"],
        "crop_pct": float(preprocessing["crop_pct"]),
        "crop_mode": "center",
        "mean": [float(v) for v in preprocessing["mean"]],
        "std": [float(v) for v in preprocessing["std"]],
        "num_classes": num_classes,
        "pool_size": None,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }


def _checked_label_names(label_names, num_classes):
    if isinstance(label_names, (str, bytes)) or not hasattr(label_names, "__len__"):
        raise CaiTConfigError(
            f"`label_names` must be a list of {num_classes} strings, got "
            f"{type(label_names).__name__}."
        )
    names = list(label_names)
    if len(names) != num_classes:
        raise CaiTConfigError(
            f"`label_names` has {len(names)} names; the model has "
            f"num_classes={num_classes}."
        )
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise CaiTConfigError(
                f"`label_names[{index}]` must be a non-empty string, got {name!r:.80}."
            )
    return names


def model_card(config, num_params):
    """The model card (`README.md`, Hugging Face front matter) of a timm
    directory written from `config`: architecture, size, label count,
    preprocessing and how to load it from timm, transformers and keras-cait."""
    cfg = config["pretrained_cfg"]
    channels, height, width = cfg["input_size"]
    num_classes = config["num_classes"]
    labels = config.get("label_names")
    if num_classes == 0:
        head = "none (features; `num_classes=0`)"
    elif labels:
        shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
        head = f"{num_classes} classes ({shown})"
    else:
        head = f"{num_classes} classes (no label names)"
    changed = {k: v for k, v in config["model_args"].items() if k not in _ALWAYS_WRITTEN}
    return f"""---
tags:
- image-classification
- timm
- keras-cait
library_name: timm
---
# CaiT ({config['architecture']})

A CaiT (Class-Attention in Image Transformers) image model exported from
keras-cait in timm's format: `config.json` and `model.safetensors`.

## Model details
- **Architecture:** timm `{config['architecture']}`{f", with {json.dumps(changed)}" if changed else ""}
- **Parameters:** {num_params:,}
- **Classes:** {head}
- **Pooling:** `{config['global_pool']}`
- **Input:** {height}x{width} images, {channels} channels

## Preprocessing
Resize with `{cfg['interpolation']}` interpolation so that a {height}x{width}
center crop covers `crop_pct={cfg['crop_pct']}` of the shorter side, take that
crop, scale pixels to [0, 1], then normalise with mean `{cfg['mean']}` and
std `{cfg['std']}` (timm's `resolve_data_config` + `create_transform`).

## Use it
timm (`"hf-hub:<user>/<repo>"` for an uploaded copy):
```python
import timm
model = timm.create_model("local-dir:<this folder>", pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)
```

keras-cait (TensorFlow, JAX or PyTorch):
```python
import keras_cait
model = keras_cait.CaiTImageClassifier.from_preset("<this folder or hf://user/repo>")
predictions = model.predict(images)
```
"""

