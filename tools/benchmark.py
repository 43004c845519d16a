"""Benchmark keras-cait against timm: inference, training, conversion, saving.

Every backend runs in its own fresh subprocess. For each backend it reports
images/s of `model.predict` at the inference batch sizes and of
`train_on_batch` at the training batch size (median of repeated runs after
warm-up; the first call, which traces/compiles, is timed separately), the
peak resident memory of the process, `.keras` save/load times and the
achieved GFLOP/s against this machine's measured float32 matmul peak. timm's
model (PyTorch eager) runs side by side: each round runs timm, then every
backend, each in a fresh process, so the ratios divide figures measured in
the same run (`--rounds`). Where torchvision is missing, timm is imported
through `--timm-import` (`../shared/timm-import`, a stand-in for
torchvision's import-time names). The report names the CPU, its SIMD flags,
each process's thread counts and the load average at the start and end of
every worker, and the targets' status. It also times `from_preset` of a timm
checkpoint written with the seeded
recipe (time and peak memory increase against the weights' size), against a
load of the same weights from Keras's own `.weights.h5` (what a conversion
cache would cost at best), in alternating fresh processes.

Usage (the full run documented in BENCHMARKS.md):

    python tools/benchmark.py --model cait_xxs24_224 \
        --json-out benchmark.json --markdown-out benchmark.md

Quick mode (a tiny config, seconds; what the test-suite runs):

    python tools/benchmark.py --quick --backends jax --json-out out.json

The conversion alone, on several backends (BENCHMARKS.md):

    python tools/benchmark.py --conversion-only --conversion-model cait_m48_448 \
        --conversion-backends jax,tensorflow,torch --conversion-rounds 2

A custom configuration is JSON (inline or a file) of `CaiTBackbone`
arguments, optionally with `num_classes`:

    python tools/benchmark.py --config '{"hidden_dim": 192, "num_layers": 12,
        "num_heads": 4, "image_shape": [224, 224, 3]}'
"""

import argparse
import importlib
import importlib.abc
import importlib.machinery
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# openvino: Keras's inference-only backend (no training, no save/load rows).
BACKENDS = ("tensorflow", "jax", "torch", "openvino")
INFERENCE_ONLY_BACKENDS = ("openvino",)

DEFAULT_TIMM_IMPORT = REPO.parent / "shared" / "timm-import"
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
              "amx_tile", "amx_bf16")
# Issue 20's targets: predict img/s against timm's, per backend and batch, and
# inference peak RSS at most this multiple of timm's.
SPEED_TARGETS = {
    "tensorflow": {"1": 1.2, "32": 1.5},
    "jax": {"1": 1.2, "32": 1.5},
    "torch": {"1": 1.0, "32": 1.2},
}
RSS_TARGET = 2.0

QUICK_CONFIG = dict(
    image_shape=[32, 32, 3],
    patch_size=8,
    hidden_dim=48,
    num_layers=2,
    num_heads=4,
    num_class_attention_layers=2,
    num_classes=10,
)


# ---------------------------------------------------------------------------
# Configurations and FLOPs (pure Python). Shapes and timm keywords come from
# the package: `keras_cait.schema.checkpoint_layout` and
# `keras_cait.convert.timm_config.timm_arguments_from_keras`.


def resolve_model(model, config):
    """`(label, backbone_kwargs, num_classes, timm_architecture)`.

    Args:
        model: a timm CaiT architecture / preset name, or `None`.
        config: `None`, a JSON string, a path to a JSON file, or a dict of
            `CaiTBackbone` arguments (optionally with `num_classes`).
    """
    if config is not None:
        if isinstance(config, str):
            path = pathlib.Path(config)
            text = path.read_text() if path.is_file() else config
            try:
                config = json.loads(text)
            except json.JSONDecodeError as error:
                raise SystemExit(
                    f"--config: expected a JSON object or a JSON file, got "
                    f"{config!r} ({error})."
                ) from error
        if not isinstance(config, dict):
            raise SystemExit("--config: expected a JSON object of CaiTBackbone arguments.")
        config = dict(config)
        num_classes = int(config.pop("num_classes", 1000))
        config.setdefault("image_shape", [224, 224, 3])
        config["image_shape"] = tuple(config["image_shape"])
        return "custom", config, num_classes, None
    from keras_cait.convert.timm_config import (
        TIMM_ARCHITECTURES,
        backbone_kwargs_from_timm,
        classifier_kwargs_from_timm,
        resolve_timm_arguments,
    )

    if model not in TIMM_ARCHITECTURES:
        raise SystemExit(
            f"--model: {model!r} is not a CaiT architecture; expected one of "
            f"{sorted(TIMM_ARCHITECTURES)}, or pass --config."
        )
    arguments = resolve_timm_arguments(model, None, source="--model")
    num_classes = classifier_kwargs_from_timm(arguments)["num_classes"]
    return model, backbone_kwargs_from_timm(arguments), num_classes, model


