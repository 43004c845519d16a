"""ONNX Runtime and OpenVINO engines for collection runs: records equal to the Keras
engine's, the artefact cache (reuse, corruption, keys, two processes), Ray actors on one
artefact, Pillow preprocessing close to timm's, and the errors."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.inference import artifact_export, batch_prediction
from keras_cait.inference.batch_prediction import BatchPredictor, make_predictor
from keras_cait.inference.image_pipeline import image_batches
from keras_cait_base import artifact_cache, engines
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.pillow_pipeline import transform
from keras_cait_cli import main as cli
from tests.support import IMAGES, REPO, TIMM, make_photos

pytest.importorskip("onnxruntime", reason="keras-cait[export] is not installed")
pytest.importorskip("openvino", reason="keras-cait[export] is not installed")
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

HEAVY = ("keras", "keras_hub", "tensorflow", "jax", "torch", "keras_cait")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("engine_cache"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    (folder / "z_broken.jpg").write_text("not an image")
    return [*make_photos(folder, 9), str(folder / "z_broken.jpg")]


@pytest.fixture(scope="module")
def keras_records(photos, tiny_preset):
    records = predict(photos, tiny_preset, embeddings=True)
    assert records[-1]["error"].startswith(f"'{photos[-1]}'")
    return records


@pytest.fixture
def count_exports(monkeypatch):
    """The names of the artefacts exported in this process."""
    calls, export_graph = [], artifact_export._export_graph
    monkeypatch.setattr(artifact_export, "_export_graph",
                        lambda model: calls.append(model.name) or export_graph(model))
    return calls


def predict(paths, model, **options):
    return list(keras_cait.predict_files(paths, model, **{"top": 3, "batch_size": 4, **options}))


def class_folder(folder, paths, classes):
    for index, path in enumerate(paths):
        target = folder / str(index % classes) / os.path.basename(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return folder


def same_records(got, want, atol):
    """Same paths and errors; top-k probabilities rank by rank (so a class swap only between
    near ties) and embeddings within `atol`."""
    assert [r["image"] for r in got] == [r["image"] for r in want]
    for a, b in zip(got, want):
        if "error" in b:
            assert a == b
            continue
        for mine, theirs in zip(a["predictions"], b["predictions"]):
            assert abs(mine["probability"] - theirs["probability"]) <= atol
        if "embedding" in b:
            np.testing.assert_allclose(a["embedding"], b["embedding"], atol=50 * atol)


@pytest.mark.parametrize("engine", ("onnxruntime", "openvino"))
def test_engine_records_equal_the_keras_engines(
    engine, tiny_preset, tiny_classifier, photos, keras_records, cache, count_exports, tmp_path
):
    got = predict(photos, tiny_preset, embeddings=True, engine=engine, cache_dir=cache)
    same_records(got, keras_records, atol=1e-3)  # Pillow's pixels are tf.data's within ~1e-6
    # Given the same pixels, within 1e-4.
    keras_predictor = BatchPredictor(tiny_classifier, 3, embeddings=True)
    predictor = make_predictor(tiny_classifier, 3, True, engine, cache_dir=cache)
    assert len(count_exports) == 1  # made by the first run only: reused
    for batch in image_batches(photos, keras_predictor.converter, 4):
        same_records(
            predictor.records(batch, predictor.outputs(batch.images, 4)),
            keras_predictor.records(batch, keras_predictor.outputs(batch.images, 4)),
            atol=1e-4,
        )
    # --resume continues a file as the Keras engine does.
    output = tmp_path / "records.jsonl"
    options = dict(top=3, batch_size=4, embeddings=True, engine=engine, cache_dir=cache,
                   progress=False)
    keras_cait.write_predictions(photos[:6], output, tiny_preset, **options)
    summary = keras_cait.write_predictions(photos, output, tiny_preset, resume=True, **options)
    assert (summary["kept"], summary["written"], summary["failed"]) == (6, 4, 1)
    assert keras_cait.read_records(output) == got
    assert len(count_exports) == 1


def test_evaluation_runs_the_engine(tiny_preset, photos, cache, tmp_path):
    folder = class_folder(tmp_path / "folder", photos[:6], 3)
    keras_summary = keras_cait.evaluate_folder(folder, tiny_preset, batch_size=4)
    summary = keras_cait.evaluate_folder(folder, tiny_preset, batch_size=4,
                                         engine="onnxruntime", cache_dir=cache)
    assert summary["engine"] == "onnxruntime"
    for key in ("images", "failed", "top1_correct", "top5_correct", "confusion_matrix"):
        assert summary[key] == keras_summary[key]


def test_cached_runs_and_ray_engine_actors_import_no_keras(
    tiny_preset, tiny_classifier, photos, keras_records, cache, tmp_path, capfd, backend
):
    """With the artefact cached, `predict --engine` (and `--resume`) runs from the preset's
    files, and `EngineRecordsActor` from the artefact, without Keras, KerasHub or a backend,
    giving the same records."""
    if backend != "jax":
        pytest.skip("one backend suffices: the cached run imports none")
    arguments = ["predict", *photos, "--preset", tiny_preset, "--top", "3", "--batch-size", "4",
                 "--engine", "onnxruntime", "--cache-dir", cache, "--embeddings", "--output"]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert cli.main([*arguments, str(first)]) == cli.FAILED_INPUTS  # the broken file
    assert "engine onnxruntime (float32)" in capfd.readouterr().err
    same_records(keras_cait.read_records(first), keras_records, atol=1e-3)
    second.write_text("".join(open(first).readlines()[:5]))  # an interrupted run
    folder = artifact_export.make_artifact(tiny_classifier, "onnxruntime", cache)
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json, sys
        from keras_cait_base.engines import EngineRecordsActor
        from keras_cait_cli import main
        status = main.main({[*arguments, str(second), "--resume"]!r})
        actor = EngineRecordsActor({folder!r}, "onnxruntime", 3, False, "float32", 4)
        records = [json.loads(r) for r in actor({{"image": {photos!r}}})["record"]]
        print(json.dumps([status, records, sorted(set({HEAVY!r}) & set(sys.modules))]))
    """)], capture_output=True, text=True, timeout=300, cwd=REPO)
    status, records, heavy = json.loads(run.stdout.splitlines()[-1])
    assert (status, heavy) == (cli.FAILED_INPUTS, []), run.stderr[-2000:]
    assert "Keras is not loaded" in run.stderr
    assert keras_cait.read_records(second) == keras_cait.read_records(first)
    assert records == predict(photos, tiny_classifier, engine="onnxruntime", cache_dir=cache)


