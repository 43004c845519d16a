"""tools/convert_timm_checkpoint.py (= `keras-cait convert`): timm checkpoint -> preset."""

import json

import numpy as np

import keras_cait
from tests.support import TIMM, expected, load_tool, to_numpy


def test_convert_writes_a_preset_and_uploads(tmp_path, monkeypatch, capsys):
    tool = load_tool("convert_timm_checkpoint")
    uploads = []
    monkeypatch.setattr("keras_hub.upload_preset", lambda uri, preset: uploads.append((uri, preset)))
    source, out = str(TIMM / "tiny_token_head"), tmp_path / "out" / "cait_tiny"
    assert tool.main([source, str(out), "--upload", "hf://someone/cait_tiny"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["reload_max_error"] == 0.0
    assert summary["num_params"] == 124218
    assert uploads == [("hf://someone/cait_tiny", str(out))]
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.weights.h5", "task.json", "preprocessor.json"} <= names
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp")]
    # The written preset is a keras-cait preset with timm's logits.
    ref = expected("tiny_token_head")
    model = keras_cait.CaiTImageClassifier.from_preset(str(out))
    np.testing.assert_allclose(to_numpy(model(ref["images"])), ref["logits"], atol=1e-4)
    if summary["timm_max_error"] is None:
        assert summary["timm_check"] == "skipped: timm is not importable"
    else:
        assert summary["timm_max_error"] <= 1e-4
    # The tool is `keras-cait convert`: one-line errors, exit status 1.
    assert tool.main([source, str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert tool.main([source, str(tmp_path / "x"), "--upload", "kaggle://a"]) == 1
    assert "hf://" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
