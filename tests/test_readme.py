"""README's commands and quickstart run as written, offline, with seeded real-shape weights."""

import os
import re
import subprocess
import sys

import keras
import pytest

from tests.hf_cache import write_seeded_timm_repo
from tests.support import REPO

pytestmark = pytest.mark.skipif(keras.config.backend() != "jax",
                                reason="README's commands are run once, on JAX")


def readme_block(name):
    """The fenced block after `<!-- readme-test: name -->` in README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- readme-test: {re.escape(name)} -->\n```\w*\n(.*?)```", text, re.S)
    assert match, f"README has no block marked readme-test: {name}"
    return match.group(1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A clone's layout holding what `hf download ... --local-dir cait_xxs24_224` gives."""
    root = tmp_path_factory.mktemp("clone")
    (root / "examples").symlink_to(REPO / "examples")
    write_seeded_timm_repo(root / "cait_xxs24_224")
    return root


def _env(workdir, **extra):
    """A user's shell: no KERAS_BACKEND, HF_HUB_OFFLINE or TensorFlow's TF_CPP_MIN_LOG_LEVEL."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_CACHE=str(workdir / "hub"))
    for name in ("KERAS_BACKEND", "HF_HUB_OFFLINE", "TF_CPP_MIN_LOG_LEVEL"):
        env.pop(name, None)
    return dict(env, **extra)


def _bash(script, workdir):
    """Runs README shell lines with `keras-cait` as this checkout's CLI."""
    prelude = f'keras-cait() {{ "{sys.executable}" -m keras_cait_cli "$@"; }}\nset -e\n'
    return subprocess.run(["bash", "-c", prelude + script], cwd=workdir, env=_env(workdir),
                          capture_output=True, text=True, timeout=900)


def test_readme_first_screen_commands_run_offline_on_jax(workdir):
    lines = [line.split("#")[0].strip() for line in readme_block("offline").strip().splitlines()]
    # The `hf download` line needs the network: the fixture did its job.
    assert lines[0].startswith("hf download timm/cait_xxs24_224.fb_dist_in1k --local-dir cait_xxs24_224")
    install, _, run = readme_block("first-command").strip().rpartition(" && ")
    assert run.startswith("keras-cait predict examples/images/chelsea.png --backend jax")
    assert 'pip install -e ".[jax]"' in install
    # The offline predict is the first command's on the default backend; run once, on JAX.
    assert lines[2] == "HF_HUB_OFFLINE=1 " + run.replace(" --backend jax", "")
    result = _bash(f"{lines[1]}\nHF_HUB_OFFLINE=1 {run}\n", workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("examples/images/chelsea.png\n")
    assert len(re.findall(r"^  [1-5]\. ", result.stdout, re.M)) == 5
    # Quiet: only keras-cait's own lines on stderr, no TensorFlow/absl/CUDA.
    noise = [line for line in result.stderr.splitlines() if not line.startswith("keras-cait: ")]
    assert noise == [], noise
    assert "keras-cait: backend jax (--backend)" in result.stderr
    assert "cached hf://timm/cait_xxs24_224.fb_dist_in1k" in result.stderr


def test_readme_quickstart_runs_as_pasted(workdir):
    cache = readme_block("offline").strip().splitlines()[1].split("#")[0]
    assert _bash(cache, workdir).returncode == 0  # as in the test above, if it did not run
    result = subprocess.run([sys.executable, "-c", readme_block("quickstart")], cwd=workdir,
                            env=_env(workdir, KERAS_BACKEND="jax", HF_HUB_OFFLINE="1"),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.strip().splitlines()
    assert len(printed) == 2  # one line per photo: its top-3 (name, probability)
    for line in printed:
        assert re.fullmatch(r"\[(\('[^']+', [0-9.e-]+\)(, )?){3}\]", line), line


def test_readme_test_command_is_what_ci_runs():
    """README's test command is `.ci/run`'s, and the extras README names exist."""
    install, _, run = readme_block("test-command").strip().rpartition(" && ")
    assert run == "bash tools/run_tests.sh"
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[all,dev]"' in ci and "bash tools/run_tests.sh" in ci
    assert install == 'pip install -e ".[all,dev]"'
    extras = (REPO / "pyproject.toml").read_text()
    for extra in ("jax", "tensorflow", "torch", "all", "dev", "viz", "export", "ray"):
        assert re.search(rf"^{extra} = \[", extras, re.M), extra
