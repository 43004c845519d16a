"""Converts a timm CaiT checkpoint into a keras-cait preset directory.

    python tools/convert_timm_checkpoint.py SOURCE OUTPUT_DIR \
        [--upload hf://<user>/<repo>] [--atol 1e-4] [--num-images 2]

SOURCE is a preset name (`cait_xxs24_224`), an `hf://timm/<repo>[@revision]`
handle or a local timm directory (`config.json` + `model.safetensors`).

Steps: load the checkpoint with `CaiTImageClassifier.from_preset` (weights,
head and preprocessor); write it with `save_to_preset` (into a temporary
folder next to OUTPUT_DIR, renamed into place when complete); reload the
written preset and check its logits equal the converted model's; where
`timm` is importable, run timm's own model on the same images and check the
logits agree within `--atol`; with `--upload`, publish the directory with
`keras_hub.upload_preset`. Prints a JSON summary on the last line.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np


def _images(model, count, seed=0):
    height, width, channels = model.backbone.image_shape
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, height, width, channels)).astype("float32")


def _logits(model, images):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(model(images, training=False)))


def _timm_logits(source, images):
    """timm's logits for `source`, or `None` when timm is not importable."""
    try:
        import timm
        import torch
    except ImportError:
        return None
    from safetensors.torch import load_file

    from keras_cait.presets import loader as loader_lib

    loader = loader_lib.get_loader(source)
    if not isinstance(loader, loader_lib.CaiTTimmPresetLoader):
        return None
    path, _ = loader.spec.fetch_weights()
    architecture, model_args = loader.spec.timm_arguments
    model = timm.create_model(architecture, pretrained=False, **model_args)
    model.load_state_dict(load_file(path))
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    return out.numpy()


def convert(source, output_dir, atol=1e-4, num_images=2, upload=None):
    """Converts `source` into a keras-cait preset at `output_dir`.

    Args:
        source: a preset name, `hf://` handle or local timm directory.
        output_dir: the preset directory to write (must not exist).
        atol: float. Largest accepted logit difference from timm.
        num_images: int. Random images used for the checks.
        upload: `None` or an `hf://<user>/<repo>` URI to publish to.

    Returns:
        A summary dict.

    Raises:
        FileExistsError: `output_dir` exists.
        ValueError: a check failed, or `upload` is not an `hf://` URI.
    """
    import keras_cait

    if upload is not None and not upload.startswith("hf://"):
        raise ValueError(f"--upload must be an 'hf://<user>/<repo>' URI, got {upload!r}.")
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir):
        raise FileExistsError(f"{output_dir} exists; choose a new directory.")

    model = keras_cait.CaiTImageClassifier.from_preset(source)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-preset-", dir=parent)
    try:
        model.save_to_preset(tmp)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    images = _images(model, num_images)
    logits = _logits(model, images)
    reloaded = keras_cait.CaiTImageClassifier.from_preset(output_dir)
    reload_error = float(np.abs(_logits(reloaded, images) - logits).max())
    if reload_error > 0:
        raise ValueError(
            f"{output_dir}: the saved preset's logits differ from the "
            f"converted model's by {reload_error}."
        )
    summary = {
        "source": source,
        "output_dir": output_dir,
        "num_params": int(model.count_params()),
        "reload_max_error": reload_error,
    }
    expected = _timm_logits(source, images)
    if expected is None:
        summary["timm_max_error"] = None
        summary["timm_check"] = "skipped: timm is not importable"
    else:
        error = float(np.abs(expected - logits).max())
        summary["timm_max_error"] = error
        summary["timm_check"] = "passed" if error <= atol else "failed"
        if error > atol:
            raise ValueError(
                f"{source}: logits differ from timm's by {error} (> {atol})."
            )
    if upload is not None:
        import keras_hub

        keras_hub.upload_preset(upload, output_dir)
        summary["uploaded_to"] = upload
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert a timm CaiT checkpoint into a keras-cait preset."
    )
    parser.add_argument("source", help="preset name, hf:// handle or local timm dir")
    parser.add_argument("output_dir", help="preset directory to write")
    parser.add_argument("--upload", help="publish to hf://<user>/<repo>")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--num-images", type=int, default=2)
    args = parser.parse_args(argv)
    summary = convert(
        args.source,
        args.output_dir,
        atol=args.atol,
        num_images=args.num_images,
        upload=args.upload,
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
