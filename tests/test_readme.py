"""README's first screen runs as written: its first command (after the
install, which `.ci/run` does), its offline-machine commands and its
quickstart, on JAX, offline, with the weights put into a fresh Hugging Face
cache by the documented `keras-cait cache-weights` command.

The blocks are found by their `<!-- readme-test: NAME -->` markers. The
weights are timm-format `cait_xxs24_224` weights of the real shapes, made by
the seeded recipe (Hugging Face is not reachable here), so the predictions
are not ImageNet's: the test checks that each command gets to one.
"""

import json
import os
import re
import subprocess
import sys

import keras
import pytest
from safetensors.numpy import save_file

from keras_cait.testing import seeded_state_dict
from tests.hf_cache import TIMM
from tests.support import REPO

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "jax", reason="README's commands are run once, on JAX"
)

README = REPO / "README.md"


def readme_block(name):
    """The fenced block after `<!-- readme-test: name -->` in README."""
    text = README.read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- readme-test: {re.escape(name)} -->\n```\w*\n(.*?)```", text, re.S
    )
    assert match, f"README has no block marked readme-test: {name}"
    return match.group(1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder laid out as a clone (`examples/`) holding, as
    `hf download timm/cait_xxs24_224.fb_dist_in1k --local-dir cait_xxs24_224`
    would, the repo's config.json and model.safetensors."""
    root = tmp_path_factory.mktemp("clone")
    (root / "examples").symlink_to(REPO / "examples")
    downloaded = root / "cait_xxs24_224"
    downloaded.mkdir()
    (downloaded / "config.json").write_bytes((TIMM / "configs" / "cait_xxs24_224.json").read_bytes())
    variant = json.loads((TIMM / "variants.json").read_text())["cait_xxs24_224"]
    save_file(
        seeded_state_dict(variant["state_dict"], variant["seed"]),
        downloaded / "model.safetensors",
    )
    return root


def _bash(script, cwd, env):
    """Runs README shell lines with `keras-cait` as this checkout's CLI."""
    prelude = f'keras-cait() {{ "{sys.executable}" -m keras_cait_cli "$@"; }}\nset -e\n'
    return subprocess.run(
        ["bash", "-c", prelude + script], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=900,
    )


def _env(workdir):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_CACHE=str(workdir / "hub"))
    env.pop("KERAS_BACKEND", None)  # the commands choose it
    env.pop("HF_HUB_OFFLINE", None)  # README's commands set it
    # As in a user's shell: importing TensorFlow in this test process has
    # set TF_CPP_MIN_LOG_LEVEL=1, which the CLI would respect.
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def test_readme_first_screen_commands_run_offline_on_jax(workdir):
    offline = readme_block("offline")
    lines = [line.split("#")[0].strip() for line in offline.strip().splitlines()]
    assert lines[0].startswith("hf download timm/cait_xxs24_224.fb_dist_in1k --local-dir cait_xxs24_224")
    # The `hf download` line needs the network: the fixture did its job.
    first = readme_block("first-command").strip()
    install, _, run = first.rpartition(" && ")
    assert run.startswith("keras-cait predict examples/images/chelsea.png --backend jax")
    assert 'pip install -e ".[jax]"' in install
    # The offline predict is the first command's, on the default backend;
    # it runs once (with `--backend jax`) to keep CI short.
    assert lines[2] == "HF_HUB_OFFLINE=1 " + run.replace(" --backend jax", "")
    script = f"{lines[1]}\nHF_HUB_OFFLINE=1 {run}\n"
    result = _bash(script, workdir, _env(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    # The table: the photo and its top 5.
    assert result.stdout.startswith("examples/images/chelsea.png\n")
    assert len(re.findall(r"^  [1-5]\. ", result.stdout, re.M)) == 5
    # Quiet: only keras-cait's own lines on stderr, no TensorFlow/absl/CUDA.
    noise = [line for line in result.stderr.splitlines() if not line.startswith("keras-cait: ")]
    assert noise == [], noise
    assert "keras-cait: backend jax (--backend)" in result.stderr
    assert "cached hf://timm/cait_xxs24_224.fb_dist_in1k" in result.stderr


def test_readme_quickstart_runs_as_pasted(workdir):
    # The cache the first-screen test filled, or fill it the same way here.
    env = _env(workdir)
    cache = readme_block("offline").strip().splitlines()[1].split("#")[0]
    assert _bash(cache, workdir, env).returncode == 0
    env.update(KERAS_BACKEND="jax", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", readme_block("quickstart")], cwd=workdir, env=env,
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.strip().splitlines()
    assert len(printed) == 2  # one line per photo: its top-3 (name, probability)
    for line in printed:
        assert re.fullmatch(r"\[(\('[^']+', [0-9.e-]+\)(, )?){3}\]", line), line


def test_readme_test_command_is_what_ci_runs():
    """The install half of README's commands is checked by `.ci/run` (which
    installs `.[all,dev]` and runs `tools/run_tests.sh`); the extras named
    in README exist."""
    install, _, run = readme_block("test-command").strip().rpartition(" && ")
    assert run == "bash tools/run_tests.sh"
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[all,dev]"' in ci and "bash tools/run_tests.sh" in ci
    assert install == 'pip install -e ".[all,dev]"'
    extras = (REPO / "pyproject.toml").read_text()
    for extra in ("jax", "tensorflow", "torch", "all", "dev", "viz", "export", "ray"):
        assert re.search(rf"^{extra} = \[", extras, re.M), extra
