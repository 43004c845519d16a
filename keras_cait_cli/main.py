"""The `keras-cait` command line (also `python -m keras_cait_cli`).

    keras-cait predict INPUT... [--preset NAME|DIR|hf://...] [--top K]
                                [--output FILE [--resume]] [--embeddings]
                                [--keep-aspect]
                                [--ray [--ray-address ADDR] [--ray-actors N]]
                                [--attention DIR] [--backend BACKEND] [--json]
    keras-cait evaluate DIR --output OUTDIR [--preset ...] [--label-map FILE]
    keras-cait presets [--json]
    keras-cait convert SOURCE OUTPUT_DIR [--upload hf://...]
    keras-cait cache-weights [PRESET] --from DIR [--cache-dir DIR]
    keras-cait export-timm MODEL DIR [--label-names FILE] [--upload hf://...]

This module imports neither Keras nor a backend nor `keras_cait`: `--help`,
every sub-command's `--help`, `presets` and `cache-weights` answer at once.
A sub-command that needs the model first checks what it can without Keras
(`keras_cait_cli.checks`: preset names, paths, the backend being
installed), then imports its own module (`keras_cait_cli.predict`,
`keras_cait_cli.convert`).

Quiet by default: TensorFlow's C++ and absl logging and Python warnings are
silenced before anything imports them, unless `--verbose`. Without
`--backend` and `KERAS_BACKEND`, the backend is the first installed of JAX,
PyTorch and TensorFlow, said in one line.

Keras fixes its backend when it is first imported. When `--backend` asks for
another backend than the one already loaded in this process, the command
runs itself again in a fresh interpreter with `KERAS_BACKEND` set (once).

Everything but the result goes to stderr (logs, warnings, progress bars),
so that `--json` prints exactly one JSON document on stdout. Errors are one
line on stderr (`keras-cait: error: ...`) with exit status 1 (2 for bad
arguments); set `KERAS_CAIT_DEBUG=1` to see tracebacks. An input image
that cannot be read is not an error of the command: it gets a record with
an `error` field, and the command ends with exit status 3 (`FAILED_INPUTS`)
after saying how many inputs failed.
"""

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import warnings

from keras_cait_cli import checks

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_PRESET = "cait_xxs24_224"
_REEXEC_FLAG = "KERAS_CAIT_CLI_BACKEND_SWITCHED"
FAILED_INPUTS = 3  # exit status: the command ran, some input images failed

PREDICT_EXAMPLES = """\
examples:
  keras-cait predict cat.jpg
  keras-cait predict photos/*.jpg --top 3 --json > predictions.json
  keras-cait predict photos/ --output results.jsonl      # a folder, recursively
  keras-cait predict photos/ @more.txt --output results.csv --embeddings
  keras-cait predict photos/ --output results.jsonl --resume  # after a stop
  keras-cait predict /shared/photos/ --output results.jsonl --ray \\
      --ray-address auto --ray-actors 8 --ray-gpus-per-actor 1
  keras-cait predict cat.jpg --attention attention_maps/
  keras-cait predict cat.jpg --preset cait_s24_384 --backend jax
  keras-cait predict cat.jpg --preset hf://timm/cait_xxs24_224.fb_dist_in1k
  keras-cait predict cat.jpg --preset ./my_finetuned_preset/
"""

EVALUATE_EXAMPLES = """\
examples:
  keras-cait evaluate imagenet/val --preset cait_xxs24_224 --output eval/
  keras-cait evaluate flowers/ --preset ./my_finetuned_preset/ \\
      --label-map classes.txt --output eval/
"""

CACHE_EXAMPLES = """\
examples:
  # online machine
  hf download timm/cait_xxs24_224.fb_dist_in1k --local-dir cait_xxs24_224
  # offline machine, after copying the folder
  keras-cait cache-weights cait_xxs24_224 --from cait_xxs24_224
  HF_HUB_OFFLINE=1 keras-cait predict photo.jpg
  # or copy a whole cache (~/.cache/huggingface/hub) from the online machine
  keras-cait cache-weights --from copied_hub/
"""

