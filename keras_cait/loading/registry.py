"""The shipped preset files.

Each pretrained variant is one JSON file in the top-level `presets/` folder
of the repository, shipped in the wheel as `keras_cait/presets/` (in a source
checkout, `keras_cait/presets` is a link to the top-level folder). A file
names its weights' source, the `CaiTBackbone` arguments, the classifier
head, the preprocessing and the published figures of the checkpoint; the
schema is documented in docs/presets.md and checked by tests/test_presets.py
(these files ship with the package, so they are not re-validated at import).
"""

import difflib
import functools
import pathlib

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
    """Returns the preset dict of a preset name.

    Args:
        name: string. A name from `list_presets()`.

    Raises:
        CaiTConfigError: the name is unknown; the message lists the
            available presets and suggests the closest.
    """
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
