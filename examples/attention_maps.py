"""Where does CaiT look? Class-attention maps of a pretrained CaiT.

The path of the keras.io tutorial "Class Attention Image Transformers with
LayerScale", with keras-cait's API:

1. load a pretrained preset,
2. classify a photo,
3. show the per-head class attention of both class-attention blocks,
4. overlay the head-averaged saliency map on the photo.

Usage:

    python examples/attention_maps.py cat.jpg
    python examples/attention_maps.py cat.jpg --preset ./my_preset_dir/ --output out/
    # offline, from a Hugging Face cache filled beforehand:
    python examples/attention_maps.py cat.jpg --hf-cache ~/hf_cache
    KERAS_BACKEND=jax python examples/attention_maps.py cat.jpg

It writes `<photo>_class_attention_0.png`, `<photo>_class_attention_1.png`
and `<photo>_saliency.png` to the output folder (needs matplotlib).
"""

import argparse
import os
import pathlib


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="a photo (JPEG, PNG, ...)")
    parser.add_argument(
        "--preset",
        default="cait_xxs24_224",
        help="preset name, local preset directory or hf:// handle",
    )
    parser.add_argument("--output", default="attention_maps", help="output folder")
    parser.add_argument(
        "--hf-cache",
        help="a Hugging Face cache folder to read the preset from, offline",
    )
    return parser.parse_args()


def main():
    args = parse_args()
    if args.hf_cache:
        # Read by huggingface_hub when it is imported: set them first.
        os.environ["HF_HUB_CACHE"] = os.path.abspath(args.hf_cache)
        os.environ["HF_HUB_OFFLINE"] = "1"

    import keras
    import numpy as np

    import keras_cait
    from keras_cait.explain.visualization import (
        display_image,
        plot_attention_heads,
        plot_saliency,
        save_figure,
    )

    # 1. A pretrained CaiT, with its preprocessing (timm's evaluation
    #    transform: bicubic resize, center crop, ImageNet normalisation).
    classifier = keras_cait.CaiTImageClassifier.from_preset(args.preset)
    converter = classifier.preprocessor.image_converter
    grid_size = classifier.backbone.grid_size
    print(f"{args.preset}: backend {keras.config.backend()}, patch grid {grid_size}")

    # 2. Classify the photo. One forward pass gives the predictions and the
    #    class-attention maps of both class-attention blocks (plus, here, the
    #    talking-heads attention of the last self-attention block).
    photo = keras_cait.load_image(args.image)
    model_input = np.asarray(converter(photo))  # (224, 224, 3), normalised
    outputs = classifier.get_attention_maps(
        model_input[None], indices=[-1], preprocess=False
    )
    for name, value in outputs.items():
        print(f"  {name}: {value.shape}")
    logits = outputs["predictions"][0]
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    top = np.argsort(-probabilities)[:5]
    if len(probabilities) == 1000:
        from keras_hub.utils import decode_imagenet_predictions

        labels = [
            label for label, _ in decode_imagenet_predictions(probabilities[None])[0]
        ]
    else:
        labels = [f"class {i}" for i in top]
    print("Top-5:")
    for label, class_id in zip(labels, top):
        print(f"  {label:<30} {probabilities[class_id]:7.2%}")

    # 3. Per-head class attention of each class-attention block, over the
    #    image as the model saw it.
    output = pathlib.Path(args.output)
    stem = pathlib.Path(args.image).stem
    picture = display_image(model_input, converter.mean, converter.std)
    for block in range(classifier.backbone.num_class_attention_layers):
        name = f"class_attention_{block}"
        figure = plot_attention_heads(
            outputs[name][0], grid_size, image=picture,
            title=f"{stem}: {name} (per head)",
        )
        print("wrote", save_figure(figure, output / f"{stem}_{name}.png"))

    # 4. The saliency map: the last block's class attention averaged over
    #    the heads, normalised to [0, 1], on the original photo (the region
    #    outside the model's center crop is dimmed).
    last = f"class_attention_{classifier.backbone.num_class_attention_layers - 1}"
    saliency = keras_cait.saliency_map(outputs[last][0], grid_size)
    row, column = np.unravel_index(saliency.argmax(), saliency.shape)
    print(f"Most attended patch: row {row}, column {column} of {grid_size}")
    figure = plot_saliency(
        photo, saliency, crop_pct=converter.crop_pct,
        title=f"{stem}: {last}, mean over heads",
    )
    print("wrote", save_figure(figure, output / f"{stem}_saliency.png"))


if __name__ == "__main__":
    main()
