"""Peak memory of `from_preset` on a timm checkpoint.

Converting and loading stream one tensor at a time, so `from_preset` adds
less than 2.5x the weights' size to the process (the model's own variables
are 1x), on the first call (convert, write the conversion cache) and on the
second (read the cache), each in a fresh process. The whole-dict code this
replaced took about 4x on the first call.

Only APIs that predate streaming are used (the checkpoint is written with
tools/benchmark.py's recipe), so this test also runs against older code.
"""

import json
import os
import shutil
import subprocess
import sys

import keras

from tests.support import REPO, TIMM, load_tool

# ~49M parameters (187 MB float32): large enough that the model's own
# variables dominate the backends' fixed costs.
MEMORY_CONFIG = dict(
    image_shape=[64, 64, 3],
    patch_size=16,
    hidden_dim=576,
    num_layers=10,
    num_heads=8,
    num_class_attention_layers=2,
)
MEMORY_SCRIPT = r"""
import json, os, resource
import keras_cait

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0

directory, warmup = os.environ["CAIT_CHECKPOINT"], os.environ["CAIT_WARMUP"]
# Pay the backend's one-time costs first (a tiny preset, its own cache).
keras_cait.CaiTImageClassifier.from_preset(warmup)
weights_mb = os.path.getsize(os.path.join(directory, "model.safetensors")) / 2**20
before = rss_mb()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
model = keras_cait.CaiTImageClassifier.from_preset(directory)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
assert peak > peak_before, ("the load must set the high-water mark", before, peak_before, peak)
print(json.dumps({"ratio": (peak - before) / weights_mb, "weights_mb": weights_mb,
                  "params": int(model.count_params())}))
"""


def test_from_preset_peak_memory_is_below_2_5x_the_weights(tmp_path):
    folder = tmp_path / "checkpoint"
    written = load_tool("benchmark").worker_write_checkpoint(
        dict(
            backbone_kwargs=MEMORY_CONFIG,
            num_classes=1000,
            timm_architecture="cait_xxs24_224",
            directory=str(folder),
        )
    )
    assert 40e6 < written["num_params"] < 60e6
    warmup = tmp_path / "tiny"
    shutil.copytree(TIMM / "tiny_token_head", warmup)
    env = dict(
        os.environ,
        KERAS_BACKEND=keras.backend.backend(),
        KERAS_CAIT_CACHE=str(tmp_path / "converted"),
        CAIT_CHECKPOINT=str(folder),
        CAIT_WARMUP=str(warmup),
    )
    # A process's ru_maxrss starts at the high-water mark of the process it
    # was exec'ed from (Linux), here pytest's; a lean launcher process in
    # between keeps the measured process's own.
    launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    ratios = []
    for _ in ("first call: convert and write the cache", "second call: read it"):
        process = subprocess.run(
            [sys.executable, "-c", launcher, sys.executable, "-c", MEMORY_SCRIPT],
            env=env, capture_output=True, text=True, timeout=900, cwd=REPO,
        )
        assert process.returncode == 0, process.stdout + process.stderr
        result = json.loads(process.stdout.strip().splitlines()[-1])
        assert result["params"] == written["num_params"]
        ratios.append(result["ratio"])
    # The tiny preset's entry and this one's.
    assert len(list((tmp_path / "converted").rglob("meta.json"))) == 2
    print("peak increase over the weights (first call, cached call):", ratios)
    # Streaming: the model's variables (1x), the backend's building costs
    # and about one tensor.
    assert ratios[0] < 2.5 and ratios[1] < 2.5, ratios
