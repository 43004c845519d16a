"""KerasHub's and Keras's test harnesses on keras-cait, and what they skip or cannot see."""

import inspect

import keras
import numpy as np

# Private test harnesses (keras 3.15, keras-hub 0.32; pinned in pyproject).
from keras.src.testing import TestCase as KerasTestCase
from keras_hub.src.tests.test_case import TestCase as KerasHubTestCase

import keras_cait
from tests.support import TIMM, TINY_BACKBONE, to_numpy

IMAGES = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
IMAGES_32_48 = np.random.default_rng(2).standard_normal((2, 32, 48, 3)).astype("float32")
IMAGES_48_24 = np.random.default_rng(2).standard_normal((2, 48, 24, 3)).astype("float32")
RAW_IMAGES = np.random.default_rng(1).uniform(0, 255, (2, 40, 36, 3)).astype("float32")
ANY_SIZE = dict(image_shape=(None, None, 3), position_embedding_shape=(32, 32))
PRESET = str(TIMM / "tiny_token_head")
BACKBONE = dict(TINY_BACKBONE, layer_scale_init_value=0.1)
# Arguments away from their defaults (the config round trips compare them), and
# 4 blocks, so that the pyramid (the last three) is not every block.
NON_DEFAULT = dict(
    BACKBONE, num_layers=4, image_shape=(32, 48, 3), mlp_ratio=3.0, class_attention_mlp_ratio=2.0,
    use_qkv_bias=False, dropout_rate=0.1, attention_dropout=0.1, drop_path_rate=0.1,
    layer_norm_epsilon=1e-5,
)
PYRAMID = dict(
    expected_pyramid_output_keys=[f"self_attention_block_{i}" for i in (1, 2, 3)],
    expected_pyramid_image_sizes=[(4, 6)] * 3,
)
HEAD = dict(num_classes=3, pooling="avg", activation="softmax", dropout=0.2)


def _preprocessor():
    return keras_cait.CaiTImageClassifierPreprocessor(
        image_converter=keras_cait.CaiTImageConverter(image_size=32)
    )


class KerasHubHarnessTest(KerasHubTestCase):
    def test_vision_backbone_fixed_and_any_image_size(self):
        # Its channels_first check expects `image_shape` reversed and the token axes
        # swapped; CaiT's stay (H, W, C) and (batch, tokens, dim): see test_channels_first_*.
        cases = [(NON_DEFAULT, IMAGES_32_48, (2, 25, 48), PYRAMID),
                 (dict(BACKBONE, **ANY_SIZE), IMAGES_48_24, (2, 19, 48), {})]
        for init_kwargs, images, shape, pyramid in cases:
            with self.subTest(any_size=not pyramid):
                self.run_vision_backbone_test(
                    cls=keras_cait.CaiTBackbone, init_kwargs=init_kwargs, input_data=images,
                    expected_output_shape=shape, run_data_format_check=False, **pyramid,
                )

    def test_task_fixed_and_any_image_size(self):
        # At the fixed size, the head's options away from their defaults.
        for extra, head in [({}, HEAD), (ANY_SIZE, dict(num_classes=3))]:
            with self.subTest(any_size=bool(extra)):
                backbone = keras_cait.CaiTBackbone(**dict(BACKBONE, **extra))
                self.run_task_test(
                    cls=keras_cait.CaiTImageClassifier,
                    init_kwargs=dict(backbone=backbone, preprocessor=_preprocessor(), **head),
                    train_data=(RAW_IMAGES, np.array([0, 2])), expected_output_shape=(2, 3),
                )

    def test_preprocessing_layers(self):
        for cls, kwargs in [(keras_cait.CaiTImageConverter, dict(image_size=32)),
                            (keras_cait.CaiTImageClassifierPreprocessor,
                             dict(image_converter=keras_cait.CaiTImageConverter(image_size=32)))]:
            self.run_preprocessing_layer_test(cls, kwargs, RAW_IMAGES)

    def test_model_saving(self):
        backbone = keras_cait.CaiTBackbone(**BACKBONE)
        for cls, kwargs, images in [
            (keras_cait.CaiTBackbone, NON_DEFAULT, IMAGES_32_48),
            (keras_cait.CaiTBackbone, dict(BACKBONE, **ANY_SIZE), IMAGES_48_24),
            (keras_cait.CaiTImageClassifier, dict(backbone=backbone, **HEAD), IMAGES),
        ]:
            self.run_model_saving_test(cls=cls, init_kwargs=kwargs, input_data=images)

    def test_local_preset(self):
        # The preset's numbers: test_parity.py.
        self.run_preset_test(cls=keras_cait.CaiTBackbone, preset=PRESET, input_data=IMAGES,
                             expected_output_shape=(2, 17, 48))
        self.run_preset_test(cls=keras_cait.CaiTImageClassifier, preset=PRESET,
                             input_data=IMAGES, expected_output_shape=(2, 10))


