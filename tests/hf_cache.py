"""An offline Hugging Face cache of timm CaiT repos, for tests.

`build_offline_hub_cache(cache_dir)` writes, in `huggingface_hub`'s cache layout
(`models--<org>--<name>/refs/<ref>` holding a 40-hex commit id with no newline,
`models--<org>--<name>/snapshots/<commit>/<file>`):

- `timm/tiny_token_head`: the fixture `tests/fixtures/timm/tiny_token_head` at
  `main`, and at `v1` with every tensor scaled by 0.5;
- `timm/cait_xxs24_224.fb_dist_in1k`: timm's config.json and the seeded weights
  (`variants.json`), whose logits are `fixtures/timm/cait_xxs24_224/expected.npz`;
- `timm/legacy_cait_xxs24_224`: `configs/legacy_cait_xxs24_224.json` (no
  `model_args`) with the same weights.

Use it with `HF_HUB_CACHE=<cache_dir>` and `HF_HUB_OFFLINE=1` set before
`huggingface_hub` is imported (e.g. in `tests.support.run_python`'s `env`).
"""

import hashlib
import json
import os
import pathlib
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

from keras_cait.testing import seeded_state_dict

TIMM = pathlib.Path(__file__).resolve().parent / "fixtures" / "timm"

TINY_TOKEN_HEAD = "timm/tiny_token_head"
XXS24 = "timm/cait_xxs24_224.fb_dist_in1k"
LEGACY_XXS24 = "timm/legacy_cait_xxs24_224"


def repo_folder(cache_dir, repo_id):
    return pathlib.Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def add_snapshot(cache_dir, repo_id, files, refs=("main",)):
    """Adds a snapshot of `repo_id` (`"owner/name"`) whose `refs` (branches or tags)
    point at a commit id derived from the first ref; returns the commit id.
    `files` maps a file name in the repo to a local path to copy (hard linked when
    possible) or to `bytes` to write."""
    commit = hashlib.sha1(f"{repo_id}@{refs[0]}".encode()).hexdigest()
    folder = repo_folder(cache_dir, repo_id)
    for name, content in files.items():
        target = folder / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        if isinstance(content, bytes):
            target.write_bytes(content)
            continue
        try:
            os.link(content, target)
        except OSError:
            shutil.copyfile(content, target)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (folder / "refs" / ref).write_text(commit)  # no trailing newline
    return commit


def write_seeded_timm_repo(directory, name="cait_xxs24_224"):
    """`directory` (created) as timm's Hub repo of `name` with the seeded weights of
    `variants.json`: the logits of `fixtures/timm/<name>/expected.npz`."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TIMM / "configs" / f"{name}.json", directory / "config.json")
    variant = json.loads((TIMM / "variants.json").read_text())[name]
    save_file(seeded_state_dict(variant["state_dict"], variant["seed"]),
              directory / "model.safetensors")
    return directory


def build_offline_hub_cache(cache_dir):
    """Writes the cache of the module docstring into `cache_dir`; returns
    `{"cache_dir": str, repo id: {"commit": main's commit}}`, with `"v1_commit"`
    too for `TINY_TOKEN_HEAD`."""
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tiny = TIMM / "tiny_token_head"
    scaled = {k: v * np.float32(0.5) for k, v in load_file(tiny / "model.safetensors").items()}
    save_file(scaled, cache_dir / "tiny_token_head_v1.safetensors")
    weights = write_seeded_timm_repo(cache_dir / "seeded_xxs24") / "model.safetensors"
    repos = {
        TINY_TOKEN_HEAD: tiny / "config.json",
        XXS24: TIMM / "configs" / "cait_xxs24_224.json",
        LEGACY_XXS24: TIMM / "configs" / "legacy_cait_xxs24_224.json",
    }
    info = {"cache_dir": str(cache_dir)}
    for repo_id, config in repos.items():
        model = tiny / "model.safetensors" if repo_id == TINY_TOKEN_HEAD else weights
        files = {"config.json": config, "model.safetensors": model}
        info[repo_id] = {"commit": add_snapshot(cache_dir, repo_id, files)}
    files = {"config.json": tiny / "config.json",
             "model.safetensors": cache_dir / "tiny_token_head_v1.safetensors"}
    info[TINY_TOKEN_HEAD]["v1_commit"] = add_snapshot(cache_dir, TINY_TOKEN_HEAD, files, ("v1",))
    return info
