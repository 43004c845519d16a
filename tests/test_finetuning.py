"""The fine-tuning recipe: new heads, freezing, AdamW without decay on the 1-D parameters
and embeddings, layer-wise learning-rate decay, drop path at load time; dropout and drop
path act only in training."""

import math
import runpy

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.training import finetuning as ft
from keras_cait_base.errors import CaiTConfigError
from tests.support import REPO, TIMM, TINY_BACKBONE, reference_classifier, to_numpy

TINY_TIMM = str(TIMM / "tiny_token_head")
# JAX needs jit (its eager mode compiles every op); compiling costs TF more than it saves.
JIT = keras.backend.backend() == "jax"


def _classifier():
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, layer_scale_init_value=0.5)
    return keras_cait.CaiTImageClassifier(backbone, num_classes=3)


def _compile(model, optimizer):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss, jit_compile=JIT)


def _values(variables):
    return [to_numpy(v).copy() for v in variables]


def _drop_path_rates(backbone):
    blocks = range(backbone.num_layers)
    return {backbone.get_layer(f"self_attention_block_{i}").drop_path_1.rate for i in blocks}


def test_dropout_and_drop_path_only_in_training_and_not_in_class_attention():
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, dropout_rate=0.3, attention_dropout=0.3,
                                       drop_path_rate=0.3, layer_scale_init_value=1.0)
    for i in range(backbone.num_class_attention_layers):
        for layer in backbone.get_layer(f"class_attention_block_{i}")._flatten_layers():
            assert not isinstance(layer, keras_cait.DropPath)
            if isinstance(layer, keras.layers.Dropout):
                assert layer.rate == 0.0, layer.path
    assert _drop_path_rates(backbone) == {0.3}  # the same (constant) in every block
    classifier = keras_cait.CaiTImageClassifier(backbone, num_classes=3, dropout=0.3)
    images = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype("float32")
    first = to_numpy(classifier(images, training=False))
    np.testing.assert_array_equal(to_numpy(classifier(images, training=False)), first)
    np.testing.assert_allclose(to_numpy(classifier.predict(images, verbose=0)), first, atol=1e-5)
    assert not np.allclose(to_numpy(classifier(images, training=True)), first, atol=1e-4)


def test_no_weight_decay_on_biases_norms_layer_scale_and_embeddings():
    model = _classifier()
    skipped = {v.path for v in model.trainable_weights if not ft.uses_weight_decay(v)}
    decayed = {v.path for v in model.trainable_weights if ft.uses_weight_decay(v)}
    assert {"patch_embedding/position_embedding", "class_token/class_token",
            "self_attention_block_0/layer_scale_1/gamma", "self_attention_block_0/norm1/gamma",
            "final_layernorm/beta", "predictions/bias"} <= skipped
    assert all(path.endswith("/kernel") for path in decayed)
    assert "self_attention_block_1/attn/proj_l/kernel" in decayed
    # With zero gradients Adam does not move: only the decay acts.
    for layer_decay in (None, 0.5):
        optimizer = ft.finetuning_optimizer(model, learning_rate=0.1, weight_decay=0.5,
                                            layer_decay=layer_decay)
        variables = model.trainable_weights
        before = _values(variables)
        optimizer.apply([keras.ops.zeros(v.shape, v.dtype) for v in variables], variables)
        multipliers = ft.layer_decay_multipliers(model, layer_decay) if layer_decay else {}
        for variable, old in zip(variables, before):
            new = to_numpy(variable)
            if variable.path in skipped:
                np.testing.assert_array_equal(new, old, err_msg=variable.path)
            else:
                factor = 1 - 0.1 * 0.5 * multipliers.get(variable.path, 1.0)
                np.testing.assert_allclose(new, old * factor, rtol=1e-5, atol=1e-7,
                                           err_msg=variable.path)
        for variable, old in zip(variables, before):
            variable.assign(old)


def _exponents(model, layer_decay=0.5):
    multipliers = ft.layer_decay_multipliers(model, layer_decay)
    assert set(multipliers) == {v.path for v in model.weights}
    return {path: math.log(m, layer_decay) for path, m in multipliers.items()}


def test_layer_decay_groups_cait_xxs24_224_as_timm():
    """timm 1.0.31's `param_groups_layer_decay`: 25 embeddings, 24 - i `blocks.i`, 2 - j
    class-attention block j, 1 final norm, 0 head."""
    classifier = keras_cait.CaiTImageClassifier.from_preset("cait_xxs24_224", load_weights=False)

    def expected_exponent(path):
        layer = path.split("/")[0]
        if layer.startswith("self_attention_block_"):
            return 24 - int(layer.rsplit("_", 1)[1])
        if layer.startswith("class_attention_block_"):
            return 2 - int(layer.rsplit("_", 1)[1])
        return {"patch_embedding": 25, "class_token": 25, "final_layernorm": 1,
                "predictions": 0}[layer]
    expected = {v.path: expected_exponent(v.path) for v in classifier.weights}
    exponents = _exponents(classifier)
    assert exponents == pytest.approx(expected, abs=1e-9)
    assert sorted(set(expected.values())) == list(range(26))  # every group
    # The class-attention blocks share the last self-attention blocks' groups.
    assert exponents["self_attention_block_22/attn/qkv/kernel"] == pytest.approx(2)
    assert exponents["class_attention_block_0/attn/q/kernel"] == pytest.approx(2)
    assert exponents["final_layernorm/gamma"] == pytest.approx(1)


