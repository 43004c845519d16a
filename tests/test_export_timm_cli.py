"""`keras-cait export-timm`, up to the upload (its `huggingface_hub` calls replaced)."""

import json
import types

import huggingface_hub
import numpy as np

import keras_cait
from keras_cait_cli import main as cli
from tests.support import TIMM, TINY_BACKBONE, to_numpy
from tests.timm_support import timm_logits


def _summary(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_export_with_label_names_and_upload(tmp_path, monkeypatch, capsys):
    calls, repo = [], types.SimpleNamespace(repo_id="someone/cait-tiny")
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, exist_ok: calls.append(
        ("create_repo", repo_id, exist_ok)) or repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda repo_id, folder_path: calls.append(
        ("upload_folder", repo_id, folder_path)))
    labels = tmp_path / "classes.txt"
    labels.write_text("".join(f"kind {i}\n" for i in range(10)))
    out = tmp_path / "out" / "cait-tiny"
    assert cli.main(["export-timm", str(TIMM / "tiny_token_head"), str(out), "--label-names",
                     str(labels), "--upload", "hf://someone/cait-tiny"]) == 0
    summary = _summary(capsys)
    assert summary["num_classes"] == 10 and summary["label_names"] == 10
    assert summary["uploaded_to"] == "hf://someone/cait-tiny"
    assert calls == [("create_repo", "someone/cait-tiny", True),
                     ("upload_folder", "someone/cait-tiny", str(out))]
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == [f"kind {i}" for i in range(10)]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp")]


def test_export_a_keras_file(tmp_path, capsys):
    classifier = keras_cait.CaiTImageClassifier(keras_cait.CaiTBackbone(**TINY_BACKBONE), num_classes=4)
    classifier.save(tmp_path / "model.keras")
    assert cli.main(["export-timm", str(tmp_path / "model.keras"), str(tmp_path / "out")]) == 0
    assert _summary(capsys)["num_classes"] == 4
    images = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        timm_logits(tmp_path / "out", images), to_numpy(classifier(images)), rtol=1e-5, atol=1e-6
    )


def test_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    source, out = str(TIMM / "tiny_token_head"), str(tmp_path / "out")
    assert cli.main(["export-timm", source, out, "--upload", "kaggle://a/b"]) == 1
    assert "hf://" in capsys.readouterr().err
    (tmp_path / "gap.txt").write_text("a\n\nc\n")
    assert cli.main(["export-timm", source, out, "--label-names", str(tmp_path / "gap.txt")]) == 1
    assert "gap.txt, line 2: empty class name" in capsys.readouterr().err
    (tmp_path / "short.json").write_text(json.dumps(["a", "b"]))
    assert cli.main(["export-timm", source, out, "--label-names", str(tmp_path / "short.json")]) == 1
    assert "has 2 names; the model has num_classes=10" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gap.txt", "short.json"]
