"""The package's layers (CONTRIBUTING.md's table, declared here once) and its import
rule: no import goes upward or closes a cycle, and a function-local import says why
it is local (`start-up` or `optional`). Every import counts: module level, inside
classes, functions and conditionals. An import also loads the parent packages of its
module (not the importer's own packages, loaded first anyway); the roots
`keras_cait`, `keras_cait_base` and `keras_cait_cli` count only when named.
"""

import ast
import graphlib
import io
import os
import re
import subprocess
import sys
import tokenize

import keras
import pytest

from tests.support import REPO

# The layer table: each module of `keras_cait`, `keras_cait_base` and
# `keras_cait_cli`, once.
LAYERS = {
    0: [  # foundations: no keras_cait imports
        "keras_cait_base.errors", "keras_cait_base.version",
        "keras_cait_base.image_geometry", "keras_cait_base.predictions",
        "keras_cait.arguments", "keras_cait.serialization", "keras_cait.testing",
    ],
    1: [  # no deep-learning framework: I/O, the schema, the presets' JSON,
        # collection runs, the artefact cache and the engines
        "keras_cait_base", "keras_cait_base.artifact_cache", "keras_cait_base.collection_runs",
        "keras_cait_base.engines", "keras_cait_base.handles",
        "keras_cait_base.io", "keras_cait_base.io.files", "keras_cait_base.io.hub",
        "keras_cait_base.io.image_paths", "keras_cait_base.io.images",
        "keras_cait_base.io.records", "keras_cait_base.io.safetensors_io",
        "keras_cait_base.pillow_pipeline", "keras_cait_base.registry", "keras_cait_base.schema",
    ],
    2: [  # keras.ops layers; timm conversion (NumPy)
        "keras_cait.layers", "keras_cait.layers._fast_paths",
        "keras_cait.layers.class_attention", "keras_cait.layers.class_attention_block",
        "keras_cait.layers.drop_path", "keras_cait.layers.embedding",
        "keras_cait.layers.layer_scale", "keras_cait.layers.mlp",
        "keras_cait.layers.position_embedding_resample",
        "keras_cait.layers.self_attention_block", "keras_cait.layers.talking_heads_attention",
        "keras_cait.convert", "keras_cait.convert.resample", "keras_cait.convert.timm_config",
        "keras_cait.convert.timm_export", "keras_cait.convert.timm_weights",
    ],
    3: [  # loading: from_preset, timm repos, safety checks
        "keras_cait.loading", "keras_cait.loading.keras_hub_dispatch",
        "keras_cait.loading.loader", "keras_cait.loading.safe_loading",
        "keras_cait.loading.timm_repo",
        # predict/export overrides attached to the models
        "keras_cait.runtime", "keras_cait.runtime.export", "keras_cait.runtime.predict",
        # derived models, photo lists, fit fixes
        "keras_cait.model_extensions", "keras_cait.model_extensions.derived_models",
        "keras_cait.model_extensions.image_lists", "keras_cait.model_extensions.layout_map",
        "keras_cait.model_extensions.quantization",
        "keras_cait.model_extensions.shuffled_batches",
        "keras_cait.model_extensions.training_state",
    ],
    4: [  # the model, in one folder (as KerasHub's models/vit/)
        "keras_cait.models", "keras_cait.models.cait_backbone",
        "keras_cait.models.cait_image_classifier",
        "keras_cait.models.cait_image_classifier_preprocessor",
        "keras_cait.models.cait_image_converter", "keras_cait.models.cait_presets",
    ],
    5: [  # applications on the model, one folder per concern; the public API
        "keras_cait.explain", "keras_cait.explain.saliency", "keras_cait.explain.visualization",
        "keras_cait.inference", "keras_cait.inference.artifact_export",
        "keras_cait.inference.batch_prediction", "keras_cait.inference.evaluation",
        "keras_cait.inference.image_pipeline", "keras_cait.inference.predictions",
        "keras_cait.inference.ray_prediction",
        "keras_cait.training", "keras_cait.training.finetuning", "keras_cait.training.resolution",
        "keras_cait",
    ],
    6: [  # the command line and checkpoint publishing (outside the package,
        # so that it starts at once)
        "keras_cait_cli", "keras_cait_cli.__main__", "keras_cait_cli.cache_weights",
        "keras_cait_cli.cached_predict", "keras_cait_cli.checks", "keras_cait_cli.convert",
        "keras_cait_cli.export_timm", "keras_cait_cli.main", "keras_cait_cli.predict",
    ],
}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}
ROOTS = ("keras_cait", "keras_cait_base", "keras_cait_cli")
# Imported only inside functions: the backends, and matplotlib (optional; Keras may on TF).
FUNCTION_ONLY_MODULES = {"tensorflow", "jax", "jaxlib", "torch", "matplotlib"}
LOCAL_IMPORT_REASON = re.compile(r"#.*\b(start-up|optional)\b")


def _module_name(path):
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _source_files():
    for root in ROOTS:
        yield from sorted((REPO / root).rglob("*.py"))


def _comments_by_line(source):
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {token.start[0]: token.string for token in tokens if token.type == tokenize.COMMENT}


