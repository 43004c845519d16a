"""Collection throughput: a folder of JPEG files through the streamed
pipeline against `model.predict` on the same images already preprocessed.

It writes `--images` JPEG files of 256-640 px (random crops of
`../shared/images`, seeded), saves a classifier with seeded weights as a
local preset, and then, per backend and round, in alternating fresh
processes:

- folder: `keras_cait.inference.batch_prediction.write_records`, the code of
  `keras-cait predict DIR --output FILE`: Pillow decoding, the converter's
  bicubic resize and the model, in batches of `--batch-size`, records written;
- array: `model.predict` (the same Keras model) on the `(N, size, size, 3)`
  float32 array of the converter's outputs, at the same batch size.

Both are timed after the model is loaded and its forward pass compiled (one
warm-up batch), so the ratio folder/array is what decoding costs a run once
it is going. The machine's load (`uptime`) is recorded before and after.

    flock /tmp/keras-cait-bench.lock python tools/benchmark.py --collection \\
        --markdown-out collection.md

(`tools/benchmark.py --collection` runs `main` here, with the options below.)
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE_IMAGES = REPO.parent / "shared" / "images"
BACKENDS = ("tensorflow", "jax", "torch")
QUICK_CONFIG = dict(image_shape=[32, 32, 3], patch_size=8, hidden_dim=48,
                    num_layers=2, num_heads=4, num_class_attention_layers=2)


def make_collection(directory, count, seed=0, sizes=(256, 640)):
    """`count` JPEG files in `directory`: random crops (a quarter to all of
    each side) of the images in `../shared/images` (or, where that folder
    is missing, of seeded synthetic pictures), resized so that their
    sides are in `sizes`. Returns their paths, sorted."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    found = sorted(SOURCE_IMAGES.iterdir()) if SOURCE_IMAGES.is_dir() else []
    sources = [Image.open(path).convert("RGB") for path in found
               if path.suffix.lower() in (".png", ".jpg", ".jpeg")]
    if not sources:
        # A checkout without ../shared/images: seeded colour gradients with noise.
        grid = np.linspace(0.0, 1.0, 640)
        for _ in range(4):
            colour = rng.uniform(0, 255, (3,))
            pixels = (np.outer(grid[:480], grid)[..., None] * colour
                      + rng.normal(0, 20, (480, 640, 3)))
            sources.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    os.makedirs(directory, exist_ok=True)
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        width, height = source.size
        crop_w = int(rng.integers(width // 4, width + 1))
        crop_h = int(rng.integers(height // 4, height + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        size = tuple(int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
        image = source.crop((left, top, left + crop_w, top + crop_h)).resize(
            size, Image.Resampling.BICUBIC
        )
        path = os.path.join(directory, f"image_{index:04d}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    return sorted(paths)


def worker_prepare(spec):
    """Saves the seeded classifier as a preset and the converted images as
    a `.npy` array (the array run's input)."""
    import keras
    import numpy as np

    import keras_cait
    from keras_cait.inference.image_pipeline import image_batches
    from keras_cait.loading import registry

    backbone_kwargs, num_classes = spec["backbone_kwargs"], spec["num_classes"]
    if backbone_kwargs is None:  # a preset: the model of its architecture
        backbone_kwargs, head = registry.model_arguments(spec["model"])
        num_classes = head["num_classes"]
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**backbone_kwargs)
    converter = keras_cait.CaiTImageConverter(**spec["preprocessing"])
    classifier = keras_cait.CaiTImageClassifier(
        backbone, num_classes=num_classes,
        preprocessor=keras_cait.CaiTImageClassifierPreprocessor(converter),
    )
    classifier.save_to_preset(spec["preset"])
    batches = image_batches(spec["paths"], converter, 64)
    np.save(spec["array"], np.concatenate([batch.images for batch in batches]))
    return {"images": len(spec["paths"])}


def worker_measure(spec):
    """Times one run, folder or array, after loading and a warm-up batch."""
    import keras
    import numpy as np

    import keras_cait
    from keras_cait.inference.batch_prediction import BatchPredictor, write_records

    batch_size = spec["batch_size"]
    classifier = keras_cait.CaiTImageClassifier.from_preset(spec["preset"])
    predictor = BatchPredictor(classifier, top=5)
    array = np.load(spec["array"])
    if spec["kind"] == "folder":
        predictor.outputs(array[:batch_size], batch_size)  # compiles
        with tempfile.TemporaryDirectory() as directory:
            output = os.path.join(directory, "records.jsonl")
            start = time.perf_counter()
            summary = write_records(predictor, spec["paths"], output, batch_size,
                                    progress=False)
            seconds = time.perf_counter() - start
        assert summary["written"] == len(spec["paths"]) and not summary["failed"]
    else:
        predictor.model.predict(array[:batch_size], batch_size=batch_size, verbose=0)
        start = time.perf_counter()
        predictor.model.predict(array, batch_size=batch_size, verbose=0)
        seconds = time.perf_counter() - start
    return {"backend": keras.backend.backend(), "kind": spec["kind"],
            "seconds": seconds, "images_per_s": len(spec["paths"]) / seconds}


WORKERS = {"prepare": worker_prepare, "measure": worker_measure}


def run_worker(kind, spec, backend, timeout):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as directory:
        spec_path = os.path.join(directory, "spec.json")
        out_path = os.path.join(directory, "out.json")
        pathlib.Path(spec_path).write_text(json.dumps(spec))
        process = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", kind,
             "--worker-spec", spec_path, "--worker-out", out_path],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
        )
        if process.returncode or not os.path.exists(out_path):
            raise SystemExit(f"{kind} worker ({backend}) failed:\n{process.stderr[-3000:]}")
        return json.loads(pathlib.Path(out_path).read_text())


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _model(args):
    """`(label, backbone_kwargs, num_classes, preprocessing)`."""
    if args.quick:
        return "quick", dict(QUICK_CONFIG), 10, {"image_size": 32}
    preset = json.loads((REPO / "presets" / f"{args.model}.json").read_text())
    preprocessing = {key: preset["preprocessing"][key] for key in
                     ("image_size", "crop_pct", "interpolation", "mean", "std")}
    return args.model, None, None, preprocessing  # the model: its architecture's


def measure(args):
    label, backbone_kwargs, num_classes, preprocessing = _model(args)
    result = {"model": label, "images": args.images, "batch_size": args.batch_size,
              "uptime_start": uptime(), "runs": []}
    with tempfile.TemporaryDirectory() as directory:
        paths = make_collection(os.path.join(directory, "images"), args.images)
        spec = dict(model=label, paths=paths, preset=os.path.join(directory, "preset"),
                    array=os.path.join(directory, "images.npy"),
                    backbone_kwargs=backbone_kwargs, num_classes=num_classes,
                    preprocessing=preprocessing, batch_size=args.batch_size)
        run_worker("prepare", spec, args.backends[0], args.timeout)
        for round_index in range(args.rounds):
            for backend in args.backends:
                kinds = ("folder", "array") if round_index % 2 == 0 else ("array", "folder")
                for kind in kinds:
                    run = run_worker("measure", dict(spec, kind=kind), backend, args.timeout)
                    run["round"] = round_index
                    result["runs"].append(run)
                    print(f"round {round_index} {backend:10s} {kind:6s} "
                          f"{run['images_per_s']:.2f} images/s", file=sys.stderr, flush=True)
    result["uptime_end"] = uptime()
    result["ratios"] = {}
    for backend in args.backends:
        rates = {kind: statistics.median(r["images_per_s"] for r in result["runs"]
                                         if r["backend"] == backend and r["kind"] == kind)
                 for kind in ("folder", "array")}
        result["ratios"][backend] = dict(rates, ratio=rates["folder"] / rates["array"])
    return result


def markdown(result):
    lines = [
        f"Collection benchmark: `{result['model']}` (seeded weights), "
        f"{result['images']} JPEG files of 256-640 px, batch {result['batch_size']}, "
        "median images/s of alternating fresh processes.",
        "",
        f"- load at start: `{result['uptime_start']}`",
        f"- load at end: `{result['uptime_end']}`",
        "",
        "| backend | folder (`predict DIR --output`) | array (`model.predict`) | folder/array |",
        "|---|---|---|---|",
    ]
    for backend, rates in result["ratios"].items():
        lines.append(f"| {backend} | {rates['folder']:.2f} | {rates['array']:.2f} | "
                     f"{rates['ratio']:.0%} |")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cait_xxs24_224", help="a preset of presets/")
    parser.add_argument("--quick", action="store_true", help="a tiny model (seconds; tests)")
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="runs per backend and kind")
    parser.add_argument("--backends", type=lambda text: text.split(","), default=list(BACKENDS))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per worker")
    parser.add_argument("--json-out")
    parser.add_argument("--markdown-out")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-spec", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        spec = json.loads(pathlib.Path(args.worker_spec).read_text())
        pathlib.Path(args.worker_out).write_text(json.dumps(WORKERS[args.worker](spec)))
        return 0
    result = measure(args)
    text = markdown(result)
    print(text)
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(result, indent=2))
    if args.markdown_out:
        pathlib.Path(args.markdown_out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
