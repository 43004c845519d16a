"""Shared helpers for the test-suite: reference data and model builders."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
from safetensors.numpy import load_file

import keras_cait
from keras_cait.convert.timm_config import (
    backbone_kwargs_from_timm,
    classifier_kwargs_from_timm,
    resolve_timm_arguments,
)
from keras_cait.testing import seeded_state_dict

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMM = REPO / "tests" / "fixtures" / "timm"
IMAGES = REPO / "tests" / "fixtures" / "images"

# Small configurations used throughout the suite.
TINY_BACKBONE = dict(
    image_shape=(32, 32, 3),
    patch_size=8,
    hidden_dim=48,
    num_layers=2,
    num_heads=4,
    num_class_attention_layers=2,
)


def variants():
    """timm's reference data for every model: `variants.json`."""
    with open(TIMM / "variants.json") as f:
        return json.load(f)


def timm_config(name):
    with open(TIMM / name / "config.json") as f:
        return json.load(f)


def expected(name):
    """The reference outputs of a model, with NHWC images under `images`."""
    data = dict(np.load(TIMM / name / "expected.npz"))
    data["images"] = data["images_nchw"].transpose(0, 2, 3, 1)
    return data


def timm_state_dict(name):
    """The timm state dict of a reference model: shipped, or seeded."""
    path = TIMM / name / "model.safetensors"
    if path.exists():
        return load_file(path)
    info = variants()[name]
    return seeded_state_dict(info["state_dict"], info["seed"])


def build_from_timm_config(config, dtype=None):
    """A classifier (with its backbone) for a timm `config.json` dict."""
    arguments = resolve_timm_arguments(
        config["architecture"], config.get("model_args")
    )
    backbone = keras_cait.CaiTBackbone(
        **backbone_kwargs_from_timm(arguments), dtype=dtype
    )
    return keras_cait.CaiTImageClassifier(
        backbone, **classifier_kwargs_from_timm(arguments)
    )


def reference_classifier(name):
    """A classifier holding the reference model's timm weights."""
    classifier = build_from_timm_config(timm_config(name))
    keras_cait.load_timm_state_dict(classifier, timm_state_dict(name))
    return classifier


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def run_python(code, backend, env=None, timeout=600):
    """Runs Python `code` in a fresh process with `KERAS_BACKEND=backend`."""
    full_env = dict(os.environ)
    full_env["KERAS_BACKEND"] = backend
    full_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"subprocess on {backend} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


OTHER_BACKENDS = {
    "tensorflow": ("jax", "torch"),
    "jax": ("tensorflow", "torch"),
    "torch": ("tensorflow", "jax"),
}


def load_tool(name):
    """Imports `tools/<name>.py` (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_photos(directory, count, prefix="photo", seed=0, size=None):
    """Writes `count` different photos (crops of the sample images, 40-90 px or `size`,
    PNG and JPEG in turn) in `directory`; returns their paths (str), sorted."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [Image.open(IMAGES / name).convert("RGB") for name in
               ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]
    os.makedirs(directory, exist_ok=True)
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        width, height = source.size
        left, top = rng.integers(0, width // 2), rng.integers(0, height // 2)
        crop = source.crop((left, top, left + width // 2, top + height // 2))
        crop = crop.resize(size or tuple(int(v) for v in rng.integers(40, 90, size=2)))
        path = os.path.join(directory, f"{prefix}_{index:03d}.{('png', 'jpg')[index % 2]}")
        crop.save(path)
        paths.append(path)
    return sorted(paths)


def eager_predictions(classifier, paths):
    """Probabilities (float64) and class-token features of image files, without the
    collection pipeline: `load_image`, the converter called eagerly, the model."""
    converter = classifier.preprocessor.image_converter
    images = np.stack([to_numpy(converter(keras_cait.load_image(p))) for p in paths])
    logits = np.asarray(to_numpy(classifier(images)), np.float64)
    scores = np.exp(logits - logits.max(-1, keepdims=True))
    tokens = to_numpy(classifier.backbone(images))
    return scores / scores.sum(-1, keepdims=True), tokens[:, 0]