def test_openvino_bfloat16(tiny_classifier, photos, cache):
    if not engines.bfloat16_supported():
        pytest.skip("this CPU has no bfloat16 in OpenVINO (no AVX-512 BF16 or AMX)")
    f32 = make_predictor(tiny_classifier, 3, engine="openvino", cache_dir=cache)
    bf16 = make_predictor(tiny_classifier, 3, engine="openvino", precision="bfloat16",
                          cache_dir=cache)
    batch = next(f32.image_batches(photos[:8], 8))
    exact = f32.outputs(batch.images)["predictions"]
    difference = float(np.abs(exact - bf16.outputs(batch.images)["predictions"]).max())
    # bfloat16 has 8 bits of mantissa: not float32's numbers, but close.
    assert 1e-6 < difference < 0.1 * max(1.0, float(np.abs(exact).max()))


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_CAIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert artifact_cache.default_cache_dir() == str(tmp_path / "xdg/keras-cait/engines")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert artifact_cache.default_cache_dir() == str(tmp_path / "home/.cache/keras-cait/engines")
    monkeypatch.setenv("KERAS_CAIT_CACHE", str(tmp_path / "mine"))
    assert artifact_cache.default_cache_dir() == str(tmp_path / "mine")
    assert artifact_cache.default_cache_dir(tmp_path / "given") == str(tmp_path / "given")


