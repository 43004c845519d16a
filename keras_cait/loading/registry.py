"""The shipped preset files: one JSON file per pretrained variant in
`keras_cait/presets/` (a link to the top-level `presets/` in a checkout),
documented in docs/presets.md and checked by tests/test_presets.py, not at
import."""

import difflib
import functools
import pathlib

from keras_cait.convert.timm_config import (
    backbone_kwargs_from_timm,
    classifier_kwargs_from_timm,
    resolve_timm_arguments,
)
from keras_cait.errors import CaiTConfigError, CaiTFileNotFoundError
from keras_cait.io.files import read_json

PRESETS_DIR = pathlib.Path(__file__).resolve().parents[1] / "presets"


@functools.cache
def _all_presets():
    files = sorted(PRESETS_DIR.glob("*.json"))
    if not files:
        raise CaiTFileNotFoundError(
            f"No preset files found in {PRESETS_DIR}; the keras-cait "
            "installation is incomplete."
        )
    return {path.stem: read_json(str(path)) for path in files}


def list_presets():
    """Lists the names of keras-cait's pretrained presets.

    Returns:
        A sorted list of preset names, e.g. `"cait_xxs24_224"`.

    Example:
    ```python
    keras_cait.list_presets()  # ['cait_m36_384', ..., 'cait_xxs36_384']
    ```
    """
    return sorted(_all_presets())


def get_preset(name):
    """The preset dict of `name`, a name from `list_presets()`; an unknown
    name raises `CaiTConfigError` listing the presets and the closest."""

    presets = _all_presets()
    if name in presets:
        return presets[name]
    raise CaiTConfigError(unknown_preset_message(name))


def model_arguments(name):
    """The model a preset builds: `(backbone_kwargs, classifier_kwargs)`
    of its timm `architecture`, as timm's `cait.py` registers it
    (`keras_cait.convert.timm_config.TIMM_ARCHITECTURES`, the one place the
    variants' hyper-parameters are written; the JSON names the architecture).

    Args:
        name: a name from `list_presets()`.

    Returns:
        Two dicts: every `CaiTBackbone` argument, checked by
        `keras_cait.schema.check_backbone_config`, and the head's
        `num_classes`, `pooling` and `dropout`.

    Raises:
        CaiTConfigError: `name` is not a preset.
    """
    data = get_preset(name)
    source = f"preset {name!r}"
    arguments = resolve_timm_arguments(data["architecture"], source=source)
    return (
        backbone_kwargs_from_timm(arguments, source),
        classifier_kwargs_from_timm(arguments, source),
    )


def unknown_preset_message(name):
    """An error message for an unknown preset name, with suggestions."""
    names = sorted(_all_presets())
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"Unknown preset {name!r}.{hint} keras-cait's presets are: "
        f"{', '.join(names)}. A preset can also be an 'hf://owner/repo"
        "[@revision]' handle or a local directory."
    )