CONVERT_EXAMPLES = """\
examples:
  keras-cait convert cait_xxs24_224 out/cait_xxs24_224
  keras-cait convert ./my_timm_checkpoint/ out/preset --upload hf://me/my-cait
"""

EXPORT_TIMM_EXAMPLES = """\
examples:
  keras-cait export-timm finetuned.keras out/my-cait --label-names classes.txt
  keras-cait export-timm ./my_preset/ out/my-cait --upload hf://me/my-cait
"""

MAIN_EXAMPLES = """\
examples:
  keras-cait predict cat.jpg --top 5
  keras-cait predict cat.jpg dog.png --json
  keras-cait predict cat.jpg --attention out/     # per-head and saliency PNGs
  keras-cait predict photos/ --output results.jsonl
  keras-cait evaluate imagenet/val --output eval/
  keras-cait presets
  keras-cait cache-weights cait_xxs24_224 --from downloaded/   # offline machine
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


def _version():
    try:
        return importlib.metadata.version("keras-cait")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _add_preset_argument(parser):
    parser.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help="a preset name (see `keras-cait presets`), a local preset "
        "directory, or an hf://owner/repo[@revision] handle "
        f"(default: {DEFAULT_PRESET})",
    )


def _add_backend_argument(parser):
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="the Keras backend (default: $KERAS_BACKEND, else the first "
        "installed of jax, torch, tensorflow)",
    )


def _add_verbose_argument(parser):
    parser.add_argument(
        "--verbose", action="store_true",
        help="show TensorFlow/absl logs and library warnings (hidden by default)",
    )


def _add_engine_arguments(parser):
    parser.add_argument(
        "--engine", choices=("keras", "onnxruntime", "openvino"), default="keras",
        help="run the Keras model (default), or the artefact of its "
        "model.export on ONNX Runtime or OpenVINO (made once, kept in the "
        "cache; needs keras-cait[export])",
    )
    parser.add_argument(
        "--precision", choices=("float32", "bfloat16"), default="float32",
        help="bfloat16: --engine openvino on a CPU with bfloat16 "
        "(AVX-512 BF16 or AMX) only (default: float32)",
    )
    parser.add_argument(
        "--cache-dir", metavar="DIR",
        help="the engines' artefact cache (default: $KERAS_CAIT_CACHE, else "
        "$XDG_CACHE_HOME/keras-cait/engines, else ~/.cache/keras-cait/engines)",
    )


def _check_engine_arguments(args):
    if args.precision == "bfloat16" and args.engine != "openvino":
        return "--precision bfloat16 needs --engine openvino"
    if args.cache_dir and args.engine == "keras":
        return "--cache-dir is for --engine onnxruntime or openvino"
    return None


def _add_batch_size_argument(parser, default):
    parser.add_argument(
        "--batch-size", type=_positive_int, default=default, metavar="N",
        help=f"images per forward pass (default: {default})",
    )


def build_parser():
    """The argument parser of `keras-cait`."""
    parser = _Parser(
        prog="keras-cait",
        description="CaiT image classification and attention maps "
        "(Keras 3: TensorFlow, JAX, PyTorch).",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    predict = commands.add_parser(
        "predict",
        help="classify images, folders and lists (top-K labels), optionally "
        "into a results file or with attention maps",
        description="Classify images with a CaiT preset: print the top-K "
        "labels with their probabilities, or write one record per image to a "
        ".jsonl/.csv file as the run goes. Inputs are read once each, in "
        "order; an image that cannot be read gets an error record and the "
        f"exit status is {FAILED_INPUTS}.",
        epilog=PREDICT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image files, folders (recursive), glob patterns or @list.txt "
        "files (one path per line)",
    )
    _add_preset_argument(predict)
    predict.add_argument("--top", type=_positive_int, default=5, metavar="K", help="labels per image (default: 5)")
    predict.add_argument(
        "--output", metavar="FILE",
        help="write one record per image to FILE (.jsonl or .csv) as the run "
        "goes, instead of printing",
    )
    predict.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted --output FILE: keep its complete "
        "records and predict the rest",
    )
    predict.add_argument(
        "--embeddings", action="store_true",
        help="add each image's pooled features to its record (--output or --json)",
    )
    predict.add_argument(
        "--keep-aspect", action="store_true",
        help="classify each photo at its own aspect ratio: the shorter side "
        "resized as the preset's, no crop (a model of any image size; one "
        "size per batch, records in input order; --engine keras)",
    )
    predict.add_argument(
        "--attention",
        metavar="DIR",
        help="write each image's per-head class-attention and saliency PNGs "
        "under DIR (needs matplotlib)",
    )
    _add_backend_argument(predict)
    predict.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout: "
        '[{"image": ..., "predictions": [{"label", "class_id", "probability"}, ...]}, ...]',
    )
    _add_batch_size_argument(predict, default=8)
    _add_engine_arguments(predict)
    predict.add_argument(
        "--ray", action="store_true",
        help="run the model in Ray Data actors (needs keras-cait[ray] and "
        "--output; a local Ray starts unless --ray-address)",
    )
    predict.add_argument(
        "--ray-address", metavar="ADDR",
        help="join this Ray cluster (e.g. auto, ray://head:10001); implies --ray",
    )
    predict.add_argument(
        "--ray-actors", type=_positive_int, default=1, metavar="N",
        help="model replicas under --ray (default: 1)",
    )
    predict.add_argument(
        "--ray-gpus-per-actor", type=float, default=0, metavar="G",
        help="GPUs reserved per actor under --ray (default: 0)",
    )
    _add_verbose_argument(predict)
    predict.set_defaults(run=_run_predict, parser=predict)

    evaluate = commands.add_parser(
        "evaluate",
        help="top-1/top-k accuracy on a labelled folder (ImageFolder layout)",
        description="Evaluate a preset on an ImageFolder layout (DIR/<class>/"
        "images, any depth below), as timm's validate.py: print top-1, top-5, "
        "the number of images and images/s; write OUTDIR/summary.json, "
        "OUTDIR/per_class.csv and, with at most 50 classes, "
        "OUTDIR/confusion_matrix.png. Class folders are WordNet ids "
        "(n01440764, ImageNet-1k models), class indices (0, 1, ...) or names "
        "mapped by --label-map.",
        epilog=EVALUATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("directory", metavar="DIR", help="the folder of class folders")
    evaluate.add_argument("--output", metavar="OUTDIR", required=True, help="folder for the results")
    _add_preset_argument(evaluate)
    evaluate.add_argument(
        "--label-map", metavar="FILE",
        help="class folder -> class index: a .json object, or a text file "
        "with one folder name per line (line k is class k, as timm's class maps)",
    )
    _add_backend_argument(evaluate)
    _add_batch_size_argument(evaluate, default=32)
    _add_engine_arguments(evaluate)
    _add_verbose_argument(evaluate)
    evaluate.set_defaults(run=_run_evaluate, parser=evaluate)

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
        description="Convert a CaiT checkpoint (preset name, hf:// handle or "
        "local timm directory) into a keras-cait preset directory: write it "
        "with save_to_preset, reload it and check its logits, compare with "
        "timm where timm is importable, and optionally upload it. Prints a "
        "JSON summary on the last line.",
        epilog=CONVERT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("source", help="preset name, hf:// handle or local timm directory")
    convert.add_argument("output_dir", help="preset directory to write (must not exist)")
    convert.add_argument("--upload", metavar="URI", help="publish to hf://<user>/<repo>")
    convert.add_argument("--atol", type=float, default=1e-4, help="largest accepted logit difference from timm")
    convert.add_argument("--num-images", type=_positive_int, default=2, help="random images for the checks")
    _add_verbose_argument(convert)
    convert.set_defaults(run=_run_convert)

    cache = commands.add_parser(
        "cache-weights",
        help="fill the Hugging Face cache from copied files (offline machines)",
        description="Fill this machine's Hugging Face cache from files copied "
        "from an online machine, so that presets load with HF_HUB_OFFLINE=1: "
        "a folder written by `hf download <repo> --local-dir DIR` (name the "
        "PRESET or hf:// handle it belongs to), or a copied Hugging Face "
        "cache folder (~/.cache/huggingface/hub; no PRESET). Needs no Keras.",
        epilog=CACHE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cache.add_argument(
        "preset", nargs="?", metavar="PRESET",
        help="preset name or hf://owner/name[@revision] the files belong to",
    )
    cache.add_argument("--from", dest="source", required=True, metavar="DIR",
                       help="the copied folder")
    cache.add_argument(
        "--cache-dir", metavar="DIR",
        help="the cache to fill (default: $HF_HUB_CACHE, else $HF_HOME/hub, "
        "else ~/.cache/huggingface/hub)",
    )
    cache.set_defaults(run=_run_cache_weights)
    export_timm = commands.add_parser(
        "export-timm",
        help="write a keras-cait model in timm's format (for timm, transformers, the Hub)",
        description="Write a keras-cait model (a .keras file, or a preset name, "
        "directory or hf:// handle) as a timm model directory: config.json, "
        "model.safetensors and a model card README.md, loadable with "
        "timm.create_model('local-dir:DIR', pretrained=True) and "
        "CaiTImageClassifier.from_preset(DIR); optionally upload it. Prints "
        "a JSON summary on the last line.",
        epilog=EXPORT_TIMM_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export_timm.add_argument("model", metavar="MODEL", help=".keras file, preset name, directory or hf:// handle")
    export_timm.add_argument("directory", metavar="DIR", help="folder to write (must not exist)")
    export_timm.add_argument(
        "--label-names", metavar="FILE",
        help="class names: a text file (one per line, line k is class k) or a JSON list",
    )
    export_timm.add_argument("--upload", metavar="URI", help="publish to hf://<user>/<repo>")
    export_timm.add_argument(
        "--merge-lora", action="store_true",
        help="merge LoRA adapters into the kernels (timm has no place for them)",
    )
    _add_verbose_argument(export_timm)
    export_timm.set_defaults(run=_run_export_timm)
    return parser


# --- Output helpers ----------------------------------------------------------


def _one_line(message):
    return " ".join(str(message).split())


def fail(message, status=1):
    """Prints a one-line error on stderr; returns the exit status."""
    print(f"keras-cait: error: {_one_line(message)}", file=sys.stderr, flush=True)
    return status


@contextlib.contextmanager
def stdout_to_stderr():
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


@contextlib.contextmanager
def quiet_import(verbose):
    """Hides what C++ libraries print on stderr while they load (TensorFlow
    logs its oneDNN and CUDA probes before its log level is read), unless
    `verbose`; if the import fails, the hidden text is shown."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as hidden:
        os.dup2(hidden.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            hidden.seek(0)
            sys.stderr.write(hidden.read().decode("utf-8", "replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


# --- Backend selection -------------------------------------------------------


def _switch_backend(backend, argv, can_restart):
    """Makes sure Keras runs on `backend`; may re-run this command.

    Returns `None` to go on, or an exit status. `can_restart` is false when
    `main()` was called from Python code, whose process must not be
    replaced.
    """
    if backend is None:
        return None
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = backend
        return None
    if keras.config.backend() == backend:
        return None
    if not can_restart:
        return fail(
            f"Keras is already running on {keras.config.backend()!r} in this "
            f"Python process; set KERAS_BACKEND={backend} before importing "
            "Keras to use another backend."
        )
    if os.environ.get(_REEXEC_FLAG):
        return fail(f"could not switch the Keras backend to {backend!r}.")
    # Keras is already imported with another backend: start again with the
    # backend in the environment, before anything imports Keras.
    env = dict(os.environ, KERAS_BACKEND=backend, **{_REEXEC_FLAG: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "keras_cait_cli", *argv], env)


# --- Sub-commands ------------------------------------------------------------


def _check_predict_arguments(args):
    """The combinations of `predict` options argparse cannot check."""
    if args.resume and not args.output:
        return "--resume needs --output FILE"
    if args.output and args.json:
        return "--json prints the records; --output writes them: use one"
    if args.embeddings and not (args.output or args.json):
        return "--embeddings needs --output FILE or --json"
    if args.embeddings and args.attention:
        return "--embeddings cannot be combined with --attention"
    if args.ray_address:
        args.ray = True
    if args.ray and not args.output:
        return "--ray needs --output FILE (the records are written there)"
    if args.ray and args.attention:
        return "--attention cannot be combined with --ray"
    if args.ray_gpus_per_actor < 0:
        return "--ray-gpus-per-actor must be >= 0"
    if args.attention and args.engine != "keras":
        return "--attention needs --engine keras"
    if args.keep_aspect and (args.engine != "keras" or args.attention or args.ray):
        return "--keep-aspect needs --engine keras, without --attention or --ray"
    return _check_engine_arguments(args)


def _failed_inputs(failed, total):
    """Exit status 0, or `FAILED_INPUTS` with the count on stderr."""
    if not failed:
        return 0
    print(f"keras-cait: {failed} of {total} inputs failed (see their 'error')",
          file=sys.stderr, flush=True)
    return FAILED_INPUTS


def _check_predict_paths(args):
    """What `predict` can check before Keras loads (raises `ArgumentProblem`)."""
    checks.check_inputs(args.inputs)
    checks.check_preset(args.preset, presets_dir())
    if args.cache_dir:
        checks.check_cache_folder(args.cache_dir)
    if args.output:
        checks.check_output_file(args.output, args.resume)
    if args.attention:
        checks.check_new_folder(args.attention, "--attention")
        if not checks.installed("matplotlib"):
            raise checks.ArgumentProblem(
                '--attention needs matplotlib: pip install matplotlib (from a '
                'clone: pip install -e ".[viz]").'
            )
    if args.ray and not checks.installed("ray"):
        raise checks.ArgumentProblem(
            '--ray needs Ray Data: pip install "ray[data]" (from a clone: '
            'pip install -e ".[ray]").'
        )


def _start_backend(args, argv):
    """Chooses the backend (says which and why on stderr) and makes Keras
    run on it; returns `None` to go on, or an exit status."""
    backend, reason = checks.choose_backend(getattr(args, "backend", None))
    print(f"keras-cait: backend {backend} ({reason})", file=sys.stderr, flush=True)
    return _switch_backend(backend, argv, args.can_restart)


def _run_predict(args, argv):
    problem = _check_predict_arguments(args)
    if problem:
        args.parser.error(problem)  # exit status 2, one line
    _check_predict_paths(args)
    from keras_cait_cli import cached_predict  # start-up: Pillow, NumPy, no Keras

    result = None
    if cached_predict.runs_without_keras(args):
        with stdout_to_stderr():
            result = cached_predict.predict_from_cache(args)
    if result is None:
        status = _start_backend(args, argv)
        if status is not None:
            return status
        with stdout_to_stderr():
            with quiet_import(args.verbose):
                # start-up: imports Keras and a backend
                from keras_cait_cli import predict

            result = predict.predict(args)
    records, summary = result
    if summary is not None and summary.get("complete"):
        print(f"keras-cait: {summary['output']} is complete (every input has a "
              "record); nothing to do", file=sys.stderr, flush=True)
        return _failed_inputs(summary["failed"], summary["images"])
    if summary is not None:
        kept = f" after {summary['kept']} kept" if summary["kept"] else ""
        print(f"keras-cait: wrote {_count(summary['written'], 'record')}{kept} "
              f"to {summary['output']}", file=sys.stderr, flush=True)
        return _failed_inputs(summary["failed"], summary["images"])
    if args.json:
        print(json.dumps(records, indent=2), flush=True)
    else:
        print(cached_predict.format_table(records), flush=True)
    return _failed_inputs(sum("error" in r for r in records), len(records))


def _count(number, noun):
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _run_evaluate(args, argv):
    problem = _check_engine_arguments(args)
    if problem:
        args.parser.error(problem)  # exit status 2, with the usage
    checks.check_folder(args.directory, "")
    checks.check_preset(args.preset, presets_dir())
    checks.check_new_folder(args.output, "--output")
    if args.cache_dir:
        checks.check_cache_folder(args.cache_dir)
    if args.label_map:
        checks.check_file(args.label_map, "--label-map")
    status = _start_backend(args, argv)
    if status is not None:
        return status
    with stdout_to_stderr():
        with quiet_import(args.verbose):
            from keras_cait.inference import evaluation  # start-up: imports Keras

        print(f"keras-cait: preset {args.preset}", file=sys.stderr)
        summary = evaluation.evaluate_folder(
            args.directory, args.preset, output_dir=args.output,
            label_map=args.label_map, batch_size=args.batch_size, progress=True,
            engine=args.engine, precision=args.precision, cache_dir=args.cache_dir,
        )
        for path in summary["files"]:
            print(f"wrote {path}", file=sys.stderr)
    print(evaluation.format_summary(summary), flush=True)
    return _failed_inputs(summary["failed"], summary["images"])


def presets_dir():
    """The shipped preset JSON folder, found without importing `keras_cait`."""
    spec = importlib.util.find_spec("keras_cait")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "presets"


def _run_presets(args, argv):
    rows = []
    for path in sorted(presets_dir().glob("*.json")):
        preset = json.loads(path.read_text(encoding="utf-8"))
        height, width = preset["preprocessing"]["image_size"]
        rows.append(
            {
                "name": preset["name"],
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


def _run_cache_weights(args, argv):
    from keras_cait_cli import cache_weights  # start-up: only this command

    try:
        line = cache_weights.cache_weights(
            args.source, args.preset, args.cache_dir, presets_dir()
        )
    except cache_weights.CacheWeightsError as error:
        return fail(error)
    print(f"keras-cait: {line}", file=sys.stderr, flush=True)
    return 0


def _run_convert(args, argv):
    checks.check_preset(args.source, presets_dir())
    status = _start_backend(args, argv)
    if status is not None:
        return status
    with stdout_to_stderr():
        with quiet_import(args.verbose):
            from keras_cait_cli import convert  # start-up: imports Keras and a backend

        summary = convert.convert(
            args.source,
            args.output_dir,
            atol=args.atol,
            num_images=args.num_images,
            upload=args.upload,
        )
    print(json.dumps(summary), flush=True)
    return 0


def _run_export_timm(args, argv):
    checks.check_new_folder(args.directory, "the output folder")
    status = _start_backend(args, argv)
    if status is not None:
        return status
    with stdout_to_stderr():
        with quiet_import(args.verbose):
            from keras_cait_cli import export_timm  # start-up: imports Keras

        summary = export_timm.export_timm(
            args.model, args.directory, label_names_file=args.label_names,
            upload=args.upload, merge_lora=args.merge_lora,
        )
    print(json.dumps(summary), flush=True)
    return 0


# --- entry point -------------------------------------------------------------


def main(argv=None):
    """Runs the `keras-cait` command; returns the exit status.

    Args:
        argv: list of strings, the arguments without the program name;
            defaults to `sys.argv[1:]`.
    """
    can_restart = argv is None  # the `keras-cait` program, not a Python call
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.can_restart = can_restart
    verbose = getattr(args, "verbose", False)
    checks.quiet_environment(verbose)  # before anything imports TensorFlow
    try:
        with _quiet_warnings(verbose):
            return args.run(args, argv) or 0
    except checks.ArgumentProblem as problem:
        return fail(problem)
    except KeyboardInterrupt:
        resume = ""
        if getattr(args, "output", None) and args.command == "predict":
            resume = "; run the same command with --resume to continue it"
        return fail(f"interrupted{resume}", status=130)
    except Exception as error:  # one line, never a traceback
        if os.environ.get("KERAS_CAIT_DEBUG"):
            raise
        errors = sys.modules.get("keras_cait_base.errors")  # loaded if it can raise
        if errors is not None and isinstance(error, errors.CaiTError):
            return fail(error)
        if isinstance(error, OSError):
            return fail(checks.os_error_sentence(error))
        return fail(f"{type(error).__name__}: {error}")


@contextlib.contextmanager
def _quiet_warnings(verbose):
    """Python warnings (deprecations in libraries) hidden unless `verbose`."""
    if verbose:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
