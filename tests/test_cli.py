"""The `keras-cait` command line: a few subprocess runs checking much, and `cli.main` in process."""

import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import keras_cait
from keras_cait_cli import main as cli
from tests.support import IMAGES, REPO, eager_predictions, reference_classifier

PHOTOS = ["chelsea.png", "camera.png", "rocket.jpg"]  # RGB, greyscale, JPEG


def _run(arguments, env=None, module=True):
    """Runs the CLI in a fresh process; returns (returncode, stdout, stderr)."""
    script = [sys.executable, "-m", "keras_cait_cli"] if module else [
        str(pathlib.Path(sys.executable).parent / "keras-cait")]
    full_env = {"KERAS_BACKEND": keras.config.backend(), **os.environ, **(env or {})}
    result = subprocess.run([*script, *arguments], env=full_env, capture_output=True,
                            text=True, timeout=600, cwd=REPO)
    return result.returncode, result.stdout, result.stderr


def _expected_probabilities(name, image_size, paths):
    converter = keras_cait.CaiTImageConverter(image_size)
    inputs = np.stack([np.asarray(converter(keras_cait.load_image(p))) for p in paths])
    logits = np.asarray(keras.ops.convert_to_numpy(reference_classifier(name)(inputs)), np.float64)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def check_predictions(records, classifier, top):
    """Each record's top-k: the classes and probabilities of `eager_predictions`."""
    expected, _ = eager_predictions(classifier, [record["image"] for record in records])
    for record, scores in zip(records, expected):
        predictions = record["predictions"]
        assert [set(p) for p in predictions] == [{"label", "class_id", "probability"}] * top
        ids = [p["class_id"] for p in predictions]
        assert ids == list(np.argsort(-scores, kind="stable")[:top])
        np.testing.assert_allclose([p["probability"] for p in predictions], scores[ids], atol=1e-4)
        assert all(p["label"] is None for p in predictions)  # 10 classes: no labels


def _image_variants(directory):
    """Photos in the modes the CLI must convert, and an EXIF-rotated pair."""
    photo = Image.open(IMAGES / "chelsea.png").convert("RGB").resize((90, 60))
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    images = {"rgba.png": (rgba, {}),
              "palette.png": (photo.convert("P", palette=Image.Palette.ADAPTIVE), {}),
              "cmyk.jpg": (photo.convert("CMYK"), {}), "exif.png": (photo, {"exif": exif}),
              "upright.png": (photo.transpose(Image.Transpose.ROTATE_270), {})}
    for name, (image, options) in images.items():
        image.save(directory / name, **options)
    return {name.split(".")[0]: str(directory / name) for name in images}


def test_predict_json_and_attention_with_a_local_preset(
    tiny_classifier, tiny_preset, tmp_path, backend
):
    variants = _image_variants(tmp_path)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "chelsea.png").write_bytes((IMAGES / "chelsea.png").read_bytes())
    # Another file of the same name last (the same file twice is read once).
    images = [str(IMAGES / name) for name in PHOTOS] + list(variants.values()) + [
        str(tmp_path / "copy" / "chelsea.png")]
    maps = tmp_path / "maps"
    status, stdout, stderr = _run(
        ["predict", *images, "--preset", tiny_preset, "--top", "3", "--json",
         "--attention", str(maps), "--backend", backend, "--batch-size", "3"]
    )
    assert status == 0, stderr
    assert "Traceback" not in stderr
    results = json.loads(stdout)  # exactly one JSON document on stdout
    assert [r["image"] for r in results] == images  # paths as given, in order
    check_predictions(results, tiny_classifier, top=3)
    by_name = {image: result["predictions"] for image, result in zip(images, results)}
    exif, upright = by_name[variants["exif"]], by_name[variants["upright"]]
    assert [p["class_id"] for p in exif] == [p["class_id"] for p in upright]
    np.testing.assert_allclose(  # EXIF orientation applied
        [p["probability"] for p in exif], [p["probability"] for p in upright], atol=1e-6
    )
    # The progress bar (three batches) and the log go to stderr.
    assert "classifying" in stderr and f"backend {backend}" in stderr
    # Three PNGs per image; the repeated name does not overwrite the first.
    stems = ["chelsea", "camera", "rocket", *variants, "chelsea_1"]
    kinds = ("class_attention_0", "class_attention_1", "saliency")
    assert sorted(p.name for p in maps.iterdir()) == sorted(
        f"{stem}_{kind}.png" for stem in stems for kind in kinds
    )
    with Image.open(maps / "rocket_saliency.png") as png:
        assert png.format == "PNG" and png.width > 2 * png.height
        assert np.asarray(png.convert("L")).std() > 20