def test_key_changes_with_versions_weights_and_shape(tiny_classifier, monkeypatch):
    def key(engine="onnxruntime"):
        return artifact_cache.artifact_key(artifact_export.artifact_fields(tiny_classifier, engine))

    fields = artifact_export.artifact_fields(tiny_classifier, "onnxruntime")
    assert fields["export_backend"] == keras.config.backend()
    original = artifact_cache.artifact_key(fields)
    assert key() == original and key("openvino") != original  # stable, per engine
    monkeypatch.setattr(artifact_export, "__version__", "9.9.9")
    assert key() != original
    monkeypatch.undo()
    monkeypatch.setattr(engines, "engine_version", lambda engine: "0.0.1")
    assert key() != original
    monkeypatch.undo()
    for name in ("weights", "image_shape", "config", "export_backend"):
        assert artifact_cache.artifact_key(dict(fields, **{name: "other"})) != original
    # The same weights with other preprocessing: another artefact (its records differ).
    monkeypatch.setattr(tiny_classifier.preprocessor.image_converter, "crop_pct", 0.5)
    assert key() != original


def test_cache_reuses_and_re_exports_a_corrupted_artefact(tmp_path, monkeypatch):
    fields, exported = {"model": "m"}, []

    def export(folder):
        exported.append(folder)
        with open(os.path.join(folder, "model.bin"), "wb") as f:
            f.write(b"x" * 1000)
        return {"file": "model.bin"}

    folder, manifest = artifact_cache.ensure_artifact(str(tmp_path), fields, export)
    assert manifest["files"]["model.bin"]["size"] == 1000
    assert artifact_cache.ensure_artifact(str(tmp_path), fields, export)[0] == folder
    assert len(exported) == 1  # reused
    hashed = []  # a process hashes an unchanged artefact once
    monkeypatch.setattr(artifact_cache, "sha256_file", lambda path: hashed.append(path))
    assert artifact_cache.verify_artifact(folder) == manifest and hashed == []
    monkeypatch.undo()
    # Truncated, the same size with other bytes, missing:
    for corrupt in (lambda path: open(path, "r+b").truncate(500),
                    lambda path: open(path, "r+b").write(b"y"), os.remove):
        corrupt(os.path.join(folder, "model.bin"))
        with pytest.raises(artifact_cache.CorruptArtifactError, match="model.bin"):
            artifact_cache.verify_artifact(folder)
        with pytest.warns(UserWarning, match="Exporting it again"):
            assert artifact_cache.ensure_artifact(str(tmp_path), fields, export)[0] == folder
        assert open(os.path.join(folder, "model.bin"), "rb").read() == b"x" * 1000
    assert len(exported) == 4
    # A failed export leaves nothing behind.
    with pytest.raises(RuntimeError, match="boom"):
        artifact_cache.ensure_artifact(str(tmp_path), {"model": "n"},
                                       lambda folder: (_ for _ in ()).throw(RuntimeError("boom")))
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(folder), os.path.basename(folder) + ".lock",
         artifact_cache.artifact_key({"model": "n"}) + ".lock"])


