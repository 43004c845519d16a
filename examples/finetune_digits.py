"""Fine-tune CaiT on scikit-learn's handwritten digits, offline, on the CPU.

The digits (1,797 grey 8x8 images, 10 classes, shipped with scikit-learn) are
upsampled to 32x32 RGB and split 80/20 (stratified, fixed seed). `--augment`
adds four copies of the training images shifted by one digit pixel. The model is
trained with keras-cait's fine-tuning recipe: AdamW without weight decay on
biases, norms, LayerScale, position embedding and class token, layer-wise
learning-rate decay, drop path, cosine learning-rate decay with warm-up.

By default a small CaiT (4x4 patches of 2x2 digit pixels, 4 self-attention
blocks, 2 class-attention blocks, dim 64) starts from random weights, since no pretrained checkpoint is
reachable offline. `--preset` fine-tunes a pretrained checkpoint instead (a
preset name, `hf://` handle or local directory) at the digits' resolution:
its position embedding is resampled to the new patch grid.

Usage:
    KERAS_BACKEND=jax python examples/finetune_digits.py
    KERAS_BACKEND=torch python examples/finetune_digits.py --epochs 20
    python examples/finetune_digits.py --preset cait_xxs24_224 --image-size 64
    python examples/finetune_digits.py --quick   # a smoke test, seconds

Prints the held-out accuracy and writes it, with timings, as JSON to
`--output` if given.
"""

import argparse
import json
import os
import time

import keras
import numpy as np

import keras_cait
from keras_cait.training.finetuning import finetuning_optimizer, load_for_finetuning

# ImageNet statistics: the normalisation CaiT checkpoints expect.
MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")


def load_digits(image_size, seed=0):
    """Digits as RGB NHWC float32 images in [0, 255], split 80/20 (stratified).

    Returns:
        `(x_train, y_train, x_test, y_test)`.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = digits.images.astype("float32") * (255.0 / 16.0)  # (n, 8, 8)
    repeat = image_size // 8
    images = images.repeat(repeat, axis=1).repeat(repeat, axis=2)
    images = np.repeat(images[..., None], 3, axis=-1)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=seed,
        stratify=digits.target,
    )
    return x_train, y_train, x_test, y_test


def add_shifted_copies(images, labels, shift):
    """Augments by translation: the images plus copies moved `shift` pixels
    up, down, left and right (the background is 0, so edges fill with 0)."""
    copies = [images]
    for axis, step in ((1, shift), (1, -shift), (2, shift), (2, -shift)):
        moved = np.roll(images, step, axis=axis)
        edge = [slice(None)] * images.ndim
        edge[axis] = slice(0, step) if step > 0 else slice(step, None)
        moved[tuple(edge)] = 0.0
        copies.append(moved)
    return np.concatenate(copies), np.tile(labels, len(copies))


def normalise(images):
    """What a CaiT preprocessor does to images already at the model's size."""
    return (images / 255.0 - MEAN) / STD


def build_model(args):
    if args.preset:
        return load_for_finetuning(
            args.preset,
            num_classes=10,
            image_shape=(args.image_size, args.image_size, 3),
            drop_path_rate=args.drop_path_rate,
        )
    backbone = keras_cait.CaiTBackbone(
        image_shape=(args.image_size, args.image_size, 3),
        patch_size=args.image_size // 4,
        hidden_dim=64,
        num_layers=4,
        num_heads=4,
        num_class_attention_layers=2,
        layer_scale_init_value=0.1,
        drop_path_rate=args.drop_path_rate,
    )
    return keras_cait.CaiTImageClassifier(backbone, num_classes=10, compile=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--layer-decay", type=float, default=0.9)
    parser.add_argument("--drop-path-rate", type=float, default=0.1)
    parser.add_argument("--freeze-backbone", action="store_true")
    parser.add_argument("--augment", action="store_true",
                        help="add copies of the training images shifted by "
                        "one digit pixel (5x the data per epoch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="64 training images, 1 epoch: a smoke test")
    parser.add_argument("--output", default=None, help="write results as JSON")
    args = parser.parse_args(argv)
    if args.image_size % 8:
        parser.error("--image-size must be a multiple of 8")

    keras.utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = load_digits(args.image_size, args.seed)
    if args.quick:
        x_train, y_train = x_train[:64], y_train[:64]
        x_test, y_test = x_test[:64], y_test[:64]
        args.epochs = 1
        args.augment = False
    if args.augment:
        # One digit pixel is image_size // 8 pixels here.
        x_train, y_train = add_shifted_copies(x_train, y_train, args.image_size // 8)

    model = build_model(args)
    # A pretrained preset comes with its preprocessor, which `fit` and
    # `predict` run; the model built here has none, so normalise by hand.
    if model.preprocessor is None:
        x_train, x_test = normalise(x_train), normalise(x_test)
    if args.freeze_backbone:
        model.backbone.trainable = False
    steps = args.epochs * int(np.ceil(len(x_train) / args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(steps - steps // 10, 1),
        warmup_target=args.learning_rate,
        warmup_steps=steps // 10,
    )
    model.compile(
        optimizer=finetuning_optimizer(
            model,
            learning_rate=schedule,
            weight_decay=args.weight_decay,
            layer_decay=args.layer_decay,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
        verbose=0 if args.quick else 2,
    )
    train_seconds = time.perf_counter() - start
    logits = model.predict(x_test, batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == y_test))
    result = {
        "backend": keras.backend.backend(),
        "preset": args.preset,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "train_images": int(len(x_train)),
        "test_images": int(len(x_test)),
        "final_train_loss": float(history.history["loss"][-1]),
        "test_accuracy": accuracy,
        "train_seconds": round(train_seconds, 1),
        "parameters": int(model.count_params()),
    }
    print(json.dumps(result))
    if args.output:
        tmp = f"{args.output}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, args.output)
    return result


if __name__ == "__main__":
    main()
