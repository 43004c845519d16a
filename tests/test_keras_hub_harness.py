"""KerasHub's own test harness (`keras_hub.src.tests.test_case`, keras-hub
0.32) and Keras's `run_layer_test`, run on keras-cait as KerasHub runs them
on its ViT; plus what the harness skips or cannot see: quantization on
every backend with a preprocessor and a preset, LoRA with the default
layer names, and `channels_first` on every backend (TensorFlow included)."""

import keras
import numpy as np

# Private test harnesses (keras 3.15, keras-hub 0.32; pinned in pyproject).
from keras.src.testing import TestCase as KerasTestCase
from keras_hub.src.tests.test_case import TestCase as KerasHubTestCase

import keras_cait
from tests.support import TIMM, TINY_BACKBONE, to_numpy

IMAGES = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
RAW_IMAGES = np.random.default_rng(1).uniform(0, 255, (2, 40, 36, 3)).astype("float32")


class KerasHubHarnessTest(KerasHubTestCase):
    def setUp(self):
        super().setUp()
        self.backbone_kwargs = dict(TINY_BACKBONE, layer_scale_init_value=0.1)

    def _preprocessor(self):
        return keras_cait.CaiTImageClassifierPreprocessor(
            image_converter=keras_cait.CaiTImageConverter(image_size=32)
        )

    def test_vision_backbone(self):
        # Its channels_first check reverses `image_shape` and expects the
        # token axes swapped; CaiT's `image_shape` is always (H, W, C) and its
        # tokens stay (batch, tokens, dim): test_channels_first_* test that.
        self.run_vision_backbone_test(
            cls=keras_cait.CaiTBackbone,
            init_kwargs=self.backbone_kwargs,
            input_data=IMAGES,
            expected_output_shape=(2, 17, 48),
            run_data_format_check=False,
        )

    def test_vision_backbone_any_image_size(self):
        # `image_shape=(None, None, 3)`: called at 48x24, a 6x3 grid.
        self.run_vision_backbone_test(
            cls=keras_cait.CaiTBackbone,
            init_kwargs=dict(
                self.backbone_kwargs, image_shape=(None, None, 3),
                position_embedding_shape=(32, 32),
            ),
            input_data=np.random.default_rng(2).standard_normal(
                (2, 48, 24, 3)
            ).astype("float32"),
            expected_output_shape=(2, 19, 48),
            run_data_format_check=False,
        )

    def test_task_any_image_size(self):
        backbone = keras_cait.CaiTBackbone(
            **dict(self.backbone_kwargs, image_shape=(None, None, 3),
                   position_embedding_shape=(32, 32))
        )
        self.run_task_test(
            cls=keras_cait.CaiTImageClassifier,
            init_kwargs=dict(backbone=backbone, num_classes=3,
                             preprocessor=self._preprocessor()),
            train_data=(RAW_IMAGES, np.array([0, 2])),
            expected_output_shape=(2, 3),
        )

    def test_task(self):
        self.run_task_test(
            cls=keras_cait.CaiTImageClassifier,
            init_kwargs=dict(
                backbone=keras_cait.CaiTBackbone(**self.backbone_kwargs),
                num_classes=3,
                preprocessor=self._preprocessor(),
            ),
            train_data=(RAW_IMAGES, np.array([0, 2])),
            expected_output_shape=(2, 3),
        )

    def test_preprocessing_layers(self):
        for cls, kwargs in (
            (keras_cait.CaiTImageConverter, dict(image_size=32)),
            (keras_cait.CaiTImageClassifierPreprocessor, dict(
                image_converter=keras_cait.CaiTImageConverter(image_size=32)
            )),
        ):
            self.run_preprocessing_layer_test(cls, kwargs, RAW_IMAGES)

    def test_model_saving(self):
        self.run_model_saving_test(
            cls=keras_cait.CaiTBackbone,
            init_kwargs=self.backbone_kwargs,
            input_data=IMAGES,
        )
        self.run_model_saving_test(
            cls=keras_cait.CaiTImageClassifier,
            init_kwargs=dict(
                backbone=keras_cait.CaiTBackbone(**self.backbone_kwargs),
                num_classes=3,
            ),
            input_data=IMAGES,
        )

    def test_local_preset(self):
        preset = str(TIMM / "tiny_token_head")
        expected = to_numpy(keras_cait.CaiTBackbone.from_preset(preset)(IMAGES))
        self.run_preset_test(
            cls=keras_cait.CaiTBackbone,
            preset=preset,
            input_data=IMAGES,
            expected_output=expected,
        )
        self.run_preset_test(
            cls=keras_cait.CaiTImageClassifier,
            preset=preset,
            input_data=IMAGES,
            expected_output_shape=(2, 10),
        )


