"""Concurrent `from_preset` and the conversion cache.

- 32 threads load the same timm-format preset at once: all succeed with
  bit-identical weights, and the conversion runs and the cache is written
  exactly once (the file lock).
- A process killed (SIGKILL) in the middle of writing the cache, while it
  holds the lock, leaves an entry the next load repairs: 4 processes of 8
  threads each (32 loads) then load it at once; every cache write is logged
  to a shared file: exactly one line (the repair).
- The cache records what it was made from and is rebuilt, not trusted, when
  the cached file or its source no longer matches.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import keras_cait
from keras_cait.io.files import sha256_file
from keras_cait.loading import conversion_cache, loader
from tests.support import REPO, TIMM, to_numpy

TINY = TIMM / "tiny_token_head"
THREADS = 32


@pytest.fixture
def timm_dir(tmp_path, monkeypatch):
    """A private copy of the tiny timm repo and a private conversion cache."""
    folder = tmp_path / "tiny_timm"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(TINY / name, folder / name)
    monkeypatch.setenv("KERAS_CAIT_CACHE", str(tmp_path / "converted"))
    return folder


@pytest.fixture
def counters(monkeypatch):
    """Counts conversions and cache writes in this process."""
    counts = {"convert": 0, "store": 0}
    lock = threading.Lock()
    real_convert = loader._convert_state_dict
    real_store = conversion_cache.ConversionCache.store

    def convert(*args, **kwargs):
        with lock:
            counts["convert"] += 1
        time.sleep(0.2)  # widen the race window
        return real_convert(*args, **kwargs)

    def store(self, *args, **kwargs):
        with lock:
            counts["store"] += 1
        return real_store(self, *args, **kwargs)

    monkeypatch.setattr(loader, "_convert_state_dict", convert)
    monkeypatch.setattr(conversion_cache.ConversionCache, "store", store)
    return counts


def weights(model):
    return [np.asarray(to_numpy(v)) for v in model.weights]


def assert_reference_weights(arrays):
    """The classifier's head holds the tiny repo's timm weights."""
    reference = load_file(TINY / "model.safetensors")
    np.testing.assert_array_equal(arrays[-1], reference["head.bias"])
    np.testing.assert_array_equal(arrays[-2], reference["head.weight"].T)


def test_32_threads_load_one_preset_and_convert_once(timm_dir, counters):
    barrier = threading.Barrier(THREADS)

    def load(_):
        barrier.wait()
        return weights(keras_cait.CaiTImageClassifier.from_preset(str(timm_dir)))

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(load, range(THREADS)))
    assert counters == {"convert": 1, "store": 1}
    assert_reference_weights(results[0])
    for result in results[1:]:
        assert len(result) == len(results[0])
        for a, b in zip(result, results[0]):
            np.testing.assert_array_equal(a, b)


PROCESS_SCRIPT = r"""
import os, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import keras_cait
from keras_cait.loading import conversion_cache
from tests.support import to_numpy

preset, log, out, start = sys.argv[1:5]
real_store = conversion_cache.ConversionCache.store
def store(self, *args, **kwargs):
    # One line per cache write, appended atomically (O_APPEND).
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return real_store(self, *args, **kwargs)
conversion_cache.ConversionCache.store = store

barrier = threading.Barrier(8)
def load(_):
    barrier.wait()
    model = keras_cait.CaiTImageClassifier.from_preset(preset)
    return [to_numpy(v) for v in model.weights]

# Start together with the other processes.
open(start + f".{os.getpid()}", "w").close()
while not os.path.exists(os.path.join(os.path.dirname(start), "go")):
    time.sleep(0.05)
with ThreadPoolExecutor(8) as pool:
    results = list(pool.map(load, range(8)))
for r in results[1:]:
    assert all(np.array_equal(a, b) for a, b in zip(r, results[0]))
np.savez(out, *results[0])
"""


def _spawn(code, args, env):
    full_env = dict(os.environ, KERAS_BACKEND=keras.config.backend(), **env)
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=full_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )


KILLED_SCRIPT = r"""
import os, sys, time
import keras_cait
from keras_cait.loading import conversion_cache

preset, ready = sys.argv[1:3]
real_replace = os.replace
def replace(src, dst):
    if dst.endswith(conversion_cache.META_FILE):
        # The converted weights are in place, meta.json is not: tell the
        # parent and wait, holding the cache's file lock, to be killed.
        open(ready, "w").close()
        time.sleep(600)
    return real_replace(src, dst)
