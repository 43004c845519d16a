"""The 3 x 3 cross-backend save/load matrix of `.keras` files and presets, float32 and bfloat16."""

import pathlib
from concurrent.futures import ThreadPoolExecutor

import keras
import ml_dtypes
import numpy as np
import pytest

import keras_cait
from keras_cait.loading.safe_loading import load_model
from tests.support import OTHER_BACKENDS, TINY_BACKBONE, run_python, to_numpy

POLICIES = ("float32", "bfloat16")
BACKENDS = ("tensorflow", "jax", "torch")
IMAGES = np.random.default_rng(7).standard_normal((2, 32, 32, 3)).astype("float32")
_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}  # compare weights' bit patterns


def weights_of(model):
    """`{variable path: (dtype name, bit pattern)}`."""
    result = {}
    for variable in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        result[variable.path] = (str(variable.dtype), value.view(_BITS[value.dtype.itemsize]))
    return result


def save_artefacts(root):
    """Saves the matrix's models for the current backend under `root`."""
    for index, policy in enumerate(POLICIES):
        keras.utils.set_random_seed(index)
        backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, dtype=policy)
        model = keras_cait.CaiTImageClassifier(backbone, 5, pooling="avg", compile=False)
        folder = pathlib.Path(root) / policy
        folder.mkdir(parents=True)
        model.save(folder / "model.keras")
        model.save_to_preset(str(folder / "preset"))
        weights = weights_of(model)
        np.savez(folder / "weights.npz", *(bits for _, bits in weights.values()),
                 paths=list(weights), dtypes=[dtype for dtype, _ in weights.values()],
                 outputs=to_numpy(model(IMAGES)).astype("float32"))


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """`{save backend: folder}`; the other two backends save in parallel subprocesses."""
    here = keras.config.backend()
    root = tmp_path_factory.mktemp("matrix")
    script = "from tests.test_backend_matrix import save_artefacts\nsave_artefacts({!r})"
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(run_python, script.format(str(root / other)), other)
                for other in OTHER_BACKENDS[here]]
        save_artefacts(root / here)
        for job in jobs:
            job.result()
    return {backend: root / backend for backend in BACKENDS}


@pytest.mark.parametrize("fmt", ("keras", "preset"))
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("saved_on", BACKENDS)
def test_saved_on_any_backend_loads_here_bit_identically(artefacts, saved_on, policy, fmt):
    folder = artefacts[saved_on] / policy
    if fmt == "keras":
        model = load_model(folder / "model.keras", compile=False)
    else:  # KerasHub casts presets to the default policy unless a dtype is given.
        model = keras_cait.CaiTImageClassifier.from_preset(str(folder / "preset"), dtype=policy)
    assert isinstance(model, keras_cait.CaiTImageClassifier)
    assert model.pooling == "avg" and model.num_classes == 5
    saved = np.load(folder / "weights.npz")
    loaded = weights_of(model)
    assert list(loaded) == list(saved["paths"])
    assert list(saved["dtypes"]) == [policy] * len(loaded)
    for i, (path, (dtype, bits)) in enumerate(loaded.items()):
        assert dtype == policy, path
        np.testing.assert_array_equal(bits, saved[f"arr_{i}"])
    outputs = to_numpy(model(IMAGES)).astype("float32")
    if policy == "float32":
        np.testing.assert_allclose(outputs, saved["outputs"], atol=1e-5, rtol=0)
    else:
        # Not float32 copies of everything: the weights really are bfloat16.
        assert to_numpy(model.weights[0]).dtype == ml_dtypes.bfloat16
        # bfloat16 keeps ~3 digits and backends round differently: closeness only.
        assert np.isfinite(outputs).all()
        scale = np.abs(saved["outputs"]).max()
        np.testing.assert_allclose(outputs, saved["outputs"], atol=0.1 * scale, rtol=0)
