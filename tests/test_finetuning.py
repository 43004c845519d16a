"""The fine-tuning recipe: new heads, freezing, AdamW without decay on the
1-D parameters and embeddings, layer-wise learning-rate decay, drop path at
load time."""

import math

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.training.finetuning import (
    LayerDecayAdamW,
    finetuning_optimizer,
    layer_decay_multipliers,
    load_for_finetuning,
    uses_weight_decay,
)
from keras_cait_base.errors import CaiTConfigError
from tests.support import TIMM, TINY_BACKBONE, reference_classifier, to_numpy

TINY_TIMM = str(TIMM / "tiny_token_head")
# XLA-compiling a TF train step costs more than these few tiny steps; JAX
# needs jit (its eager mode compiles every op), torch runs eagerly anyway.
JIT = keras.backend.backend() == "jax"


def _classifier(num_classes=3, **backbone_kwargs):
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(
        **dict(TINY_BACKBONE, **backbone_kwargs), layer_scale_init_value=0.5
    )
    return keras_cait.CaiTImageClassifier(backbone, num_classes=num_classes)


def _values(variables):
    return [to_numpy(v).copy() for v in variables]


def test_no_weight_decay_on_biases_norms_layer_scale_and_embeddings():
    model = _classifier()
    skipped = {v.path for v in model.trainable_weights if not uses_weight_decay(v)}
    decayed = {v.path for v in model.trainable_weights if uses_weight_decay(v)}
    assert "patch_embedding/position_embedding" in skipped
    assert "class_token/class_token" in skipped
    assert "self_attention_block_0/layer_scale_1/gamma" in skipped
    assert "self_attention_block_0/norm1/gamma" in skipped
    assert "final_layernorm/beta" in skipped
    assert "predictions/bias" in skipped
    assert all(path.endswith("/kernel") for path in decayed)
    assert "self_attention_block_1/attn/proj_l/kernel" in decayed

    # With zero gradients Adam does not move: only the decay acts.
    for layer_decay in (None, 0.5):
        optimizer = finetuning_optimizer(
            model, learning_rate=0.1, weight_decay=0.5, layer_decay=layer_decay
        )
        variables = model.trainable_weights
        before = _values(variables)
        optimizer.apply([keras.ops.zeros(v.shape, v.dtype) for v in variables], variables)
        multipliers = (
            layer_decay_multipliers(model, layer_decay) if layer_decay else {}
        )
        for variable, old in zip(variables, before):
            new = to_numpy(variable)
            if variable.path in skipped:
                np.testing.assert_array_equal(new, old, err_msg=variable.path)
            else:
                factor = 1 - 0.1 * 0.5 * multipliers.get(variable.path, 1.0)
                np.testing.assert_allclose(
                    new, old * factor, rtol=1e-5, atol=1e-7, err_msg=variable.path
                )
        for variable, old in zip(variables, before):
            variable.assign(old)


def _exponents(model, layer_decay=0.5):
    multipliers = layer_decay_multipliers(model, layer_decay)
    assert set(multipliers) == {v.path for v in model.weights}
    return {path: math.log(m, layer_decay) for path, m in multipliers.items()}


def test_layer_decay_groups_cait_xxs24_224_as_timm():
    """timm 1.0.31's `param_groups_layer_decay` on `cait_xxs24_224`: 25 for
    the embeddings, 24 - i for `blocks.i`, 2 - j for class-attention block
    j, 1 for the final norm, 0 for the head."""
    classifier = keras_cait.CaiTImageClassifier.from_preset(
        "cait_xxs24_224", load_weights=False
    )

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
        "patch_embedding/projection/kernel": 3,
        "patch_embedding/position_embedding": 3,
        "class_token/class_token": 3,
        "self_attention_block_0/attn/qkv/kernel": 2,
        "class_attention_block_0/mlp/fc1/kernel": 2,
        "self_attention_block_1/mlp/fc2/bias": 1,
        "class_attention_block_1/attn/q/kernel": 1,
        "final_layernorm/gamma": 1,
        "predictions/kernel": 0,
    }.items():
        assert exponents[path] == pytest.approx(exponent), path
    # A backbone has no head: every exponent is one less.
    backbone_exponents = _exponents(model.backbone)
    for path, exponent in backbone_exponents.items():
        assert exponent == pytest.approx(exponents[path] - 1), path
    multipliers = layer_decay_multipliers(model, 0.5)

    # Adam's first step moves every entry by about the learning rate, so each
    # variable moves by learning_rate * multiplier.
    optimizer = LayerDecayAdamW(
        learning_rate=1e-2, weight_decay=0.0, learning_rate_multipliers=multipliers
    )
    variables = model.trainable_weights
    before = _values(variables)
    optimizer.apply([keras.ops.ones(v.shape, v.dtype) for v in variables], variables)
    for variable, old in zip(variables, before):
        step = old - to_numpy(variable)
        np.testing.assert_allclose(
            step, 1e-2 * multipliers[variable.path], rtol=1e-3, err_msg=variable.path
        )

    config = keras.optimizers.serialize(optimizer)
    restored = keras.optimizers.deserialize(config)
    assert isinstance(restored, LayerDecayAdamW)
    assert restored.learning_rate_multipliers == multipliers
    assert restored.decoupled_weight_decay == 0.0

    with pytest.raises(CaiTConfigError, match="layer_decay"):
        layer_decay_multipliers(model, 1.5)
    with pytest.raises(CaiTConfigError, match="CaiTBackbone"):
        finetuning_optimizer(keras.Sequential([keras.layers.Dense(1)]))


