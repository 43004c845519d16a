"""Nothing lost across backends: the 3 x 3 save/load matrix.

Each backend's test run saves a tiny classifier on every backend (its own in
this process, the other two in one subprocess each), as a `.keras` file and
as a `save_to_preset` directory, under the `float32` and `bfloat16` dtype
policies, and loads all of them here. Across the three backend runs of the
suite, every (save backend, load backend) pair is covered: weights and
dtypes bit-identical, float32 outputs within 1e-5.
"""

import json
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
FORMATS = ("keras", "preset")
BACKENDS = ("tensorflow", "jax", "torch")
IMAGES = np.random.default_rng(7).standard_normal((2, 32, 32, 3)).astype("float32")
# Bit patterns: compare weights as unsigned integers of the same width.
_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits(array):
    array = np.ascontiguousarray(array)
    return array.view(_BITS[array.dtype.itemsize])


def weights_of(model):
    """`{variable path: (dtype name, bit pattern)}`."""
    result = {}
    for variable in model.weights:
        value = np.asarray(keras.ops.convert_to_numpy(variable))
        result[variable.path] = (str(variable.dtype), bits(value))
    return result


def save_artefacts(root):
    """Saves the matrix's models for the current backend under `root`."""
    root = pathlib.Path(root)
    for index, policy in enumerate(POLICIES):
        keras.utils.set_random_seed(index)
        backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, dtype=policy)
        model = keras_cait.CaiTImageClassifier(backbone, num_classes=5, compile=False)
        folder = root / policy
        folder.mkdir(parents=True)
        model.save(folder / "model.keras")
        model.save_to_preset(str(folder / "preset"))
        weights = weights_of(model)
        np.savez(
            folder / "weights.npz",
            **{f"w{i}": value for i, (_, value) in enumerate(weights.values())},
        )
        (folder / "weights.json").write_text(
            json.dumps([[path, dtype] for path, (dtype, _) in weights.items()])
        )
        np.save(folder / "outputs.npy", to_numpy(model(IMAGES)).astype("float32"))


SAVE_SCRIPT = """
from tests.test_backend_matrix import save_artefacts
save_artefacts({root!r})
"""


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """`{save backend: folder}` for all three backends."""
    here = keras.config.backend()
    root = tmp_path_factory.mktemp("matrix")
    # The other two backends save in parallel subprocesses meanwhile.
    with ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(run_python, SAVE_SCRIPT.format(root=str(root / other)), other)
            for other in OTHER_BACKENDS[here]
        ]
        save_artefacts(root / here)
        for job in jobs:
            job.result()
    return {backend: root / backend for backend in BACKENDS}


def load(folder, fmt, policy):
    if fmt == "keras":
        return load_model(folder / "model.keras", compile=False)
    # KerasHub casts float presets to the current default policy unless a
    # dtype is given; ask for the saved one.
    return keras_cait.CaiTImageClassifier.from_preset(
        str(folder / "preset"), dtype=policy
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("saved_on", BACKENDS)
def test_saved_on_any_backend_loads_here_bit_identically(
    artefacts, saved_on, policy, fmt
):
    folder = artefacts[saved_on] / policy
    model = load(folder, fmt, policy)
    assert isinstance(model, keras_cait.CaiTImageClassifier)
    expected_dtypes = json.loads((folder / "weights.json").read_text())
    expected_values = np.load(folder / "weights.npz")
    loaded = weights_of(model)
    assert list(loaded) == [path for path, _ in expected_dtypes]
    for i, (path, dtype) in enumerate(expected_dtypes):
        assert dtype == policy
        assert loaded[path][0] == dtype, path
        np.testing.assert_array_equal(loaded[path][1], expected_values[f"w{i}"])
    outputs = to_numpy(model(IMAGES)).astype("float32")
    saved_outputs = np.load(folder / "outputs.npy")
    if policy == "float32":
        np.testing.assert_allclose(outputs, saved_outputs, atol=1e-5, rtol=0)
    else:
        # bfloat16 keeps ~3 significant digits; backends round differently
        # inside the network, so only closeness at bfloat16 precision.
        assert np.isfinite(outputs).all()
        scale = np.abs(saved_outputs).max()
        np.testing.assert_allclose(outputs, saved_outputs, atol=0.1 * scale, rtol=0)


def test_bfloat16_weights_really_are_bfloat16(artefacts):
    """Guards the matrix against comparing float32 copies of everything."""
    here = keras.config.backend()
    model = load_model(artefacts[here] / "bfloat16" / "model.keras", compile=False)
    value = np.asarray(keras.ops.convert_to_numpy(model.weights[0]))
    assert value.dtype == ml_dtypes.bfloat16
