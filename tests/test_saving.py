"""`.keras` files: what KerasHub's saving test does not check, and
cross-backend round trips."""

import keras
import numpy as np
import pytest

import keras_cait
from tests.support import OTHER_BACKENDS, TINY_BACKBONE, run_python, to_numpy

IMAGES = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype("float32")


def _tiny_classifier():
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE)
    return keras_cait.CaiTImageClassifier(backbone, num_classes=5, pooling="avg")


def test_keras_file_round_trip_is_exact(tmp_path):
    """Beyond KerasHub's `run_model_saving_test` (type, outputs within 1e-6;
    tests/test_keras_hub_harness.py): the head's options, the weights'
    paths and bit-exact values."""
    classifier = _tiny_classifier()
    path = tmp_path / "cait.keras"
    classifier.save(path)
    restored = keras.saving.load_model(path)
    assert restored.pooling == "avg" and restored.num_classes == 5
    for saved, loaded in zip(classifier.weights, restored.weights):
        assert saved.path == loaded.path
        np.testing.assert_array_equal(to_numpy(saved), to_numpy(loaded))


SAVE_SCRIPT = """
import sys, keras, numpy as np, keras_cait
from tests.support import TINY_BACKBONE, to_numpy
keras.utils.set_random_seed(0)
backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE)
model = keras_cait.CaiTImageClassifier(backbone, num_classes=5)
images = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype("float32")
model.save(sys.argv[1] if len(sys.argv) > 1 else {path!r})
np.save({outputs!r}, to_numpy(model(images)))
"""


@pytest.mark.parametrize("index", [0, 1])
def test_file_saved_under_another_backend_loads_here(tmp_path, backend, index):
    other = OTHER_BACKENDS[backend][index]
    path = tmp_path / f"from_{other}.keras"
    outputs_path = tmp_path / f"from_{other}.npy"
    run_python(SAVE_SCRIPT.format(path=str(path), outputs=str(outputs_path)), other)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, keras_cait.CaiTImageClassifier)
    np.testing.assert_allclose(
        to_numpy(restored(IMAGES)), np.load(outputs_path), atol=1e-5, rtol=0
    )
