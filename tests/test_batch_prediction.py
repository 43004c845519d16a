"""Predictions on image collections: streamed records, error records, output files, resuming."""

import functools
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import keras_cait
from keras_cait_base import collection_runs
from tests.support import IMAGES, REPO, eager_predictions, make_photos
from tests.test_cli import _main, check_predictions


@pytest.fixture
def predict(capfd, tiny_preset, backend):
    """`keras-cait predict --preset <tiny> --backend <backend> ...` in process."""
    return functools.partial(_main, capfd, "predict", "--preset", tiny_preset,
                             "--backend", backend)


def test_bad_inputs_in_a_folder_are_error_records(tiny_classifier, predict, tmp_path):
    folder = tmp_path / "photos"
    good = make_photos(folder, 6)
    (folder / "sub").mkdir()
    truncated = folder / "sub" / "truncated.jpg"
    truncated.write_bytes((IMAGES / "rocket.jpg").read_bytes()[:20000])
    text = folder / "notes.jpg"
    text.write_text("not an image")
    broken = folder / "broken.jpg"
    os.symlink(tmp_path / "gone.jpg", broken)
    missing = tmp_path / "missing.png"
    inputs = [folder, missing, good[0]]  # good[0] again: read once
    order = sorted([*good, str(text), str(broken)]) + [str(truncated), str(missing)]
    failing = {str(truncated): "truncated", str(text): "not an image",
               str(broken): "not found", str(missing): "not found"}
    run = functools.partial(predict, *inputs, "--top", "3", "--batch-size", "4")

    output = tmp_path / "results.jsonl"
    status, out, err = run("--output", output)
    assert status == 3 and out == ""
    assert "4 of 10 inputs failed" in err and "Traceback" not in err
    assert f"wrote 10 records to {output}" in err
    assert "classifying" in err and "images/s" in err  # the progress bar
    records = keras_cait.read_records(output)
    assert [r["image"] for r in records] == order  # each input once, in order
    for record in records:
        if record["image"] in failing:
            assert set(record) == {"image", "error"}
            assert record["image"] in record["error"]
            assert failing[record["image"]] in record["error"]
    successes = [r for r in records if "error" not in r]
    assert [set(r) for r in successes] == [{"image", "predictions"}] * 6
    check_predictions(successes, tiny_classifier, top=3)
    # On stdout: the same records as JSON; in the table, each error under its input.
    status, out, _ = run("--json")
    assert status == 3 and json.loads(out) == records
    status, out, _ = run()
    assert status == 3 and out.count("  error: ") == 4
    assert "  1. class " in out and "(class " not in out  # without class names: named once
    assert f"{missing}\n  error: Image file not found: '{missing}'." in out
    # An existing output is never overwritten without --resume.
    status, _, err = predict(folder, "--output", output)
    assert status == 1 and "already exists: add --resume" in err
    assert keras_cait.read_records(output) == records


def test_predict_files_streams_records_with_embeddings(tiny_classifier, tmp_path):
    paths = make_photos(tmp_path, 5)
    records = keras_cait.predict_files(
        [tmp_path / "*.png", tmp_path], tiny_classifier, top=2, batch_size=2, embeddings=True
    )
    assert not isinstance(records, list)  # an iterator
    records = list(records)
    images = [r["image"] for r in records]
    assert images == sorted(paths, key=lambda p: p.endswith(".jpg"))  # the glob first
    check_predictions(records, tiny_classifier, top=2)
    _, pooled = eager_predictions(tiny_classifier, images)
    np.testing.assert_allclose([r["embedding"] for r in records], pooled, atol=1e-5)
    assert len(records[0]["embedding"]) == tiny_classifier.backbone.hidden_dim


def _wait_for_records(path, count, process, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and path.read_bytes().count(b"\n") >= count:
            return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} records after {timeout} s")


