"""The `keras-cait` command line (also `python -m keras_cait`).

    keras-cait predict IMAGE... [--preset NAME|DIR|hf://...] [--top K]
                                [--attention DIR] [--backend BACKEND] [--json]
    keras-cait presets [--json]
    keras-cait convert ...

Keras fixes its backend when it is first imported. `import keras_cait`
imports Keras, so when `--backend` asks for another backend than the one
loaded, the command runs itself again in a fresh interpreter with
`KERAS_BACKEND` set (once). Keras, the model and matplotlib are imported
only after the arguments are parsed and checked.

Everything but the result goes to stderr (logs, warnings, progress bars),
so that `--json` prints exactly one JSON document on stdout. Errors are one
line on stderr (`keras-cait: error: ...`) with exit status 1 (2 for bad
arguments); set `KERAS_CAIT_DEBUG=1` to see tracebacks.
"""

import argparse
import contextlib
import json
import os
import pathlib
import sys

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_PRESET = "cait_xxs24_224"
_REEXEC_FLAG = "KERAS_CAIT_CLI_BACKEND_SWITCHED"

PREDICT_EXAMPLES = """\
examples:
  keras-cait predict cat.jpg
  keras-cait predict photos/*.jpg --top 3 --json > predictions.json
  keras-cait predict cat.jpg --attention attention_maps/
  keras-cait predict cat.jpg --preset cait_s24_384 --backend jax
  keras-cait predict cat.jpg --preset hf://timm/cait_xxs24_224.fb_dist_in1k
  keras-cait predict cat.jpg --preset ./my_finetuned_preset/
"""

MAIN_EXAMPLES = """\
examples:
  keras-cait predict cat.jpg --top 5
  keras-cait predict cat.jpg dog.png --json
  keras-cait predict cat.jpg --attention out/     # per-head and saliency PNGs
  keras-cait presets
  keras-cait convert --help

Run `keras-cait COMMAND --help` for a command's options.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with one-line errors prefixed by the program name."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser():
    """The argument parser of `keras-cait`."""
    parser = _Parser(
        prog="keras-cait",
        description="CaiT image classification and attention maps "
        "(Keras 3: TensorFlow, JAX, PyTorch).",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from keras_cait.version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    predict = commands.add_parser(
        "predict",
        help="classify images (top-K ImageNet labels), optionally save attention maps",
        description="Classify images with a CaiT preset and print the top-K "
        "labels with their probabilities.",
        epilog=PREDICT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    predict.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help="a preset name (see `keras-cait presets`), a local preset "
        "directory, or an hf://owner/repo[@revision] handle "
        f"(default: {DEFAULT_PRESET})",
    )
    predict.add_argument("--top", type=_positive_int, default=5, metavar="K", help="labels per image (default: 5)")
    predict.add_argument(
        "--attention",
        metavar="DIR",
        help="write each image's per-head class-attention and saliency PNGs "
        "under DIR (needs matplotlib)",
    )
    predict.add_argument(
        "--backend",
        choices=BACKENDS,
        help="the Keras backend (default: $KERAS_BACKEND, else Keras's default)",
    )
    predict.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout: "
        '[{"image": ..., "predictions": [{"label", "class_id", "probability"}, ...]}, ...]',
    )
    predict.add_argument(
        "--batch-size", type=_positive_int, default=8, metavar="N",
        help="images per forward pass (default: 8)",
    )
    predict.set_defaults(run=_run_predict)

    presets = commands.add_parser(
        "presets",
        help="list the pretrained presets",
        description="The pretrained presets: name, input resolution, "
        "parameters and ImageNet-1k top-1 accuracy.",
    )
    presets.add_argument("--json", action="store_true", help="print JSON instead of a table")
    presets.set_defaults(run=_run_presets)

    convert = commands.add_parser(
        "convert",
        help="convert a timm checkpoint into a keras-cait preset (publishing tool)",
        description="Convert a timm CaiT checkpoint into a keras-cait preset "
        "directory; every argument is passed to the publishing tool.",
        add_help=False,
    )
    convert.add_argument("arguments", nargs=argparse.REMAINDER)
    convert.set_defaults(run=_run_convert)
    return parser


# --- Output helpers ----------------------------------------------------------


def _one_line(message):
    return " ".join(str(message).split())


def _fail(message, status=1):
    print(f"keras-cait: error: {_one_line(message)}", file=sys.stderr, flush=True)
    return status


@contextlib.contextmanager
def _stdout_to_stderr():
    """Sends everything written to stdout (Python or C level) to stderr.

    The result is printed after the block, on the restored stdout, so that a
    library printing on stdout (a log line, a progress bar) cannot break
    `--json` output.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _progress(total, description, disable=False):
    from huggingface_hub.utils import tqdm

    return tqdm(total=total, desc=description, unit="image", file=sys.stderr, disable=disable)


# --- Backend selection -------------------------------------------------------


