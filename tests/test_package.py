"""The package imports cleanly on the chosen backend and exposes its API."""

import json
import subprocess
import sys

import keras
import pytest

import keras_cait
from tests.support import REPO, run_python

_HEAVY = ("keras", "keras_cait", "keras_hub", "tensorflow", "jax", "torch", "numpy")


def test_import_uses_the_selected_backend(backend):
    out = run_python("import keras_cait, keras; print(keras.config.backend())", backend)
    assert out.strip().splitlines()[-1] == backend
    assert keras.config.backend() == backend


def test_every_public_name_resolves():
    assert len(keras_cait.__all__) == len(set(keras_cait.__all__))
    for name in keras_cait.__all__:
        assert getattr(keras_cait, name) is not None, name
    for name in ("CaiTBackbone", "CaiTImageClassifier", "load_timm_state_dict", "LayerScale"):
        assert name in keras_cait.__all__
    assert keras_cait.__version__


MAIN = "from keras_cait_cli.main import main"
RUNPY = ("sys.argv = ['keras_cait_cli', '--help']",
         "runpy.run_module('keras_cait_cli', run_name='__main__', alter_sys=True)")


@pytest.mark.parametrize("setup, statement", [
    *((MAIN, f"main({arguments!r})") for arguments in (
        ["--help"], ["predict", "--help"], ["evaluate", "--help"], ["presets", "--help"],
        ["convert", "--help"], ["presets"], ["presets", "--json"])),
    RUNPY,  # `python -m keras_cait_cli`, as light as the console script
])
def test_the_command_line_starts_without_keras(setup, statement):
    """Each `--help` and `presets` exits 0 importing neither Keras, a backend nor keras_cait."""
    code = (f"import json, runpy, sys\n{setup}\n"
            f"try:\n    status = {statement}\nexcept SystemExit as exit:\n    status = exit.code\n"
            "sys.stdout.flush()\nprint(json.dumps([status, sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {_HEAVY!r})]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    *printed, last = result.stdout.strip().splitlines()
    status, heavy = json.loads(last)
    assert status == 0, result.stderr
    assert heavy == []
    if statement == "main(['presets', '--json'])":
        assert [row["name"] for row in json.loads("\n".join(printed))] == keras_cait.list_presets()
    if setup == RUNPY[0]:
        assert "keras-cait" in result.stdout


def test_console_script_and_module_run_the_command_line():
    """`keras-cait` is `keras_cait_cli.main:main`; `python -m keras_cait_cli` (run above,
    through runpy) is the only -m: the package's would import Keras."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'keras-cait = "keras_cait_cli.main:main"' in pyproject
    assert not (REPO / "keras_cait" / "__main__.py").exists()


def test_keras_cait_base_imports_no_deep_learning_framework():
    """Every `keras_cait_base` module imports without Keras, KerasHub or a backend."""
    modules = sorted(".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                     for path in (REPO / "keras_cait_base").rglob("*.py"))
    script = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
              "print(sorted({'keras', 'keras_hub', 'keras_cait', 'tensorflow', 'jax', "
              "'torch'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert len(modules) > 10 and result.stdout.strip() == "[]", result.stderr