TOKENS = (2, 5, 16)
# name: (class, kwargs, input shape, output shape); test_mixed_precision.py uses them too.
LAYERS = {
    "DropPath": (keras_cait.DropPath, dict(rate=0.2, seed=3), TOKENS, TOKENS),
    "LayerScale": (keras_cait.LayerScale, dict(init_values=0.1), TOKENS, TOKENS),
    "CaiTMLP": (keras_cait.CaiTMLP, dict(hidden_dim=16, intermediate_dim=32, dropout_rate=0.1),
                TOKENS, TOKENS),
    "TalkingHeadsAttention": (
        keras_cait.TalkingHeadsAttention, dict(hidden_dim=16, num_heads=4), TOKENS, TOKENS),
    "ClassAttention": (
        keras_cait.ClassAttention, dict(hidden_dim=16, num_heads=2), TOKENS, (2, 1, 16)),
    "SelfAttentionBlock": (
        keras_cait.SelfAttentionBlock,
        dict(hidden_dim=16, num_heads=4, drop_path_rate=0.1, seed=7, layer_scale_init_value=0.5),
        TOKENS, TOKENS),
    "ClassAttentionBlock": (
        keras_cait.ClassAttentionBlock,
        dict(hidden_dim=16, num_heads=2, layer_scale_init_value=0.5),
        {"patch_tokens_shape": TOKENS, "class_token_shape": (2, 1, 16)}, (2, 1, 16)),
    "PatchEmbedding": (
        keras_cait.PatchEmbedding,
        dict(image_size=(8, 12), patch_size=4, hidden_dim=16, data_format="channels_last"),
        (2, 8, 12, 3), (2, 6, 16)),
    "ClassToken": (keras_cait.ClassToken, dict(hidden_dim=16), TOKENS, (2, 1, 16)),
}


class KerasLayerTest(KerasTestCase):
    def test_layers(self):
        for name, (cls, kwargs, shape, expected_shape) in LAYERS.items():
            with self.subTest(name):
                # Keras asserts `built` at creation for stateless layers only; a constant
                # class token broadcast to the batch has nothing to fit; Keras's training
                # step calls the layer on one input.
                self.run_layer_test(
                    cls, init_kwargs=kwargs, input_shape=shape, expected_output_shape=expected_shape,
                    assert_built_after_instantiation=name == "DropPath",
                    run_training_check=name not in ("ClassToken", "ClassAttentionBlock"),
                )
                # Its config round trip cannot see an argument missing from the config.
                arguments = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
                self.assertLessEqual(arguments, set(cls(**kwargs).get_config()))
        self.assertEqual(keras_cait.DropPath(0.1).count_params(), 0)  # built at creation


def _layer_scale_classifier(data_format="channels_last", preprocessor=None):
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**BACKBONE, data_format=data_format)
    return keras_cait.CaiTImageClassifier(backbone, 10, preprocessor=preprocessor)


