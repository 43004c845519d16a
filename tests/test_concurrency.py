"""Concurrent `from_preset` is safe (building a Keras functional subclass is not: `_LOAD_LOCK`)."""

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from safetensors.numpy import load_file

import keras_cait
from tests.support import TIMM, to_numpy

THREADS = 32


def test_32_threads_load_one_preset(tmp_path):
    folder = tmp_path / "tiny_timm"
    shutil.copytree(TIMM / "tiny_token_head", folder)
    barrier = threading.Barrier(THREADS)

    def load(_):
        barrier.wait()
        model = keras_cait.CaiTImageClassifier.from_preset(str(folder))
        return [np.asarray(to_numpy(v)) for v in model.weights]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(load, range(THREADS)))
    reference = load_file(folder / "model.safetensors")
    np.testing.assert_array_equal(results[0][-1], reference["head.bias"])
    np.testing.assert_array_equal(results[0][-2], reference["head.weight"].T)
    for result in results[1:]:
        assert len(result) == len(results[0])
        for a, b in zip(result, results[0]):
            np.testing.assert_array_equal(a, b)
