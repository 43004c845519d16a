"""Quantization figures for README: per mode, the largest logit difference
from the float32 model, the `.keras` size on disk and the predict speed at
a batch against float32, for `cait_xxs24_224` (timm's architecture with the
seeded test weights, `tests/fixtures/timm/variants.json`) and, for the
logit difference, KerasHub's ViT of the same width and depth.

Every (model, mode) runs in its own fresh process; the modes alternate
within each round, and the speed ratio is the median over rounds of
`float32 time / mode time` taken in the same round. Wrap runs in
`flock /tmp/keras-cait-bench.lock` on a shared machine.

    PYTHONPATH=$PWD KERAS_BACKEND=jax flock /tmp/keras-cait-bench.lock \\
        .venv/bin/python tools/quantization_benchmark.py --rounds 3

`--lora` instead times a training step of `cait_xxs24_224` with
`backbone.enable_lora(4)` against full fine-tuning (docs/finetuning.md).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODES = ("float32", "int8", "int4", "float8")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build(model_name):
    import keras

    if model_name == "cait":
        sys.path.insert(0, REPO)
        from tests.support import reference_classifier

        return reference_classifier("cait_xxs24_224")
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(224, 224, 3), patch_size=16, num_layers=24, num_heads=4,
        hidden_dim=192, mlp_dim=768,
    )
    return keras_hub.models.ViTImageClassifier(backbone, num_classes=1000)


def worker(model_name, mode, batch, repeats):
    """One (model, mode) in this process: a JSON line on stdout."""
    import keras
    import numpy as np

    images = np.random.default_rng(0).standard_normal((batch, 224, 224, 3))
    images = images.astype("float32")
    model = _build(model_name)
    reference = keras.ops.convert_to_numpy(model(images[:4]))
    if mode != "float32":
        model.quantize(mode)
    logits = keras.ops.convert_to_numpy(model(images[:4]))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        size_mb = os.path.getsize(path) / 2**20
    times = []
    if repeats:
        model.predict(images, batch_size=batch, verbose=0)  # compile
    for _ in range(repeats):  # `--repeats 0`: no speed
        start = time.perf_counter()
        model.predict(images, batch_size=batch, verbose=0)
        times.append(time.perf_counter() - start)
    print(json.dumps({
        "model": model_name,
        "mode": mode,
        "max_logit_difference": float(np.abs(logits - reference).max()),
        "max_float_logit": float(np.abs(reference).max()),
        "size_mb": size_mb,
        "predict_s": float(np.median(times)) if times else None,
    }))


def lora_worker(mode, batch, repeats):
    """Trainable parameters and the median training step (seconds) with
    `mode` "lora" (`enable_lora(4)`) or "full": a JSON line on stdout."""
    import keras
    import numpy as np

    model = _build("cait")
    if mode == "lora":
        model.backbone.enable_lora(4)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images = np.random.default_rng(0).standard_normal((batch, 224, 224, 3))
    labels = np.arange(batch) % 1000
    model.fit(images, labels, batch_size=batch, verbose=0)  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(images, labels, batch_size=batch, verbose=0)
        times.append(time.perf_counter() - start)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    print(json.dumps({"model": "cait", "mode": mode, "trainable": trainable,
                      "step_s": float(np.median(times))}))


def _run(model_name, mode, batch, repeats):
    command = [sys.executable, __file__, "--worker", model_name, mode,
               "--batch", str(batch), "--repeats", str(repeats)]
    output = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed predicts per process; 0 for no speed")
    parser.add_argument("--models", default="cait,vit")
    parser.add_argument("--lora", action="store_true",
                        help="LoRA against full fine-tuning, training steps")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.worker[0] == "lora":
            return lora_worker(args.worker[1], args.batch, args.repeats)
        return worker(*args.worker, args.batch, args.repeats)
    if args.lora:
        return lora_report(args)
    with open("/proc/loadavg") as f:
        print("load at start:", f.read().strip())
    results = {}
    for _ in range(args.rounds):
        for model_name in args.models.split(","):
            for mode in MODES:
                result = _run(model_name, mode, args.batch, args.repeats)
                results.setdefault((model_name, mode), []).append(result)
    with open("/proc/loadavg") as f:
        print("load at end:", f.read().strip())
    import numpy as np

    print(f"\nbackend {os.environ.get('KERAS_BACKEND', 'tensorflow')}, batch "
          f"{args.batch}, {args.rounds} rounds\n")
    print("| model | mode | max logit difference (relative) | .keras MB | "
          "predict speed vs float32 |")
    print("| --- | --- | --- | --- | --- |")
    for (model_name, mode), runs in results.items():
        floats = results[(model_name, "float32")]
        run = runs[0]
        if run["predict_s"] is None:
            speed = "not measured"
        else:
            ratios = [f["predict_s"] / r["predict_s"] for f, r in zip(floats, runs)]
            speed = f"{np.median(ratios):.2f}x"
        relative = run["max_logit_difference"] / run["max_float_logit"]
        print(f"| {model_name} | {mode} | {run['max_logit_difference']:.3g} "
              f"({relative:.3f}) | {run['size_mb']:.1f} | {speed} |")


def lora_report(args):
    import numpy as np

    runs = {"full": [], "lora": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(_run("lora", mode, args.batch, args.repeats))
    print(f"backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}, batch "
          f"{args.batch}, {args.rounds} rounds")
    print("| fine-tuning | trainable parameters | step (s) | speed vs full |")
    print("| --- | --- | --- | --- |")
    for mode, results in runs.items():
        ratio = np.median([f["step_s"] / r["step_s"] for f, r in zip(runs["full"], results)])
        step = np.median([r["step_s"] for r in results])
        print(f"| {mode} | {results[0]['trainable']:,} | {step:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