def flops_per_image(backbone_kwargs, num_classes):
    """Floating-point operations (2 per multiply-add) of one forward pass."""
    from keras_cait.schema import BACKBONE_DEFAULTS

    k = {**BACKBONE_DEFAULTS, **backbone_kwargs}
    height, width, channels = k["image_shape"]
    p, d, h = k["patch_size"], k["hidden_dim"], k["num_heads"]
    n = (height // p) * (width // p)
    mlp = int(d * k["mlp_ratio"])
    mlp_ca = int(d * k["class_attention_mlp_ratio"])
    total = 2 * n * d * p * p * channels  # patch embedding
    self_block = (
        2 * n * d * 3 * d  # qkv
        + 2 * 2 * n * n * d  # q k^T and attention @ v, over all heads
        + 2 * 2 * h * h * n * n  # the two talking-heads mixes
        + 2 * n * d * d  # output projection
        + 2 * 2 * n * d * mlp  # MLP
    )
    class_block = (
        2 * d * d  # q (class token)
        + 2 * 2 * (n + 1) * d * d  # k, v
        + 2 * 2 * (n + 1) * d  # q k^T and attention @ v
        + 2 * d * d  # projection
        + 2 * 2 * d * mlp_ca  # MLP (class token)
    )
    total += k["num_layers"] * self_block
    total += k["num_class_attention_layers"] * class_block
    total += 2 * d * num_classes
    return total


# ---------------------------------------------------------------------------
# Measurements inside a worker process.


def _proc_status_mb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb():
    """The high-water mark of this process's resident memory, MiB: `VmHWM`,
    which starts afresh at `exec` (`ru_maxrss` keeps the parent's size across
    `fork` + `exec` on Linux, so a worker would report at least the size of
    the benchmark's own process)."""
    peak = _proc_status_mb("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return peak


def current_rss_mb():
    current = _proc_status_mb("VmRSS")
    return peak_rss_mb() if current is None else current


def cpu_description():
    """The CPU model (with its family and model numbers), which of
    `SIMD_FLAGS` it has, and how many CPUs this process may use."""
    info = {"model": platform.processor() or platform.machine(), "simd": []}
    try:
        with open("/proc/cpuinfo") as f:
            fields = {}
            for line in f:
                key, _, value = line.partition(":")
                if not key.strip():
                    break  # the first CPU's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        fields = {}
    if "model name" in fields:
        info["model"] = (
            f"{fields['model name']} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')})"
        )
    flags = set(fields.get("flags", "").split())
    info["simd"] = [flag for flag in SIMD_FLAGS if flag in flags]
    info["cpu_count"] = os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    return info


THREAD_ENVIRONMENT = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS", "XLA_FLAGS",
)


def thread_counts(framework):
    """The thread settings of this process: the framework's own intra-op and
    inter-op pools (0 means the framework's default, sized by itself), the
    environment variables that set them, and the OS threads running now."""
    counts = {"environment": {
        k: os.environ[k] for k in THREAD_ENVIRONMENT if k in os.environ
    }}
    if framework == "torch":
        import torch

        counts["intra_op"] = torch.get_num_threads()
        counts["inter_op"] = torch.get_num_interop_threads()
    elif framework == "tensorflow":
        import tensorflow as tf

        counts["intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        counts["inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
    elif framework == "jax":
        import jax

        counts["cpu_devices"] = jax.local_device_count()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                counts["os_threads"] = int(line.split()[1])
    return counts


def time_calls(function, warmup, repeats):
    """`(first_call_s, median_s, all_s)`: the first call, then `warmup`
    untimed calls, then `repeats` timed calls."""
    start = time.perf_counter()
    function()
    first = time.perf_counter() - start
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), times


def numpy_matmul_peak(size=2048, repeats=5):
    """float32 matmul GFLOP/s of NumPy's BLAS (best of `repeats`)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def backend_matmul_peak(size=2048, repeats=5):
    """float32 matmul GFLOP/s through `keras.ops.matmul` (best of
    `repeats`)."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.standard_normal((size, size), dtype=np.float32))
    b = keras.ops.convert_to_tensor(rng.standard_normal((size, size), dtype=np.float32))
    keras.ops.convert_to_numpy(keras.ops.matmul(a, b))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def worker_keras(spec):
    """Benchmarks keras-cait on the current backend (`KERAS_BACKEND`)."""
    import keras
    import numpy as np

    import keras_cait

    backend = keras.backend.backend()
    result = {"backend": backend, "keras": keras.__version__,
              "keras_cait_path": os.path.dirname(keras_cait.__file__),
              "load_average_start": os.getloadavg(),
              "rss_after_import_mb": current_rss_mb()}
    if spec.get("dtype"):
        keras.config.set_dtype_policy(spec["dtype"])
    result["dtype_policy"] = keras.config.dtype_policy().name
    result["matmul_peak_gflops"] = backend_matmul_peak(spec["matmul_size"])

    start = time.perf_counter()
    backbone = keras_cait.CaiTBackbone(**spec["backbone_kwargs"])
    model = keras_cait.CaiTImageClassifier(backbone, num_classes=spec["num_classes"])
    result["build_s"] = time.perf_counter() - start
    result["num_params"] = int(model.count_params())
    result["jit_compile"] = bool(model.jit_compile)
    image_shape = tuple(spec["backbone_kwargs"]["image_shape"])
    rng = np.random.default_rng(0)

    inference = {}
    for batch in spec["batch_sizes"]:
        images = rng.standard_normal((batch,) + image_shape, dtype=np.float32)
        first, median, times = time_calls(
            lambda images=images, batch=batch: model.predict(
                images, batch_size=batch, verbose=0
            ),
            spec["warmup"],
            spec["repeats"],
        )
        inference[str(batch)] = {
            "first_call_s": first,
            "median_s": median,
            "images_per_s": batch / median,
            "times_s": times,
            "peak_rss_mb": peak_rss_mb(),
        }
    result["inference"] = inference
    result["peak_rss_inference_mb"] = peak_rss_mb()

    batch = spec["train_batch_size"]
    if batch and backend not in INFERENCE_ONLY_BACKENDS:
        images = rng.standard_normal((batch,) + image_shape, dtype=np.float32)
        labels = rng.integers(0, max(spec["num_classes"], 1), size=(batch,))
        first, median, times = time_calls(
            lambda: model.train_on_batch(images, labels),
            spec["warmup"],
            spec["train_repeats"],
        )
        result["training"] = {
            "batch_size": batch,
            "first_call_s": first,
            "median_s": median,
            "images_per_s": batch / median,
            "times_s": times,
        }
        result["peak_rss_training_mb"] = peak_rss_mb()

    if spec["save_load"] and backend not in INFERENCE_ONLY_BACKENDS:
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "model.keras")
            start = time.perf_counter()
            model.save(path)
            save_s = time.perf_counter() - start
            size = os.path.getsize(path)
            start = time.perf_counter()
            restored = keras.saving.load_model(path)
            load_s = time.perf_counter() - start
            probe = rng.standard_normal((1,) + image_shape, dtype=np.float32)
            same = np.allclose(
                restored.predict_on_batch(probe),
                model.predict_on_batch(probe),
                atol=1e-5,
            )
        result["save_load"] = {
            "save_s": save_s,
            "load_s": load_s,
            "file_mb": size / 2**20,
            "outputs_match": bool(same),
        }
    result["peak_rss_mb"] = peak_rss_mb()
    result["threads"] = thread_counts(backend)
    result["load_average_end"] = os.getloadavg()
    return result


def import_timm(timm_import):
    """`(timm, through_stand_in)`: timm as installed, or, where its import
    fails for want of torchvision, through the torchvision stand-in in the
    directory `timm_import` (see its README)."""
    try:
        import timm

        return timm, False
    except Exception as error:  # ImportError, or a broken torchvision
        if not timm_import or not os.path.isdir(timm_import):
            raise
        for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
            del sys.modules[name]
        sys.path.insert(0, timm_import)
        try:
            importlib.import_module("torchvision_stub")  # before timm
            import timm
        except Exception:
            raise error from None
        return timm, True


FRAMEWORK_MODULES = {
    "tensorflow": ("tensorflow", "tensorflow_text"),
    "jax": ("jax", "jaxlib"),
    "torch": ("torch",),
}


