"""`from_preset` through the Hugging Face Hub, offline, in a subprocess (HF_HUB_* set first)."""

import json
import pathlib

import keras

from tests import hf_cache
from tests.support import TIMM, run_python

SCRIPT = r"""
import json
import numpy as np
import keras_cait, keras_hub
from keras_cait_base.errors import CaiTFileNotFoundError
from keras_cait_base.io import hub
from tests.support import expected, to_numpy

info, out = json.loads(INFO_JSON), {}
ref, tiny = expected("cait_xxs24_224"), expected("tiny_token_head")
def error(model, reference):  # one image for xxs24 everywhere: JAX compiles once
    images = reference["images"][:1] if reference is ref else reference["images"]
    return float(np.abs(to_numpy(model(images)) - reference["logits"][:len(images)]).max())

# 1. A preset name: timm's logits; only the weights file is downloaded.
downloads, download_file = [], hub.download_file
def counting(repo_id, filename, *args, **kwargs):
    downloads.append([repo_id, filename])
    return download_file(repo_id, filename, *args, **kwargs)
hub.download_file = counting
model = keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_224")
hub.download_file = download_file
out["xxs24_downloads"], out["xxs24_error"] = downloads, error(model, ref)
out["xxs24_preprocessor"] = type(model.preprocessor).__name__
out["xxs24_image_size"] = list(model.preprocessor.image_converter.image_size)

# 2. Again, through KerasHub's base class.
again = keras_hub.models.ImageClassifier.from_preset("cait_xxs24_224")
out["again_type"], out["again_error"] = type(again).__name__, error(again, ref)

# 3. The legacy config (no model_args) as a local timm directory (its snapshot folder).
local = keras_cait.CaiTImageClassifier.from_preset(info["legacy_dir"])
strip = lambda c: {k: v for k, v in c.items() if k != "name"}
out["legacy_matches"] = strip(local.backbone.get_config()) == strip(model.backbone.get_config())
out["local_error"] = error(local, ref)

# 4. Pinned and unpinned handles (predict() on raw photos: test_keras_hub_harness.py).
def logits(handle):
    return to_numpy(keras_cait.CaiTImageClassifier.from_preset(handle)(tiny["images"]))
main = logits("hf://timm/tiny_token_head")
out["main_error"] = float(np.abs(main - tiny["logits"]).max())
pinned = logits("hf://timm/tiny_token_head@" + info["main_commit"])
out["pinned_error"] = float(np.abs(pinned - tiny["logits"]).max())
v1 = logits("hf://timm/tiny_token_head@v1")
v1_commit = logits("hf://timm/tiny_token_head@" + info["v1_commit"])
out["v1_differs"] = float(np.abs(v1 - main).max())
out["v1_commit_error"] = float(np.abs(v1 - v1_commit).max())

# 5. A keras-cait preset repo (save_to_preset: conftest.py's tiny_preset).
saved = keras_cait.CaiTImageClassifier.from_preset("hf://someone/cait_tiny_keras")
out["keras_repo_error"], out["keras_repo_type"] = error(saved, tiny), type(saved).__name__

# 6. Offline errors.
for key, handle in (("not_cached", "hf://timm/cait_s24_224.fb_dist_in1k"),
                    ("no_weights", "hf://someone/config_only"),
                    ("bad_revision", "hf://timm/tiny_token_head@nope")):
    try:
        keras_cait.CaiTImageClassifier.from_preset(handle)
        out[key] = None
    except CaiTFileNotFoundError as e:
        out[key] = str(e)
print("RESULT" + json.dumps(out))
"""


def test_offline_hub_loading(tmp_path, tiny_preset):
    info = hf_cache.build_offline_hub_cache(tmp_path / "hf")
    files = {p.name: p for p in pathlib.Path(tiny_preset).iterdir() if p.is_file()}
    hf_cache.add_snapshot(tmp_path / "hf", "someone/cait_tiny_keras", files)
    config = {"config.json": TIMM / "tiny_token_head" / "config.json"}
    hf_cache.add_snapshot(tmp_path / "hf", "someone/config_only", config)
    tiny, legacy = info[hf_cache.TINY_TOKEN_HEAD], info[hf_cache.LEGACY_XXS24]
    legacy_dir = hf_cache.repo_folder(tmp_path / "hf", hf_cache.LEGACY_XXS24) / "snapshots"
    args = json.dumps({"main_commit": tiny["commit"], "v1_commit": tiny["v1_commit"],
                       "legacy_dir": str(legacy_dir / legacy["commit"])})
    output = run_python(SCRIPT.replace("INFO_JSON", repr(args)), keras.config.backend(),
                        env={"HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    line = [x for x in output.splitlines() if x.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT"):])

    assert out["xxs24_error"] < 1e-4
    assert out["xxs24_downloads"] == [[hf_cache.XXS24, "model.safetensors"]]
    assert out["xxs24_preprocessor"] == "CaiTImageClassifierPreprocessor"
    assert out["xxs24_image_size"] == [224, 224]
    assert out["again_error"] < 1e-4 and out["again_type"] == "CaiTImageClassifier"
    assert out["legacy_matches"] and out["local_error"] < 1e-4
    assert out["main_error"] < 1e-4 and out["pinned_error"] < 1e-4
    assert out["v1_differs"] > 1e-2 and out["v1_commit_error"] == 0.0
    assert out["keras_repo_type"] == "CaiTImageClassifier" and out["keras_repo_error"] < 1e-4
    for text in ("'config.json' is not available", "HF_HUB_OFFLINE=1",
                 "hf download timm/cait_s24_224.fb_dist_in1k", "local directory"):
        assert text in out["not_cached"]
    assert out["no_weights"].startswith("hf://someone/config_only: 'model.safetensors'")
    assert "nope" in out["bad_revision"]
