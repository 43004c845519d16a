"""The package imports cleanly on the chosen backend and exposes its API."""

import ast
import pathlib

import keras

import keras_cait
from tests.support import REPO, run_python

BACKEND_MODULES = {"tensorflow", "jax", "jaxlib", "torch"}


def _import_time_imports(node):
    """Imports that run when a module is imported: everything outside
    function bodies (a function may import its backend lazily, e.g. export)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(child, ast.Import):
            yield from (alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            yield child.module or ""
        else:
            yield from _import_time_imports(child)


def test_no_keras_cait_module_imports_a_backend_at_import_time():
    for path in pathlib.Path(REPO / "keras_cait").rglob("*.py"):
        for name in _import_time_imports(ast.parse(path.read_text())):
            assert name.split(".")[0] not in BACKEND_MODULES, (path, name)
    # The check sees through classes and conditionals but not functions.
    tree = ast.parse(
        "class A:\n    import torch\ndef f():\n    import jax\n"
    )
    assert list(_import_time_imports(tree)) == ["torch"]


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
