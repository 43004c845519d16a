"""`image_shape=(None, None, 3)`: one model for any image size at call time.

The position embedding is resampled in the graph to each input's patch grid;
these tests check it against the NumPy resample (timm's numerics), against a
model resampled at build time, against timm itself, and downstream (predict,
attention, intermediates, fit, saving, quantization, LoRA).
"""

import importlib
import importlib.util
import sys

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file

import keras_cait
from keras_cait.convert.resample import resample_position_embedding
from keras_cait.layers.position_embedding_resample import resample_to_grid
from keras_cait_base.errors import CaiTConfigError
from tests.support import REPO, TIMM, TINY_BACKBONE, to_numpy

TINY_TIMM = TIMM / "tiny_token_head"  # 32x32 images, patch 8: a 4x4 grid
# (height, width): smaller and larger, square and not, and one that shrinks
# the grid along one axis while growing it along the other (both ways).
SIZES = [(24, 24), (48, 48), (24, 48), (56, 16)]
DYNAMIC = (None, None, 3)


def _relative_error(got, expected):
    return float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def _images(size, batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, *size, 3)).astype(
        "float32"
    )


@pytest.fixture(scope="module")
def dynamic_classifier():
    # Without the preprocessor, which resizes to the checkpoint's size.
    return keras_cait.CaiTImageClassifier.from_preset(
        str(TINY_TIMM), image_shape=DYNAMIC, preprocessor=None
    )


def _tiny_dynamic_backbone():
    config = dict(TINY_BACKBONE, image_shape=DYNAMIC, position_embedding_shape=(32, 32))
    return keras_cait.CaiTBackbone(**config)


@pytest.mark.parametrize("grid", [(3, 3), (6, 6), (3, 6), (7, 2), (4, 4), (1, 9)])
def test_in_graph_resample_matches_numpy(grid):
    embedding = np.random.default_rng(1).standard_normal((1, 16, 5)).astype("float32")
    expected = resample_position_embedding(embedding, (4, 4), grid)
    static = to_numpy(resample_to_grid(keras.ops.convert_to_tensor(embedding), (4, 4), grid))
    # Sizes known only at call time: the weights are computed in keras.ops.
    tensors = tuple(keras.ops.convert_to_tensor(side) for side in grid)
    dynamic = to_numpy(
        resample_to_grid(keras.ops.convert_to_tensor(embedding), (4, 4), tensors)
    )
    assert static.shape == dynamic.shape == (1, grid[0] * grid[1], 5)
    assert _relative_error(static, expected) < 1e-6
    assert _relative_error(dynamic, expected) < 1e-5
    if grid == (4, 4):
        np.testing.assert_array_equal(static, embedding)
        np.testing.assert_array_equal(dynamic, embedding)


def test_from_preset_keeps_the_stored_grid():
    dynamic_classifier = keras_cait.CaiTImageClassifier.from_preset(
        str(TINY_TIMM), image_shape=DYNAMIC
    )
    backbone = dynamic_classifier.backbone
    assert backbone.image_shape == DYNAMIC
    assert backbone.position_embedding_shape == (32, 32)
    assert backbone.grid_size == (4, 4)
    state_dict = load_file(TINY_TIMM / "model.safetensors")
    np.testing.assert_array_equal(
        to_numpy(backbone.get_layer("patch_embedding").position_embedding),
        state_dict["pos_embed"],
    )
    # The preprocessor keeps the checkpoint's size.
    assert tuple(dynamic_classifier.preprocessor.image_converter.image_size) == (32, 32)


def test_at_the_stored_size_same_numbers_as_the_fixed_model(dynamic_classifier):
    fixed = keras_cait.CaiTImageClassifier.from_preset(str(TINY_TIMM), preprocessor=None)
    images = _images((32, 32))
    np.testing.assert_array_equal(
        to_numpy(dynamic_classifier(images)), to_numpy(fixed(images))
    )