def test_a_cached_preset_runs_without_loading_the_model(
    tiny_preset, photos, count_exports, tmp_path, monkeypatch, backend
):
    if backend != "jax":
        pytest.skip("one backend suffices: the cache does not depend on it")
    preset = str(shutil.copytree(tiny_preset, tmp_path / "preset"))
    cache = str(tmp_path / "cache")
    options = dict(embeddings=True, engine="onnxruntime", cache_dir=cache)
    first = predict(photos, preset, **options)

    def no_model(model):
        raise AssertionError(f"the model was loaded: {model}")

    load_classifier = batch_prediction.load_classifier
    monkeypatch.setattr(batch_prediction, "load_classifier", no_model)
    # From the preset's files to the artefact: no Keras model is built.
    assert predict(photos, preset, **options) == first
    summary = keras_cait.evaluate_folder(class_folder(tmp_path / "folder", photos[:4], 2),
                                         preset, engine="onnxruntime", cache_dir=cache)
    assert summary["evaluated"] == 4 and summary["num_classes"] == 10
    # Another file, or a broken artefact: the model is loaded again.
    model = os.path.join(engines.artifact_of_preset(preset, "onnxruntime", cache), "model.onnx")
    os.truncate(model, os.path.getsize(model) // 2)
    with pytest.raises(AssertionError, match="the model was loaded"):
        keras_cait.predict_files(photos, preset, top=3, batch_size=4, **options)
    monkeypatch.setattr(batch_prediction, "load_classifier", load_classifier)
    with pytest.warns(UserWarning, match="model.onnx.*Exporting it again"):
        assert predict(photos, preset, **options) == first
    assert len(count_exports) == 2  # the first run's, and the broken one's
    config = tmp_path / "preset" / "config.json"
    config.write_text(config.read_text() + "\n")
    assert engines.artifact_of_preset(preset, "onnxruntime", cache) is None


def test_two_processes_export_one_artefact(tmp_path):
    script = textwrap.dedent(f"""
        import os, time
        from keras_cait_base import artifact_cache  # no Keras
        def export(folder):
            with open({str(tmp_path / "exports.log")!r}, "a") as log:
                log.write(str(os.getpid()) + "\\n")
            time.sleep(1.0)
            with open(os.path.join(folder, "model.bin"), "wb") as f:
                f.write(os.urandom(64 << 16))
            return {{"file": "model.bin"}}
        folder, manifest = artifact_cache.ensure_artifact(
            {str(tmp_path / "cache")!r}, {{"model": "shared"}}, export)
        print(folder, manifest["files"]["model.bin"]["sha256"])
    """)
    processes = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0].split() for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert outputs[0] == outputs[1]  # the same folder and bytes
    assert len(open(tmp_path / "exports.log").read().split()) == 1
    artifact_cache.verify_artifact(outputs[0][0])


def test_ray_actors_run_one_artefact(tiny_preset, photos, count_exports, tmp_path, backend):
    ray = pytest.importorskip("ray", reason="keras-cait[ray] is not installed")
    if backend != "jax":
        pytest.skip("one backend suffices: the actors run the engine, not Keras")
    ray_cache = str(tmp_path / "ray_cache")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = keras_cait.write_predictions_on_ray(
            photos, tmp_path / "ray.jsonl", tiny_preset, top=3, batch_size=2, embeddings=True,
            actors=2, engine="onnxruntime", cache_dir=ray_cache, progress=False)
    finally:
        ray.shutdown()
    assert (summary["written"], summary["failed"]) == (len(photos), 1)
    assert len(count_exports) == 1  # on the driver; actors only open it
    artefacts = [n for n in os.listdir(ray_cache)
                 if not n.endswith(".lock") and n != artifact_cache.SOURCES]
    assert len(artefacts) == 1
    want = predict(photos, tiny_preset, batch_size=2, embeddings=True, engine="onnxruntime",
                   cache_dir=ray_cache)
    same_records(keras_cait.read_records(tmp_path / "ray.jsonl"), want, atol=1e-6)


@pytest.mark.parametrize("size, crop_pct, key", [
    (224, 1.0, "224"), (384, 1.0, "384"), (224, 0.875, "224_crop0875"), (32, 1.0, None)])