def _switch_backend(backend, argv, can_restart):
    """Makes sure Keras runs on `backend`; may re-run this command.

    Returns `None` to go on, or an exit status. `can_restart` is false when
    `main()` was called from Python code, whose process must not be
    replaced.
    """
    if backend is None:
        return None
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
        return None
    import keras

    if keras.config.backend() == backend:
        return None
    if not can_restart:
        return _fail(
            f"Keras is already running on {keras.config.backend()!r} in this "
            f"Python process; set KERAS_BACKEND={backend} before importing "
            "Keras to use another backend."
        )
    if os.environ.get(_REEXEC_FLAG):
        return _fail(f"could not switch the Keras backend to {backend!r}.")
    # Keras is already imported with another backend: start again with the
    # backend in the environment, before anything imports Keras.
    env = dict(os.environ, KERAS_BACKEND=backend, **{_REEXEC_FLAG: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "keras_cait", *argv], env)


# --- predict -----------------------------------------------------------------


def _check_image_paths(paths):
    """Fails early, before loading a model, for missing paths."""
    from keras_cait.errors import CaiTFileNotFoundError, CaiTImageError

    for path in paths:
        if not os.path.exists(path):
            raise CaiTFileNotFoundError(f"image file not found: '{path}'")
        if os.path.isdir(path):
            raise CaiTImageError(f"'{path}' is a directory, not an image file")


def _load_classifier(preset):
    from keras_cait import CaiTImageClassifier
    from keras_cait.errors import CaiTConfigError

    classifier = CaiTImageClassifier.from_preset(preset)
    if not classifier.num_classes:
        raise CaiTConfigError(
            f"preset '{preset}' has no classification head (num_classes=0); "
            "it cannot classify images"
        )
    preprocessor = classifier.preprocessor
    converter = getattr(preprocessor, "image_converter", None)
    if converter is None:
        raise CaiTConfigError(
            f"preset '{preset}' has no image converter; it cannot "
            "preprocess image files"
        )
    return classifier, converter


def _probabilities(classifier, outputs):
    import numpy as np

    outputs = np.asarray(outputs, dtype=np.float64)
    if classifier.activation is not None:
        return outputs  # the head already applies its activation
    outputs = outputs - outputs.max(axis=-1, keepdims=True)
    exp = np.exp(outputs)
    return exp / exp.sum(axis=-1, keepdims=True)


def _top_predictions(probabilities, top):
    """Per image, the `top` classes: label (ImageNet-1k only), id, probability."""
    import numpy as np

    num_classes = probabilities.shape[-1]
    top = min(top, num_classes)
    results = []
    for row in probabilities:
        ids = np.argsort(-row, kind="stable")[:top]
        labels = [None] * top
        if num_classes == 1000:
            from keras_hub.utils import decode_imagenet_predictions

            # One row per class id: its top-1 label is the id's label.
            one_hot = np.eye(1000, dtype=np.float32)[ids]
            labels = [d[0][0] for d in decode_imagenet_predictions(one_hot, top=1)]
        results.append(
            [
                {"label": label, "class_id": int(i), "probability": float(row[i])}
                for label, i in zip(labels, ids)
            ]
        )
    return results


def _unique_stems(paths):
    stems, seen = [], {}
    for path in paths:
        stem = pathlib.Path(path).stem or "image"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}_{count}")
    return stems


def _predict(args):
    import keras
    import numpy as np

    from keras_cait.image_io import load_image

    _check_image_paths(args.images)
    if args.attention:
        from keras_cait.visualization import _figure_class

        _figure_class()  # fail now, not after the model, if matplotlib is missing
    classifier, converter = _load_classifier(args.preset)
    model = classifier.attention_model()
    grid_size = classifier.backbone.grid_size
    stems = _unique_stems(args.images)
    results = []
    many = len(args.images) > args.batch_size
    with _progress(len(args.images), "classifying", disable=not many) as bar:
        for start in range(0, len(args.images), args.batch_size):
            paths = args.images[start : start + args.batch_size]
            originals = [load_image(path) for path in paths]
            inputs = np.stack([np.asarray(converter(image)) for image in originals])
            # A direct call: no compilation step (much faster than
            # `predict()` for the few images a command line gets).
            outputs = {
                name: keras.ops.convert_to_numpy(value)
                for name, value in model(inputs, training=False).items()
            }
            probabilities = _probabilities(classifier, outputs["predictions"])
            for offset, (path, top) in enumerate(
                zip(paths, _top_predictions(probabilities, args.top))
            ):
                results.append({"image": path, "predictions": top})
                if args.attention:
                    _save_attention(
                        args.attention,
                        stems[start + offset],
                        path,
                        {k: v[offset] for k, v in outputs.items()},
                        inputs[offset],
                        originals[offset],
                        converter,
                        grid_size,
                    )
            bar.update(len(paths))
    return results


def _save_attention(directory, stem, path, maps, model_input, original, converter, grid_size):
    from keras_cait.visualization import display_image, save_attention_figures

    picture = display_image(model_input, converter.mean, converter.std)
    paths = save_attention_figures(
        maps,
        directory,
        stem,
        picture,
        grid_size,
        original=original,
        crop_pct=converter.crop_pct,
        title=os.path.basename(path),
    )
    for written in paths:
        print(f"wrote {written}", file=sys.stderr)