class _NotInstalled(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ModuleNotFoundError(
            f"No module named {module.__name__!r} (hidden by the benchmark)",
            name=module.__name__,
        )


class _HideModules(importlib.abc.MetaPathFinder):
    """Makes the top-level packages `names` import as if not installed."""

    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, _NotInstalled())
        return None


def worker_keras_one_framework(spec):
    """Peak resident memory of keras-cait's `predict` as in an install of
    one backend only (`pip install keras-cait[jax]`): the other frameworks
    import as if missing (KerasHub imports TensorFlow whenever it can)."""
    backend = os.environ["KERAS_BACKEND"]
    sys.meta_path.insert(0, _HideModules(
        m for b, modules in FRAMEWORK_MODULES.items() if b != backend for m in modules
    ))
    import numpy as np

    import keras_cait

    result = {"rss_after_import_mb": current_rss_mb(),
              "frameworks": sorted(b for b in FRAMEWORK_MODULES if b in sys.modules)}
    backbone = keras_cait.CaiTBackbone(**spec["backbone_kwargs"])
    model = keras_cait.CaiTImageClassifier(backbone, num_classes=spec["num_classes"])
    image_shape = tuple(spec["backbone_kwargs"]["image_shape"])
    result["inference"] = {}
    for batch in spec["batch_sizes"]:
        images = np.zeros((batch,) + image_shape, dtype=np.float32)
        for _ in range(2):
            model.predict(images, batch_size=batch, verbose=0)
        result["inference"][str(batch)] = {"peak_rss_mb": peak_rss_mb()}
    return result


def worker_timm(spec):
    """Benchmarks timm's model (PyTorch eager), or says why it cannot."""
    load_average_start = os.getloadavg()
    try:
        timm, through_stand_in = import_timm(spec.get("timm_import"))
        import torch
    except Exception as error:  # ImportError, or a broken torchvision
        return {
            "available": False,
            "reason": f"timm cannot be imported: {type(error).__name__}: {error}",
        }
    import numpy as np

    result = {"available": True, "timm": timm.__version__, "torch": torch.__version__,
              "torchvision_stand_in": through_stand_in,
              "load_average_start": load_average_start,
              "rss_after_import_mb": current_rss_mb()}
    if spec["timm_architecture"]:
        model = timm.create_model(spec["timm_architecture"], pretrained=False)
    else:
        from timm.models.cait import Cait

        model = Cait(**spec["timm_kwargs"])
    model.eval()
    height, width, channels = spec["backbone_kwargs"]["image_shape"]
    rng = np.random.default_rng(0)
    inference = {}
    for batch in spec["batch_sizes"]:
        images = torch.from_numpy(
            rng.standard_normal((batch, channels, height, width), dtype=np.float32)
        )

        def run(images=images):
            with torch.no_grad():
                return model(images).numpy()

        first, median, times = time_calls(run, spec["warmup"], spec["repeats"])
        inference[str(batch)] = {
            "first_call_s": first,
            "median_s": median,
            "images_per_s": batch / median,
            "times_s": times,
            "peak_rss_mb": peak_rss_mb(),
        }
    result["inference"] = inference
    result["peak_rss_inference_mb"] = peak_rss_mb()
    batch = spec["train_batch_size"]
    if batch:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-5)
        images = torch.from_numpy(
            rng.standard_normal((batch, channels, height, width), dtype=np.float32)
        )
        labels = torch.from_numpy(rng.integers(0, spec["num_classes"], size=(batch,)))

        def step():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            return float(loss)

        first, median, times = time_calls(step, spec["warmup"], spec["train_repeats"])
        result["training"] = {
            "batch_size": batch,
            "first_call_s": first,
            "median_s": median,
            "images_per_s": batch / median,
            "times_s": times,
        }
    result["peak_rss_mb"] = peak_rss_mb()
    result["keras_imported"] = "keras" in sys.modules
    result["threads"] = thread_counts("torch")
    result["load_average_end"] = os.getloadavg()
    return result


def worker_write_checkpoint(spec):
    """Writes a timm-format directory (config.json + model.safetensors) with
    the seeded recipe's weights."""
    from safetensors.numpy import save_file

    from keras_cait.convert.timm_config import timm_arguments_from_keras
    from keras_cait.schema import checkpoint_layout
    from keras_cait.testing import seeded_state_dict

    layout = checkpoint_layout(spec["backbone_kwargs"], spec["num_classes"])
    state_dict = seeded_state_dict({t.key: t.shape for t in layout}, seed=0)
    directory = spec["directory"]
    os.makedirs(directory, exist_ok=True)
    architecture = spec["timm_architecture"] or "cait_xxs24_224"
    model_args = timm_arguments_from_keras(
        spec["backbone_kwargs"], {"num_classes": spec["num_classes"]}
    )
    config = {
        "architecture": architecture,
        "num_classes": spec["num_classes"],
        "model_args": model_args,
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(state_dict, os.path.join(directory, "model.safetensors"))
    return {
        "num_params": int(sum(a.size for a in state_dict.values())),
        "weights_mb": sum(a.nbytes for a in state_dict.values()) / 2**20,
    }


def _timed_load(load, weights_path):
    """Times `load()` (which returns a model) in this fresh process, and the
    peak memory it adds, against the size of `weights_path`."""
    import keras

    weights_mb = os.path.getsize(weights_path) / 2**20
    before_mb = current_rss_mb()
    start = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    return {
        "backend": keras.backend.backend(),
        "seconds": seconds,
        "num_params": int(model.count_params()),
        "weights_mb": weights_mb,
        "rss_before_mb": before_mb,
        "peak_rss_mb": peak_mb,
        "peak_increase_mb": peak_mb - before_mb,
        "peak_increase_over_weights": (peak_mb - before_mb) / weights_mb,
    }


def worker_convert(spec):
    """Times `CaiTImageClassifier.from_preset` on a timm directory (build,
    read, transpose and assign every tensor) and its peak memory."""
    import keras_cait

    return _timed_load(
        lambda: keras_cait.CaiTImageClassifier.from_preset(spec["directory"]),
        os.path.join(spec["directory"], "model.safetensors"),
    )


def worker_save_keras_weights(spec):
    """Converts the timm directory once and saves the model's weights in
    Keras's own format (what a conversion cache would store)."""
    import keras_cait

    model = keras_cait.CaiTImageClassifier.from_preset(spec["directory"])
    model.save_weights(spec["keras_weights"])
    return {"keras_weights_mb": os.path.getsize(spec["keras_weights"]) / 2**20}


def worker_load_keras_weights(spec):
    """Times what a load from a conversion cache stored in Keras's own
    weight files would cost at best: building the same model
    (`from_preset(..., load_weights=False)`) and `model.load_weights`."""
    import keras_cait

    def load():
        model = keras_cait.CaiTImageClassifier.from_preset(
            spec["directory"], load_weights=False
        )
        model.load_weights(spec["keras_weights"])
        return model

    return _timed_load(load, os.path.join(spec["directory"], "model.safetensors"))


WORKERS = {
    "keras": worker_keras,
    "timm": worker_timm,
    "keras_one_framework": worker_keras_one_framework,
    "write_checkpoint": worker_write_checkpoint,
    "convert": worker_convert,
    "save_keras_weights": worker_save_keras_weights,
    "load_keras_weights": worker_load_keras_weights,
    "numpy_matmul": lambda spec: {"gflops": numpy_matmul_peak(spec["matmul_size"])},
}


def run_worker(kind, spec, backend=None, timeout=3600, env=None, tree=REPO):
    """Runs one worker in a fresh Python process, importing the keras_cait of
    the checkout `tree`; returns its JSON result (or `{"error": ...}`)."""
    full_env = dict(os.environ)
    if backend:
        full_env["KERAS_BACKEND"] = backend
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(tree), full_env.get("PYTHONPATH")])
    )
    with tempfile.TemporaryDirectory() as directory:
        spec_path = os.path.join(directory, "spec.json")
        out_path = os.path.join(directory, "result.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        command = [
            sys.executable, os.path.abspath(__file__),
            "--worker", kind, "--worker-spec", spec_path, "--worker-out", out_path,
        ]
        try:
            process = subprocess.run(
                command, env=full_env, capture_output=True, text=True,
                timeout=timeout, cwd=tree,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"{kind} worker timed out after {timeout} s"}
        if process.returncode != 0 or not os.path.exists(out_path):
            tail = (process.stderr or process.stdout)[-3000:]
            return {"error": f"{kind} worker failed (exit {process.returncode}):\n{tail}"}
        with open(out_path) as f:
            return json.load(f)


