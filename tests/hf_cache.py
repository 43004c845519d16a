"""An offline Hugging Face cache of timm CaiT repos, for tests.

`build_offline_hub_cache(cache_dir)` writes, in `huggingface_hub`'s cache
layout (`models--<org>--<name>/refs/<ref>` holding a 40-hex commit id with no
newline, `models--<org>--<name>/snapshots/<commit>/<file>`):

| repo id | files | refs |
| --- | --- | --- |
| `timm/tiny_token_head` | the reference repo `tests/fixtures/timm/tiny_token_head` (config.json, model.safetensors) | `main` -> commit `main_commit`; `v1` -> `v1_commit`, a second snapshot with the same config and every tensor scaled by 0.5 |
| `timm/tiny_avg_headless` | the reference repo `tests/fixtures/timm/tiny_avg_headless` | `main` |
| `timm/cait_xxs24_224.fb_dist_in1k` | timm's config.json for the variant and a `model.safetensors` written from the seeded recipe (`variants.json`, seed 0), so its logits are `tests/fixtures/timm/cait_xxs24_224/expected.npz` | `main` |
| `timm/legacy_cait_xxs24_224` | `configs/legacy_cait_xxs24_224.json` (no `model_args`) with the same `model.safetensors` (hard link when possible) | `main` |

Use it with `HF_HUB_CACHE=<cache_dir>` and `HF_HUB_OFFLINE=1` set before
`huggingface_hub` is imported (e.g. in `tests.support.run_python`'s `env`).
`add_snapshot` adds more repos (e.g. a keras-cait preset directory).
"""

import hashlib
import os
import pathlib
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

from keras_cait.testing import seeded_state_dict

TIMM = pathlib.Path(__file__).resolve().parent / "fixtures" / "timm"

TINY_TOKEN_HEAD = "timm/tiny_token_head"
TINY_AVG_HEADLESS = "timm/tiny_avg_headless"
XXS24 = "timm/cait_xxs24_224.fb_dist_in1k"
LEGACY_XXS24 = "timm/legacy_cait_xxs24_224"


def fake_commit(repo_id, ref):
    """A deterministic 40-hex commit id for a repo and a ref name."""
    return hashlib.sha1(f"{repo_id}@{ref}".encode()).hexdigest()


def repo_folder(cache_dir, repo_id):
    return pathlib.Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def add_snapshot(cache_dir, repo_id, files, refs=("main",), commit=None):
    """Adds a snapshot of `repo_id` to the cache.

    Args:
        cache_dir: the cache folder (`HF_HUB_CACHE`).
        repo_id: string, `"owner/name"`.
        files: dict. File name in the repo -> local path to copy (hard
            linked when possible) or `bytes` to write.
        refs: names (branches or tags) that point at this snapshot.
        commit: the commit id; defaults to `fake_commit(repo_id, refs[0])`.

    Returns:
        The commit id.
    """
    commit = commit or fake_commit(repo_id, refs[0])
    folder = repo_folder(cache_dir, repo_id)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = snapshot / name
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


def build_offline_hub_cache(cache_dir):
    """Writes the offline cache described in the module docstring.

    Args:
        cache_dir: folder to write (created if needed).

    Returns:
        A dict: `cache_dir`, and per repo id (the module constants
        `TINY_TOKEN_HEAD`, `TINY_AVG_HEADLESS`, `XXS24`, `LEGACY_XXS24`) a
        dict with `commit` (of `main`) and, for `TINY_TOKEN_HEAD`,
        `v1_commit`.
    """
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    info = {"cache_dir": str(cache_dir)}
    for repo_id, name in ((TINY_TOKEN_HEAD, "tiny_token_head"), (TINY_AVG_HEADLESS, "tiny_avg_headless")):
        files = {
            "config.json": TIMM / name / "config.json",
            "model.safetensors": TIMM / name / "model.safetensors",
        }
        info[repo_id] = {"commit": add_snapshot(cache_dir, repo_id, files)}

    # A second revision of the tiny repo with different weights.
    scaled = {k: v * np.float32(0.5) for k, v in load_file(TIMM / "tiny_token_head" / "model.safetensors").items()}
    scaled_path = cache_dir / "tiny_token_head_v1.safetensors"
    save_file(scaled, scaled_path)
    info[TINY_TOKEN_HEAD]["v1_commit"] = add_snapshot(
        cache_dir,
        TINY_TOKEN_HEAD,
        {"config.json": TIMM / "tiny_token_head" / "config.json", "model.safetensors": scaled_path},
        refs=("v1",),
    )

    import json

    with open(TIMM / "variants.json") as f:
        variant = json.load(f)["cait_xxs24_224"]
    weights = cache_dir / "cait_xxs24_224_seeded.safetensors"
    save_file(seeded_state_dict(variant["state_dict"], variant["seed"]), weights)
    info[XXS24] = {
        "commit": add_snapshot(
            cache_dir,
            XXS24,
            {"config.json": TIMM / "configs" / "cait_xxs24_224.json", "model.safetensors": weights},
        )
    }
    info[LEGACY_XXS24] = {
        "commit": add_snapshot(
            cache_dir,
            LEGACY_XXS24,
            {
                "config.json": TIMM / "configs" / "legacy_cait_xxs24_224.json",
                "model.safetensors": weights,
            },
        )
    }
    return info
