"""Benchmark keras-cait against timm: inference, training, conversion, saving.

Every backend runs in its own fresh subprocess. For each backend it reports
images/s of `model.predict` at the inference batch sizes and of
`train_on_batch` at the training batch size (median of repeated runs after
warm-up; the first call, which traces/compiles, is timed separately), the
peak resident memory of the process, `.keras` save/load times and the
achieved GFLOP/s against this machine's measured float32 matmul peak. In the
same run it times timm's model where timm can be imported (and says so when
it cannot), and `from_preset` conversion of a timm checkpoint written with
the seeded recipe (time and peak memory increase against the weights' size).

Usage (the full run documented in BENCHMARKS.md):

    python tools/benchmark.py --model cait_xxs24_224 \
        --json-out benchmark.json --markdown-out benchmark.md

Quick mode (a tiny config, seconds; what the test-suite runs):

    python tools/benchmark.py --quick --backends jax --json-out out.json

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
# Configurations, FLOPs and timm state-dict shapes (pure Python).


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


def _backbone_defaults(kwargs):
    full = dict(
        image_shape=(224, 224, 3),
        patch_size=16,
        num_class_attention_layers=2,
        mlp_ratio=4.0,
        class_attention_mlp_ratio=4.0,
        use_qkv_bias=True,
    )
    full.update(kwargs)
    return full


def flops_per_image(backbone_kwargs, num_classes):
    """Floating-point operations (2 per multiply-add) of one forward pass."""
    k = _backbone_defaults(backbone_kwargs)
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


def timm_state_dict_shapes(backbone_kwargs, num_classes):
    """`{timm key: shape}` of a timm CaiT checkpoint for these arguments."""
    k = _backbone_defaults(backbone_kwargs)
    height, width, channels = k["image_shape"]
    p, d, h = k["patch_size"], k["hidden_dim"], k["num_heads"]
    n = (height // p) * (width // p)
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, n, d),
        "patch_embed.proj.weight": (d, channels, p, p),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }

    def linear(prefix, out_dim, in_dim, bias=True):
        shapes[f"{prefix}.weight"] = (out_dim, in_dim)
        if bias:
            shapes[f"{prefix}.bias"] = (out_dim,)

    def common(prefix, mlp_dim):
        for name in ("norm1", "norm2"):
            shapes[f"{prefix}.{name}.weight"] = (d,)
            shapes[f"{prefix}.{name}.bias"] = (d,)
        shapes[f"{prefix}.gamma_1"] = (d,)
        shapes[f"{prefix}.gamma_2"] = (d,)
        linear(f"{prefix}.mlp.fc1", mlp_dim, d)
        linear(f"{prefix}.mlp.fc2", d, mlp_dim)
        linear(f"{prefix}.attn.proj", d, d)

    for i in range(k["num_layers"]):
        prefix = f"blocks.{i}"
        common(prefix, int(d * k["mlp_ratio"]))
        linear(f"{prefix}.attn.qkv", 3 * d, d, k["use_qkv_bias"])
        linear(f"{prefix}.attn.proj_l", h, h)
        linear(f"{prefix}.attn.proj_w", h, h)
    for i in range(k["num_class_attention_layers"]):
        prefix = f"blocks_token_only.{i}"
        common(prefix, int(d * k["class_attention_mlp_ratio"]))
        for name in ("q", "k", "v"):
            linear(f"{prefix}.attn.{name}", d, d, k["use_qkv_bias"])
    if num_classes:
        linear("head", num_classes, d)
    return shapes


def timm_model_args(backbone_kwargs, num_classes):
    """timm `Cait` keyword arguments for these `CaiTBackbone` arguments."""
    k = _backbone_defaults(backbone_kwargs)
    height, width, channels = k["image_shape"]
    return dict(
        img_size=height if height == width else [height, width],
        patch_size=k["patch_size"],
        in_chans=channels,
        num_classes=num_classes,
        embed_dim=k["hidden_dim"],
        depth=k["num_layers"],
        num_heads=k["num_heads"],
        mlp_ratio=float(k["mlp_ratio"]),
        qkv_bias=bool(k["use_qkv_bias"]),
        init_values=float(k.get("layer_scale_init_value", 1e-5)),
        depth_token_only=k["num_class_attention_layers"],
        mlp_ratio_token_only=float(k["class_attention_mlp_ratio"]),
    )


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
    result = {"backend": backend, "keras": keras.__version__,
              "keras_cait_path": os.path.dirname(keras_cait.__file__)}
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

        model = Cait(**timm_model_args(spec["backbone_kwargs"], spec["num_classes"]))
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

    from keras_cait.testing import seeded_state_dict

    shapes = timm_state_dict_shapes(spec["backbone_kwargs"], spec["num_classes"])
    state_dict = seeded_state_dict(shapes, seed=0)
    directory = spec["directory"]
    os.makedirs(directory, exist_ok=True)
    architecture = spec["timm_architecture"] or "cait_xxs24_224"
    model_args = timm_model_args(spec["backbone_kwargs"], spec["num_classes"])
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


def worker_convert(spec):
    """Times `CaiTImageClassifier.from_preset` on a timm directory and the
    peak memory it adds to the process. Run twice in fresh processes with
    the same `KERAS_CAIT_CACHE`: the first call converts and writes the
    conversion cache, the second reads it."""
    import keras

    import keras_cait

    def cache_entries():
        root = os.environ.get("KERAS_CAIT_CACHE") or ""
        return sum(
            files.count("meta.json") for _, _, files in os.walk(root)
        ) if root else None

    weights_mb = os.path.getsize(
        os.path.join(spec["directory"], "model.safetensors")
    ) / 2**20
    entries_before = cache_entries()
    before_mb = current_rss_mb()
    start = time.perf_counter()
    model = keras_cait.CaiTImageClassifier.from_preset(spec["directory"])
    seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    return {
        "backend": keras.backend.backend(),
        # A valid entry existed before the call: it was served from the
        # conversion cache (the second call), else it converted (the first).
        "from_cache": bool(entries_before),
        "seconds": seconds,
        "num_params": int(model.count_params()),
        "weights_mb": weights_mb,
        "rss_before_mb": before_mb,
        "peak_rss_mb": peak_mb,
        "peak_increase_mb": peak_mb - before_mb,
        "peak_increase_over_weights": (peak_mb - before_mb) / weights_mb,
    }


def worker_load_state_dict(spec):
    """Times reading the checkpoint and `load_timm_state_dict` into a model
    that is already built (the conversion itself), and its peak memory."""
    import keras
    from safetensors.numpy import load_file

    import keras_cait

    path = os.path.join(spec["directory"], "model.safetensors")
    backbone = keras_cait.CaiTBackbone(**spec["backbone_kwargs"])
    model = keras_cait.CaiTImageClassifier(
        backbone, num_classes=spec["num_classes"], compile=False
    )
    before_mb = current_rss_mb()
    start = time.perf_counter()
    keras_cait.load_timm_state_dict(model, load_file(path), source=path)
    seconds = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    weights_mb = os.path.getsize(path) / 2**20
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


WORKERS = {
    "keras": worker_keras,
    "timm": worker_timm,
    "write_checkpoint": worker_write_checkpoint,
    "convert": worker_convert,
    "load_state_dict": worker_load_state_dict,
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
    _comparison_report(results, lines)
    _conversion_report(results, lines)
    return "\n".join(lines) + "\n"


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
        f"{baseline['rounds']} fresh worker processes per tree and backend, "
        "alternating; each value is one process's median; the ratio is of the "
        "medians over processes. Load average (1, 5, 15 min) at the start "
        + ", ".join(f"{v:.2f}" for v in results["setup"]["load_average"])
        + ", at the end "
        + ", ".join(f"{v:.2f}" for v in results["setup"]["load_average_end"])
        + "."
    )
    lines.append("")
    lines.append("| backend | batch | after img/s | before img/s | after/before |")
    lines.append("|---|---|---|---|---|")
    for backend, runs in comparison.items():
        for batch in (str(b) for b in results["setup"]["batch_sizes"]):
            after, after_values = _median_images_per_s(runs["after"], batch)
            before, before_values = _median_images_per_s(runs["before"], batch)
            ratio = _fmt(after / before, 3) if after and before else "n/a"
            lines.append(
                f"| {backend} | {batch} | {', '.join(_fmt(v) for v in after_values)} | "
                f"{', '.join(_fmt(v) for v in before_values)} | {ratio} |"
            )
    lines.append("")


def _conversion_report(results, lines):
    conversion = results.get("conversion")
    if conversion:
        if "error" in conversion:
            lines.append(f"Conversion: error: {conversion['error']}")
        else:
            preset = conversion["from_preset"]
            lines.append(
                f"Converting `{conversion['model']}` ({preset['num_params']:,} "
                f"parameters, {preset['weights_mb']:.0f} MB of float32 weights written "
                f"by the seeded recipe as a timm `model.safetensors`) on {preset['backend']}:"
            )
            lines.append("")
            lines.append("| step | time s | peak memory increase MB | × weights |")
            lines.append("|---|---|---|---|")
            for name, label in (
                ("load_timm_state_dict", "read + `load_timm_state_dict` into a built model"),
                ("from_preset", "`CaiTImageClassifier.from_preset(dir)`, first call (build, convert, write the cache)"),
                ("from_preset_cached", "`CaiTImageClassifier.from_preset(dir)`, second call, fresh process (build, read the cache)"),
            ):
                r = conversion.get(name)
                if r is None:
                    continue
                lines.append(
                    f"| {label} | {r['seconds']:.1f} | {r['peak_increase_mb']:.0f} | "
                    f"{r['peak_increase_over_weights']:.2f}× |"
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
    parser.add_argument("--conversion-backend", default="jax", choices=BACKENDS)
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
    parser.add_argument("--rounds", type=int, default=3,
                        help="with --baseline: workers per tree and backend (default 3)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per worker")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--markdown-out", default=None)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-spec", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
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
    trees = {"after": REPO}
    if args.baseline:
        trees["before"] = pathlib.Path(args.baseline).resolve()
        results["baseline"] = {"tree": str(trees["before"]), "rounds": args.rounds}
        results["comparison"] = {}
    for backend in [] if args.conversion_only else args.backends:
        # With a baseline, its workers alternate with this tree's.
        runs = {label: [] for label in trees}
        for _ in range(args.rounds if args.baseline else 1):
            for label, tree in trees.items():
                print(f"benchmark: keras-cait ({label}) on {backend} ...", flush=True)
                runs[label].append(run_worker(
                    "keras", spec, backend=backend, timeout=args.timeout, tree=tree
                ))
        result = runs["after"][-1]
        results["keras"][backend] = result
        if args.baseline:
            results["comparison"][backend] = runs
        for run in runs["after"] + runs.get("before", []):
            if "error" in run:
                print(run["error"], file=sys.stderr)
                result.setdefault("error", run["error"])
        if "error" not in result:
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
        with tempfile.TemporaryDirectory() as directory:
            c_spec = dict(
                backbone_kwargs=c_kwargs, num_classes=c_classes,
                timm_architecture=c_arch,
                directory=os.path.join(directory, "checkpoint"),
            )
            written = run_worker("write_checkpoint", c_spec, timeout=args.timeout)
            if "error" in written:
                conversion = {"error": written["error"]}
            else:
                cache_env = {"KERAS_CAIT_CACHE": os.path.join(directory, "cache")}
                conversion = {
                    # Both in fresh processes, sharing one conversion cache.
                    "from_preset": run_worker(
                        "convert", c_spec, backend=args.conversion_backend,
                        timeout=args.timeout, env=cache_env,
                    ),
                    "from_preset_cached": run_worker(
                        "convert", c_spec, backend=args.conversion_backend,
                        timeout=args.timeout, env=cache_env,
                    ),
                    "load_timm_state_dict": run_worker(
                        "load_state_dict", c_spec, backend=args.conversion_backend,
                        timeout=args.timeout,
                    ),
                }
                cached = conversion["from_preset_cached"]
                if "error" not in cached and not cached["from_cache"]:
                    cached["error"] = "the second from_preset call was not served from the cache"
                errors = [v["error"] for v in conversion.values() if "error" in v]
                if errors:
                    conversion["error"] = "\n".join(errors)
            conversion["model"] = c_label
        results["conversion"] = conversion

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