def conversion_benchmark(label, backbone_kwargs, num_classes, architecture,
                         backends, rounds, timeout):
    """Writes a seeded timm checkpoint, then times, for each backend, its
    `from_preset` load against a load of the same weights from Keras's own
    `.weights.h5` (what a conversion cache would cost at best), `rounds`
    fresh processes of each, alternating."""
    with tempfile.TemporaryDirectory() as directory:
        spec = dict(
            backbone_kwargs=backbone_kwargs, num_classes=num_classes,
            timm_architecture=architecture,
            directory=os.path.join(directory, "checkpoint"),
            keras_weights=os.path.join(directory, "model.weights.h5"),
        )
        written = run_worker("write_checkpoint", spec, timeout=timeout)
        if "error" in written:
            return {"error": written["error"], "model": label}
        conversion = {"model": label, "backends": {}, "cache_saving": {}, **written}
        errors = []
        for backend in backends:
            saved = run_worker("save_keras_weights", spec, backend=backend, timeout=timeout)
            if "error" in saved:
                errors.append(saved["error"])
                continue
            runs = {"from_preset": [], "from_keras_weights": []}
            for _ in range(rounds):
                for name, worker in (("from_preset", "convert"),
                                     ("from_keras_weights", "load_keras_weights")):
                    result = run_worker(worker, spec, backend=backend, timeout=timeout)
                    if "error" in result:
                        errors.append(result["error"])
                    else:
                        runs[name].append(result)
            if all(runs.values()):
                conversion["backends"][backend] = runs
                conversion["cache_saving"][backend] = 1 - statistics.median(
                    r["seconds"] for r in runs["from_keras_weights"]
                ) / statistics.median(r["seconds"] for r in runs["from_preset"])
        if errors:
            conversion["error"] = "\n".join(errors)
        return conversion


# ---------------------------------------------------------------------------
# Report.


def _fmt(value, digits=1):
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def side_by_side(results):
    """keras-cait against timm from the workers of one run: per backend and
    batch, the median images/s over processes and its ratio to timm's; the
    peak RSS after each batch and its ratio to timm's; each against
    `SPEED_TARGETS` / `RSS_TARGET`."""
    timm_runs = results.get("timm_runs") or []
    if not timm_runs:
        return {}
    batches = [str(b) for b in results["setup"]["batch_sizes"]]

    def summary(runs):
        return {
            "images_per_s": {b: statistics.median(
                r["inference"][b]["images_per_s"] for r in runs) for b in batches},
            "peak_rss_mb": {b: statistics.median(
                r["inference"][b]["peak_rss_mb"] for r in runs) for b in batches},
            "rss_after_import_mb": statistics.median(
                r["rss_after_import_mb"] for r in runs),
        }

    timm = summary(timm_runs)
    table = {"timm": timm}
    for backend, runs in results["keras_runs"].items():
        runs = [r for r in runs if "error" not in r]
        if not runs:
            continue
        entry = summary(runs)
        entry["speed"] = {}
        entry["rss"] = {}
        for b in batches:
            ratio = entry["images_per_s"][b] / timm["images_per_s"][b]
            target = SPEED_TARGETS.get(backend, {}).get(b)
            entry["speed"][b] = {"ratio": ratio, "target": target,
                                 "met": None if target is None else ratio >= target}
            rss_ratio = entry["peak_rss_mb"][b] / timm["peak_rss_mb"][b]
            entry["rss"][b] = {"ratio": rss_ratio, "target": RSS_TARGET,
                               "met": rss_ratio <= RSS_TARGET}
            alone = results.get("one_framework", {}).get(backend, {})
            if "inference" in alone:
                alone_ratio = alone["inference"][b]["peak_rss_mb"] / timm["peak_rss_mb"][b]
                entry["rss_one_framework"] = entry.get("rss_one_framework", {})
                entry["rss_one_framework"][b] = {
                    "peak_rss_mb": alone["inference"][b]["peak_rss_mb"],
                    "ratio": alone_ratio, "met": alone_ratio <= RSS_TARGET}
        table[backend] = entry
    return table


def _verdict(ratio, target, at_least=True):
    if target is None:
        return f"{ratio:.2f}×"
    met = ratio >= target if at_least else ratio <= target
    if met:
        return f"{ratio:.2f}× (met, target {'≥' if at_least else '≤'} {target}×)"
    miss = 1 - ratio / target if at_least else ratio / target - 1
    return f"**{ratio:.2f}×** (missed by {100 * miss:.0f}%, target {'≥' if at_least else '≤'} {target}×)"