@pytest.mark.slow
def test_predict_table_with_cait_xxs24_224_from_the_offline_hub_cache(tmp_path, backend):
    from keras_hub.utils import decode_imagenet_predictions

    from tests.hf_cache import build_offline_hub_cache

    cache = build_offline_hub_cache(tmp_path / "hf")["cache_dir"]
    images = [str(IMAGES / name) for name in ("chelsea.png", "coffee.png")]
    status, stdout, stderr = _run(
        ["predict", *images, "--top", "2", "--backend", backend],  # default preset
        env={"HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1",
             "KERAS_CAIT_CACHE": str(tmp_path / "converted")},
        module=False,  # the `keras-cait` console script
    )
    assert status == 0, stderr
    assert "preset cait_xxs24_224" in stderr
    # The cached weights are the seeded reference weights (tests/hf_cache.py).
    probabilities = _expected_probabilities("cait_xxs24_224", 224, images)
    lines = stdout.strip().splitlines()
    assert len(lines) == 2 * 3
    row = re.compile(r"^  (\d)\. (.+?) +(\d+\.\d\d)%  \(class (\d+)\)$")
    for index, (image, expected) in enumerate(zip(images, probabilities)):
        assert lines[3 * index] == image
        top_ids = np.argsort(-expected)[:2]
        labels = decode_imagenet_predictions(expected[None], top=2)[0]
        for rank, line in enumerate(lines[3 * index + 1 : 3 * index + 3]):
            match = row.match(line)
            assert match, line
            assert (int(match[1]), int(match[4])) == (rank + 1, top_ids[rank])
            assert match[2] == labels[rank][0]  # ImageNet label of that class
            assert float(match[3]) == pytest.approx(100 * expected[top_ids[rank]], abs=0.01)


def _assert_one_line_error(status, out, err, *fragments):
    assert status == 1 and out == ""
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("keras-cait: error: ")
    for fragment in fragments:
        assert fragment in last


def test_no_network_and_nothing_cached_after_a_backend_switch(tmp_path, backend):
    other = next(b for b in cli.BACKENDS if b != backend)
    status, stdout, stderr = _run(
        ["predict", str(IMAGES / "chelsea.png"), "--backend", backend],
        env={"KERAS_BACKEND": other, "HF_HUB_CACHE": str(tmp_path / "empty"),
             "HF_HUB_OFFLINE": "1", "KERAS_CAIT_CACHE": str(tmp_path / "converted")},
    )
    assert f"backend {backend}" in stderr  # it switched from `other`
    _assert_one_line_error(status, stdout, stderr, "offline", "nothing is cached")
    assert stderr.strip().splitlines()[-1].startswith("keras-cait: error: hf://timm/cait_xxs24_224")


def _main(capfd, *arguments):
    status = cli.main([str(a) for a in arguments])
    out, err = capfd.readouterr()
    return status, out, err


