"""Export to TensorFlow SavedModel and ONNX: the exported artefact, run by
TensorFlow and by onnxruntime, gives the Keras logits within 1e-4."""

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.errors import CaiTConfigError
from keras_cait.export import SUPPORTED_BACKENDS, export_model
from tests.support import TIMM, expected

BACKEND = keras.backend.backend()


def _skip_unless_supported(format):
    if BACKEND not in SUPPORTED_BACKENDS[format]:
        pytest.skip(
            f"{format} export is not available on the {BACKEND} backend "
            "(Keras needs torch_xla for it)"
        )


@pytest.fixture(scope="module")
def classifier():
    # A preset: timm's tiny reference checkpoint (config.json +
    # model.safetensors) loaded through from_preset.
    model = keras_cait.CaiTImageClassifier.from_preset(str(TIMM / "tiny_token_head"))
    # The exported graph is the model itself: normalised images in, logits
    # out. Compare it with the model, not with predict()'s preprocessing.
    model.preprocessor = None
    return model


@pytest.fixture(scope="module")
def images():
    data = expected("tiny_token_head")["images"].astype("float32")
    rng = np.random.default_rng(3)
    extra = rng.standard_normal((1,) + data.shape[1:], dtype=np.float32)
    return np.concatenate([data, extra])


def _run_saved_model(path, images):
    import tensorflow as tf

    artefact = tf.saved_model.load(path)
    return np.asarray(artefact.serve(tf.constant(images)))


def _onnx_session(path):
    onnxruntime = pytest.importorskip("onnxruntime")
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def _run_onnx(session, images):
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def test_the_preset_matches_timm(classifier):
    # The model being exported computes timm's logits.
    data = expected("tiny_token_head")
    logits = classifier.predict(data["images"].astype("float32"), verbose=0)
    np.testing.assert_allclose(logits, data["logits"], atol=1e-4)


def test_tf_saved_model_matches_keras(classifier, images, tmp_path):
    _skip_unless_supported("tf_saved_model")
    path = export_model(classifier, tmp_path / "saved_model", format="tf_saved_model")
    reference = classifier.predict(images, verbose=0)
    # Dynamic batch: two different batch sizes through one artefact.
    for batch in (images, images[:1]):
        outputs = _run_saved_model(str(path), batch)
        assert outputs.shape == (len(batch), 10)
        np.testing.assert_allclose(outputs, reference[: len(batch)], atol=1e-4)


def test_onnx_matches_keras(classifier, images, tmp_path):
    _skip_unless_supported("onnx")
    path = export_model(classifier, tmp_path / "cait.onnx", format="onnx")
    session = _onnx_session(str(path))
    reference = classifier.predict(images, verbose=0)
    for batch in (images, images[:1]):
        outputs = _run_onnx(session, batch)
        assert outputs.shape == (len(batch), 10)
        np.testing.assert_allclose(outputs, reference[: len(batch)], atol=1e-4)


def test_onnx_backbone_with_a_fixed_batch_replaces_an_old_file(
    classifier, images, tmp_path
):
    _skip_unless_supported("onnx")
    path = tmp_path / "backbone.onnx"
    path.write_bytes(b"an older artefact")
    export_model(classifier.backbone, path, format="onnx", batch_size=2)
    session = _onnx_session(str(path))
    assert list(session.get_inputs()[0].shape) == [2, 32, 32, 3]
    tokens = _run_onnx(session, images[:2])
    reference = classifier.backbone.predict(images[:2], verbose=0)
    assert tokens.shape == reference.shape == (2, 17, 48)
    np.testing.assert_allclose(tokens, reference, atol=1e-4)
    # Only the artefact is left in the folder: no staging directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.onnx"]


def test_bad_arguments_are_named(classifier, tmp_path):
    with pytest.raises(CaiTConfigError, match="`format`"):
        export_model(classifier, tmp_path / "x", format="tflite")
    with pytest.raises(CaiTConfigError, match="`batch_size`"):
        export_model(classifier, tmp_path / "x.onnx", format="onnx", batch_size=0)
    with pytest.raises(CaiTConfigError, match="`model`"):
        export_model(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "x.onnx")
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(BACKEND != "torch", reason="only PyTorch lacks SavedModel export")
def test_saved_model_on_torch_says_where_to_export(classifier, tmp_path):
    with pytest.raises(CaiTConfigError, match="tensorflow or jax"):
        export_model(classifier, tmp_path / "saved_model", format="tf_saved_model")