def _format_table(results):
    lines = []
    for result in results:
        lines.append(result["image"])
        for rank, prediction in enumerate(result["predictions"], 1):
            label = prediction["label"]
            name = label if label is not None else f"class {prediction['class_id']}"
            lines.append(
                f"  {rank}. {name:<30} {prediction['probability'] * 100:6.2f}%"
                f"  (class {prediction['class_id']})"
            )
    return "\n".join(lines)


def _run_predict(args, argv):
    status = _switch_backend(args.backend, argv, args.can_restart)
    if status is not None:
        return status
    with _stdout_to_stderr():
        import keras

        print(
            f"keras-cait: preset {args.preset}, backend {keras.config.backend()}",
            file=sys.stderr,
        )
        results = _predict(args)
    if args.json:
        print(json.dumps(results, indent=2), flush=True)
    else:
        print(_format_table(results), flush=True)
    return 0


# --- presets -----------------------------------------------------------------


def _run_presets(args, argv):
    from keras_cait.presets import get_preset, list_presets

    rows = []
    for name in list_presets():
        preset = get_preset(name)
        height, width = preset["backbone"]["image_shape"][:2]
        rows.append(
            {
                "name": name,
                "resolution": f"{height}x{width}",
                "parameters": preset["num_params"],
                "imagenet_top1": preset["imagenet_top1"],
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'preset':<16} {'resolution':>10} {'parameters':>13} {'top-1':>7}")
    for row in rows:
        print(
            f"{row['name']:<16} {row['resolution']:>10} "
            f"{row['parameters']:>13,} {row['imagenet_top1']:>6.2f}%"
        )
    return 0


# --- convert -----------------------------------------------------------------


def _publishing_tool():
    """`main` of the source tree's `tools/convert_timm_checkpoint.py`, or None.

    The publishing tool lives in the repository (it is not part of the
    wheel); from a source checkout or an editable install it is found next
    to the package.
    """
    import importlib.util

    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "convert_timm_checkpoint.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_keras_cait_convert_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _convert_with_the_package(arguments):
    """`convert SOURCE OUTPUT_DIR` without the publishing tool.

    Loads SOURCE with `CaiTImageClassifier.from_preset`, saves it with
    `save_to_preset` into a temporary folder next to OUTPUT_DIR, reloads it,
    checks the reloaded logits equal the loaded model's, then renames the
    folder into place.
    """
    import shutil
    import tempfile

    import keras
    import numpy as np

    from keras_cait import CaiTImageClassifier
    from keras_cait.errors import CaiTConfigError, CaiTWeightsError

    parser = _Parser(
        prog="keras-cait convert",
        description="Convert a CaiT checkpoint (preset name, hf:// handle or "
        "local timm directory) into a keras-cait preset directory.",
    )
    parser.add_argument("source")
    parser.add_argument("output_dir")
    args = parser.parse_args(arguments)
    output = os.path.abspath(args.output_dir)
    if os.path.exists(output):
        raise CaiTConfigError(f"output directory '{args.output_dir}' already exists")
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    model = CaiTImageClassifier.from_preset(args.source)
    temporary = tempfile.mkdtemp(prefix=".tmp-preset-", dir=parent)
    try:
        model.save_to_preset(temporary)
        reloaded = CaiTImageClassifier.from_preset(temporary)
        images = np.random.default_rng(0).standard_normal(
            (2, *model.backbone.image_shape)
        ).astype("float32")
        error = float(
            np.abs(
                keras.ops.convert_to_numpy(model(images))
                - keras.ops.convert_to_numpy(reloaded(images))
            ).max()
        )
        if error > 0:
            raise CaiTWeightsError(
                f"the written preset's logits differ from the source's by {error}"
            )
        os.replace(temporary, output)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    print(json.dumps({"source": args.source, "output_dir": args.output_dir, "reload_max_error": error}))
    return 0


def _run_convert(args, argv):
    tool = _publishing_tool()
    if tool is not None:
        return tool(args.arguments)
    return _convert_with_the_package(args.arguments)


# --- entry point -------------------------------------------------------------


def main(argv=None):
    """Runs the `keras-cait` command; returns the exit status.

    Args:
        argv: list of strings, the arguments without the program name;
            defaults to `sys.argv[1:]`.
    """
    can_restart = argv is None  # the `keras-cait` program, not a Python call
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:
        # Everything after `convert`, `--help` included, is the tool's.
        args = argparse.Namespace(run=_run_convert, arguments=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    args.can_restart = can_restart
    try:
        return args.run(args, argv) or 0
    except KeyboardInterrupt:
        return _fail("interrupted", status=130)
    except Exception as error:  # one line, never a traceback
        if os.environ.get("KERAS_CAIT_DEBUG"):
            raise
        from keras_cait.errors import CaiTError

        if isinstance(error, (CaiTError, OSError)):
            return _fail(error)
        return _fail(f"{type(error).__name__}: {error}")
