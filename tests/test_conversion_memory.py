"""Peak memory of `from_preset` on a timm checkpoint.

The checkpoint is read one tensor at a time (`safe_open`, its memory map
released every `REOPEN_EVERY_BYTES`) and assigned one tensor at a time, so
`from_preset` adds less than 2.5x the weights' size to the process (the
model's own variables are 1x), measured in a fresh process. The whole-dict
code of the first release took about 4x.

The model is loaded through public APIs only.
"""

import json
import os
import shutil
import subprocess
import sys

import keras

from tests.support import REPO, TIMM

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
# Pay the backend's one-time costs first (a tiny preset).
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


def _write_checkpoint(folder, backbone_kwargs, num_classes):
    """A timm directory (config.json + model.safetensors), seeded weights."""
    from safetensors.numpy import save_file

    from keras_cait.convert.timm_config import timm_arguments_from_keras
    from keras_cait.testing import seeded_state_dict
    from keras_cait_base.schema import checkpoint_layout

    layout = checkpoint_layout(backbone_kwargs, num_classes)
    state_dict = seeded_state_dict({t.key: t.shape for t in layout}, seed=0)
    folder.mkdir()
    config = {"architecture": "cait_xxs24_224", "num_classes": num_classes,
              "model_args": timm_arguments_from_keras(backbone_kwargs,
                                                      {"num_classes": num_classes})}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state_dict, str(folder / "model.safetensors"))
    return {"num_params": int(sum(a.size for a in state_dict.values()))}


def test_from_preset_peak_memory_is_below_2_5x_the_weights(tmp_path):
    folder = tmp_path / "checkpoint"
    written = _write_checkpoint(folder, MEMORY_CONFIG, num_classes=1000)
    assert 40e6 < written["num_params"] < 60e6
    warmup = tmp_path / "tiny"
    shutil.copytree(TIMM / "tiny_token_head", warmup)
    env = dict(
        os.environ,
        KERAS_BACKEND=keras.backend.backend(),
        CAIT_CHECKPOINT=str(folder),
        CAIT_WARMUP=str(warmup),
    )
    # A process's ru_maxrss starts at the high-water mark of the process it
    # was exec'ed from (Linux), here pytest's; a lean launcher process in
    # between keeps the measured process's own.
    launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    process = subprocess.run(
        [sys.executable, "-c", launcher, sys.executable, "-c", MEMORY_SCRIPT],
        env=env, capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert result["params"] == written["num_params"]
    print("peak increase over the weights:", result["ratio"])
    # The model's variables (1x), the backend's building costs, about one
    # tensor and a bounded part of the file's memory map.
    assert result["ratio"] < 2.5, result