def test_pillow_pixels_are_the_converters_and_timms(size, crop_pct, key, photos):
    """The engines' Pillow transform gives the converter's pixels on the small photos
    (enlarged), and timm's reference pixels on the shipped ones."""
    reference = np.load(TIMM / "preprocess.npz")
    converter = keras_cait.CaiTImageConverter(image_size=size, crop_pct=crop_pct)
    config = artifact_export._converter_config(converter)
    shipped = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg")
    for path in [*photos[:4], *(str(IMAGES / name) for name in shipped if key)]:
        image = keras_cait.load_image(path)
        out = transform(image, config)
        assert out.shape == (size, size, 3) and out.dtype == np.float32
        name = os.path.basename(path)
        if name in shipped:
            assert float(np.abs(out - reference[f"{name[:-4]}_{key}"]).mean()) < 0.01
        else:
            np.testing.assert_allclose(out, np.asarray(converter(image)), atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(engine="tensorrt"), "`engine` must be one of"),
    (dict(precision="float16"), "`precision` must be one of"),
    (dict(engine="keras", precision="bfloat16"), "bfloat16' is for engine='openvino'"),
])
def test_bad_engine_arguments(kwargs, message, photos, tiny_preset):
    with pytest.raises(CaiTConfigError, match=message):
        keras_cait.predict_files(photos, tiny_preset, **kwargs)


def test_bfloat16_without_cpu_support_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(engines, "bfloat16_supported", lambda: False)
    with pytest.raises(CaiTConfigError, match="no bfloat16 support"):
        engines.check_engine("openvino", "bfloat16")
    with pytest.raises(CaiTConfigError, match="Attention maps need engine='keras'"):
        engines.check_engine("openvino", attention=True)


def test_an_edited_manifest_never_gives_numbers(tiny_classifier, photos, tmp_path):
    """The manifest is JSON with the files, outputs and fields; one with edited fields or
    swapped outputs is refused, and the next run exports the artefact again."""
    cache = str(tmp_path / "cache")
    folder = artifact_export.make_artifact(tiny_classifier, "onnxruntime", cache)
    path = os.path.join(folder, artifact_cache.MANIFEST)
    manifest = json.load(open(path))
    assert set(manifest["files"]) == {"model.onnx"}
    assert manifest["metadata"]["outputs"].keys() == {"predictions", "embedding"}
    assert manifest["fields"]["engine"] == "onnxruntime"
    manifest["fields"]["converter"]["mean"] = [0.0, 0.0, 0.0]
    json.dump(manifest, open(path, "w"))
    with pytest.raises(CaiTConfigError, match="fields do not give its key"):
        engines.EnginePredictor(folder, "onnxruntime")
    with pytest.warns(UserWarning, match="fields do not give its key.*Exporting it again"):
        assert artifact_export.make_artifact(tiny_classifier, "onnxruntime", cache) == folder
    manifest = json.load(open(path))
    outputs = manifest["metadata"]["outputs"]
    outputs["predictions"], outputs["embedding"] = outputs["embedding"], outputs["predictions"]
    json.dump(manifest, open(path, "w"))
    predictor = engines.EnginePredictor(folder, "onnxruntime")
    batch = next(predictor.image_batches(photos[:2], 2))
    with pytest.raises(CaiTConfigError, match="its manifest was edited"):
        predictor.outputs(batch.images)


def test_a_read_only_cache_still_serves_and_shares(tiny_classifier, cache, monkeypatch, tmp_path):
    folder = artifact_export.make_artifact(tiny_classifier, "onnxruntime", cache)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(folder).st_mode & 0o777 == 0o777 & ~umask  # not tempfile's 0700

    def read_only(*args):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(artifact_cache, "remember_source", read_only)
    preset = tmp_path / "preset"  # the files the model was loaded from (any, here)
    preset.mkdir()
    (preset / "config.json").write_text("{}")
    with pytest.warns(UserWarning, match="could not record which preset files"):
        again = artifact_export.make_artifact(tiny_classifier, "onnxruntime", cache,
                                              preset=str(preset))
    assert again == folder
