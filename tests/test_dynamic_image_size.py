"""`image_shape=(None, None, 3)`: any image size, the position embedding resampled in graph."""

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file

import keras_cait
from keras_cait.convert.resample import resample_position_embedding
from keras_cait.layers.position_embedding_resample import resample_to_grid
from keras_cait_base.errors import CaiTConfigError
from tests.support import TIMM, TINY_BACKBONE, to_numpy
from tests.timm_support import import_timm

TINY_TIMM = TIMM / "tiny_token_head"  # 32x32 images, patch 8: a 4x4 grid
# Smaller and larger, square and not, one axis shrinking while the other grows.
SIZES = [(24, 24), (48, 48), (24, 48), (56, 16)]
DYNAMIC = (None, None, 3)


def _relative_error(got, expected):
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def _images(size, batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, *size, 3)).astype("float32")


def _from_preset(**kwargs):
    return keras_cait.CaiTImageClassifier.from_preset(str(TINY_TIMM), **kwargs)


@pytest.fixture(scope="module")
def dynamic_classifier():
    # Without the preprocessor, which resizes to the checkpoint's size.
    return _from_preset(image_shape=DYNAMIC, preprocessor=None)


def _tiny_dynamic_backbone(**kwargs):
    any_size = {"image_shape": DYNAMIC, "position_embedding_shape": (32, 32)}
    return keras_cait.CaiTBackbone(**{**TINY_BACKBONE, **any_size, **kwargs})


def _tiny_dynamic_classifier():
    return keras_cait.CaiTImageClassifier(_tiny_dynamic_backbone(), 3, preprocessor=None)


def _position_embedding(model):
    return to_numpy(model.backbone.get_layer("patch_embedding").position_embedding)


@pytest.mark.parametrize("grid", [(3, 3), (6, 6), (3, 6), (7, 2), (4, 4), (1, 9)])
def test_in_graph_resample_matches_numpy(grid):
    embedding = np.random.default_rng(1).standard_normal((1, 16, 5)).astype("float32")
    expected = resample_position_embedding(embedding, (4, 4), grid)
    tensor = keras.ops.convert_to_tensor(embedding)
    static = to_numpy(resample_to_grid(tensor, (4, 4), grid))
    # Sizes known only at call time: the weights are computed in keras.ops.
    sides = tuple(keras.ops.convert_to_tensor(side) for side in grid)
    dynamic = to_numpy(resample_to_grid(tensor, (4, 4), sides))
    assert static.shape == dynamic.shape == (1, grid[0] * grid[1], 5)
    assert _relative_error(static, expected) < 1e-6
    assert _relative_error(dynamic, expected) < 1e-5
    if grid == (4, 4):
        np.testing.assert_array_equal(static, embedding)
        np.testing.assert_array_equal(dynamic, embedding)


def test_from_preset_keeps_the_stored_grid_and_its_numbers(dynamic_classifier):
    with_preprocessor = _from_preset(image_shape=DYNAMIC)
    backbone = with_preprocessor.backbone
    assert backbone.image_shape == DYNAMIC
    assert backbone.position_embedding_shape == (32, 32)
    assert backbone.grid_size == (4, 4)
    np.testing.assert_array_equal(
        _position_embedding(with_preprocessor),
        load_file(TINY_TIMM / "model.safetensors")["pos_embed"],
    )
    # The preprocessor keeps the checkpoint's size.
    assert tuple(with_preprocessor.preprocessor.image_converter.image_size) == (32, 32)
    # At the stored size: the same numbers as the fixed-size model.
    images = _images((32, 32))
    fixed = _from_preset(preprocessor=None)
    np.testing.assert_array_equal(to_numpy(dynamic_classifier(images)), to_numpy(fixed(images)))
    # Pixels beyond a multiple of the patch size are dropped.
    images = _images((30, 53))
    np.testing.assert_allclose(to_numpy(dynamic_classifier(images)),
                               to_numpy(dynamic_classifier(images[:, :24, :48])), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", SIZES)
def test_equals_the_build_time_resampled_model_and_timm(dynamic_classifier, size):
    timm = import_timm()
    import torch  # noqa: PLC0415 (test-only, with timm)
    from timm.layers import resample_abs_pos_embed  # noqa: PLC0415

    images = _images(size)
    expected = to_numpy(_from_preset(image_shape=(*size, 3), preprocessor=None)(images))
    predicted = dynamic_classifier.predict(images, verbose=0)
    assert _relative_error(predicted, expected) < 1e-5
    assert _relative_error(to_numpy(dynamic_classifier(images)), expected) < 1e-5
    copied = keras_cait.with_image_shape(dynamic_classifier, (*size, 3))
    np.testing.assert_allclose(to_numpy(copied(images)), expected, rtol=0, atol=1e-6)
    # timm's own model, with timm's resampled position embedding.
    state = {k: torch.from_numpy(v) for k, v in load_file(TINY_TIMM / "model.safetensors").items()}
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], [size[0] // 8, size[1] // 8], [4, 4], num_prefix_tokens=0,
        interpolation="bicubic", antialias=True,
    )
    model = timm.create_model(
        "cait_xxs24_224", pretrained=False, img_size=size, patch_size=8, embed_dim=48,
        depth=2, num_heads=4, depth_token_only=2, num_classes=10,
    ).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        timm_logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    assert _relative_error(predicted, timm_logits) < 1e-5