def test_a_killed_run_resumes_to_the_records_of_an_uninterrupted_run(
    tiny_classifier, tiny_preset, predict, tmp_path, backend
):
    folder = tmp_path / "photos"
    paths = make_photos(folder, 14)
    # Image 10 is a named pipe: reading it blocks after two batches of 4 are written.
    blocked = pathlib.Path(paths[10])
    data = blocked.read_bytes()
    os.remove(blocked)
    os.mkfifo(blocked)
    output = tmp_path / "results.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_cait_cli", "predict", str(folder), "--preset",
         tiny_preset, "--output", str(output), "--batch-size", "4", "--backend", backend],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, KERAS_BACKEND=backend),
    )
    try:
        _wait_for_records(output, 8, process)  # written as the run goes
        time.sleep(0.5)
        assert process.poll() is None  # still running, blocked on image 10
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    os.remove(blocked)
    blocked.write_bytes(data)

    uninterrupted = tmp_path / "uninterrupted.jsonl"
    keras_cait.write_predictions(folder, uninterrupted, tiny_classifier, batch_size=4)
    lines = uninterrupted.read_bytes().splitlines(keepends=True)
    assert output.read_bytes() == b"".join(lines[:8])
    # Half of a ninth record too, as a kill mid-write leaves; the first is marked, to see it kept.
    first = json.loads(lines[0])
    first["predictions"][0]["probability"] = 0.125
    marked = (json.dumps(first) + "\n").encode()
    output.write_bytes(marked + b"".join(lines[1:8]) + lines[8][: len(lines[8]) // 2])
    resume = functools.partial(predict, folder, "--output", output, "--resume", "--batch-size", "4")

    status, _, err = resume()
    assert status == 0, err
    assert f"wrote 6 records after 8 kept to {output}" in err
    assert output.read_bytes() == marked + b"".join(lines[1:])
    assert [r["image"] for r in keras_cait.read_records(output)] == paths
    # Resuming with other inputs is refused.
    os.remove(folder / "photo_000.png")
    status, _, err = resume()
    assert status == 1 and "written for other inputs" in err


def test_any_reading_failure_is_a_reason_naming_the_file(monkeypatch, tmp_path):
    def exploding(path):
        raise MemoryError("no room\nat all")

    monkeypatch.setattr(collection_runs, "load_image", exploding)
    image, reason = collection_runs.read_image("big.png")
    assert image.shape == (1, 1, 3)
    assert reason == "Cannot read image 'big.png': MemoryError: no room at all"
    monkeypatch.undo()
    image, reason = collection_runs.read_image(make_photos(tmp_path, 1)[0])
    assert reason is None and image.dtype == np.uint8 and image.ndim == 3


def test_records_follow_the_model_as_keras_runs_it(tiny_classifier, tiny_preset, tmp_path):
    """Records go through the layers' `__call__`: a quantized head gives its own numbers."""
    paths = make_photos(tmp_path, 3, size=(48, 40))
    photos = np.stack([keras_cait.load_image(path) for path in paths])

    def probabilities(model):  # Keras's predict(), preprocessor included
        logits = np.asarray(model.predict(photos, verbose=0), np.float64)
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        return scores / scores.sum(-1, keepdims=True)

    classifier = keras_cait.CaiTImageClassifier.from_preset(tiny_preset)
    classifier.output_dense.quantize("int8")
    quantized = probabilities(classifier)
    assert np.abs(probabilities(tiny_classifier) - quantized).max() > 1e-3
    records = keras_cait.predict_files(tmp_path, classifier, top=10)
    scores = [[p["probability"] for p in sorted(r["predictions"], key=lambda p: p["class_id"])]
              for r in records]
    np.testing.assert_allclose(scores, quantized, atol=2e-5)


def test_the_records_loop_checks_order_and_count(tmp_path):
    """The loop shared with the Ray runs checks records' order and count, and resumes."""
    paths = ["a.png", "b.png", "c.png"]
    output = str(tmp_path / "r.jsonl")

    def records(kept):
        return [[{"image": path, "error": "unreadable"}] for path in paths[kept:]]

    def write(produce, resume=False):
        return collection_runs.write_record_stream(output, paths, 1, False, resume, False, produce)

    with pytest.raises(keras_cait.CaiTConfigError, match="out of order"):
        write(lambda kept: iter(records(1)[:1]))
    if os.path.exists(output):
        os.remove(output)
    with pytest.raises(keras_cait.CaiTConfigError, match="Got 1 records for 3"):
        write(lambda kept: iter(records(0)[:1]))
    asked = []
    summary = write(lambda kept: asked.append(kept) or iter(records(kept)), resume=True)
    assert asked == [1]
    assert summary == {"output": output, "images": 3, "kept": 1, "written": 2, "failed": 3}
    assert [r["image"] for r in keras_cait.read_records(output)] == paths


@pytest.mark.parametrize("batch_size", [0, -1, True, 2.0, None])
@pytest.mark.parametrize("run", ["predict_files", "write_predictions",
                                 "write_predictions_on_ray", "evaluate_folder"])
def test_batch_size_is_checked_before_the_model_loads(run, batch_size, tmp_path):
    message = re.escape(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    outputs = [] if run in ("predict_files", "evaluate_folder") else [tmp_path / "r.jsonl"]
    with pytest.raises(keras_cait.CaiTConfigError, match=message):
        getattr(keras_cait, run)(tmp_path, *outputs, "no_such_preset", batch_size=batch_size)
