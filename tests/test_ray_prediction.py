"""`predict --ray` on a local Ray gives the single-process run's records and resumes."""

import numpy as np
import pytest

import keras_cait
from keras_cait_cli import main as cli
from tests.support import make_photos

ray = pytest.importorskip("ray", reason="keras-cait[ray] is not installed")
# ray.init starts its processes from this (multithreaded, on JAX) process.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def test_ray_gives_the_records_of_the_single_process_run(tiny_preset, tmp_path, capfd, backend,
                                                         monkeypatch):
    make_photos(tmp_path / "photos", 9)
    (tmp_path / "photos" / "z_broken.jpg").write_text("not an image")  # last
    monkeypatch.chdir(tmp_path)  # relative paths: records and errors name them as given
    options = dict(top=3, batch_size=4, embeddings=True, progress=False)
    keras_cait.write_predictions("photos", "single.jsonl", tiny_preset, **options)
    expected = keras_cait.read_records("single.jsonl")
    assert expected[-1]["error"].startswith("'photos/z_broken.jpg'")
    # Two records kept from an interrupted run: Ray classifies the other 8.
    keras_cait.write_predictions([r["image"] for r in expected[:2]], "ray.csv", tiny_preset,
                                 **options)
    # The actors inherit this process's environment (PYTHONPATH, the offline HF cache).
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        status = cli.main([
            "predict", "photos", "--preset", tiny_preset, "--output", "ray.csv", "--resume",
            "--top", "3", "--batch-size", "4", "--embeddings", "--ray", "--backend", backend,
        ])
    finally:
        ray.shutdown()
    assert status == cli.FAILED_INPUTS  # the broken file
    assert "wrote 8 records after 2 kept to ray.csv" in capfd.readouterr().err
    records = keras_cait.read_records("ray.csv")
    # The same inputs exactly once, in order; the same errors and top-k.
    assert [r["image"] for r in records] == [r["image"] for r in expected]
    for got, want in zip(records, expected):
        if "error" in want:
            assert got == want
            continue
        assert [p["class_id"] for p in got["predictions"]] == [p["class_id"] for p in want["predictions"]]
        np.testing.assert_allclose([p["probability"] for p in got["predictions"]],
                                   [p["probability"] for p in want["predictions"]], atol=1e-5)
        np.testing.assert_allclose(got["embedding"], want["embedding"], atol=1e-5)