@pytest.mark.parametrize("size", SIZES)
def test_equals_the_build_time_resampled_model(dynamic_classifier, size):
    built = keras_cait.CaiTImageClassifier.from_preset(
        str(TINY_TIMM), image_shape=(*size, 3), preprocessor=None
    )
    copied = keras_cait.with_image_shape(dynamic_classifier, (*size, 3))
    images = _images(size)
    expected = to_numpy(built(images))
    got = dynamic_classifier.predict(images, verbose=0)
    assert _relative_error(got, expected) < 1e-5
    assert _relative_error(to_numpy(dynamic_classifier(images)), expected) < 1e-5
    np.testing.assert_allclose(to_numpy(copied(images)), expected, rtol=0, atol=1e-6)


def _import_timm():
    """timm, imported with a torchvision stand-in (timm needs torchvision's
    names at import time only)."""
    if "timm" in sys.modules:
        return sys.modules["timm"]
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    for folder in (REPO / "tests" / "stubs", REPO.parent / "shared" / "timm-import"):
        for name in ("torchvision_stub", "torchvision"):
            if (folder / f"{name}.py").exists() and "torchvision" not in sys.modules:
                sys.path.insert(0, str(folder))
                importlib.import_module(name)
    try:
        return importlib.import_module("timm")
    except ImportError as error:
        pytest.skip(f"timm does not import without torchvision here: {error}")


@pytest.mark.parametrize("size", SIZES)
def test_equals_timm_with_resampled_position_embedding(dynamic_classifier, size):
    timm = _import_timm()
    import torch  # noqa: PLC0415 (test-only, with timm)
    from timm.layers import resample_abs_pos_embed  # noqa: PLC0415

    state_dict = {k: torch.from_numpy(v) for k, v in load_file(
        TINY_TIMM / "model.safetensors").items()}
    grid = (size[0] // 8, size[1] // 8)
    state_dict["pos_embed"] = resample_abs_pos_embed(
        state_dict["pos_embed"], list(grid), [4, 4], num_prefix_tokens=0,
        interpolation="bicubic", antialias=True,
    )
    model = timm.create_model(
        "cait_xxs24_224", pretrained=False, img_size=size, patch_size=8, embed_dim=48,
        depth=2, num_heads=4, depth_token_only=2, num_classes=10,
    ).eval()
    model.load_state_dict(state_dict)
    images = _images(size)
    with torch.no_grad():
        expected = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    got = dynamic_classifier.predict(images, verbose=0)
    assert _relative_error(got, expected) < 1e-5


def test_pixels_beyond_a_multiple_of_the_patch_are_dropped(dynamic_classifier):
    images = _images((30, 53))
    np.testing.assert_allclose(
        to_numpy(dynamic_classifier(images)),
        to_numpy(dynamic_classifier(images[:, :24, :48])),
        rtol=0,
        atol=1e-6,
    )


def test_position_embedding_shape_is_required_and_checked():
    with pytest.raises(CaiTConfigError, match="position_embedding_shape"):
        keras_cait.CaiTBackbone(**dict(TINY_BACKBONE, image_shape=DYNAMIC))
    with pytest.raises(CaiTConfigError, match="not divisible"):
        keras_cait.CaiTBackbone(
            **dict(TINY_BACKBONE, image_shape=DYNAMIC, position_embedding_shape=(30, 32))
        )


def test_predict_attention_and_intermediates_at_each_size():
    backbone = _tiny_dynamic_backbone()
    for size in [(24, 40), (48, 16), (32, 32)]:
        rows, columns = size[0] // 8, size[1] // 8
        images = _images(size, batch=3)
        assert backbone.predict(images, batch_size=2, verbose=0).shape == (
            3, 1 + rows * columns, 48
        )
        maps = backbone.get_attention_maps(images, indices=[-1], batch_size=2)
        assert maps["class_attention_1"].shape == (3, 4, 1, 1 + rows * columns)
        assert maps["talking_head_attention_1"].shape == (
            3, 4, rows * columns, rows * columns
        )
        grid = backbone.get_intermediate_outputs(images, indices=[0], output_format="grid")
        tokens = backbone.get_intermediate_outputs(images, indices=[0])
        grid = to_numpy(grid["self_attention_block_0"])
        assert grid.shape == (3, rows, columns, 48)
        np.testing.assert_array_equal(
            grid.reshape(3, -1, 48), to_numpy(tokens["self_attention_block_0"])
        )


def test_fit_at_one_size_then_predict_at_another(tmp_path):
    classifier = keras_cait.CaiTImageClassifier(
        _tiny_dynamic_backbone(), num_classes=3, preprocessor=None
    )
    classifier.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # A copy: TensorFlow's NumPy view of a variable follows its updates.
    before = np.array(
        to_numpy(classifier.backbone.get_layer("patch_embedding").position_embedding)
    )
    classifier.fit(_images((48, 24), batch=4), np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    after = to_numpy(classifier.backbone.get_layer("patch_embedding").position_embedding)
    # The gradient reaches the stored embedding through the resample.
    assert after.shape == before.shape and not np.array_equal(after, before)
    images = _images((16, 40), batch=2, seed=3)
    logits = classifier.predict(images, verbose=0)
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits))

    # `.keras` round trip and preset round trip keep the any-size model.
    path = str(tmp_path / "model.keras")
    classifier.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.backbone.image_shape == DYNAMIC
    np.testing.assert_allclose(loaded.predict(images, verbose=0), logits, atol=1e-6)
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
    classifier = keras_cait.CaiTImageClassifier(
        _tiny_dynamic_backbone(), num_classes=3, preprocessor=None
    )
    sizes = [(24, 48), (40, 16)]
    reference = {size: classifier.predict(_images(size), verbose=0) for size in sizes}
    quantized = keras_cait.CaiTImageClassifier.from_config(classifier.get_config())
    quantized.set_weights(classifier.get_weights())
    quantized.quantize("int8")
    classifier.backbone.enable_lora(2)
    for size, logits in reference.items():
        # LoRA starts as a zero update.
        np.testing.assert_allclose(
            classifier.predict(_images(size), verbose=0), logits, atol=1e-6
        )
        int8 = quantized.predict(_images(size), verbose=0)
        assert int8.shape == logits.shape
        assert _relative_error(int8, logits) < 0.1