def test_quantized_classifier_with_preprocessor_saves_and_loads(tmp_path):
    # Every mode's `.keras` round trip is in test_keras_semantics.py; here int8, with
    # a preprocessor (quantized after one predict) and through a preset.
    preprocessor = _preprocessor()
    model = _layer_scale_classifier(preprocessor=preprocessor)
    model.predict(RAW_IMAGES, verbose=0)
    model.quantize("int8")
    images = preprocessor(RAW_IMAGES)
    expected = to_numpy(model(images))
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    converter_config = preprocessor.image_converter.get_config()
    assert restored.preprocessor.image_converter.get_config() == converter_config
    np.testing.assert_array_equal(to_numpy(restored(images)), expected)
    # A quantized preset (KerasHub 0.32's ViT fails here) loads bit-exact.
    model.save_to_preset(str(tmp_path / "preset"))
    loaded = keras_cait.CaiTImageClassifier.from_preset(str(tmp_path / "preset"))
    assert loaded.get_layer("predictions").quantization_mode == "int8"
    np.testing.assert_array_equal(to_numpy(loaded(images)), expected)


def test_lora_default_layers_train_and_round_trip(tmp_path):
    model = _layer_scale_classifier()
    model.backbone.enable_lora(2)
    lora = [v for v in model.backbone.trainable_weights if "lora_kernel" in v.path]
    # Which variables train: test_keras_semantics.py::test_lora_trains_the_adapters_only.
    assert {v.path.rsplit("/", 2)[-2] for v in lora} == {"qkv", "q", "v"}
    # B starts at zero: random adapters (a LayerNorm cancels constant ones) matter.
    rng = np.random.default_rng(0)
    for variable in lora:
        variable.assign(0.2 * rng.standard_normal(variable.shape))
    path = str(tmp_path / "adapters.lora.h5")
    model.backbone.save_lora_weights(path)
    expected = to_numpy(model(IMAGES))
    other = _layer_scale_classifier()
    other.backbone.enable_lora(2)
    assert np.abs(to_numpy(other(IMAGES)) - expected).max() > 1e-3
    other.backbone.load_lora_weights(path)
    np.testing.assert_array_equal(to_numpy(other(IMAGES)), expected)


def test_channels_first_matches_channels_last_at_fixed_and_any_size():
    last = _layer_scale_classifier("channels_last")
    first = _layer_scale_classifier("channels_first")
    first.set_weights(last.get_weights())
    assert first.backbone.input.shape == (None, 3, 32, 32)
    np.testing.assert_allclose(
        to_numpy(first(IMAGES.transpose(0, 3, 1, 2))), to_numpy(last(IMAGES)), atol=1e-6, rtol=0
    )
    converter = keras_cait.CaiTImageConverter(image_size=32, data_format="channels_first")
    np.testing.assert_array_equal(
        to_numpy(converter(RAW_IMAGES.transpose(0, 3, 1, 2))),
        to_numpy(keras_cait.CaiTImageConverter(image_size=32)(RAW_IMAGES)).transpose(0, 3, 1, 2),
    )
    # Any image size: the position embedding is resampled in either layout.
    any_size = dict(TINY_BACKBONE, **ANY_SIZE)
    last = keras_cait.CaiTBackbone(**any_size, data_format="channels_last")
    first = keras_cait.CaiTBackbone(**any_size, data_format="channels_first")
    first.set_weights(last.get_weights())
    wide = np.random.default_rng(0).standard_normal((2, 24, 48, 3)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(first(wide.transpose(0, 3, 1, 2))), to_numpy(last(wide)), atol=1e-6
    )


def test_data_format_defaults_to_keras_config_and_presets_load_either_way():
    expected = to_numpy(keras_cait.CaiTImageClassifier.from_preset(PRESET)(IMAGES))
    original = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        model = keras_cait.CaiTImageClassifier.from_preset(PRESET)
    finally:
        keras.config.set_image_data_format(original)
    assert model.backbone.data_format == "channels_first"
    assert model.preprocessor.image_converter.data_format == "channels_first"
    np.testing.assert_allclose(
        to_numpy(model(IMAGES.transpose(0, 3, 1, 2))), expected, atol=1e-6, rtol=0
    )
    # A `.keras` or preset round trip keeps the layout.
    clone = keras_cait.CaiTBackbone.from_config(model.backbone.get_config())
    assert clone.data_format == "channels_first"