def test_fit_with_the_recipe_lowers_the_loss():
    model = _classifier()
    model.compile(
        optimizer=finetuning_optimizer(model, 2e-3, weight_decay=0.05, layer_decay=0.8),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=JIT,
    )
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 32, 32, 3)).astype("float32")
    labels = np.arange(16) % 3
    history = model.fit(images, labels, epochs=4, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_from_preset_new_head_and_frozen_backbone():
    classifier = keras_cait.CaiTImageClassifier.from_preset(TINY_TIMM, num_classes=5)
    reference = reference_classifier("tiny_token_head")
    assert classifier.output_dense.kernel.shape == (48, 5)
    # The backbone is the pretrained one.
    for got, want in zip(classifier.backbone.weights, reference.backbone.weights):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want), err_msg=got.path)

    classifier.backbone.trainable = False
    assert classifier.trainable_weights == classifier.output_dense.trainable_weights
    classifier.compile(
        optimizer=finetuning_optimizer(classifier, 1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=JIT,
    )
    backbone_before = _values(classifier.backbone.weights)
    head_before = _values(classifier.output_dense.weights)
    rng = np.random.default_rng(1)
    images = rng.standard_normal((8, 32, 32, 3)).astype("float32")
    classifier.fit(images, np.arange(8) % 5, epochs=2, batch_size=4, verbose=0)
    for variable, old in zip(classifier.backbone.weights, backbone_before):
        np.testing.assert_array_equal(to_numpy(variable), old, err_msg=variable.path)
    for variable, old in zip(classifier.output_dense.weights, head_before):
        assert not np.array_equal(to_numpy(variable), old), variable.path


def test_load_for_finetuning_sets_drop_path_and_resolution():
    classifier = load_for_finetuning(
        TINY_TIMM, num_classes=4, image_shape=(40, 24, 3), drop_path_rate=0.2,
        dropout=0.1,
    )
    backbone = classifier.backbone
    assert backbone.drop_path_rate == 0.2
    assert backbone.get_config()["drop_path_rate"] == 0.2
    assert {
        backbone.get_layer(f"self_attention_block_{i}").drop_path_1.rate
        for i in range(backbone.num_layers)
    } == {0.2}
    assert backbone.image_shape == (40, 24, 3) and backbone.grid_size == (5, 3)
    assert classifier.num_classes == 4 and classifier.dropout == 0.1
    reference = reference_classifier("tiny_token_head")
    np.testing.assert_array_equal(
        to_numpy(backbone.get_layer("self_attention_block_1").attn.qkv.kernel),
        to_numpy(reference.backbone.get_layer("self_attention_block_1").attn.qkv.kernel),
    )
    images = np.zeros((2, 40, 24, 3), "float32")
    assert tuple(classifier(images).shape) == (2, 4)


def test_example_runs_in_quick_mode(tmp_path):
    if keras.backend.backend() != "torch":
        pytest.skip("the example's quick mode runs once per CI, on the torch pass")
    import runpy

    from tests.support import REPO

    example = runpy.run_path(str(REPO / "examples" / "finetune_digits.py"))
    result = example["main"](["--quick", "--output", str(tmp_path / "result.json")])
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert (tmp_path / "result.json").exists()


@pytest.mark.parametrize("saved_as", ["timm", "keras_cait"])
def test_from_preset_passes_regularisation_to_the_backbone(saved_as, tmp_path):
    preset = TINY_TIMM
    if saved_as == "keras_cait":
        preset = str(tmp_path / "preset")
        keras_cait.CaiTImageClassifier.from_preset(TINY_TIMM).save_to_preset(preset)
    classifier = keras_cait.CaiTImageClassifier.from_preset(
        preset, num_classes=4, drop_path_rate=0.1, dropout_rate=0.05,
        attention_dropout=0.02,
    )
    backbone = classifier.backbone
    assert (backbone.drop_path_rate, backbone.dropout_rate) == (0.1, 0.05)
    assert backbone.attention_dropout == 0.02
    assert {
        backbone.get_layer(f"self_attention_block_{i}").drop_path_1.rate
        for i in range(backbone.num_layers)
    } == {0.1}
    backbone = keras_cait.CaiTBackbone.from_preset(preset, drop_path_rate=0.3)
    assert backbone.drop_path_rate == 0.3
