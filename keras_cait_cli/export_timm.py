"""`keras-cait export-timm MODEL DIR`: a keras-cait model written in timm's
Hugging Face format (`keras_cait.export_to_timm`), optionally uploaded
with the same code path as `keras-cait convert --upload`."""

import json
import os

from keras_cait.convert.timm_export import CONFIG_FILE, export_to_timm
from keras_cait.loading.safe_loading import load_model
from keras_cait.models.cait_image_classifier import CaiTImageClassifier
from keras_cait_base.errors import CaiTConfigError, CaiTFileNotFoundError
from keras_cait_base.io.files import read_json
from keras_cait_cli.convert import check_upload_uri, upload_directory


def read_label_names(path):
    """Class names from a file: a JSON list of strings, or text with one
    name per line (line k is class k, as timm's class maps).

    Raises:
        CaiTFileNotFoundError, CaiTConfigError: naming the file (and line).
    """
    if not os.path.isfile(path):
        raise CaiTFileNotFoundError(f"--label-names: {path} is not a file.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise CaiTConfigError(f"{path} is not valid JSON ({e}).") from None
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise CaiTConfigError(f"{path}: expected a JSON list of non-empty strings.")
        return names
    names = text.splitlines()
    while names and not names[-1].strip():
        names.pop()  # trailing newlines
    for number, name in enumerate(names, start=1):
        if not name.strip():
            raise CaiTConfigError(
                f"{path}, line {number}: empty class name; one name per line."
            )
    return [name.strip() for name in names]


def load_source_model(source):
    """A `.keras` file (checked by `keras_cait.load_model`), or a preset
    (name, directory or `hf://` handle) loaded as a classifier."""
    if str(source).endswith(".keras"):
        return load_model(source, compile=False)
    return CaiTImageClassifier.from_preset(source)


def export_timm(source, directory, label_names_file=None, upload=None, merge_lora=False):
    """Loads `source`, writes it to `directory` in timm's format and
    uploads it to `upload` (`hf://<user>/<repo>`) when given.

    Returns:
        A summary dict: `source`, `directory`, `architecture`,
        `num_classes`, `label_names` (how many), and `uploaded_to`.

    Raises:
        CaiTConfigError: `upload` is not `hf://...` (checked first), the
            label file is invalid, or timm cannot express the model.
        FileExistsError: `directory` exists.
    """
    check_upload_uri(upload)
    if os.path.exists(directory):
        raise FileExistsError(f"{os.path.abspath(directory)} already exists; choose a new directory.")
    names = read_label_names(label_names_file) if label_names_file else None
    model = load_source_model(source)
    written = export_to_timm(model, directory, label_names=names, merge_lora=merge_lora)
    config = read_json(os.path.join(written, CONFIG_FILE))
    summary = {
        "source": str(source),
        "directory": written,
        "architecture": config["architecture"],
        "num_classes": config["num_classes"],
        "label_names": len(config.get("label_names", [])),
    }
    if upload is not None:
        upload_directory(upload, written)
        summary["uploaded_to"] = upload
    return summary