def test_channels_first_any_size():
    config = dict(TINY_BACKBONE, image_shape=DYNAMIC, position_embedding_shape=(32, 32))
    last = keras_cait.CaiTBackbone(**config, data_format="channels_last")
    first = keras_cait.CaiTBackbone(**config, data_format="channels_first")
    first.set_weights(last.get_weights())
    images = _images((24, 48))
    np.testing.assert_allclose(
        to_numpy(first(images.transpose(0, 3, 1, 2))), to_numpy(last(images)), atol=1e-6
    )


@pytest.mark.parametrize("format", ["onnx", "openvino"])
def test_export_with_dynamic_height_and_width(tmp_path, format):
    backbone = _tiny_dynamic_backbone()
    path = str(tmp_path / ("model.onnx" if format == "onnx" else "model.xml"))
    if keras.backend.backend() == "jax":
        with pytest.raises(CaiTConfigError, match="dynamic image height or width"):
            backbone.export(path, format=format, verbose=False)
        return
    backbone.export(path, format=format, verbose=False)
    if format == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
        session = onnxruntime.InferenceSession(path)
        name = session.get_inputs()[0].name

        def run(images):
            return session.run(None, {name: images})[0]
    else:
        openvino = pytest.importorskip("openvino")
        compiled = openvino.Core().compile_model(
            path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )

        def run(images):
            return compiled(images)[0]
    # One artefact, two sizes (and batch sizes).
    for size, batch in [((24, 48), 2), ((40, 40), 3)]:
        images = _images(size, batch=batch)
        assert _relative_error(run(images), to_numpy(backbone(images))) < 1e-4
