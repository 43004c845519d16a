"""`model.export` in every format Keras offers, each artefact checked in its own runtime."""

import os

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.runtime.export import (
    FORMATS,
    KERAS_LIMITS,
    OPENVINO_F32,
    SUPPORTED_BACKENDS,
)
from keras_cait_base.errors import CaiTConfigError
from tests.support import TIMM, expected

BACKEND = keras.backend.backend()
FILE_NAMES = {"tf_saved_model": "saved_model", "onnx": "cait.onnx", "openvino": "cait.xml",
              "litert": "cait.tflite", "torch": "cait.pt2"}  # a SavedModel is a folder


@pytest.fixture(scope="module")
def classifier():
    """timm's tiny checkpoint without preprocessor: normalised images in, logits out."""
    return keras_cait.CaiTImageClassifier.from_preset(
        str(TIMM / "tiny_token_head"), preprocessor=None)


@pytest.fixture(scope="module")
def images():
    data = expected("tiny_token_head")["images"].astype("float32")
    extra = np.random.default_rng(3).standard_normal((1,) + data.shape[1:], dtype=np.float32)
    return np.concatenate([data, extra])


def _run_tf_saved_model(path, images):
    import tensorflow as tf

    artefact = tf.saved_model.load(path)  # kept alive while it serves
    return np.asarray(artefact.serve(tf.constant(images)))


def _run_onnx(path, images):
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name.startswith("images")
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def _run_openvino(path, images):
    return pytest.importorskip("openvino").compile_model(path, "CPU", OPENVINO_F32)(images)[0]


def _run_litert(path, images):
    interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter(model_path=path)
    (image_input,) = interpreter.get_input_details()
    if tuple(image_input["shape"]) != images.shape:
        interpreter.resize_tensor_input(image_input["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(image_input["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _run_torch(path, images):
    import torch

    with torch.no_grad():
        return torch.export.load(path).module()(torch.from_numpy(images)).numpy()


RUNTIMES = {name: globals()[f"_run_{name}"] for name in FILE_NAMES}


@pytest.mark.parametrize("format", [  # on Keras's OpenVINO backend, OpenVINO IR only
    pytest.param(f, marks=pytest.mark.openvino) if f == "openvino" else f for f in FORMATS])
def test_the_artefact_matches_keras_in_its_runtime(classifier, images, tmp_path, format):
    if (format, BACKEND) in KERAS_LIMITS:
        pytest.skip(f"Keras cannot write {format} on {BACKEND} (test_keras_limits)")
    if BACKEND == "openvino" and format != "openvino":
        pytest.skip("Keras's OpenVINO backend writes OpenVINO IR only")
    static = (format, BACKEND) == ("litert", "torch")  # LiteRT from PyTorch: a fixed batch of 1
    if static:
        pytest.importorskip("litert_torch", reason="keras-cait[litert-torch]")
    path = os.fspath(tmp_path / FILE_NAMES[format])
    assert classifier.export(path, format=format, verbose=False) == path
    reference = classifier.predict(images, verbose=0)
    for batch in (images[:1],) if static else (images, images[:1]):  # a dynamic batch
        outputs = RUNTIMES[format](path, batch)
        assert outputs.shape == (len(batch), 10)
        np.testing.assert_allclose(outputs, reference[: len(batch)], atol=1e-4)


def test_a_fixed_batch_backbone_replaces_an_old_artefact(classifier, images, tmp_path):
    """OpenVINO's two files are both replaced; nothing else (no staging folder) is left."""
    path = tmp_path / FILE_NAMES["openvino"]
    path.write_bytes(b"an older artefact")
    (tmp_path / "cait.bin").write_bytes(b"older weights")
    signature = [keras.InputSpec(shape=(2, 32, 32, 3), dtype="float32")]
    classifier.backbone.export(path, format="openvino", verbose=False, input_signature=signature)
    tokens = RUNTIMES["openvino"](os.fspath(path), images[:2])
    reference = classifier.backbone.predict(images[:2], verbose=0)
    assert tokens.shape == reference.shape == (2, 17, 48)
    np.testing.assert_allclose(tokens, reference, atol=1e-4)
    model = pytest.importorskip("openvino").Core().read_model(path)
    assert list(model.inputs[0].get_partial_shape().to_shape()) == [2, 32, 32, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cait.bin", "cait.xml"]


@pytest.mark.parametrize("format", [f for f in FORMATS if (f, BACKEND) in KERAS_LIMITS])
def test_keras_limits_are_named_and_vit_fails_too(classifier, tmp_path, format):
    import keras_hub

    path = os.fspath(tmp_path / FILE_NAMES[format])
    with pytest.raises(CaiTConfigError, match="Keras limit") as error:
        classifier.export(path, format=format, verbose=False)
    for backend in SUPPORTED_BACKENDS[format]:
        assert backend in str(error.value)
    assert not any(tmp_path.iterdir())
    # The witness: KerasHub's ViT, exported by Keras itself.
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=1,
                                            num_heads=2, hidden_dim=16, mlp_dim=32)
    vit = keras_hub.models.ViTImageClassifier(backbone, num_classes=3, preprocessor=None)
    with pytest.raises(Exception):  # noqa: B017  (each backend fails its own way)
        vit.export(path, format=format, verbose=False)


def test_bad_arguments_are_named(classifier, tmp_path):
    with pytest.raises(CaiTConfigError, match="`format`"):
        classifier.export(tmp_path / "x", format="tflite")
    with pytest.raises(CaiTConfigError, match="'.xml'"):
        classifier.export(tmp_path / "x.onnx", format="openvino")
    assert not any(tmp_path.iterdir())