conversion_cache.os.replace = replace
keras_cait.CaiTImageClassifier.from_preset(preset)
"""


def _cache_files():
    """The cache's files, without those still being written (inside the
    `.tmp-*` staging folders of `keras_cait.io.files.staged_path`)."""
    root = os.environ["KERAS_CAIT_CACHE"]
    return [
        os.path.join(d, f)
        for d, _, files in os.walk(root)
        for f in files
        if not os.path.basename(d).startswith(".tmp-")
    ]


def _wait_for(condition, processes, what, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        for p in processes:
            assert p.poll() is None, f"{what}: a process exited:\n{p.communicate()[0]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_killed_process_then_4_processes_of_8_threads(timm_dir, tmp_path):
    """A process is SIGKILLed while it writes the cache (holding the lock);
    then 4 processes x 8 threads load the preset at once: the broken entry
    is repaired by exactly one cache write, and all 32 loads agree bit for
    bit with timm's weights. All five processes import in parallel."""
    env = {"KERAS_CAIT_CACHE": os.environ["KERAS_CAIT_CACHE"]}
    log = tmp_path / "writes.log"
    sync = tmp_path / "sync"
    sync.mkdir()
    killed_ready = tmp_path / "killed_ready"
    killed = _spawn(KILLED_SCRIPT, [timm_dir, killed_ready], env)
    workers = [
        _spawn(PROCESS_SCRIPT,
               [timm_dir, log, tmp_path / f"out{i}.npz", sync / "ready"], env)
        for i in range(4)
    ]
    try:
        _wait_for(killed_ready.exists, [killed], "the cache write to start")
        os.kill(killed.pid, signal.SIGKILL)
        killed.communicate()
        assert killed.returncode == -signal.SIGKILL
        files = _cache_files()
        assert any(f.endswith(conversion_cache.WEIGHTS_FILE) for f in files)
        assert not any(f.endswith(conversion_cache.META_FILE) for f in files)

        _wait_for(lambda: len(os.listdir(sync)) == 4, workers, "the workers")
        (sync / "go").touch()  # release all 32 loads together
        for p in workers:
            output, _ = p.communicate(timeout=300)
            assert p.returncode == 0, output
    finally:
        for p in [killed, *workers]:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert len(log.read_text().splitlines()) == 1
    assert any(f.endswith(conversion_cache.META_FILE) for f in _cache_files())
    results = [np.load(tmp_path / f"out{i}.npz") for i in range(4)]
    first = [results[0][k] for k in results[0].files]
    assert_reference_weights(first)
    for result in results[1:]:
        for a, b in zip([result[k] for k in result.files], first):
            np.testing.assert_array_equal(a, b)


def _cached_weights_file():
    root = os.environ["KERAS_CAIT_CACHE"]
    (path,) = [
        os.path.join(d, f)
        for d, _, files in os.walk(root)
        for f in files
        if f == conversion_cache.WEIGHTS_FILE
    ]
    return path


def test_a_tampered_cache_entry_is_rebuilt(timm_dir, counters):
    keras_cait.CaiTImageClassifier.from_preset(str(timm_dir))
    path = _cached_weights_file()
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0x10  # a valid file with one different weight
    with open(path, "wb") as f:
        f.write(bytes(data))
    model = keras_cait.CaiTImageClassifier.from_preset(str(timm_dir))
    assert counters == {"convert": 2, "store": 2}
    assert_reference_weights(weights(model))


def test_a_changed_source_gives_a_new_conversion(timm_dir, counters):
    keras_cait.CaiTImageClassifier.from_preset(str(timm_dir))
    tensors = load_file(timm_dir / "model.safetensors")
    tensors["head.bias"] = tensors["head.bias"] + np.float32(1.0)
    save_file(tensors, str(timm_dir / "model.safetensors"))
    model = keras_cait.CaiTImageClassifier.from_preset(str(timm_dir))
    assert counters["convert"] == 2
    np.testing.assert_array_equal(to_numpy(model.output_dense.bias), tensors["head.bias"])
    with open(os.path.join(os.path.dirname(_newest_meta()), "meta.json")) as f:
        meta = json.load(f)
    assert meta["source_sha256"] == sha256_file(
        timm_dir / "model.safetensors"
    )


def _newest_meta():
    root = os.environ["KERAS_CAIT_CACHE"]
    metas = [
        os.path.join(d, f)
        for d, _, files in os.walk(root)
        for f in files
        if f == conversion_cache.META_FILE
    ]
    return max(metas, key=os.path.getmtime)