def markdown_report(results):
    """The results as Markdown tables."""
    lines = []
    setup = results["setup"]
    if setup.get("conversion_only"):
        lines.append(f"Command: `{setup['command']}`")
        lines.append("")
        _conversion_report(results, lines)
        return "\n".join(lines) + "\n"
    cpu = setup["cpu"]
    lines.append(
        f"Model `{setup['model']}` ({setup['gflop_per_image']:.3g} GFLOP per image). "
        f"CPU: {cpu['model']}, {cpu.get('usable_cpus', cpu['cpu_count'])} of "
        f"{cpu['cpu_count']} CPUs usable, SIMD: {', '.join(cpu['simd']) or 'none listed'}; "
        f"Python {setup['python']}. Each value is the median of {setup['repeats']} "
        f"calls after {setup['warmup']} warm-up in one fresh process; "
        f"{setup['rounds']} round(s) of processes (timm, then each backend), "
        "alternating; a row gives the median over its processes."
    )
    lines.append("")
    lines.append(f"Command: `{setup['command']}`")
    lines.append("")
    lines.append(
        "Load average (1, 5, 15 min) at the start "
        + ", ".join(f"{v:.2f}" for v in setup["load_average"])
        + ", at the end "
        + ", ".join(f"{v:.2f}" for v in setup["load_average_end"])
        + "."
    )
    lines.append("")
    timm = results["timm"]
    if timm.get("available"):
        lines.append(
            f"timm {timm['timm']} (torch {timm['torch']}, eager, `torch.no_grad`"
            + (", imported through the torchvision stand-in" if timm.get("torchvision_stand_in") else "")
            + ") measured side by side in the same run."
        )
    else:
        lines.append(f"timm: not measured: {timm.get('reason', timm.get('error'))}.")
    lines.append("")
    batches = [str(b) for b in setup["batch_sizes"]]
    header = ["backend", "jit"]
    for b in batches:
        header += [f"predict b{b} img/s (each process)", f"first call b{b} s"]
    header += ["GFLOP/s (% of peak)", "train img/s", "train first s",
               "peak RSS MB after " + " / ".join(f"b{b}" for b in batches),
               "RSS after imports MB", "save s", "load s"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    peak = results.get("matmul_peak_gflops")
    rows = {b: results["keras_runs"].get(b, [r]) for b, r in results["keras"].items()}
    if timm.get("available"):
        rows = {"timm (torch eager)": results["timm_runs"], **rows}
    for name, runs in rows.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            lines.append(f"| {name} | error: {runs[-1]['error'].splitlines()[0]} |")
            continue
        last = good[-1]
        row = [name, str(last.get("jit_compile", "eager"))]
        best = 0
        for b in batches:
            values = [r["inference"][b]["images_per_s"] for r in good]
            ips = statistics.median(values)
            row += [_fmt(ips) + " (" + ", ".join(_fmt(v) for v in values) + ")",
                    _fmt(statistics.median(r["inference"][b]["first_call_s"] for r in good), 2)]
            best = max(best, ips)
        gflops = best * setup["gflop_per_image"]
        row.append(f"{gflops:.0f} ({100 * gflops / peak:.0f}%)" if peak else f"{gflops:.0f}")
        training = last.get("training")
        row += [_fmt(training["images_per_s"]) if training else "n/a",
                _fmt(training["first_call_s"], 2) if training else "n/a",
                " / ".join(_fmt(statistics.median(r["inference"][b]["peak_rss_mb"] for r in good), 0)
                           for b in batches),
                _fmt(statistics.median(r["rss_after_import_mb"] for r in good), 0)]
        save = last.get("save_load")
        row += [_fmt(save["save_s"], 2), _fmt(save["load_s"], 2)] if save else ["n/a", "n/a"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if peak:
        lines.append(
            f"Matmul peak (float32, {setup['matmul_size']}²): "
            + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in results["matmul_peaks"].items())
            + f"; the percentage uses the best, {peak:.0f} GFLOP/s."
        )
        lines.append("")
    _threads_report(results, rows, lines)
    _targets_report(results, lines)
    _comparison_report(results, lines)
    _conversion_report(results, lines)
    return "\n".join(lines) + "\n"


def _threads_report(results, rows, lines):
    lines.append("| process | intra-op threads | inter-op threads | OS threads | environment | load at start → end |")
    lines.append("|---|---|---|---|---|---|")
    for name, runs in rows.items():
        for r in runs:
            if "threads" not in r:
                continue
            t = r["threads"]
            env = ", ".join(f"{k}={v}" for k, v in t["environment"].items()) or "none"
            lines.append(
                f"| {name} | {t.get('intra_op', 'n/a')} | {t.get('inter_op', 'n/a')} | "
                f"{t.get('os_threads', 'n/a')} | {env} | "
                f"{r['load_average_start'][0]:.2f} → {r['load_average_end'][0]:.2f} |"
            )
    lines.append("")
    lines.append(
        "Intra-/inter-op threads are the framework's settings (0: its default, "
        "sized by itself; JAX's XLA:CPU sizes its pool to the CPUs); OS threads "
        "is the process's thread count at the end."
    )
    lines.append("")


def _targets_report(results, lines):
    table = results.get("side_by_side")
    if not table:
        return
    batches = [str(b) for b in results["setup"]["batch_sizes"]]
    lines.append(
        "Against timm, side by side (ratio of the medians over processes; peak "
        "RSS of the process after the batch's calls):"
    )
    lines.append("")
    header = ["backend"] + [f"predict b{b} × timm" for b in batches] + [
        f"peak RSS b{b} × timm" for b in batches] + [
        f"peak RSS b{b} × timm, this backend alone" for b in batches]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for backend, entry in table.items():
        if backend == "timm":
            continue
        row = [backend]
        row += [_verdict(entry["speed"][b]["ratio"], entry["speed"][b]["target"]) for b in batches]
        row += [_verdict(entry["rss"][b]["ratio"], RSS_TARGET, at_least=False) for b in batches]
        alone = entry.get("rss_one_framework", {})
        row += [
            f"{alone[b]['peak_rss_mb']:.0f} MB: "
            + _verdict(alone[b]["ratio"], RSS_TARGET, at_least=False)
            if b in alone else "n/a" for b in batches
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "\"This backend alone\": a fresh process in which the other frameworks "
        "import as if not installed, as in `pip install keras-cait[jax]` "
        "(KerasHub imports TensorFlow whenever it is installed, and Keras "
        "imports JAX for its Orbax callback). timm's processes import torch alone."
    )
    lines.append("")


def _median_images_per_s(runs, batch):
    values = [r["inference"][batch]["images_per_s"] for r in runs if "error" not in r]
    return statistics.median(values) if values else None, values


def _comparison_report(results, lines):
    comparison = results.get("comparison")
    if not comparison:
        return
    baseline = results["baseline"]
    lines.append(
        f"This tree (after) against `{baseline['tree']}` (before): "
        f"{results['setup']['rounds']} fresh worker processes per tree and backend, "
        "alternating; each value is one process's median; the ratio is of the "
        "medians over processes, and of the fastest processes (this machine's "
        "speed can change for seconds to minutes at a time, timm's too, so the "
        "fastest process of each tree shows both at the machine's best). "
        "Load average (1, 5, 15 min) at the start "
        + ", ".join(f"{v:.2f}" for v in results["setup"]["load_average"])
        + ", at the end "
        + ", ".join(f"{v:.2f}" for v in results["setup"]["load_average_end"])
        + "."
    )
    lines.append("")
    lines.append(
        "| backend | batch | after img/s | before img/s | after/before "
        "| fastest after/before |"
    )
    lines.append("|---|---|---|---|---|---|")
    for backend, runs in comparison.items():
        for batch in (str(b) for b in results["setup"]["batch_sizes"]):
            after, after_values = _median_images_per_s(runs["after"], batch)
            before, before_values = _median_images_per_s(runs["before"], batch)
            ratio = _fmt(after / before, 3) if after and before else "n/a"
            best = (
                _fmt(max(after_values) / max(before_values), 3)
                if after and before else "n/a"
            )
            lines.append(
                f"| {backend} | {batch} | {', '.join(_fmt(v) for v in after_values)} | "
                f"{', '.join(_fmt(v) for v in before_values)} | {ratio} | {best} |"
            )
    lines.append("")


def _conversion_report(results, lines):
    conversion = results.get("conversion")
    if not conversion:
        return
    if "error" in conversion:
        lines.append(f"Conversion: error: {conversion['error']}")
        return
    lines.append(
        f"Loading `{conversion['model']}` ({conversion['num_params']:,} parameters, "
        f"{conversion['weights_mb']:.0f} MB of float32 weights written by the seeded "
        "recipe as a timm `model.safetensors`), each row a fresh process, the two "
        "kinds alternating; peak memory is the increase of the process's "
        "high-water mark over its size before the call:"
    )
    lines.append("")
    lines.append("| backend | load | times s | median s | peak increase MB (× weights) |")
    lines.append("|---|---|---|---|---|")
    for backend, runs in conversion["backends"].items():
        for name, label in (
            ("from_preset", "`CaiTImageClassifier.from_preset(dir)` (timm file)"),
            ("from_keras_weights", "build + `load_weights` (Keras `.weights.h5`, a cache's best case)"),
        ):
            rows = runs[name]
            peak = max(r["peak_increase_mb"] for r in rows)
            lines.append(
                f"| {backend} | {label} | "
                + ", ".join(f"{r['seconds']:.1f}" for r in rows)
                + f" | {statistics.median(r['seconds'] for r in rows):.1f} | "
                f"{peak:.0f} ({peak / conversion['weights_mb']:.2f}×) |"
            )
    lines.append("")
    lines.append(
        "Time a conversion cache would save (1 − cached / uncached medians): "
        + ", ".join(
            f"{backend} {100 * saving:.0f}%"
            for backend, saving in conversion["cache_saving"].items()
        )
        + "."
    )


def _is_error(process):
    return "error" in process or process.get("available") is False


def _has_figures(process, batch, keys):
    """Whether `process["inference"][batch]` has a positive number per key."""
    try:
        values = [process["inference"][batch][key] for key in keys]
    except (KeyError, TypeError):
        return False
    return all(isinstance(v, (int, float)) and v > 0 for v in values)


def _check_processes(path, key, processes, batches):
    """Each measured process of a run has positive images/s and peak RSS at
    every batch size; entries with an error are left for the caller."""
    if not isinstance(processes, list):
        raise SystemExit(f"--pool: {path}: '{key}' must be a list of processes.")
    for index, process in enumerate(processes):
        if not isinstance(process, dict):
            raise SystemExit(f"--pool: {path}: '{key}[{index}]' must be an object.")
        if _is_error(process):
            continue
        for batch in batches:
            if not _has_figures(process, batch, ("images_per_s", "peak_rss_mb")):
                raise SystemExit(
                    f"--pool: {path}: '{key}[{index}].inference.{batch}' must "
                    "have positive 'images_per_s' and 'peak_rss_mb'."
                )


def _read_run(path):
    """A run's `--json-out`, checked for what `pool_runs` reads."""
    try:
        with open(path) as f:
            run = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"--pool: cannot read {path}: {error}") from None
    setup = run.get("setup") if isinstance(run, dict) else None
    if not isinstance(setup, dict) or not isinstance(setup.get("batch_sizes"), list):
        raise SystemExit(
            f"--pool: {path} is not a run's --json-out: no 'setup.batch_sizes' list."
        )
    batches = [str(b) for b in setup["batch_sizes"]]
    for key in ("keras_runs", "comparison", "one_framework"):
        if not isinstance(run.setdefault(key, {}), dict):
            raise SystemExit(f"--pool: {path}: '{key}' must be an object.")
    run["timm_runs"] = run.get("timm_runs") or []
    _check_processes(path, "timm_runs", run["timm_runs"], batches)
    for backend, processes in run["keras_runs"].items():
        _check_processes(path, f"keras_runs.{backend}", processes, batches)
    for backend, sides in run["comparison"].items():
        if not isinstance(sides, dict) or not {"after", "before"} <= sides.keys():
            raise SystemExit(
                f"--pool: {path}: 'comparison.{backend}' must have 'after' and 'before'."
            )
        for side in ("after", "before"):
            _check_processes(path, f"comparison.{backend}.{side}", sides[side], batches)
    return run


