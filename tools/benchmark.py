"""Benchmark keras-cait against timm: inference, training, conversion, saving.

Every backend runs in its own fresh subprocess. For each backend it reports
images/s of `model.predict` at the inference batch sizes and of
`train_on_batch` at the training batch size (median of repeated runs after
warm-up; the first call, which traces/compiles, is timed separately), the
peak resident memory of the process, `.keras` save/load times and the
achieved GFLOP/s against this machine's measured float32 matmul peak. In the
same run it times timm's model where timm can be imported (and says so when
it cannot), and `from_preset` of a timm checkpoint written with the seeded
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
BACKENDS = ("tensorflow", "jax", "torch")

# timm eager images/s for cait_xxs24_224 (float32, random weights) measured on
# the project's 2-core CPU machine, from /work/shared/NOTES.md. Used only when
# timm cannot be imported, and labelled as such.
NOTES_TIMM_REFERENCE = {
    "cait_xxs24_224": {
        "source": "reference figures from NOTES.md, not measured side by side",
        "inference_images_per_s": {"1": 14.2, "16": 13.9},
    }
}

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


def peak_rss_mb():
    """The high-water mark of this process's resident memory, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return peak_rss_mb()


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
    result = {"backend": backend, "keras": keras.__version__}
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
        }
    result["inference"] = inference
    result["peak_rss_inference_mb"] = peak_rss_mb()

    batch = spec["train_batch_size"]
    if batch:
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

    if spec["save_load"]:
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
    return result


def worker_timm(spec):
    """Benchmarks timm's model (PyTorch eager), or says why it cannot."""
    try:
        import timm
        import torch
    except Exception as error:  # ImportError, or a broken torchvision
        return {
            "available": False,
            "reason": f"timm cannot be imported: {type(error).__name__}: {error}",
        }
    import numpy as np

    result = {"available": True, "timm": timm.__version__, "torch": torch.__version__}
    if spec["timm_architecture"]:
        model = timm.create_model(spec["timm_architecture"], pretrained=False)
    else:
        from timm.models.cait import Cait

        from keras_cait.convert.timm_config import timm_arguments_from_keras

        model = Cait(**timm_arguments_from_keras(
            spec["backbone_kwargs"], {"num_classes": spec["num_classes"]}
        ))
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
        }
    result["inference"] = inference
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
    "write_checkpoint": worker_write_checkpoint,
    "convert": worker_convert,
    "save_keras_weights": worker_save_keras_weights,
    "load_keras_weights": worker_load_keras_weights,
    "numpy_matmul": lambda spec: {"gflops": numpy_matmul_peak(spec["matmul_size"])},
}


def run_worker(kind, spec, backend=None, timeout=3600, env=None):
    """Runs one worker in a fresh Python process; returns its JSON result
    (or `{"error": ...}`)."""
    full_env = dict(os.environ)
    if backend:
        full_env["KERAS_BACKEND"] = backend
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), full_env.get("PYTHONPATH")])
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
                timeout=timeout, cwd=REPO,
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


def markdown_report(results):
    """The results as Markdown tables."""
    lines = []
    setup = results["setup"]
    if setup.get("conversion_only"):
        lines.append(f"Command: `{setup['command']}`")
        lines.append("")
        _conversion_report(results, lines)
        return "\n".join(lines) + "\n"
    lines.append(
        f"Model `{setup['model']}` ({setup['gflop_per_image']:.3g} GFLOP per image), "
        f"{setup['cpu_count']} CPUs, {setup['machine']}, Python {setup['python']}; "
        f"median of {setup['repeats']} runs after {setup['warmup']} warm-up, "
        f"each backend in a fresh process."
    )
    lines.append("")
    lines.append(f"Command: `{setup['command']}`")
    lines.append("")
    timm = results["timm"]
    reference = None
    if timm.get("available"):
        reference = {b: v["images_per_s"] for b, v in timm["inference"].items()}
        lines.append(
            f"timm {timm['timm']} (torch {timm['torch']}, eager) measured in the same run."
        )
    else:
        lines.append(f"timm: not measured: {timm.get('reason', timm.get('error'))}.")
        notes = NOTES_TIMM_REFERENCE.get(setup["model"])
        if notes:
            reference = notes["inference_images_per_s"]
            lines.append(
                "Ratios use timm eager "
                + ", ".join(f"{v} img/s at batch {b}" for b, v in reference.items())
                + f": {notes['source']}."
            )
    lines.append("")
    batches = [str(b) for b in setup["batch_sizes"]]

    def timm_reference(batch):
        if reference is None:
            return None
        if batch in reference:
            return reference[batch]
        if timm.get("available"):
            return None
        # NOTES.md has batch 1 and 16; the larger batch stands for any > 1.
        return reference[max(reference, key=int)] if int(batch) > 1 else None

    header = ["backend", "jit"]
    for b in batches:
        header += [f"predict b{b} img/s", f"× timm b{b}", f"first call b{b} s"]
    header += ["GFLOP/s (% of peak)", "train img/s", "train first s", "peak RSS MB",
               "save s", "load s"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    peak = results.get("matmul_peak_gflops")
    rows = dict(results["keras"])
    if timm.get("available"):
        rows = {"timm (torch eager)": timm, **rows}
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'].splitlines()[0]} |")
            continue
        row = [name, str(r.get("jit_compile", "eager"))]
        best = None
        for b in batches:
            entry = r["inference"][b]
            ips = entry["images_per_s"]
            ref = timm_reference(b)
            row += [_fmt(ips), _fmt(ips / ref, 2) + "×" if ref else "n/a",
                    _fmt(entry["first_call_s"], 2)]
            best = max(best or 0, ips)
        gflops = best * setup["gflop_per_image"]
        row.append(f"{gflops:.0f} ({100 * gflops / peak:.0f}%)" if peak else f"{gflops:.0f}")
        training = r.get("training")
        row += [_fmt(training["images_per_s"]) if training else "n/a",
                _fmt(training["first_call_s"], 2) if training else "n/a",
                _fmt(r.get("peak_rss_mb"), 0)]
        save = r.get("save_load")
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
    _conversion_report(results, lines)
    return "\n".join(lines) + "\n"


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


def _atomic_write(path, text):
    path = os.path.abspath(path)
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
    for backend in [] if args.conversion_only else args.backends:
        print(f"benchmark: keras-cait on {backend} ...", flush=True)
        result = run_worker("keras", spec, backend=backend, timeout=args.timeout)
        results["keras"][backend] = result
        if "error" in result:
            print(result["error"], file=sys.stderr)
        else:
            peaks[backend] = result["matmul_peak_gflops"]
    results["matmul_peaks"] = {k: v for k, v in peaks.items() if v}
    results["matmul_peak_gflops"] = max(results["matmul_peaks"].values(), default=None)

    if args.no_timm or args.conversion_only:
        results["timm"] = {"available": False, "reason": "skipped"}
    else:
        print("benchmark: timm ...", flush=True)
        results["timm"] = run_worker("timm", spec, timeout=args.timeout)
        if not results["timm"].get("available", False) and "reason" in results["timm"]:
            print(f"benchmark: {results['timm']['reason']}", flush=True)

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