LAYERS = {
    "DropPath": (keras_cait.DropPath, dict(rate=0.2, seed=3), (2, 5, 16)),
    "LayerScale": (keras_cait.LayerScale, dict(init_values=0.1), (2, 5, 16)),
    "CaiTMLP": (
        keras_cait.CaiTMLP, dict(hidden_dim=16, intermediate_dim=32, dropout_rate=0.1), (2, 5, 16)
    ),
    "TalkingHeadsAttention": (
        keras_cait.TalkingHeadsAttention, dict(hidden_dim=16, num_heads=4), (2, 5, 16)
    ),
    "ClassAttention": (
        keras_cait.ClassAttention, dict(hidden_dim=16, num_heads=2), (2, 5, 16)
    ),
    "SelfAttentionBlock": (
        keras_cait.SelfAttentionBlock,
        dict(hidden_dim=16, num_heads=4, drop_path_rate=0.1, seed=7),
        (2, 5, 16),
    ),
    "PatchEmbedding": (
        keras_cait.PatchEmbedding,
        dict(image_size=(8, 12), patch_size=4, hidden_dim=16, data_format="channels_last"),
        (2, 8, 12, 3),
    ),
    "ClassToken": (keras_cait.ClassToken, dict(hidden_dim=16), (2, 5, 16)),
}
EXPECTED_SHAPES = {
    "ClassAttention": (2, 1, 16),
    "PatchEmbedding": (2, 6, 16),
    "ClassToken": (2, 1, 16),
}


class KerasLayerTest(KerasTestCase):
    def _run(self, name):
        cls, kwargs, shape = LAYERS[name]
        # Keras asserts `built` at creation for stateless layers only; the
        # others build their weights in `build()`, as Keras's own layers.
        stateless = not cls(**kwargs).weights and name == "DropPath"
        self.run_layer_test(
            cls,
            init_kwargs=kwargs,
            input_shape=shape,
            expected_output_shape=EXPECTED_SHAPES.get(name, shape),
            assert_built_after_instantiation=stateless,
            # The training step fits the outputs; a constant class token
            # broadcast to the batch has nothing else to fit.
            run_training_check=name != "ClassToken",
        )

    def test_layers(self):
        for name in LAYERS:
            with self.subTest(name):
                self._run(name)

    def test_class_attention_block(self):
        self.run_layer_test(
            keras_cait.ClassAttentionBlock,
            init_kwargs=dict(hidden_dim=16, num_heads=2, layer_scale_init_value=0.1),
            input_shape={"patch_tokens_shape": (2, 5, 16), "class_token_shape": (2, 1, 16)},
            expected_output_shape=(2, 1, 16),
            # Keras's training step calls the layer on one input.
            run_training_check=False,
        )

    def test_drop_path_is_built_at_creation(self):
        self.assertEqual(keras_cait.DropPath(0.1).count_params(), 0)


def _layer_scale_classifier(data_format="channels_last", preprocessor=None):
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(
        **TINY_BACKBONE, layer_scale_init_value=0.1, data_format=data_format
    )
    return keras_cait.CaiTImageClassifier(backbone, 10, preprocessor=preprocessor)


