"""Benchmark every way to run keras-cait (BENCHMARKS.md): timm where it imports,
`predict` per backend, ONNX Runtime and OpenVINO f32/bf16 on its exports, int8, the
folder path, training (opt-in); each row a fresh process, rows alternating per round.

    python tools/benchmark.py --quick --backends jax   # seconds: CI
"""

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")
ROWS = ("timm", "keras", "onnxruntime", "openvino", "int8", "folder", "keep-aspect", "train")  # train: opt-in
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
TIMEOUT_S = 1800  # per process
QUICK_CONFIG = dict(image_shape=[32, 32, 3], patch_size=8, hidden_dim=48, num_layers=2,
                    num_heads=4, num_class_attention_layers=2)


def flops_per_image(config, num_classes):
    """Floating-point operations (2 per multiply-add) of one image's forward
    pass: the matrix products; norms, softmax and residuals add under 1%.
    `config`: `CaiTBackbone` arguments (`mlp_ratio`s default to 4)."""
    height, width, channels = config["image_shape"]
    p, d, h = config["patch_size"], config["hidden_dim"], config["num_heads"]
    n = (height // p) * (width // p)
    mlp = int(d * config.get("mlp_ratio", 4.0))
    mlp_ca = int(d * config.get("class_attention_mlp_ratio", 4.0))
    # qkv; q k^T and attention @ v; the two talking-heads mixes; projection; MLP
    self_block = (6 * n * d * d + 4 * n * n * d + 4 * h * h * n * n + 2 * n * d * d + 4 * n * d * mlp)
    # class token's q; k, v of class token + patches; q k^T, attention @ v; projection; MLP
    class_block = (2 * d * d + 4 * (n + 1) * d * d + 4 * (n + 1) * d + 2 * d * d + 4 * d * mlp_ca)
    return (2 * n * d * p * p * channels + config["num_layers"] * self_block
            + config["num_class_attention_layers"] * class_block + 2 * d * num_classes)


def percent_of_peak(images_per_s, flops, peak_gflops):
    """% of `peak_gflops` reached by `images_per_s` images of `flops` (or `None`)."""
    return None if images_per_s is None or not peak_gflops else (
        100.0 * images_per_s * flops / (peak_gflops * 1e9))


def _speed(result, batch):
    """A row result's img/s at `batch` (a string), or `None`."""
    return result.get("batches", {}).get(batch, {}).get("images_per_s")


def _median(values):
    """The median of the values that were taken (not `None`), or `None`."""
    return statistics.median([v for v in values if v is not None] or [None])


def _cell(value, digits):
    return "–" if value is None else f"{value:,.{digits}f}"


def summarize(rounds, reference, flops, peak_gflops):
    """A table row per (row, batch) of `rounds` (`[{row name: result}]`): medians
    over rounds; `ratio`: of the img/s ratios to `reference` within each round."""
    table, reference_logits = [], rounds[0].get(reference, {}).get("logits")
    for name in [name for name in rounds[0] if "error" not in rounds[0][name]]:
        runs = [r[name] for r in rounds if "error" not in r.get(name, {"error": 1})]
        logits = runs[0].get("logits")
        difference = None if logits is None or reference_logits is None else max(
            abs(a - b) for x, y in zip(logits, reference_logits) for a, b in zip(x, y))
        for batch in [b for b in ("1", "32") if b in runs[0]["batches"]]:
            images_per_s = _median([_speed(run, batch) for run in runs])
            ratios = [_speed(r.get(name, {}), batch) / _speed(r[reference], batch) for r in rounds
                      if _speed(r.get(name, {}), batch) and _speed(r.get(reference, {}), batch)]
            table.append(dict(
                row=name, batch=int(batch), images_per_s=images_per_s, ratio=_median(ratios),
                percent_of_peak=percent_of_peak(images_per_s, flops, peak_gflops),
                first_call_s=_median([run["batches"][batch]["first_call_s"] for run in runs]),
                peak_rss_mb=_median([run["peak_rss_mb"] for run in runs]),
                logit_difference=difference))
    return table


def markdown_table(table, reference):
    """The rows of `summarize` as a markdown table."""
    lines = [f"| row | batch | img/s | × {reference} | % of peak | first call (s) "
             f"| peak RSS (MiB) | max \\|logit − {reference}\\| |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in table:
        lines.append(
            f"| {r['row']} | {r['batch']} | {_cell(r['images_per_s'], 1)} "
            f"| {_cell(r['ratio'], 2)} | {_cell(r['percent_of_peak'], 1)} "
            f"| {_cell(r['first_call_s'], 2)} | {_cell(r['peak_rss_mb'], 0)} "
            f"| {'–' if r['logit_difference'] is None else format(r['logit_difference'], '.1e')} |")
    return "\n".join(lines)


def folder_table(rounds, reference):
    """The `folder` rows against the Keras one (`reference`): per row, the medians over
    rounds of the steady img/s, the whole command's img/s and their ratios within a round."""
    lines = [f"| command | img/s | × {reference} | whole command img/s | × {reference} | peak RSS (MiB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    get = lambda result, key: result.get("batches", {}).get("32", {}).get(key)  # noqa: E731
    for name in [n for n in rounds[0] if n.startswith("folder ")]:
        values = []
        for key in ("images_per_s", "command_images_per_s"):
            values.append(_median([get(r.get(name, {}), key) for r in rounds]))
            values.append(_median([get(r.get(name, {}), key) / get(r[reference], key) for r in rounds
                                   if get(r.get(name, {}), key) and get(r.get(reference, {}), key)]))
        rss = _median([r.get(name, {}).get("peak_rss_mb") for r in rounds])
        lines.append(f"| {name} | {_cell(values[0], 1)} | {_cell(values[1], 2)} | {_cell(values[2], 1)} "
                     f"| {_cell(values[3], 2)} | {_cell(rss, 0)} |")
    return "\n".join(lines)


def baseline_table(rounds, backends):
    """Per backend and batch, `keras {b}` against `keras {b} baseline`: median img/s
    over rounds and the median of the ratios within each round."""
    lines = ["| backend | batch | img/s | baseline img/s | × baseline |", "| --- | ---: | ---: | ---: | ---: |"]
    for backend, batch in [(b, n) for b in backends for n in ("1", "32")]:
        now = [_speed(r.get(f"keras {backend}", {}), batch) for r in rounds]
        before = [_speed(r.get(f"keras {backend} baseline", {}), batch) for r in rounds]
        ratio = _median([a / b for a, b in zip(now, before) if a and b])
        lines.append(f"| {backend} | {batch} | {_cell(_median(now), 1)} | {_cell(_median(before), 1)} "
                     f"| {_cell(ratio, 3)} |")
    return "\n".join(lines)


def gemm_peak_gflops(size=1024, seconds=2.0):
    """float32 GEMM GFLOP/s of NumPy's BLAS: the best `size`² product in `seconds`."""
    import numpy as np

    a, b = (np.random.default_rng(i).standard_normal((size, size), dtype=np.float32) for i in (0, 1))
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _timed(call, images, repeats):
    """First call's seconds, the timed calls', img/s at their median; last output."""
    times = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        output = call()
        times.append(time.perf_counter() - start)
    return {"first_call_s": times[0], "times_s": times[1:], "images_per_s": images / statistics.median(times[1:])}, output


def _measure(call, spec):
    """`call` timed on the same seeded images in every row; two images' logits."""
    import numpy as np

    shape, result = tuple(spec["config"]["image_shape"]), {"batches": {}}
    for batch in (1, 32):
        images = np.random.default_rng(batch).standard_normal((batch,) + shape, dtype=np.float32)
        result["batches"][str(batch)], output = _timed(lambda x=images: call(x), batch, spec["repeats"][str(batch)])
    result["logits"] = np.asarray(output[:2], dtype=np.float64).tolist()
    return result


def _classifier(spec, preprocessor=False):
    """The seeded classifier; with `preprocessor`, one that reads files."""
    import keras_cait

    backbone = keras_cait.CaiTBackbone(**spec["config"])
    converter = keras_cait.CaiTImageConverter(image_size=spec["config"]["image_shape"][:2])
    model = keras_cait.CaiTImageClassifier(
        backbone, num_classes=spec["num_classes"], preprocessor=(
            keras_cait.CaiTImageClassifierPreprocessor(converter) if preprocessor else None))
    keras_cait.load_timm_state_dict(model, keras_cait.read_safetensors(spec["weights"]))
    return model


def worker_prepare(spec):
    """Writes the seeded timm weights, the JPEG folder and the exports."""
    import numpy as np
    from PIL import Image
    from safetensors.numpy import save_file

    from keras_cait.convert.timm_config import timm_arguments_from_keras
    from keras_cait.inference.batch_prediction import make_predictor
    from keras_cait.testing import seeded_state_dict
    from keras_cait_base.schema import checkpoint_layout

    layout = {t.key: t.shape for t in checkpoint_layout(spec["config"], spec["num_classes"])}
    save_file(seeded_state_dict(layout, seed=0), spec["weights"])
    if spec["make_images"]:
        os.makedirs(spec["images"], exist_ok=True)
        rng = np.random.default_rng(0)
        shapes = [(480, 640), (640, 480), (427, 640), (360, 640), (512, 512)]  # camera aspect ratios
        for index in range(spec["folder_images"]):  # mixed sizes, smooth + noise
            ramp = np.add.outer(*(np.linspace(0, 1, v * (1 + index % 2) // 2) for v in shapes[index % 5]))[..., None]
            pixels = ramp * rng.uniform(0, 127, 3) + rng.normal(0, 20, ramp.shape[:2] + (3,))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                os.path.join(spec["images"], f"image_{index:04d}.jpg"), quality=90)
    for path, format in spec["exports"]:
        _classifier(spec).export(path, format=format, verbose=False)
    if spec["folder_engines"]:  # the folder rows' preset; each engine's artefact cached
        _classifier(spec, preprocessor=True).save_to_preset(spec["preset"])
        for engine in set(spec["folder_engines"]) - {"keras"}:
            make_predictor(spec["preset"], engine=engine, cache_dir=spec["cache"])
    return {"timm_kwargs": timm_arguments_from_keras(spec["config"], {"num_classes": spec["num_classes"]})}


def worker_folder(spec):
    """`keras-cait predict DIR --output` on the JPEG folder, then on it and a renamed copy,
    each command a fresh process (from the saved preset, the engine's artefact cached)."""
    import resource

    paths = sorted(str(p) for p in pathlib.Path(spec["images"]).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    command = [sys.executable, "-m", "keras_cait_cli", "predict", "--preset", spec["preset"], "--batch-size", "32",
               "--engine", spec["engine"], *(["--keep-aspect"] if spec.get("keep_aspect") else []),
               *([] if spec["engine"] == "keras" else ["--cache-dir", spec["cache"], "--precision",
                                                        {"bf16": "bfloat16"}.get(spec["precision"], "float32")])]
    with tempfile.TemporaryDirectory() as folder:
        once, twice = os.path.join(folder, "once"), os.path.join(folder, "twice")
        for path in paths:  # other names: a file named twice is read once
            for target in (once, twice, twice + "/copy"):
                os.makedirs(target, exist_ok=True)
                shutil.copy(path, target)

        def predict(inputs):
            start = time.perf_counter()
            done = subprocess.run([*command, inputs, "--output", os.path.join(folder, f"{start}.jsonl")],
                                  capture_output=True, text=True, cwd=REPO)
            if done.returncode:
                raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr[-1500:]}")
            return time.perf_counter() - start
        first, pairs = predict(once), [(predict(once), predict(twice)) for _ in range(spec["repeats"]["32"])]
    extra = statistics.median(twice - once for once, twice in pairs)  # start-up and compile cancel out
    return {"batches": {"32": {"first_call_s": first, "times_s": pairs,
                               "images_per_s": len(paths) / extra if extra > 0 else None,
                               "command_images_per_s": len(paths) / first}},
            "images": len(paths), "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def worker_keras(spec):
    """keras-cait on `KERAS_BACKEND`: predict, int8 or train."""
    import keras
    import numpy as np

    start = time.perf_counter()
    model = _classifier(spec)
    if spec["mode"] == "int8":
        model.quantize("int8")
    load_s = time.perf_counter() - start
    if spec["mode"] == "train":
        model.compile(optimizer=keras.optimizers.AdamW(1e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = np.random.default_rng(32).standard_normal((32, *spec["config"]["image_shape"]), "float32")
        result = {"batches": {"32": _timed(lambda: model.train_on_batch(
            x, np.arange(32) % spec["num_classes"]), 32, spec["repeats"]["32"])[0]}}
    else:
        result = _measure(lambda x: model.predict(x, batch_size=len(x), verbose=0), spec)
    return {**result, "load_s": load_s}


def worker_engine(spec):
    """The exported artefact on ONNX Runtime or OpenVINO, opened as collection runs open it."""
    import importlib.metadata

    from keras_cait_base.engines import open_session

    start = time.perf_counter()
    run = open_session(spec["engine"], spec["artefact"], {"bf16": "bfloat16"}.get(spec["precision"], "float32"))
    result = {"version": importlib.metadata.version(spec["engine"]), "precision": spec["precision"] or "f32"}
    return {**result, "load_s": time.perf_counter() - start, **_measure(lambda images: run(images)[0], spec)}


def worker_timm(spec):
    """timm's `Cait` in PyTorch eager, or why timm does not import."""
    try:
        stand_in = spec["timm_import"] or str(REPO / "tests" / "stubs")
        if os.path.isdir(stand_in):  # a torchvision stand-in, where torchvision is missing
            sys.path.append(stand_in)
            if os.path.exists(os.path.join(stand_in, "torchvision_stub.py")):
                import torchvision_stub  # noqa: F401
        from timm.models.cait import Cait
    except Exception as error:  # ImportError, or a broken torchvision
        return {"error": f"timm does not import: {type(error).__name__}: {error}"}
    import torch
    from safetensors.torch import load_file

    model = Cait(**spec["timm_kwargs"]).eval()
    model.load_state_dict(load_file(spec["weights"]))

    @torch.no_grad()
    def call(images):
        return model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    return {**_measure(call, spec), "timm": sys.modules["timm"].__version__}


def run_worker(kind, spec, backend, timeout=TIMEOUT_S):
    """Runs `worker_<kind>` in a fresh process: its result, or `{"error": ...}`."""
    source = [spec.get("source"), str(REPO), os.environ.get("PYTHONPATH")]  # the first tree wins
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, source))}
    with tempfile.TemporaryDirectory() as directory:
        spec_path, out = os.path.join(directory, "spec.json"), os.path.join(directory, "out.json")
        pathlib.Path(spec_path).write_text(json.dumps(spec))
        try:
            process = subprocess.run([sys.executable, __file__, "--worker", kind, spec_path, out],
                                     env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        except subprocess.TimeoutExpired:
            return {"error": f"{kind} worker timed out after {timeout} s"}
        if process.returncode or not os.path.exists(out):
            return {"error": f"{kind} worker failed (exit {process.returncode}): "
                             f"{process.stderr[-2000:]}"}
        return json.loads(pathlib.Path(out).read_text())


def plan(args, work):
    """The rows: `(name, worker kind, backend, spec additions)`."""
    wanted = args.rows.split(",")
    rows = [("timm", "timm", "torch", {})] * ("timm" in wanted)
    for mode in ("keras", "int8", "train"):
        rows += [(f"{mode} {b}", "keras", b, {"mode": mode}) for b in args.backends * (mode in wanted)]
        if mode == "keras" and args.baseline:  # each backend's baseline row beside its own
            rows += [(f"keras {b} baseline", "keras", b, {"mode": mode, "source": args.baseline})
                     for b in args.backends * (mode in wanted)]
    engines = [("onnxruntime", "onnxruntime", None, "model.onnx")] * ("onnxruntime" in wanted)
    engines += [(f"openvino {p}", "openvino", p, "model.xml") for p in ("f32", "bf16") if "openvino" in wanted]
    rows += [(name, "engine", args.backends[0], {"engine": engine, "precision": precision,
              "artefact": str(work / file)}) for name, engine, precision, file in engines]
    # The folder path (`predict DIR --output`) per engine, Keras on the first backend (also
    # at each photo's aspect ratio, `--keep-aspect`).
    folder = [(f"keras {args.backends[0]}", "keras", None, False)] + [(f"keras {args.backends[0]} keep-aspect",
              "keras", None, True)] * ("keep-aspect" in wanted) + [(*e[:3], False) for e in engines]
    return rows + [(f"folder {name}", "folder", args.backends[0], {"engine": engine, "precision": precision,
                    "keep_aspect": keep}) for name, engine, precision, keep in folder * ("folder" in wanted)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cait_xxs24_224", help="a timm CaiT architecture")
    parser.add_argument("--quick", action="store_true", help="a tiny config, 1 round (CI)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--rows", default=",".join(ROWS[:-1]), help=f"among {','.join(ROWS)}")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, nargs=2, default=(5, 2), metavar=("B1", "B32"),
                        help="timed calls at batch 1 and at batch 32")
    parser.add_argument("--images", help="images for the folder rows (default: 300 seeded JPEGs)")
    parser.add_argument("--timm-import", help="a folder making timm import (torchvision stand-in)")
    parser.add_argument("--export-backend", default="torch", help="writes the ONNX/OpenVINO files")
    parser.add_argument("--baseline", metavar="DIR", help="another keras-cait source tree (a git "
                        "worktree of an earlier commit): its keras rows run beside this tree's")
    parser.add_argument("--json-out", default="benchmark.json")
    parser.add_argument("--markdown-out", default="benchmark.md")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = globals()[f"worker_{args.worker[0]}"](json.loads(pathlib.Path(args.worker[1]).read_text()))
        status = dict(x.split(":", 1) for x in pathlib.Path("/proc/self/status").read_text().splitlines())
        result.setdefault("peak_rss_mb", int(status["VmHWM"].split()[0]) / 1024)  # VmHWM: peak
        result.update(threads=int(status["Threads"]))
        pathlib.Path(args.worker[2]).write_text(json.dumps(result))
        return 0
    return run(args)


def _check(args):
    """Names a bad argument; `(label, backbone config, num_classes)`."""
    args.backends = [b for b in args.backends.split(",") if b]
    unknown = [x for x in args.backends + [args.export_backend] if x not in BACKENDS] + list(set(args.rows.split(",")) - set(ROWS))
    for bad, message in ((unknown, f"--backends/--rows/--export-backend: unknown {unknown}; expected among {BACKENDS}, {ROWS}."),
                         (not args.backends, "--backends: none given."), (args.rounds < 1, f"--rounds: expected at least 1, got {args.rounds}.")):
        if bad:
            raise SystemExit(message)
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "keras_cait", "__init__.py")):
        raise SystemExit(f"--baseline: {args.baseline} is not a keras-cait source tree (no keras_cait/).")
    for option, path in (("--images", args.images), ("--timm-import", args.timm_import)):
        if path and not os.path.isdir(path):
            raise SystemExit(f"{option}: {path} is not a folder.")
    for option in [o for o in ("json_out", "markdown_out") if not pathlib.Path(getattr(args, o)).resolve().parent.is_dir()]:
        raise SystemExit(f"--{option.replace('_', '-')}: its folder does not exist.")
    if args.quick:
        args.rounds, args.repeats = 1, (2, 1)
        return "quick", dict(QUICK_CONFIG), 10
    from keras_cait.convert import timm_config as timm  # the variants' one home

    if args.model not in timm.TIMM_ARCHITECTURES:
        raise SystemExit(f"--model: {args.model!r} is not one of {sorted(timm.TIMM_ARCHITECTURES)}.")
    arguments = timm.resolve_timm_arguments(args.model, None, source="--model")
    return args.model, timm.backbone_kwargs_from_timm(arguments), arguments["num_classes"]


def run(args):
    """Measures every row, writes the JSON and markdown reports."""
    label, config, num_classes = _check(args)
    flops = flops_per_image(config, num_classes)
    with open("/proc/cpuinfo") as f:  # the first CPU's fields
        cpu = dict(reversed([(k.strip(), v.strip()) for k, _, v in (x.partition(":") for x in f)]))
    report = {"model": label, "config": config, "flops_per_image": flops,
              "command": " ".join(sys.argv), "load_average_start": os.getloadavg(),
              "machine": {"cpu": cpu.get("model name", platform.processor()), "cpus": os.cpu_count(),
                          "simd": [s for s in SIMD_FLAGS if s in cpu.get("flags", "").split()],
                          "usable_cpus": len(os.sched_getaffinity(0)), "thread_environment": {
                              k: v for k, v in os.environ.items() if k.endswith("_THREADS") or k == "XLA_FLAGS"}},
              "gemm_peak_gflops": gemm_peak_gflops()}
    with tempfile.TemporaryDirectory() as directory:
        work, wanted = pathlib.Path(directory), args.rows.split(",")
        spec = dict(config=config, num_classes=num_classes, weights=str(work / "model.safetensors"),
                    images=args.images or str(work / "images"), make_images=not args.images,
                    folder_images=4 if args.quick else 300, timm_import=args.timm_import,
                    repeats={"1": args.repeats[0], "32": args.repeats[1]},
                    preset=str(work / "preset"), cache=str(work / "cache"))
        exports = ([(str(work / "model.onnx"), "onnx")] * ("onnxruntime" in wanted)
                   + [(str(work / "model.xml"), "openvino")] * ("openvino" in wanted))
        folder_engines = ["keras", *(e for e in ("onnxruntime", "openvino") if e in wanted)] * ("folder" in wanted)
        prepared = run_worker("prepare", {**spec, "exports": exports, "folder_engines": folder_engines}, args.export_backend)
        if "error" in prepared:
            raise SystemExit(f"preparing the weights, images and exports: {prepared['error']}")
        spec["timm_kwargs"], report["rounds"] = prepared["timm_kwargs"], []
        for index in range(args.rounds):
            report["rounds"].append({})
            for name, kind, backend, extra in plan(args, work):
                print(f"round {index + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                report["rounds"][-1][name] = run_worker(kind, {**spec, **extra}, backend)
    report["load_average_end"] = os.getloadavg()
    first = report["rounds"][0]
    report["reference"] = next((name for name in ("timm", f"keras {args.backends[0]}")
                                if "error" not in first.get(name, {"error": 1})), None)
    report["table"] = summarize(report["rounds"], report["reference"], flops,
                                report["gemm_peak_gflops"])
    folder_reference = next((n for n in first if n.startswith("folder keras") and "keep-aspect" not in n
                             and "error" not in first[n]), None)
    m = report["machine"]
    text = "\n".join([
        f"# keras-cait benchmark: {label}, {flops / 1e9:.3f} GFLOP/img", "",
        f"- CPU: {m['cpu']}, SIMD {' '.join(m['simd']) or 'none listed'}; {m['usable_cpus']} "
        f"of {m['cpus']} CPUs usable; threads {m['thread_environment'] or 'default'}",
        f"- float32 GEMM peak (NumPy): {report['gemm_peak_gflops']:.0f} GFLOP/s; load average "
        f"{report['load_average_start'][0]:.2f} at start, {report['load_average_end'][0]:.2f} at end",
        f"- {args.rounds} round(s), rows alternating, each a fresh process; img/s: median of "
        f"{args.repeats[0]} calls at batch 1, {args.repeats[1]} at 32", "",
        markdown_table(report["table"], report["reference"] or "–"), ""]
        + ([f"`keras-cait predict DIR --output` on {first[folder_reference]['images']} JPEGs: img/s over a second, "
            "renamed copy of them (start-up cancels out), and over the whole first command", "",
            folder_table(report["rounds"], folder_reference), ""] if folder_reference else [])
        + ([f"This tree's `predict` against the `--baseline` tree's ({args.baseline}), ratios within a round:",
            "", baseline_table(report["rounds"], args.backends), ""] if args.baseline else [])
        + [f"- {name}: {result['error'].splitlines()[0][:300]}"
           for name, result in first.items() if "error" in result])
    print(text)
    for path, content in ((args.json_out, json.dumps(report, indent=1)),
                          (args.markdown_out, text + "\n")):
        pathlib.Path(f"{path}.tmp").write_text(content)  # atomic: write, then rename
        os.replace(f"{path}.tmp", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
