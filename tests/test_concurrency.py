"""Concurrent `from_preset`: 32 threads load the same timm-format preset at
once; all succeed with bit-identical weights equal to timm's.

Building a Keras functional subclass is not thread safe (see `_LOAD_LOCK` in
`keras_cait.loading.loader`), so this fails without the loader's lock.
"""

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from safetensors.numpy import load_file

import keras_cait
from tests.support import TIMM, to_numpy

TINY = TIMM / "tiny_token_head"
THREADS = 32


def test_32_threads_load_one_preset(tmp_path):
    folder = tmp_path / "tiny_timm"
    shutil.copytree(TINY, folder)
    barrier = threading.Barrier(THREADS)

    def load(_):
        barrier.wait()
        model = keras_cait.CaiTImageClassifier.from_preset(str(folder))
        return [np.asarray(to_numpy(v)) for v in model.weights]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(load, range(THREADS)))
    reference = load_file(TINY / "model.safetensors")
    np.testing.assert_array_equal(results[0][-1], reference["head.bias"])
    np.testing.assert_array_equal(results[0][-2], reference["head.weight"].T)
    for result in results[1:]:
        assert len(result) == len(results[0])
        for a, b in zip(result, results[0]):
            np.testing.assert_array_equal(a, b)
