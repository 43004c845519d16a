"""Publishing: a timm CaiT checkpoint converted into a keras-cait preset
(`convert()`, behind `keras-cait convert` and
`tools/convert_timm_checkpoint.py`)."""

import os

import keras
import keras_hub
import numpy as np

from keras_cait.loading import loader as loader_lib
from keras_cait.models.cait_image_classifier import CaiTImageClassifier
from keras_cait_base.errors import CaiTConfigError, CaiTWeightsError
from keras_cait_base.io.files import read_json, staged_path


def _images(model, count, seed=0):
    height, width, channels = model.backbone.image_shape
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, height, width, channels)).astype("float32")


def _logits(model, images):
    return np.asarray(keras.ops.convert_to_numpy(model(images, training=False)))


def timm_logits(source, images):
    """timm's logits for a timm-format `source`, or `None` when timm (or
    PyTorch) is not importable or the source is not a timm checkpoint.

    Args:
        source: a preset name, `hf://` handle or local timm directory.
        images: float32 NHWC array.
    """
    try:
        import timm  # optional dependency: only for the parity check
        import torch  # optional dependency: only for the parity check
        from safetensors.torch import load_file  # optional: needs torch
    except ImportError:
        return None
    loader = loader_lib.get_loader(source)
    if not isinstance(loader, loader_lib.CaiTTimmPresetLoader):
        return None
    checkpoint = loader.checkpoint
    model = timm.create_model(
        checkpoint.architecture, pretrained=False, **checkpoint.timm_model_args()
    )
    path = checkpoint.fetch_weights()
    model.load_state_dict(load_file(path))
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    return out.numpy()


def convert(source, output_dir, atol=1e-4, num_images=2, upload=None):
    """Converts a CaiT checkpoint into a keras-cait preset directory: loads
    it with `CaiTImageClassifier.from_preset`, writes it with
    `save_to_preset` next to `output_dir`, checks that the reloaded preset's
    logits equal the model's and (where timm is importable) timm's, renames
    it into place and optionally uploads it with `keras_hub.upload_preset`.

    Args:

        source: a preset name, `hf://` handle or local timm directory.
        output_dir: the preset directory to write; it must not exist. It
            appears only once written and checked.
        atol: float. Largest accepted logit difference from timm.
        num_images: int. Random images used for the checks.
        upload: `None` or an `hf://<user>/<repo>` URI to publish to.

    Returns:
        A summary dict: `source`, `output_dir`, `num_params`,
        `reload_max_error`, `timm_max_error` (`None` without timm),
        `timm_check`, and `uploaded_to` when uploaded.

    Raises:
        FileExistsError: `output_dir` exists.
        CaiTConfigError: `upload` is not an `hf://` URI.
        CaiTWeightsError: the reloaded preset or timm disagrees.
    """
    check_upload_uri(upload)
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir):
        raise FileExistsError(
            f"{output_dir} already exists; choose a new directory."
        )
    model = CaiTImageClassifier.from_preset(source)
    images = _images(model, num_images)
    logits = _logits(model, images)
    with staged_path(output_dir) as staged:
        model.save_to_preset(staged)
        reloaded = CaiTImageClassifier.from_preset(staged)
        reload_error = float(np.abs(_logits(reloaded, images) - logits).max())
        if reload_error > 0:
            raise CaiTWeightsError(
                f"{output_dir}: the saved preset's logits differ from the "
                f"converted model's by {reload_error}."
            )
    summary = {
        "source": source,
        "output_dir": output_dir,
        "num_params": int(model.count_params()),
        "reload_max_error": reload_error,
    }
    expected = timm_logits(source, images)
    if expected is None:
        summary["timm_max_error"] = None
        summary["timm_check"] = "skipped: timm is not importable"
    else:
        error = float(np.abs(expected - logits).max())
        summary["timm_max_error"] = error
        summary["timm_check"] = "passed" if error <= atol else "failed"
        if error > atol:
            raise CaiTWeightsError(
                f"{source}: logits differ from timm's by {error} (> {atol})."
            )
    if upload is not None:
        upload_directory(upload, output_dir)
        summary["uploaded_to"] = upload
    return summary


def check_upload_uri(upload):
    """Raises `CaiTConfigError` unless `upload` is `None` or `hf://...`."""
    if upload is not None and not upload.startswith("hf://"):
        raise CaiTConfigError(
            f"`upload` must be an 'hf://<user>/<repo>' URI, got {upload!r}."
        )


def upload_directory(uri, directory):
    """Publishes a written directory at `uri` (`hf://<user>/<repo>`), for
    `keras-cait convert --upload` and `keras-cait export-timm --upload`: a
    keras-cait preset with `keras_hub.upload_preset` (which checks it and
    adds a model card when the repo has none), a timm-format directory
    (`config.json` with `architecture`; KerasHub's uploader accepts only
    its own presets) with `huggingface_hub.create_repo` and `upload_folder`,
    its own model card included."""
    check_upload_uri(uri)
    config = read_json(os.path.join(directory, "config.json"))
    if "architecture" not in config:
        keras_hub.upload_preset(uri, directory)
        return
    import huggingface_hub  # start-up: only for an upload

    repo = huggingface_hub.create_repo(uri.removeprefix("hf://"), exist_ok=True)
    huggingface_hub.upload_folder(repo_id=repo.repo_id, folder_path=directory)