def test_layer_decay_multipliers_and_steps():
    model = _classifier()  # 2 + 2 blocks; timm's groups checked with timm 1.0.31
    exponents = _exponents(model)
    for path, exponent in {
        "patch_embedding/projection/kernel": 3, "patch_embedding/position_embedding": 3,
        "class_token/class_token": 3, "self_attention_block_0/attn/qkv/kernel": 2,
        "class_attention_block_0/mlp/fc1/kernel": 2, "self_attention_block_1/mlp/fc2/bias": 1,
        "class_attention_block_1/attn/q/kernel": 1, "final_layernorm/gamma": 1,
        "predictions/kernel": 0,
    }.items():
        assert exponents[path] == pytest.approx(exponent), path
    # A backbone has no head: every exponent is one less.
    for path, exponent in _exponents(model.backbone).items():
        assert exponent == pytest.approx(exponents[path] - 1), path
    multipliers = ft.layer_decay_multipliers(model, 0.5)
    # Adam's first step moves each variable by about learning_rate * multiplier.
    optimizer = ft.LayerDecayAdamW(learning_rate=1e-2, weight_decay=0.0,
                                   learning_rate_multipliers=multipliers)
    variables = model.trainable_weights
    before = _values(variables)
    optimizer.apply([keras.ops.ones(v.shape, v.dtype) for v in variables], variables)
    for variable, old in zip(variables, before):
        np.testing.assert_allclose(old - to_numpy(variable), 1e-2 * multipliers[variable.path],
                                   rtol=1e-3, err_msg=variable.path)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, ft.LayerDecayAdamW)
    assert restored.learning_rate_multipliers == multipliers
    assert restored.decoupled_weight_decay == 0.0
    with pytest.raises(CaiTConfigError, match="layer_decay"):
        ft.layer_decay_multipliers(model, 1.5)
    with pytest.raises(CaiTConfigError, match="CaiTBackbone"):
        ft.finetuning_optimizer(keras.Sequential([keras.layers.Dense(1)]))


def test_fit_with_the_recipe_lowers_the_loss():
    model = _classifier()
    _compile(model, ft.finetuning_optimizer(model, 2e-3, weight_decay=0.05, layer_decay=0.8))
    images = np.random.default_rng(0).standard_normal((16, 32, 32, 3)).astype("float32")
    losses = model.fit(images, np.arange(16) % 3, epochs=4, batch_size=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] * 0.8


def test_from_preset_new_head_and_frozen_backbone():
    """The new head and pretrained backbone: test_presets.test_new_head_dtype_and_image_shape_*."""
    classifier = keras_cait.CaiTImageClassifier.from_preset(TINY_TIMM, num_classes=5)
    classifier.backbone.trainable = False
    assert classifier.trainable_weights == classifier.output_dense.trainable_weights
    _compile(classifier, ft.finetuning_optimizer(classifier, 1e-2))
    backbone_before = _values(classifier.backbone.weights)
    head_before = _values(classifier.output_dense.weights)
    images = np.random.default_rng(1).standard_normal((8, 32, 32, 3)).astype("float32")
    classifier.fit(images, np.arange(8) % 5, epochs=2, batch_size=4, verbose=0)
    for variable, old in zip(classifier.backbone.weights, backbone_before):
        np.testing.assert_array_equal(to_numpy(variable), old, err_msg=variable.path)
    for variable, old in zip(classifier.output_dense.weights, head_before):
        assert not np.array_equal(to_numpy(variable), old), variable.path


def test_load_for_finetuning_sets_drop_path_and_resolution():
    classifier = ft.load_for_finetuning(TINY_TIMM, num_classes=4, image_shape=(40, 24, 3),
                                        drop_path_rate=0.2, dropout=0.1)
    backbone = classifier.backbone
    assert backbone.drop_path_rate == 0.2 and backbone.get_config()["drop_path_rate"] == 0.2
    assert _drop_path_rates(backbone) == {0.2}
    assert backbone.image_shape == (40, 24, 3) and backbone.grid_size == (5, 3)
    assert backbone.num_patches == 15
    assert classifier.num_classes == 4 and classifier.dropout == 0.1
    reference = reference_classifier("tiny_token_head").backbone
    np.testing.assert_array_equal(*(to_numpy(b.get_layer("self_attention_block_1").attn.qkv.kernel)
                                    for b in (backbone, reference)))


def test_example_runs_in_quick_mode(tmp_path):
    if keras.backend.backend() != "torch":
        pytest.skip("the example's quick mode runs once per CI, on the torch pass")
    example = runpy.run_path(str(REPO / "examples" / "finetune_digits.py"))
    result = example["main"](["--quick", "--output", str(tmp_path / "result.json")])
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert (tmp_path / "result.json").exists()


@pytest.mark.parametrize("saved_as", ["timm", "keras_cait"])
def test_from_preset_passes_regularisation_to_the_backbone(saved_as, tiny_preset):
    preset = TINY_TIMM if saved_as == "timm" else tiny_preset
    classifier = keras_cait.CaiTImageClassifier.from_preset(
        preset, num_classes=4, drop_path_rate=0.1, dropout_rate=0.05, attention_dropout=0.02)
    backbone = classifier.backbone
    assert (backbone.drop_path_rate, backbone.dropout_rate) == (0.1, 0.05)
    assert backbone.attention_dropout == 0.02
    assert _drop_path_rates(backbone) == {0.1}
    assert keras_cait.CaiTBackbone.from_preset(preset, drop_path_rate=0.3).drop_path_rate == 0.3
