"""Parsing what `from_preset` accepts: a preset name, an
`hf://owner/repo[@revision]` handle, or a local directory."""

import dataclasses
import os

from keras_cait_base import registry
from keras_cait_base.errors import CaiTConfigError, CaiTFileNotFoundError

HF_PREFIX = "hf://"


@dataclasses.dataclass(frozen=True)
class Handle:
    """A parsed preset handle of `kind` `"name"` (with `name`), `"hf"` (with
    `repo_id` and `revision`, `None` for `main`) or `"local"` (with the
    absolute `path`); `text` is the handle as written, quoted in errors."""


    kind: str
    text: str
    name: str = None
    repo_id: str = None
    revision: str = None
    path: str = None


def parse_hf_handle(text):
    """Parses `hf://owner/repo[@revision]` into a `Handle`."""
    rest = text[len(HF_PREFIX) :]
    repo_id, _, revision = rest.partition("@")
    if "@" in rest and not revision:
        raise CaiTConfigError(
            f"Preset handle {text!r}: nothing after '@'; expected "
            "'hf://owner/repo@revision' (a branch, tag or commit)."
        )
    parts = repo_id.split("/")
    if not repo_id or len(parts) > 2 or not all(parts):
        raise CaiTConfigError(
            f"Preset handle {text!r}: expected 'hf://owner/repo' or "
            "'hf://owner/repo@revision'."
        )
    return Handle("hf", text, repo_id=repo_id, revision=revision or None)


def parse_handle(preset):
    """Parses a `from_preset` argument.

    Args:
        preset: string or path. A preset name (see
            `keras_cait.list_presets()`; a name wins over a local folder of
            the same name, write `./name` for the folder), an
            `hf://owner/repo[@revision]` handle, or a local directory.

    Returns:
        A `Handle`.

    Raises:
        CaiTConfigError: an unknown preset name (with suggestions) or a
            malformed handle.
        CaiTFileNotFoundError: a path that does not exist.
    """
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str):
        raise CaiTConfigError(
            "`preset` must be a preset name, an 'hf://' handle or a local "
            f"directory, got {type(preset).__name__} {preset!r}."
        )
    if preset.startswith(HF_PREFIX):
        return parse_hf_handle(preset)
    if "://" in preset:
        raise CaiTConfigError(
            f"Preset handle {preset!r}: only 'hf://' handles, preset names "
            "and local directories are supported."
        )
    if preset in registry.list_presets():
        return Handle("name", preset, name=preset)
    expanded = os.path.expanduser(preset)
    if os.path.isdir(expanded):
        return Handle("local", preset, path=os.path.abspath(expanded))
    if os.path.exists(expanded):
        raise CaiTFileNotFoundError(
            f"Preset {preset!r} is a file; expected a directory holding "
            "config.json (and model.safetensors or model.weights.h5)."
        )
    if os.sep in preset or preset.startswith((".", "~")):
        raise CaiTFileNotFoundError(
            f"Preset directory {preset!r} does not exist."
        )
    registry.get_preset(preset)  # raises for unknown names, with suggestions
    return Handle("name", preset, name=preset)
