"""`from_preset` of a timm checkpoint adds < 2.5x the weights' size (the first release: ~4x)."""

import json
import os
import shutil
import subprocess
import sys

import keras
from safetensors.numpy import save_file

from keras_cait.convert.timm_config import timm_arguments_from_keras
from keras_cait.testing import seeded_state_dict
from keras_cait_base.schema import checkpoint_layout
from tests.support import REPO, TIMM

# ~49M parameters (187 MB float32): the variables dominate the backends' fixed costs.
MEMORY_CONFIG = dict(image_shape=[64, 64, 3], patch_size=16, hidden_dim=576, num_layers=10,
                     num_heads=8, num_class_attention_layers=2)
MEMORY_SCRIPT = r"""
import json, os, resource
import keras_cait

directory, warmup = os.environ["CAIT_CHECKPOINT"], os.environ["CAIT_WARMUP"]
keras_cait.CaiTImageClassifier.from_preset(warmup)  # the backend's one-time costs
weights_mb = os.path.getsize(os.path.join(directory, "model.safetensors")) / 2**20
before = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024.0  # MB
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
model = keras_cait.CaiTImageClassifier.from_preset(directory)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
assert peak > peak_before, ("the load must set the high-water mark", before, peak_before, peak)
print(json.dumps({"ratio": (peak - before) / weights_mb, "weights_mb": weights_mb,
                  "params": int(model.count_params())}))
"""


def test_from_preset_peak_memory_is_below_2_5x_the_weights(tmp_path):
    folder = tmp_path / "checkpoint"  # a timm directory with seeded weights
    folder.mkdir()
    layout = checkpoint_layout(MEMORY_CONFIG, 1000)
    state_dict = seeded_state_dict({t.key: t.shape for t in layout}, seed=0)
    num_params = int(sum(a.size for a in state_dict.values()))
    assert 40e6 < num_params < 60e6
    config = {"architecture": "cait_xxs24_224", "num_classes": 1000,
              "model_args": timm_arguments_from_keras(MEMORY_CONFIG, {"num_classes": 1000})}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state_dict, str(folder / "model.safetensors"))
    warmup = shutil.copytree(TIMM / "tiny_token_head", tmp_path / "tiny")
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(),
               CAIT_CHECKPOINT=str(folder), CAIT_WARMUP=str(warmup))
    # ru_maxrss starts at the exec'ing process's high-water mark (pytest's): a lean
    # launcher process in between keeps the measured process's own.
    launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    process = subprocess.run([sys.executable, "-c", launcher, sys.executable, "-c", MEMORY_SCRIPT],
                             env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert process.returncode == 0, process.stdout + process.stderr
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert result["params"] == num_params
    print("peak increase over the weights:", result["ratio"])
    # The variables (1x), building costs, about one tensor and part of the memory map.
    assert result["ratio"] < 2.5, result