def _imports(tree):
    """`(node, imported names, function_local)` for every import."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            local = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            if isinstance(child, ast.Import):
                yield child, [alias.name for alias in child.names], in_function
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, "relative imports are not used"
                names = [f"{child.module}.{alias.name}" for alias in child.names]
                yield child, [child.module, *names], in_function
            yield from walk(child, local)

    yield from walk(tree, False)


def _targets(names):
    """The modules of the table an import loads: each named module, and its
    parent packages below the roots (a root counts only when named)."""
    targets = set()
    for name in names:
        parts = name.split(".")
        if parts[0] not in ROOTS:
            continue
        for end in range(len(parts), 1, -1):
            if ".".join(parts[:end]) in LAYER_OF:
                targets.add(".".join(parts[:end]))
        if name in ROOTS:
            targets.add(name)
    return targets


def import_graph():
    """`{module: {imported module: [(line, function_local, comment)]}}`."""
    graph = {}
    for path in _source_files():
        module = _module_name(path)
        source = path.read_text()
        comments = _comments_by_line(source)
        edges = graph.setdefault(module, {})
        for node, names, local in _imports(ast.parse(source)):
            comment = comments.get(node.lineno) or comments.get(node.lineno - 1, "")
            for target in _targets(names):
                # A package's own modules load after its __init__ anyway.
                if target == module or module.startswith(target + "."):
                    continue
                edges.setdefault(target, []).append((node.lineno, local, comment))
            if local:
                edges.setdefault("<local>", []).append((node.lineno, names, comment))
    return graph


def test_every_module_is_in_the_layer_table_once():
    listed = [m for modules in LAYERS.values() for m in modules]
    assert len(listed) == len(set(listed)), "a module is listed twice"
    found = {_module_name(p) for p in _source_files()}
    assert found - set(listed) == set(), "modules missing from the layer table"
    assert set(listed) - found == set(), "the table lists modules that do not exist"


def test_no_import_goes_upward():
    upward = []
    for module, edges in import_graph().items():
        for target, sites in edges.items():
            if target == "<local>":
                continue
            if LAYER_OF[target] > LAYER_OF[module]:
                upward += [f"{module}:{line} -> {target}" for line, _, _ in sites]
    assert upward == []


def test_backends_and_matplotlib_are_imported_only_inside_functions():
    for path in _source_files():
        for _, names, local in _imports(ast.parse(path.read_text())):
            heavy = {name.split(".")[0] for name in names} & FUNCTION_ONLY_MODULES
            assert local or not heavy, (path, names)


def test_function_local_imports_say_why():
    unexplained = []
    for module, edges in import_graph().items():
        for line, names, comment in edges.get("<local>", []):
            if not LOCAL_IMPORT_REASON.search(comment):
                unexplained.append(f"{module}:{line} imports {names[0]}")
    assert unexplained == []


def _cycle(graph):
    """A cycle of `{module: {imported module}}` as a list of modules, or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def test_no_import_cycle():
    graph = {module: set(edges) - {"<local>"} for module, edges in import_graph().items()}
    assert _cycle(graph) is None


def test_the_checks_see_local_imports_and_cycles():
    tree = ast.parse("import os\nclass A:\n    import torch\n"
                     "def f():\n    from keras_cait_base.io import files\n")
    found = [(names, local) for _, names, local in _imports(tree)]
    assert found == [(["os"], False), (["torch"], False),
                     (["keras_cait_base.io", "keras_cait_base.io.files"], True)]
    assert _targets(["keras_cait.loading", "keras_cait.loading.loader"]) == {
        "keras_cait.loading", "keras_cait.loading.loader"}
    assert _targets(["keras_cait", "keras_cait.CaiTBackbone"]) == {"keras_cait"}
    assert set(_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})) == {"a", "b", "c"}
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.skipif(
    keras.config.backend() != "jax",
    reason="imports each module in a fresh process: run once (on jax)",
)
def test_each_module_imports_alone_in_a_fresh_process():
    """Each module is the first keras_cait module imported, in its own
    process. The heavy dependencies are imported once, in a parent that
    forks a child per module."""
    modules = [m for m in LAYER_OF if not m.endswith("__main__")]
    code = f"""
import os, sys, importlib, traceback
import keras, keras_hub, numpy, PIL.Image, h5py, huggingface_hub, safetensors
failures = []
for module in {modules!r}:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failures.append(module)
print("FAILED", failures)
"""
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, KERAS_BACKEND="jax"),
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.stdout.strip().splitlines()[-1] == "FAILED []", result.stderr[-3000:]


def test_readme_quotes_the_layer_table():
    """CONTRIBUTING.md's layer table: a row `| <layer> | <modules> | ... |`
    per layer, naming exactly that layer's modules in backquotes."""
    readme = (REPO / "CONTRIBUTING.md").read_text()
    quoted = {}
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) >= 2 and cells[0].isdigit():
            quoted[int(cells[0])] = sorted(re.findall(r"`([\w.]+)`", cells[1]))
    assert quoted == {layer: sorted(modules) for layer, modules in LAYERS.items()}
