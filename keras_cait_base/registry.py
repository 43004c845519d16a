"""The shipped preset files: one JSON file per pretrained variant in
`keras_cait/presets/` (a link to the top-level `presets/` in a checkout),
documented in docs/presets.md and checked by tests/test_presets.py, not at
import. Found without importing `keras_cait` (which imports Keras)."""

import difflib
import functools
import importlib.util
import pathlib

from keras_cait_base.errors import CaiTConfigError, CaiTFileNotFoundError
from keras_cait_base.io.files import read_json

# `find_spec` locates the package without running its `__init__`.
PRESETS_DIR = (
    pathlib.Path(importlib.util.find_spec("keras_cait").submodule_search_locations[0])
    / "presets"
)


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
