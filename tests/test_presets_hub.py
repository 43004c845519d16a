"""`from_preset` through the Hugging Face Hub, offline.

One subprocess per backend run (HF_HUB_CACHE and HF_HUB_OFFLINE must be set
before `huggingface_hub` is imported) loads from an offline cache built by
`tests.hf_cache`: the preset name `cait_xxs24_224` (timm's logits within
1e-4, downloading only `model.safetensors`, then again through KerasHub's base class), the legacy config as a
local timm directory (timm's logits within 1e-4), pinned and
unpinned handles, a keras-cait preset repo, KerasHub's base classes, and the
offline errors.
"""

import json

import keras
import pytest

import keras_cait
from tests import hf_cache
from tests.support import TIMM, run_python

SCRIPT = r"""
import json, time
import numpy as np
import keras_cait, keras_hub
T0 = time.time()
from keras_cait_base.errors import CaiTFileNotFoundError
from tests.support import expected, to_numpy

info = json.loads(INFO_JSON)
out = {}

# 1. The quickstart: a preset name, timm's logits; only the weights file is
#    downloaded (the architecture is keras-cait's, not the repo's config.json).
from keras_cait_base.io import hub
ref = expected("cait_xxs24_224")
downloads, download_file = [], hub.download_file
def counting(repo_id, filename, *args, **kwargs):
    downloads.append([repo_id, filename])
    return download_file(repo_id, filename, *args, **kwargs)
hub.download_file = counting
model = keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_224")
hub.download_file = download_file
out["xxs24_downloads"] = downloads
# (One image per call everywhere: same shapes, so JAX compiles once.)
out["xxs24_error"] = float(np.abs(to_numpy(model(ref["images"][:1])) - ref["logits"][:1]).max())
out["xxs24_preprocessor"] = type(model.preprocessor).__name__
out["xxs24_image_size"] = list(model.preprocessor.image_converter.image_size)

# 2. Again, through KerasHub's base class.
again = keras_hub.models.ImageClassifier.from_preset("cait_xxs24_224")
out["again_type"] = type(again).__name__
out["again_error"] = float(np.abs(to_numpy(again(ref["images"][:1])) - ref["logits"][:1]).max())

# 3. The legacy config (no model_args), as a local timm directory (the
#    legacy repo's snapshot folder): same architecture, timm's logits.
local = keras_cait.CaiTImageClassifier.from_preset(info["legacy_dir"])
strip = lambda c: {k: v for k, v in c.items() if k != "name"}
out["legacy_matches"] = strip(local.backbone.get_config()) == strip(model.backbone.get_config())
out["local_error"] = float(np.abs(to_numpy(local(ref["images"][:1])) - ref["logits"][:1]).max())

# 4. Pinned and unpinned handles.
tiny = expected("tiny_token_head")
def logits(handle):
    return to_numpy(keras_cait.CaiTImageClassifier.from_preset(handle)(tiny["images"]))
main = logits("hf://timm/tiny_token_head")
# predict() on a raw uint8 photo runs the preset's preprocessing.
tiny_model = keras_cait.CaiTImageClassifier.from_preset("hf://timm/tiny_token_head")
photo = keras_cait.load_image("tests/fixtures/images/chelsea.png")
pred = tiny_model.predict(photo[None], verbose=0)
direct = to_numpy(tiny_model(tiny_model.preprocessor.image_converter(photo[None])))
out["photo_shape"] = list(photo.shape)
out["predict_shape"] = list(pred.shape)
out["predict_error"] = float(np.abs(pred - direct).max())
out["main_error"] = float(np.abs(main - tiny["logits"]).max())
pinned = logits("hf://timm/tiny_token_head@" + info["main_commit"])
out["pinned_error"] = float(np.abs(pinned - tiny["logits"]).max())
v1 = logits("hf://timm/tiny_token_head@v1")
v1_commit = logits("hf://timm/tiny_token_head@" + info["v1_commit"])
out["v1_differs"] = float(np.abs(v1 - main).max())
out["v1_commit_error"] = float(np.abs(v1 - v1_commit).max())

# 5. A keras-cait preset repo (save_to_preset) and its converter.
saved = keras_cait.CaiTImageClassifier.from_preset("hf://someone/cait_tiny_keras")
out["keras_repo_error"] = float(np.abs(to_numpy(saved(tiny["images"])) - tiny["logits"]).max())
out["keras_repo_type"] = type(saved).__name__

# 6. KerasHub's base classes.
base = keras_hub.models.ImageClassifier.from_preset("hf://timm/tiny_token_head")
out["keras_hub_type"] = type(base).__name__
out["keras_hub_error"] = float(np.abs(to_numpy(base(tiny["images"])) - tiny["logits"]).max())
headless = keras_hub.models.Backbone.from_preset("hf://timm/tiny_avg_headless")
out["keras_hub_backbone"] = type(headless).__name__

# 7. Offline errors.
def error(handle):
    try:
        keras_cait.CaiTImageClassifier.from_preset(handle)
    except CaiTFileNotFoundError as e:
        return str(e)
    return None
out["not_cached"] = error("hf://timm/cait_s24_224.fb_dist_in1k")
out["no_weights"] = error("hf://someone/config_only")
out["bad_revision"] = error("hf://timm/tiny_token_head@nope")
out["seconds"] = time.time() - T0
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    info = hf_cache.build_offline_hub_cache(root / "hf")
    # A keras-cait preset repo, saved with save_to_preset.
    model = keras_cait.CaiTImageClassifier.from_preset(str(TIMM / "tiny_token_head"))
    saved = root / "saved"
    model.save_to_preset(str(saved))
    hf_cache.add_snapshot(
        root / "hf",
        "someone/cait_tiny_keras",
        {p.name: p for p in saved.iterdir() if p.is_file()},
    )
    hf_cache.add_snapshot(
        root / "hf",
        "someone/config_only",
        {"config.json": TIMM / "tiny_token_head" / "config.json"},
    )
    return root, info


def test_offline_hub_loading(hub_cache, monkeypatch):
    root, info = hub_cache
    tiny = info[hf_cache.TINY_TOKEN_HEAD]
    legacy_dir = (
        hf_cache.repo_folder(root / "hf", hf_cache.LEGACY_XXS24)
        / "snapshots"
        / info[hf_cache.LEGACY_XXS24]["commit"]
    )
    args = json.dumps(
        {
            "main_commit": tiny["commit"],
            "v1_commit": tiny["v1_commit"],
            "legacy_dir": str(legacy_dir),
        }
    )
    code = SCRIPT.replace("INFO_JSON", repr(args))
    output = run_python(
        code,
        keras.config.backend(),
        env={
            "HF_HUB_CACHE": str(root / "hf"),
            "HF_HUB_OFFLINE": "1",
        },
    )
    line = [x for x in output.splitlines() if x.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT") :])

    assert out["xxs24_error"] < 1e-4
    assert out["xxs24_downloads"] == [[hf_cache.XXS24, "model.safetensors"]]
    assert out["xxs24_preprocessor"] == "CaiTImageClassifierPreprocessor"
    assert out["photo_shape"] != [224, 224, 3]
    assert out["predict_shape"] == [1, 10] and out["predict_error"] < 1e-4
    assert out["xxs24_image_size"] == [224, 224]
    assert out["again_error"] < 1e-4
    assert out["again_type"] == "CaiTImageClassifier"
    assert out["legacy_matches"] and out["local_error"] < 1e-4
    assert out["main_error"] < 1e-4 and out["pinned_error"] < 1e-4
    assert out["v1_differs"] > 1e-2 and out["v1_commit_error"] == 0.0
    assert out["keras_repo_type"] == "CaiTImageClassifier"
    assert out["keras_repo_error"] < 1e-4
    assert out["keras_hub_type"] == "CaiTImageClassifier"
    assert out["keras_hub_error"] < 1e-4
    assert out["keras_hub_backbone"] == "CaiTBackbone"

    not_cached = out["not_cached"]
    assert "'config.json' is not available" in not_cached
    assert "HF_HUB_OFFLINE=1" in not_cached
    assert "hf download timm/cait_s24_224.fb_dist_in1k" in not_cached
    assert "local directory" in not_cached
    assert out["no_weights"].startswith("hf://someone/config_only: 'model.safetensors'")
    assert "nope" in out["bad_revision"]
