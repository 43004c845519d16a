"""`.keras` files: what KerasHub's saving test does not check, and cross-backend loads."""

import pathlib

import keras
import numpy as np
import pytest

import keras_cait
from tests.support import OTHER_BACKENDS, TINY_BACKBONE, run_python, to_numpy

IMAGES = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype("float32")


def save_classifier(folder):
    """A seeded tiny classifier (avg pooling) as `cait.keras`, with its weights and outputs."""
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    model = keras_cait.CaiTImageClassifier(backbone, num_classes=5, pooling="avg")
    model.save(pathlib.Path(folder) / "cait.keras")
    np.savez(pathlib.Path(folder) / "saved.npz", *(to_numpy(w) for w in model.weights),
             paths=[w.path for w in model.weights], outputs=to_numpy(model(IMAGES)))


@pytest.mark.parametrize("saved_on", ["here", 0, 1])
def test_keras_file_loads_exactly_here_and_on_other_backends(tmp_path, backend, saved_on):
    """Beyond `run_model_saving_test`: the head's options, weight paths and exact values."""
    if saved_on == "here":
        save_classifier(tmp_path)
    else:
        script = f"from tests.test_saving import save_classifier\nsave_classifier({str(tmp_path)!r})"
        run_python(script, OTHER_BACKENDS[backend][saved_on])
    restored = keras.saving.load_model(tmp_path / "cait.keras")
    assert isinstance(restored, keras_cait.CaiTImageClassifier)
    assert restored.pooling == "avg" and restored.num_classes == 5
    saved = np.load(tmp_path / "saved.npz")
    assert [w.path for w in restored.weights] == list(saved["paths"])
    for i, weight in enumerate(restored.weights):
        np.testing.assert_array_equal(to_numpy(weight), saved[f"arr_{i}"])
    np.testing.assert_allclose(to_numpy(restored(IMAGES)), saved["outputs"], atol=1e-5, rtol=0)