def pool_runs(paths, backends):
    """One results dict from several runs' `--json-out` files of the same
    model and batch sizes, with every run's worker processes together: a
    median over 3 processes per tree moves with one slow process, a median
    over all of them less. The `--baseline` comparison and timm are pooled
    too; "this backend alone" is the median over the runs' processes."""
    runs = [_read_run(path) for path in paths]
    first = runs[0]["setup"]
    for path, run in zip(paths, runs):
        for key in ("model", "batch_sizes"):
            if run["setup"].get(key) != first.get(key):
                raise SystemExit(
                    f"--pool: {path} has {key} {run['setup'].get(key)!r}, "
                    f"{paths[0]} has {first.get(key)!r}."
                )
    batches = [str(b) for b in first["batch_sizes"]]
    pooled = {
        "setup": {"model": first.get("model"), "batch_sizes": first["batch_sizes"]},
        "pooled_from": [str(path) for path in paths],
        "timm_runs": [
            p for run in runs for p in run["timm_runs"] if not _is_error(p)
        ],
        "keras_runs": {}, "comparison": {}, "one_framework": {},
    }

    def measured(processes):
        return [p for p in processes if not _is_error(p)]

    for backend in backends:
        processes = measured(
            p for run in runs for p in run["keras_runs"].get(backend, [])
        )
        if not processes:
            continue
        pooled["keras_runs"][backend] = processes
        if all(backend in run["comparison"] for run in runs):
            sides = {
                side: measured(
                    p for run in runs for p in run["comparison"][backend][side]
                )
                for side in ("after", "before")
            }
            if sides["after"] and sides["before"]:
                pooled["comparison"][backend] = sides
        alone = [
            run["one_framework"][backend] for run in runs
            if all(
                _has_figures(run["one_framework"].get(backend), b, ("peak_rss_mb",))
                for b in batches
            )
        ]
        if alone:
            pooled["one_framework"][backend] = {"inference": {b: {
                "peak_rss_mb": statistics.median(
                    a["inference"][b]["peak_rss_mb"] for a in alone)
            } for b in batches}}
    if not pooled["keras_runs"]:
        raise SystemExit(
            f"--pool: no measured keras-cait process for {', '.join(backends)} "
            f"in {', '.join(map(str, paths))}."
        )
    pooled["side_by_side"] = side_by_side(pooled)
    return pooled