def test_quantized_classifier_with_preprocessor_saves_and_loads(tmp_path):
    # Every mode's `.keras` round trip is in test_keras_semantics.py; here
    # one mode, with a preprocessor (quantized after one predict, as
    # KerasHub's converters allow) and through a preset.
    preprocessor = keras_cait.CaiTImageClassifierPreprocessor(
        image_converter=keras_cait.CaiTImageConverter(image_size=32)
    )
    model = _layer_scale_classifier(preprocessor=preprocessor)
    model.predict(RAW_IMAGES, verbose=0)
    model.quantize("int8")
    images = preprocessor(RAW_IMAGES)
    expected = to_numpy(model(images))
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert restored.preprocessor.image_converter.get_config() == (
        preprocessor.image_converter.get_config()
    )
    np.testing.assert_array_equal(to_numpy(restored(images)), expected)
    # A quantized preset (KerasHub 0.32's ViT fails here) loads bit-exact.
    model.save_to_preset(str(tmp_path / "preset"))
    loaded = keras_cait.CaiTImageClassifier.from_preset(str(tmp_path / "preset"))
    assert loaded.get_layer("predictions").quantization_mode == "int8"
    np.testing.assert_array_equal(to_numpy(loaded(images)), expected)


def test_lora_default_layers_train_and_round_trip(tmp_path):
    model = _layer_scale_classifier()
    model.backbone.enable_lora(2)
    adapted = {
        v.path.rsplit("/", 2)[-2]
        for v in model.backbone.trainable_weights
        if "lora_kernel" in v.path
    }
    assert adapted == {"qkv", "q", "v"}
    # Trainable: the adapters (A and B) and the adapted layers' biases only.
    assert len(model.backbone.trainable_weights) == 3 * (2 + 2 * 2)
    # B starts at zero: random adapters (not constant ones, which a
    # LayerNorm's zero-mean output cancels) make them matter.
    rng = np.random.default_rng(0)
    for variable in model.backbone.trainable_weights:
        if "lora_kernel" in variable.path:
            variable.assign(0.2 * rng.standard_normal(variable.shape))
    path = str(tmp_path / "adapters.lora.h5")
    model.backbone.save_lora_weights(path)
    expected = to_numpy(model(IMAGES))

    other = _layer_scale_classifier()
    other.backbone.enable_lora(2)
    assert np.abs(to_numpy(other(IMAGES)) - expected).max() > 1e-3
    other.backbone.load_lora_weights(path)
    np.testing.assert_array_equal(to_numpy(other(IMAGES)), expected)


def test_channels_first_matches_channels_last():
    last = _layer_scale_classifier("channels_last")
    first = keras_cait.CaiTImageClassifier.from_config(
        {
            **last.get_config(),
            "backbone": keras.saving.serialize_keras_object(
                keras_cait.CaiTBackbone.from_config(
                    {**last.backbone.get_config(), "data_format": "channels_first"}
                )
            ),
        }
    )
    first.set_weights(last.get_weights())
    assert first.backbone.input.shape == (None, 3, 32, 32)
    np.testing.assert_allclose(
        to_numpy(first(IMAGES.transpose(0, 3, 1, 2))),
        to_numpy(last(IMAGES)),
        atol=1e-6,
        rtol=0,
    )
    converter = keras_cait.CaiTImageConverter(image_size=32, data_format="channels_first")
    np.testing.assert_array_equal(
        to_numpy(converter(RAW_IMAGES.transpose(0, 3, 1, 2))),
        to_numpy(keras_cait.CaiTImageConverter(image_size=32)(RAW_IMAGES)).transpose(
            0, 3, 1, 2
        ),
    )


def test_data_format_defaults_to_keras_config_and_presets_load_either_way():
    preset = str(TIMM / "tiny_token_head")
    expected = to_numpy(keras_cait.CaiTImageClassifier.from_preset(preset)(IMAGES))
    original = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        model = keras_cait.CaiTImageClassifier.from_preset(preset)
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