@pytest.mark.parametrize("arguments, fragments", [
    (["{tmp}/empty_dir", "--preset", "{preset}"], ["No image files found", "empty_dir"]),
    (["{coffee}", "--preset", "{tmp}/no_such_dir"], ["no_such_dir"]),
    (["{coffee}", "--attention", "out"], ["matplotlib"]),  # matplotlib missing
    # Called from Python, never replaces the process to switch backends.
    (["{coffee}", "--backend", "{other}"], ["already running on '{backend}'", "KERAS_BACKEND={other}"]),
])
def test_one_line_errors(arguments, fragments, tiny_preset, tmp_path, capfd, monkeypatch, backend):
    if "--attention" in arguments:
        monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    (tmp_path / "empty_dir").mkdir()
    names = dict(tmp=tmp_path, preset=tiny_preset, coffee=IMAGES / "coffee.png", backend=backend,
                 other=next(b for b in cli.BACKENDS if b != backend))
    status, out, err = _main(capfd, "predict", "--backend", backend,
                             *[argument.format(**names) for argument in arguments])
    _assert_one_line_error(status, out, err, *[fragment.format(**names) for fragment in fragments])


@pytest.mark.parametrize("arguments, message", [
    ("predict", "the following arguments are required: INPUT"),
    ("predict x.jpg --top 0", "argument --top: expected a positive integer, got '0'"),
    ("predict x.jpg --backend numpy", "argument --backend: invalid choice: 'numpy'"),
    ("frobnicate", "argument COMMAND: invalid choice: 'frobnicate'"),
    ("predict x.jpg --resume", "--resume needs --output FILE"),
    ("predict x.jpg --output r.jsonl --json", "--json prints the records; --output writes"),
    ("predict x.jpg --embeddings", "--embeddings needs --output FILE or --json"),
    ("predict x.jpg --json --embeddings --attention d", "--embeddings cannot be combined"),
    ("evaluate folder", "the following arguments are required: --output"),
    ("predict x.jpg --ray", "--ray needs --output FILE"),
    ("predict x.jpg --ray-address auto", "--ray needs --output FILE"),
    ("predict x.jpg --ray --output r.jsonl --attention maps",
     "--attention cannot be combined with --ray"),
    ("predict x.jpg --engine openvino --attention maps", "--attention needs --engine keras"),
    ("predict x.jpg --precision bfloat16", "--precision bfloat16 needs --engine openvino"),
    ("predict x.jpg --keep-aspect --engine onnxruntime", "--keep-aspect needs --engine keras"),
])
def test_bad_arguments_exit_2_with_usage(capfd, arguments, message):
    """Argument mistakes are argparse's usage errors (exit 2), before anything starts."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(arguments.split())
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    assert "error: " + message in err and "Traceback" not in err


@pytest.mark.parametrize("command, expected", [
    ("--help", ["keras-cait predict cat.jpg", "keras-cait evaluate imagenet/val"]),
    ("predict --help", ["--attention DIR", "--json", "--backend", "--output FILE", "--resume",
                        "--embeddings", "@list.txt",
                        "keras-cait predict photos/ --output results.jsonl"]),
    ("evaluate --help", ["--label-map FILE", "--output OUTDIR", "summary.json",
                         "confusion_matrix.png"]),
])
def test_help_has_examples(capfd, command, expected):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(command.split())
    assert exit_info.value.code == 0
    out = capfd.readouterr().out
    for text in ["examples:", *expected]:
        assert text in out


def test_presets_table_and_json(capfd):
    lines = _main(capfd, "presets")[1].strip().splitlines()
    assert lines[0].split() == ["preset", "resolution", "parameters", "top-1"]
    assert [line.split()[0] for line in lines[1:]] == keras_cait.list_presets()
    assert "cait_xxs24_224 224x224 11,956,264 78.40%" in [" ".join(line.split()) for line in lines]
    rows = {row["name"]: row for row in json.loads(_main(capfd, "presets", "--json")[1])}
    assert rows["cait_m48_448"] == {"name": "cait_m48_448", "resolution": "448x448",
                                    "parameters": 356460520, "imagenet_top1": 86.48}