@pytest.mark.parametrize(
    "shape, message", [(None, "position_embedding_shape"), ((30, 32), "not divisible")]
)
def test_position_embedding_shape_is_required_and_checked(shape, message):
    with pytest.raises(CaiTConfigError, match=message):
        _tiny_dynamic_backbone(position_embedding_shape=shape)


def test_predict_attention_and_intermediates_at_each_size():
    backbone = _tiny_dynamic_backbone()
    for rows, columns in [(3, 5), (6, 2), (4, 4)]:
        tokens = rows * columns
        images = _images((8 * rows, 8 * columns), batch=3)
        assert backbone.predict(images, batch_size=2, verbose=0).shape == (3, 1 + tokens, 48)
        maps = backbone.get_attention_maps(images, indices=[-1], batch_size=2)
        assert maps["class_attention_1"].shape == (3, 4, 1, 1 + tokens)
        assert maps["talking_head_attention_1"].shape == (3, 4, tokens, tokens)
        # The grid's values (the row-major tokens): test_intermediates.py.
        grid = backbone.get_intermediate_outputs(images, indices=[0], output_format="grid")
        assert tuple(grid["self_attention_block_0"].shape) == (3, rows, columns, 48)


def test_fit_at_one_size_then_predict_at_another(tmp_path):
    classifier = _tiny_dynamic_classifier()
    classifier.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # A copy: TensorFlow's NumPy view of a variable follows its updates.
    before = np.array(_position_embedding(classifier))
    classifier.fit(_images((48, 24), batch=4), np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    after = _position_embedding(classifier)
    # The gradient reaches the stored embedding through the resample.
    assert after.shape == before.shape and not np.array_equal(after, before)
    images = _images((16, 40), batch=2, seed=3)
    logits = classifier.predict(images, verbose=0)
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
    # A preset round trip keeps the any-size model (`.keras`: test_keras_hub_harness.py).
    preset = str(tmp_path / "preset")
    classifier.save_to_preset(preset)
    reloaded = keras_cait.CaiTImageClassifier.from_preset(preset)
    assert reloaded.backbone.position_embedding_shape == (32, 32)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), logits, atol=1e-6)
    # A fixed size from the any-size preset resamples once, at load.
    fixed = keras_cait.CaiTImageClassifier.from_preset(preset, image_shape=(16, 40, 3))
    assert fixed.backbone.position_embedding_shape is None
    assert fixed.backbone.grid_size == (2, 5)
    assert _relative_error(fixed.predict(images, verbose=0), logits) < 1e-5


def test_quantized_and_lora_at_two_sizes():
    classifier = _tiny_dynamic_classifier()
    sizes = [(24, 48), (40, 16)]
    reference = {size: classifier.predict(_images(size), verbose=0) for size in sizes}
    quantized = keras_cait.CaiTImageClassifier.from_config(classifier.get_config())
    quantized.set_weights(classifier.get_weights())
    quantized.quantize("int8")
    classifier.backbone.enable_lora(2)
    for size, logits in reference.items():
        # LoRA starts as a zero update.
        np.testing.assert_allclose(classifier.predict(_images(size), verbose=0), logits, atol=1e-6)
        int8 = quantized.predict(_images(size), verbose=0)
        assert int8.shape == logits.shape
        assert _relative_error(int8, logits) < 0.1


def _run_exported(format, path, images):
    if format == "onnx":
        session = pytest.importorskip("onnxruntime").InferenceSession(path)
        return session.run(None, {session.get_inputs()[0].name: images})[0]
    openvino = pytest.importorskip("openvino")
    return openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(images)[0]


@pytest.mark.parametrize("format", ["onnx", "openvino"])
def test_export_with_dynamic_height_and_width(tmp_path, format):
    backbone = _tiny_dynamic_backbone()
    path = str(tmp_path / ("model.onnx" if format == "onnx" else "model.xml"))
    if keras.backend.backend() == "jax":
        with pytest.raises(CaiTConfigError, match="dynamic image height or width"):
            backbone.export(path, format=format, verbose=False)
        return
    backbone.export(path, format=format, verbose=False)
    for size, batch in [((24, 48), 2), ((40, 40), 3)]:  # one artefact, two sizes and batches
        images = _images(size, batch=batch)
        assert _relative_error(_run_exported(format, path, images), to_numpy(backbone(images))) < 1e-4