def pool_report(pooled):
    """Markdown for `pool_runs`: the targets against timm and after/before."""
    lines = [
        "Pooled over " + ", ".join(f"`{p}`" for p in pooled["pooled_from"])
        + f": {len(pooled['timm_runs'])} timm processes; "
        + ", ".join(f"{b} {len(r)}" for b, r in pooled["keras_runs"].items())
        + " keras-cait processes.",
        "",
    ]
    _targets_report(pooled, lines)
    if pooled["comparison"]:
        lines += [
            "| backend | batch | processes per tree | after/before (medians) "
            "| fastest after/before |",
            "|---|---|---|---|---|",
        ]
        for backend, runs in pooled["comparison"].items():
            for batch in (str(b) for b in pooled["setup"]["batch_sizes"]):
                after, after_values = _median_images_per_s(runs["after"], batch)
                before, before_values = _median_images_per_s(runs["before"], batch)
                if not (after and before):
                    continue
                lines.append(
                    f"| {backend} | {batch} | {len(after_values)} / "
                    f"{len(before_values)} | {after / before:.3f} | "
                    f"{max(after_values) / max(before_values):.3f} |"
                )
        lines.append("")
    return "\n".join(lines)


def _atomic_write(path, text):
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.dirname(path)):
        raise SystemExit(f"Cannot write {path}: {os.path.dirname(path)} is not a folder.")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".benchmark-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def parse_int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from error
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_backends(text):
    backends = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if not backends or unknown:
        raise argparse.ArgumentTypeError(
            f"expected backends among {','.join(BACKENDS)}, got {text!r}"
        )
    return backends


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="timm CaiT architecture / preset name (default cait_xxs24_224)")
    parser.add_argument("--config", default=None,
                        help="JSON (inline or file) of CaiTBackbone arguments, optionally num_classes")
    parser.add_argument("--backends", type=parse_backends, default=list(BACKENDS))
    parser.add_argument("--batch-sizes", type=parse_int_list, default=None,
                        help="inference batch sizes (default 1,32)")
    parser.add_argument("--train-batch-size", type=int, default=None,
                        help="training batch size, 0 to skip (default 16)")
    parser.add_argument("--repeats", type=int, default=None, help="timed inference runs (default 5)")
    parser.add_argument("--train-repeats", type=int, default=None, help="timed training steps (default 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed runs after the first call (default 1; quick: 0)")
    parser.add_argument("--conversion-model", default=None,
                        help="architecture for the from_preset conversion benchmark "
                             "(default cait_m48_448; 'none' to skip; quick mode: the quick config)")
    parser.add_argument("--conversion-backends", type=parse_backends, default=["jax"],
                        help="backends of the conversion benchmark (default jax)")
    parser.add_argument("--conversion-rounds", type=int, default=None,
                        help="fresh processes per kind of load and backend, alternating "
                             "(default 2; quick: 1)")
    parser.add_argument("--conversion-only", action="store_true",
                        help="only the from_preset conversion benchmark (no inference, "
                             "training, timm or matmul peak)")
    parser.add_argument("--no-save-load", action="store_true", help="skip .keras save/load timing")
    parser.add_argument("--no-timm", action="store_true", help="skip timm")
    parser.add_argument("--dtype", default=None,
                        help="Keras dtype policy, e.g. float32, mixed_bfloat16")
    parser.add_argument("--matmul-size", type=int, default=None, help="matmul peak size (default 2048)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny config, small batches, few repeats (CI smoke run)")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="another keras-cait checkout (e.g. a worktree of main): its "
                             "workers alternate with this tree's; reports after/before ratios")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of fresh workers (timm, then each backend), "
                             "alternating (default 2; quick: 1; with --baseline: 3)")
    parser.add_argument("--timm-import", default=str(DEFAULT_TIMM_IMPORT), metavar="DIR",
                        help="directory of the torchvision stand-in that lets timm import "
                             "where torchvision is missing (default ../shared/timm-import)")
    parser.add_argument("--pool", nargs="+", default=None, metavar="RUN.json",
                        help="pool the processes of these runs' --json-out files "
                             "(same model and batch sizes) and report their ratios; "
                             "--backends picks the backends; runs nothing")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per worker")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--markdown-out", default=None)
    parser.add_argument("--collection", nargs=argparse.REMAINDER, metavar="OPTION",
                        help="run the collection benchmark instead "
                        "(tools/collection_benchmark.py; its options follow)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-spec", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    return parser


def collection_benchmark(argv):
    """Folder against array throughput, in tools/collection_benchmark.py."""
    sys.path.insert(0, str(REPO / "tools"))
    import collection_benchmark as collection

    return collection.main(argv)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.collection is not None:
        return collection_benchmark(args.collection)
    if args.worker:
        with open(args.worker_spec) as f:
            spec = json.load(f)
        result = WORKERS[args.worker](spec)
        _atomic_write(args.worker_out, json.dumps(result))
        return 0

    if args.pool:
        markdown = pool_report(pool_runs(args.pool, args.backends))
        print(markdown)
        if args.markdown_out:
            _atomic_write(args.markdown_out, markdown + "\n")
        return 0

    sys.path.insert(0, str(REPO))
    quick = args.quick
    if args.model and args.config:
        raise SystemExit("Pass --model or --config, not both.")
    if quick and not args.model and not args.config:
        args.config = json.dumps(QUICK_CONFIG)
    label, backbone_kwargs, num_classes, architecture = resolve_model(
        args.model or ("cait_xxs24_224" if not args.config else None), args.config
    )
    backbone_kwargs["image_shape"] = list(backbone_kwargs["image_shape"])
    batch_sizes = args.batch_sizes or ([1, 2] if quick else [1, 32])
    spec = dict(
        backbone_kwargs=backbone_kwargs,
        num_classes=num_classes,
        timm_architecture=architecture,
        batch_sizes=batch_sizes,
        train_batch_size=(
            args.train_batch_size if args.train_batch_size is not None
            else (2 if quick else 16)
        ),
        repeats=args.repeats or (2 if quick else 5),
        train_repeats=args.train_repeats or (2 if quick else 3),
        warmup=args.warmup if args.warmup is not None else (0 if quick else 1),
        save_load=not args.no_save_load,
        dtype=args.dtype,
        matmul_size=args.matmul_size or (256 if quick else 2048),
        timm_import=os.path.abspath(args.timm_import) if args.timm_import else None,
    )
    if architecture is None:
        # Computed here so that timm's worker imports neither Keras nor keras_cait.
        from keras_cait.convert.timm_config import timm_arguments_from_keras

        spec["timm_kwargs"] = timm_arguments_from_keras(
            backbone_kwargs, {"num_classes": num_classes}
        )
    results = {
        "setup": dict(
            model=label,
            backbone_kwargs=backbone_kwargs,
            num_classes=num_classes,
            gflop_per_image=flops_per_image(backbone_kwargs, num_classes) / 1e9,
            batch_sizes=batch_sizes,
            train_batch_size=spec["train_batch_size"],
            repeats=spec["repeats"],
            train_repeats=spec["train_repeats"],
            warmup=spec["warmup"],
            dtype=args.dtype or "float32",
            matmul_size=spec["matmul_size"],
            cpu_count=os.cpu_count(),
            machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
            cpu=cpu_description(),
            python=platform.python_version(),
            load_average=os.getloadavg(),
            command="python tools/benchmark.py " + " ".join(
                sys.argv[1:] if argv is None else argv
            ),
            started_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        )
    }
    print(f"benchmark: {label}, {results['setup']['gflop_per_image']:.3g} GFLOP/image", flush=True)

    results["setup"]["conversion_only"] = args.conversion_only
    if args.conversion_only and args.conversion_model == "none":
        raise SystemExit("--conversion-only with --conversion-model none measures nothing.")
    numpy_peak = (
        {} if args.conversion_only
        else run_worker("numpy_matmul", spec, timeout=args.timeout)
    )
    peaks = {"numpy": numpy_peak.get("gflops")}
    results["keras"] = {}
    trees = {"after": REPO}
    if args.baseline:
        trees["before"] = pathlib.Path(args.baseline).resolve()
        results["baseline"] = {"tree": str(trees["before"])}
    backends = [] if args.conversion_only else args.backends
    with_timm = not (args.no_timm or args.conversion_only)
    rounds = args.rounds or (1 if quick else 3 if args.baseline else 2)
    results["setup"]["rounds"] = rounds
    # Each round runs timm, then every backend (this tree's worker, then the
    # baseline's), each in a fresh process: slow and fast spells of a busy
    # machine fall on all of them alike.
    runs = {backend: {label: [] for label in trees} for backend in backends}
    timm_runs = []
    for _ in range(rounds if backends or with_timm else 0):
        if with_timm:
            print("benchmark: timm ...", flush=True)
            timm_runs.append(run_worker("timm", spec, timeout=args.timeout))
        for backend in backends:
            for label, tree in trees.items():
                print(f"benchmark: keras-cait ({label}) on {backend} ...", flush=True)
                runs[backend][label].append(run_worker(
                    "keras", spec, backend=backend, timeout=args.timeout, tree=tree
                ))
    one_framework = {}
    for backend in [b for b in backends if b in FRAMEWORK_MODULES] if with_timm else []:
        print(f"benchmark: keras-cait memory with {backend} alone ...", flush=True)
        one_framework[backend] = run_worker(
            "keras_one_framework", spec, backend=backend, timeout=args.timeout
        )
    results["one_framework"] = one_framework
    for backend in backends:
        result = runs[backend]["after"][-1]
        results["keras"][backend] = result
        for run in runs[backend]["after"] + runs[backend].get("before", []):
            if "error" in run:
                print(run["error"], file=sys.stderr)
                result.setdefault("error", run["error"])
        if "error" not in result:
            peaks[backend] = result["matmul_peak_gflops"]
    results["keras_runs"] = {b: r["after"] for b, r in runs.items()}
    if args.baseline:
        results["comparison"] = runs
    results["matmul_peaks"] = {k: v for k, v in peaks.items() if v}
    results["matmul_peak_gflops"] = max(results["matmul_peaks"].values(), default=None)

    if not with_timm:
        results["timm"] = {"available": False, "reason": "skipped"}
    else:
        errors = [run for run in timm_runs if "error" in run]
        results["timm"] = errors[0] if errors else timm_runs[-1]
        results["timm_runs"] = [run for run in timm_runs if run.get("available")]
        if not results["timm"].get("available", False) and "reason" in results["timm"]:
            print(f"benchmark: {results['timm']['reason']}", flush=True)
        results["side_by_side"] = side_by_side(results)

    conversion_model = args.conversion_model or (None if quick else "cait_m48_448")
    if conversion_model != "none":
        if conversion_model is None:
            c_label, c_kwargs, c_classes, c_arch = label, backbone_kwargs, num_classes, architecture
        else:
            c_label, c_kwargs, c_classes, c_arch = resolve_model(conversion_model, None)
            c_kwargs["image_shape"] = list(c_kwargs["image_shape"])
        print(f"benchmark: from_preset conversion of {c_label} ...", flush=True)
        rounds = args.conversion_rounds or (1 if quick else 2)
        results["conversion"] = conversion_benchmark(
            c_label, c_kwargs, c_classes, c_arch, args.conversion_backends, rounds,
            args.timeout,
        )

    results["setup"]["load_average_end"] = os.getloadavg()
    markdown = markdown_report(results)
    print(markdown)
    if args.json_out:
        _atomic_write(args.json_out, json.dumps(results, indent=2))
    if args.markdown_out:
        _atomic_write(args.markdown_out, markdown)
    failed = [b for b, r in results["keras"].items() if "error" in r]
    if "error" in results.get("conversion", {}):
        failed.append("conversion")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
