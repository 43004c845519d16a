"""The package imports cleanly on the chosen backend and exposes its API."""

import ast
import pathlib

import keras

import keras_cait
from tests.support import REPO, run_python

BACKEND_MODULES = {"tensorflow", "jax", "jaxlib", "torch"}


def test_no_keras_cait_module_imports_a_backend():
    for path in pathlib.Path(REPO / "keras_cait").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in BACKEND_MODULES, (path, name)


def test_import_uses_the_selected_backend(backend):
    out = run_python(
        "import keras_cait, keras; print(keras.config.backend())", backend
    )
    assert out.strip().splitlines()[-1] == backend
    assert keras.config.backend() == backend


def test_public_api():
    for name in ("CaiTBackbone", "CaiTImageClassifier", "load_timm_state_dict", "LayerScale"):
        assert name in keras_cait.__all__ and hasattr(keras_cait, name)
    assert keras_cait.__version__
