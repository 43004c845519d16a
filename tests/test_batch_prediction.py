"""Predictions on image collections: the streamed pipeline, error records,
the output file written as the run goes, and resuming it (after a SIGKILL,
and after a half-written last line)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import keras_cait
from keras_cait_cli import main as cli
from tests.support import IMAGES, REPO, eager_predictions, make_photos


def _main(capfd, *arguments):
    status = cli.main([str(a) for a in arguments])
    out, err = capfd.readouterr()
    return status, out, err


def _check_predictions(records, classifier, top):
    paths = [record["image"] for record in records]
    expected, _ = eager_predictions(classifier, paths)
    for record, scores in zip(records, expected):
        ids = [p["class_id"] for p in record["predictions"]]
        assert ids == list(np.argsort(-scores, kind="stable")[:top])
        np.testing.assert_allclose(
            [p["probability"] for p in record["predictions"]], scores[ids], atol=1e-4
        )
        assert all(p["label"] is None for p in record["predictions"])  # 10 classes


def test_bad_inputs_in_a_folder_are_error_records(
    tiny_classifier, tiny_preset, tmp_path, capfd, backend
):
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
    expected_order = sorted([*good, str(text), str(broken)]) + [
        str(truncated), str(missing)
    ]
    failing = {str(truncated): "truncated", str(text): "not an image",
               str(broken): "not found", str(missing): "not found"}

    output = tmp_path / "results.jsonl"
    status, out, err = _main(
        capfd, "predict", *inputs, "--preset", tiny_preset, "--output", output,
        "--top", "3", "--batch-size", "4", "--backend", backend,
    )
    assert status == 3 and out == ""
    assert "4 of 10 inputs failed" in err and "Traceback" not in err
    assert f"wrote 10 records to {output}" in err
    assert "classifying" in err and "images/s" in err  # the progress bar
    records = keras_cait.read_records(output)
    assert [r["image"] for r in records] == expected_order  # each input once, in order
    for record in records:
        if record["image"] in failing:
            assert set(record) == {"image", "error"}
            assert record["image"] in record["error"]
            assert failing[record["image"]] in record["error"]
    successes = [r for r in records if "error" not in r]
    assert [set(r) for r in successes] == [{"image", "predictions"}] * 6
    _check_predictions(successes, tiny_classifier, top=3)

    # The same run into a CSV file holds the same records.
    table = tmp_path / "results.csv"
    status, _, _ = _main(
        capfd, "predict", *inputs, "--preset", tiny_preset, "--output", table,
        "--top", "3", "--batch-size", "4", "--backend", backend,
    )
    assert status == 3
    assert keras_cait.read_records(table) == records
    # An existing output is never overwritten without --resume.
    status, _, err = _main(capfd, "predict", folder, "--preset", tiny_preset,
                           "--output", table, "--backend", backend)
    assert status == 1 and "already exists: add --resume" in err
    assert keras_cait.read_records(table) == records


def test_predict_files_streams_records_with_embeddings(tiny_classifier, tmp_path):
    paths = make_photos(tmp_path, 5)
    records = keras_cait.predict_files(
        [tmp_path / "*.png", tmp_path], tiny_classifier, top=2, batch_size=2, embeddings=True
    )
    assert not isinstance(records, list)  # an iterator
    records = list(records)
    assert [r["image"] for r in records] == [p for p in paths if p.endswith(".png")] + [
        p for p in paths if p.endswith(".jpg")
    ]
    _check_predictions(records, tiny_classifier, top=2)
    _, pooled = eager_predictions(tiny_classifier, [r["image"] for r in records])
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
    tiny_classifier, tiny_preset, tmp_path, capfd, backend
):
    folder = tmp_path / "photos"
    paths = make_photos(folder, 14)
    # Image 10 is a named pipe: reading it blocks until the run is killed,
    # after the first two batches of 4 are written.
    blocked = paths[10]
    data = open(blocked, "rb").read()
    os.remove(blocked)
    os.mkfifo(blocked)
    output = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "keras_cait_cli", "predict", str(folder),
               "--preset", tiny_preset, "--output", str(output),
               "--batch-size", "4", "--backend", backend]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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
    assert output.read_bytes().count(b"\n") == 8
    os.remove(blocked)
    with open(blocked, "wb") as f:
        f.write(data)

    status, _, err = _main(capfd, "predict", folder, "--preset", tiny_preset,
                           "--output", output, "--resume", "--batch-size", "4",
                           "--backend", backend)
    assert status == 0, err
    assert f"wrote 6 records after 8 kept to {output}" in err
    uninterrupted = tmp_path / "uninterrupted.jsonl"
    summary = keras_cait.write_predictions(
        folder, uninterrupted, tiny_classifier, batch_size=4
    )
    assert summary == {"output": str(uninterrupted), "images": 14, "kept": 0,
                       "written": 14, "failed": 0}
    assert output.read_bytes() == uninterrupted.read_bytes()
    assert [r["image"] for r in keras_cait.read_records(output)] == paths


def test_resume_after_a_half_written_line_keeps_the_complete_records(
    tiny_classifier, tiny_preset, tmp_path, capfd, backend
):
    folder = tmp_path / "photos"
    make_photos(folder, 11)
    uninterrupted = tmp_path / "uninterrupted.jsonl"
    keras_cait.write_predictions(
        folder, uninterrupted, tiny_classifier, top=3, batch_size=4
    )
    lines = uninterrupted.read_bytes().splitlines(keepends=True)
    assert len(lines) == 11
    # Six complete records and half of the seventh; the first record is
    # marked, to see that the kept records are kept, not predicted again.
    first = json.loads(lines[0])
    first["predictions"][0]["probability"] = 0.125
    marked = (json.dumps(first) + "\n").encode()
    output = tmp_path / "results.jsonl"
    output.write_bytes(marked + b"".join(lines[1:6]) + lines[6][: len(lines[6]) // 2])

    status, _, err = _main(capfd, "predict", folder, "--preset", tiny_preset,
                           "--output", output, "--resume", "--top", "3",
                           "--batch-size", "4", "--backend", backend)
    assert status == 0, err
    assert "wrote 5 records after 6 kept" in err
    assert output.read_bytes() == marked + b"".join(lines[1:])
    # Resuming a finished run writes nothing.
    status, _, err = _main(capfd, "predict", folder, "--preset", tiny_preset,
                           "--output", output, "--resume", "--top", "3",
                           "--batch-size", "4", "--backend", backend)
    assert status == 0 and "is complete (every input has a record); nothing to do" in err
    assert output.read_bytes() == marked + b"".join(lines[1:])
    # Resuming with other options or other inputs is refused.
    status, _, err = _main(capfd, "predict", folder, "--preset", tiny_preset,
                           "--output", output, "--resume", "--backend", backend)
    assert status == 1 and "written with other options" in err
    os.remove(folder / "photo_000.png")
    status, _, err = _main(capfd, "predict", folder, "--preset", tiny_preset,
                           "--output", output, "--resume", "--top", "3",
                           "--backend", backend)
    assert status == 1 and "written for other inputs" in err


def test_any_reading_failure_is_a_reason_naming_the_file(monkeypatch, tmp_path):
    from keras_cait_base import collection_runs as image_pipeline

    def exploding(path):
        raise MemoryError("no room\nat all")

    monkeypatch.setattr(image_pipeline, "load_image", exploding)
    image, reason = image_pipeline.read_image("big.png")
    assert image.shape == (1, 1, 3)
    assert reason == "Cannot read image 'big.png': MemoryError: no room at all"
    monkeypatch.undo()
    image, reason = image_pipeline.read_image(make_photos(tmp_path, 1)[0])
    assert reason is None and image.dtype == np.uint8 and image.ndim == 3


def test_records_follow_the_model_as_keras_runs_it(tiny_classifier, tiny_preset, tmp_path):
    """The forward pass goes through the layers' `__call__` (Keras's
    `predict_on_batch`): a quantized head gives its own numbers."""
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
    """The loop shared by the single-process and Ray runs refuses records
    of the wrong image or too few records, and resumes after kept ones."""
    from keras_cait_base.collection_runs import write_record_stream

    paths = ["a.png", "b.png", "c.png"]
    record = lambda path: {"image": path, "error": "unreadable"}  # noqa: E731
    output = str(tmp_path / "r.jsonl")
    with pytest.raises(keras_cait.CaiTConfigError, match="out of order"):
        write_record_stream(output, paths, 1, False, False, False,
                            lambda kept: iter([[record("b.png")]]))
    if os.path.exists(output):
        os.remove(output)
    with pytest.raises(keras_cait.CaiTConfigError, match="Got 1 records for 3"):
        write_record_stream(output, paths, 1, False, False, False,
                            lambda kept: iter([[record("a.png")]]))
    asked = []

    def produce(kept):
        asked.append(kept)
        return iter([[record(path)] for path in paths[kept:]])

    summary = write_record_stream(output, paths, 1, False, True, False, produce)
    assert asked == [1]
    assert summary == {"output": output, "images": 3, "kept": 1, "written": 2,
                       "failed": 3}
    assert [r["image"] for r in keras_cait.read_records(output)] == paths


@pytest.mark.parametrize("batch_size", [0, -1, True, 2.0, None])
def test_batch_size_is_checked_before_the_model_loads(batch_size, tmp_path):
    message = re.escape(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    calls = [
        lambda: keras_cait.predict_files(tmp_path, "no_such_preset", batch_size=batch_size),
        lambda: keras_cait.write_predictions(
            tmp_path, tmp_path / "r.jsonl", "no_such_preset", batch_size=batch_size),
        lambda: keras_cait.write_predictions_on_ray(
            tmp_path, tmp_path / "r.jsonl", "no_such_preset", batch_size=batch_size),
        lambda: keras_cait.evaluate_folder(tmp_path, "no_such_preset",
                                           batch_size=batch_size),
    ]
    for call in calls:
        with pytest.raises(keras_cait.CaiTConfigError, match=message):
            call()
