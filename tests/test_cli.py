"""The `keras-cait` command line: a few subprocess runs checking much, and `cli.main` in process."""

import functools
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
from tests.support import IMAGES, REPO, reference_classifier

PHOTOS = ["chelsea.png", "camera.png", "rocket.jpg"]  # RGB, greyscale, JPEG


def _run(arguments, env=None, module=True):
    """Runs the CLI in a fresh process; returns (returncode, stdout, stderr)."""
    script = [sys.executable, "-m", "keras_cait_cli"] if module else [
        str(pathlib.Path(sys.executable).parent / "keras-cait")]
    full_env = {"KERAS_BACKEND": keras.config.backend(), **os.environ, **(env or {})}
    result = subprocess.run([*script, *arguments], env=full_env, capture_output=True,
                            text=True, timeout=600, cwd=REPO)
    return result.returncode, result.stdout, result.stderr


_reference = functools.lru_cache(maxsize=None)(reference_classifier)  # by model name


def _expected_probabilities(name, image_size, paths):
    converter = keras_cait.CaiTImageConverter(image_size)
    inputs = np.stack([np.asarray(converter(keras_cait.load_image(p))) for p in paths])
    logits = np.asarray(keras.ops.convert_to_numpy(_reference(name)(inputs)), np.float64)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


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


def test_predict_json_and_attention_with_a_local_preset(tiny_preset, tmp_path, backend):
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
    for result, expected in zip(results, _expected_probabilities("tiny_token_head", 32, images)):
        predictions = result["predictions"]
        assert [set(p) for p in predictions] == [{"label", "class_id", "probability"}] * 3
        assert all(p["label"] is None for p in predictions)  # 10 classes: no labels
        ids = [p["class_id"] for p in predictions]
        assert ids == list(np.argsort(-expected, kind="stable")[:3])
        np.testing.assert_allclose([p["probability"] for p in predictions], expected[ids],
                                   atol=1e-4)
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


# --- In-process runs: `cli.main` returns the exit status. ---------------------


def _main(capfd, *arguments):
    status = cli.main([str(a) for a in arguments])
    out, err = capfd.readouterr()
    return status, out, err


def test_bad_images_are_error_records(tiny_preset, tmp_path, capfd, backend):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((IMAGES / "rocket.jpg").read_bytes()[:20000])
    missing = str(tmp_path / "missing.jpg")
    images = [str(IMAGES / "coffee.png"), missing, str(not_image), str(truncated)]
    run = functools.partial(_main, capfd, "predict", "--backend", backend)
    # Unreadable images are records with an `error`; the others are predicted; status 3.
    status, out, err = run(*images, "--preset", tiny_preset, "--json")
    assert status == 3 and "Traceback" not in err
    assert "3 of 4 inputs failed" in err
    records = json.loads(out)
    assert [r["image"] for r in records] == images
    assert set(records[0]) == {"image", "predictions"}
    assert [set(r) for r in records[1:]] == [{"image", "error"}] * 3
    for record, reason in zip(records[1:], ("not found", "not an image", "truncated")):
        assert record["image"] in record["error"] and reason in record["error"]
    status, out, _ = run(*images, "--preset", tiny_preset)
    assert status == 3
    assert f"{missing}\n  error: Image file not found: '{missing}'." in out
    assert out.count("  error: ") == 3 and "  1. class " in out


@pytest.mark.parametrize("arguments, fragments", [
    (["{tmp}/empty_dir", "--preset", "{preset}"], ["No image files found", "empty_dir"]),
    (["{coffee}", "--preset", "cait_xxs42_224"], ["Unknown preset 'cait_xxs42_224'", "cait_xxs24_224"]),
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


@pytest.mark.parametrize("arguments", [
    "predict", "predict x.jpg --top 0", "predict x.jpg --backend numpy", "frobnicate",
    "predict x.jpg --resume", "predict x.jpg --output r.jsonl --json",
    "predict x.jpg --embeddings", "predict x.jpg --json --embeddings --attention d",
    "evaluate folder",
])
def test_bad_arguments_exit_2_with_usage(capfd, arguments):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(arguments.split())
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    assert "error:" in err and "Traceback" not in err


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


def test_table_names_a_class_once_without_class_names():
    from keras_cait_cli.cached_predict import format_table

    def table(label):
        prediction = {"label": label, "class_id": 6, "probability": 0.5}
        return format_table([{"image": "a.jpg", "predictions": [prediction]}])

    assert table(None).count("class 6") == 1 and "50.00%" in table(None)
    assert "tabby" in table("tabby") and "(class 6)" in table("tabby")


def test_presets_table_and_json(capfd):
    status, out, _ = _main(capfd, "presets")
    assert status == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["preset", "resolution", "parameters", "top-1"]
    assert [line.split()[0] for line in lines[1:]] == keras_cait.list_presets()
    assert "cait_xxs24_224 224x224 11,956,264 78.40%" in [" ".join(line.split()) for line in lines]
    rows = {row["name"]: row for row in json.loads(_main(capfd, "presets", "--json")[1])}
    assert rows["cait_m48_448"] == {"name": "cait_m48_448", "resolution": "448x448",
                                    "parameters": 356460520, "imagenet_top1": 86.48}


def test_convert_writes_a_preset_that_predicts(tmp_path, capfd):
    source = str(REPO / "tests" / "fixtures" / "timm" / "tiny_token_head")
    output = tmp_path / "preset"
    status, out, err = _main(capfd, "convert", source, str(output))
    assert status == 0, err
    assert json.loads(out.strip().splitlines()[-1])["reload_max_error"] == 0.0
    converted = keras_cait.CaiTImageClassifier.from_preset(str(output))
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(converted(images)),
        keras.ops.convert_to_numpy(_reference("tiny_token_head")(images)), atol=1e-6,
    )
    # Never over an existing folder.
    _assert_one_line_error(*_main(capfd, "convert", source, str(output)), "already exists")

