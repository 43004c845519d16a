"""The `keras-cait` command line, run in subprocesses on the sample photos.

The subprocess runs use the current backend (`--backend` = it) and a small
number of processes: each run checks several things.
"""

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


def _run(arguments, env=None, module=True, timeout=600):
    """Runs the CLI in a fresh process; returns (returncode, stdout, stderr)."""
    if module:
        command = [sys.executable, "-m", "keras_cait_cli", *arguments]
    else:
        script = pathlib.Path(sys.executable).parent / "keras-cait"
        command = [str(script), *arguments]
    full_env = dict(os.environ)
    full_env.setdefault("KERAS_BACKEND", keras.config.backend())
    full_env.update(env or {})
    result = subprocess.run(
        command, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    return result.returncode, result.stdout, result.stderr


@functools.lru_cache(maxsize=None)
def _reference(name, image_size):
    """A reference classifier and the converter of its preset."""
    return reference_classifier(name), keras_cait.CaiTImageConverter(image_size)


def _expected_probabilities(name, image_size, paths):
    classifier, converter = _reference(name, image_size)
    inputs = np.stack([np.asarray(converter(keras_cait.load_image(p))) for p in paths])
    logits = np.asarray(keras.ops.convert_to_numpy(classifier(inputs)), np.float64)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def _image_variants(directory):
    """Photos in the modes the CLI must convert, and an EXIF-rotated pair."""
    photo = Image.open(IMAGES / "chelsea.png").convert("RGB").resize((90, 60))
    paths = {}
    paths["rgba"] = directory / "rgba.png"
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(paths["rgba"])
    paths["palette"] = directory / "palette.png"
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(paths["palette"])
    paths["cmyk"] = directory / "cmyk.jpg"
    photo.convert("CMYK").save(paths["cmyk"])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    paths["exif"] = directory / "exif.png"
    photo.save(paths["exif"], exif=exif)
    paths["upright"] = directory / "upright.png"
    photo.transpose(Image.Transpose.ROTATE_270).save(paths["upright"])
    return {name: str(path) for name, path in paths.items()}


def test_predict_json_and_attention_with_a_local_preset(tiny_preset, tmp_path, backend):
    variants = _image_variants(tmp_path)
    images = [str(IMAGES / name) for name in PHOTOS] + list(variants.values())
    # Another file of the same name (the same file twice is read once).
    (tmp_path / "copy").mkdir()
    images.append(str(tmp_path / "copy" / "chelsea.png"))
    (tmp_path / "copy" / "chelsea.png").write_bytes((IMAGES / "chelsea.png").read_bytes())
    attention_dir = tmp_path / "maps"
    status, stdout, stderr = _run(
        ["predict", *images, "--preset", tiny_preset, "--top", "3", "--json",
         "--attention", str(attention_dir), "--backend", backend, "--batch-size", "3"]
    )
    assert status == 0, stderr
    assert "Traceback" not in stderr
    results = json.loads(stdout)  # exactly one JSON document on stdout
    assert [r["image"] for r in results] == images  # paths as given, in order
    probabilities = _expected_probabilities("tiny_token_head", 32, images)
    for result, expected in zip(results, probabilities):
        predictions = result["predictions"]
        assert [set(p) for p in predictions] == [{"label", "class_id", "probability"}] * 3
        # 10 classes, not ImageNet: class ids, no labels.
        assert all(p["label"] is None for p in predictions)
        ids = [p["class_id"] for p in predictions]
        assert ids == list(np.argsort(-expected, kind="stable")[:3])
        np.testing.assert_allclose(
            [p["probability"] for p in predictions], expected[ids], atol=1e-4
        )
    by_name = {image: result["predictions"] for image, result in zip(images, results)}
    exif, upright = by_name[variants["exif"]], by_name[variants["upright"]]
    assert [p["class_id"] for p in exif] == [p["class_id"] for p in upright]
    np.testing.assert_allclose(  # EXIF orientation applied
        [p["probability"] for p in exif], [p["probability"] for p in upright], atol=1e-6
    )
    # The progress bar (many images: three batches) and the log go to stderr.
    assert "classifying" in stderr and f"backend {backend}" in stderr
    # Three PNGs per image; the repeated name does not overwrite the first.
    written = sorted(p.name for p in attention_dir.iterdir())
    stems = ["chelsea", "camera", "rocket", *variants, "chelsea_1"]
    assert written == sorted(
        f"{stem}_{kind}.png"
        for stem in stems
        for kind in ("class_attention_0", "class_attention_1", "saliency")
    )
    with Image.open(attention_dir / "rocket_saliency.png") as png:
        assert png.format == "PNG" and png.width > 2 * png.height
        assert np.asarray(png.convert("L")).std() > 20


@pytest.mark.slow
def test_predict_table_with_cait_xxs24_224_from_the_offline_hub_cache(tmp_path, backend):
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
    from keras_hub.utils import decode_imagenet_predictions

    row = re.compile(r"^  (\d)\. (.+?) +(\d+\.\d\d)%  \(class (\d+)\)$")
    for index, (image, expected) in enumerate(zip(images, probabilities)):
        assert lines[3 * index] == image
        top_ids = np.argsort(-expected)[:2]
        labels = decode_imagenet_predictions(expected[None], top=2)[0]
        for rank, line in enumerate(lines[3 * index + 1 : 3 * index + 3]):
            match = row.match(line)
            assert match, line
            assert int(match[1]) == rank + 1
            assert int(match[4]) == top_ids[rank]
            assert match[2] == labels[rank][0]  # ImageNet label of that class
            assert float(match[3]) == pytest.approx(100 * expected[top_ids[rank]], abs=0.01)


def test_no_network_and_nothing_cached_after_a_backend_switch(tmp_path, backend):
    other = next(b for b in cli.BACKENDS if b != backend)
    status, stdout, stderr = _run(
        ["predict", str(IMAGES / "chelsea.png"), "--backend", backend],
        env={"KERAS_BACKEND": other, "HF_HUB_CACHE": str(tmp_path / "empty"),
             "HF_HUB_OFFLINE": "1", "KERAS_CAIT_CACHE": str(tmp_path / "converted")},
    )
    assert status == 1 and stdout == ""
    assert f"backend {backend}" in stderr  # it switched from `other`
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("keras-cait: error: hf://timm/cait_xxs24_224")
    assert "offline" in last and "nothing is cached" in last


# --- In-process runs: `cli.main` returns the exit status. ---------------------


def _main(capfd, *arguments):
    status = cli.main(list(arguments))
    out, err = capfd.readouterr()
    return status, out, err


def _assert_one_line_error(status, out, err, *fragments):
    assert status == 1 and out == ""
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("keras-cait: error: ")
    for fragment in fragments:
        assert fragment in last


def test_bad_images_are_error_records_and_bad_presets_one_line_errors(
    tiny_preset, tmp_path, capfd, backend
):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((IMAGES / "rocket.jpg").read_bytes()[:20000])
    missing = str(tmp_path / "missing.jpg")
    images = [str(IMAGES / "coffee.png"), missing, str(not_image), str(truncated)]
    run = functools.partial(_main, capfd, "predict", "--backend", backend)

    # An image that cannot be read is a record with an `error`, not a crash:
    # the others are predicted, and the exit status is 3.
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

    (tmp_path / "empty_dir").mkdir()
    _assert_one_line_error(
        *run(str(tmp_path / "empty_dir"), "--preset", tiny_preset),
        "No image files found", "empty_dir",
    )
    _assert_one_line_error(
        *run(str(IMAGES / "coffee.png"), "--preset", "cait_xxs42_224"),
        "Unknown preset 'cait_xxs42_224'",
        "cait_xxs24_224",
    )
    _assert_one_line_error(
        *run(str(IMAGES / "coffee.png"), "--preset", str(tmp_path / "no_such_dir")),
        "no_such_dir",
    )


def test_bad_arguments_exit_2_with_usage(capfd):
    for arguments in (["predict"], ["predict", "x.jpg", "--top", "0"],
                      ["predict", "x.jpg", "--backend", "numpy"], ["frobnicate"],
                      ["predict", "x.jpg", "--resume"],
                      ["predict", "x.jpg", "--output", "r.jsonl", "--json"],
                      ["predict", "x.jpg", "--embeddings"],
                      ["predict", "x.jpg", "--json", "--embeddings", "--attention", "d"],
                      ["evaluate", "folder"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(arguments)
        assert exit_info.value.code == 2
        err = capfd.readouterr().err
        assert "error:" in err and "Traceback" not in err


def test_help_has_examples(capfd):
    helps = {}
    for arguments in (["--help"], ["predict", "--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(arguments)
        assert exit_info.value.code == 0
        helps[arguments[0]] = out = capfd.readouterr().out
        assert "examples:" in out
    assert "keras-cait predict cat.jpg" in helps["--help"]
    assert "keras-cait evaluate imagenet/val" in helps["--help"]
    predict = helps["predict"]
    for option in ("--attention DIR", "--json", "--backend", "--output FILE",
                   "--resume", "--embeddings", "@list.txt",
                   "keras-cait predict photos/ --output results.jsonl"):
        assert option in predict
    for option in ("--label-map FILE", "--output OUTDIR", "summary.json",
                   "confusion_matrix.png"):
        assert option in helps["evaluate"]


def test_presets_table_and_json(capfd):
    status, out, _ = _main(capfd, "presets")
    assert status == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["preset", "resolution", "parameters", "top-1"]
    assert [line.split()[0] for line in lines[1:]] == keras_cait.list_presets()
    assert "cait_xxs24_224 224x224 11,956,264 78.40%" in [" ".join(line.split()) for line in lines]
    status, out, _ = _main(capfd, "presets", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["cait_m48_448"] == {
        "name": "cait_m48_448", "resolution": "448x448",
        "parameters": 356460520, "imagenet_top1": 86.48,
    }


def test_attention_without_matplotlib_is_a_clear_error(monkeypatch, capfd, backend):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    status, out, err = _main(
        capfd, "predict", str(IMAGES / "coffee.png"), "--attention", "out",
        "--backend", backend,
    )
    _assert_one_line_error(status, out, err, "matplotlib")


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
        keras.ops.convert_to_numpy(_reference("tiny_token_head", 32)[0](images)),
        atol=1e-6,
    )
    # Never over an existing folder.
    _assert_one_line_error(
        *_main(capfd, "convert", source, str(output)), "already exists"
    )


def test_main_called_from_python_never_replaces_the_process(capfd, backend):
    other = next(b for b in cli.BACKENDS if b != backend)
    _assert_one_line_error(
        *_main(capfd, "predict", str(IMAGES / "coffee.png"), "--backend", other),
        f"already running on '{backend}'",
        f"KERAS_BACKEND={other}",
    )
