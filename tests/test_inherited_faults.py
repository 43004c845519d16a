"""Faults keras-cait inherits from KerasHub 0.32 (docs/keras_hub_upstream.md),
each fixed here and shown next to KerasHub's own ViT, which still has it:

- a quantized preset does not load as a backbone;
- a `.keras` file does not restore the optimizer;
- `fit()` on arrays does not shuffle.

Each ViT test asserts that KerasHub still fails; when it fails no more, the
test says so: remove our workaround (named in the message) and the test.
"""

import sys

import keras
import keras_hub
import numpy as np
import pytest

import keras_cait
from keras_cait.model_extensions.shuffled_batches import shuffled_batches
from keras_cait.training.finetuning import finetuning_optimizer, load_for_finetuning
from keras_cait_base.errors import CaiTWeightsError
from tests.support import TINY_BACKBONE, to_numpy

JIT = False  # faster than compiling each tiny model
RNG = np.random.default_rng(0)
IMAGES = RNG.standard_normal((8, 32, 32, 3)).astype("float32")
LABELS = RNG.integers(0, 3, 8)
FIXED = "KerasHub fixed this: remove our workaround ({}) and this check."


def _cait(num_classes=3):
    keras.utils.set_random_seed(0)
    backbone = keras_cait.CaiTBackbone(**TINY_BACKBONE, layer_scale_init_value=0.1)
    return keras_cait.CaiTImageClassifier(backbone, num_classes)


def _vit(num_classes=3):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=1,
                                            num_heads=2, hidden_dim=16, mlp_dim=32)
    return keras_hub.models.ViTImageClassifier(backbone, num_classes)


def _compiled(model, optimizer):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss, jit_compile=JIT)
    return model


def _flat_weights(model):
    return np.concatenate([to_numpy(v).ravel() for v in model.weights])


# --- 1. A quantized preset loads as a backbone ---------------------------


def test_quantized_preset_loads_as_backbone(tmp_path):
    # One mode: the loader keeps whatever quantization map was saved.
    mode = "int8"
    model = _cait()
    model.quantize(mode)
    model.save_to_preset(str(tmp_path))
    expected = to_numpy(model.backbone(IMAGES))

    # KerasHub's loader rebuilt it unquantized: "24 objects could not be loaded".
    backbone = keras_cait.CaiTBackbone.from_preset(str(tmp_path))
    assert backbone.get_layer("self_attention_block_0").attn.qkv.quantization_mode == mode
    np.testing.assert_array_equal(to_numpy(backbone(IMAGES)), expected)
    finetuned = load_for_finetuning(str(tmp_path), 5)
    assert finetuned.output_dense.units == 5
    np.testing.assert_array_equal(to_numpy(finetuned.backbone(IMAGES)), expected)
    # Resampling a quantized model is refused, naming the preset.
    for cls in (keras_cait.CaiTBackbone, keras_cait.CaiTImageClassifier):
        with pytest.raises(CaiTWeightsError, match="quantized preset"):
            cls.from_preset(str(tmp_path), image_shape=(48, 48, 3))


def test_keras_hub_vit_quantized_preset_fails_as_backbone(tmp_path):
    model = _vit()
    model.quantize("int8")
    model.save_to_preset(str(tmp_path))
    try:
        keras_hub.models.ViTBackbone.from_preset(str(tmp_path))
    except ValueError as error:
        assert "could not be loaded" in str(error)
    else:
        pytest.fail(FIXED.format("KerasCaiTPresetLoader.get_backbone_kwargs"))


# --- 2. A `.keras` file restores the optimizer ----------------------------


def test_keras_file_restores_the_optimizer(tmp_path):
    # The recipe's optimizer: a `LayerDecayAdamW` with or without layer decay.
    model = _cait()
    _compiled(model, finetuning_optimizer(model, 1e-3, layer_decay=0.75))
    model.fit(IMAGES, LABELS, batch_size=4, shuffle=False, verbose=0)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")

    # KerasHub's compile() made Keras skip it: Adam(5e-5) at iteration 0.
    saved, loaded = model.optimizer, restored.optimizer
    assert type(loaded) is type(saved)
    assert loaded.get_config() == saved.get_config()
    assert int(loaded.iterations) == int(saved.iterations) == 2
    for want, got in zip(saved.variables, loaded.variables):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want), err_msg=want.path)
    # Training goes on where it stopped: the next step is the same.
    model.train_on_batch(IMAGES[:4], LABELS[:4])
    restored.train_on_batch(IMAGES[:4], LABELS[:4])
    np.testing.assert_array_equal(_flat_weights(restored), _flat_weights(model))


def test_keras_hub_vit_keras_file_loses_the_optimizer(tmp_path):
    model = _compiled(_vit(), keras.optimizers.AdamW(1e-3))
    model.fit(IMAGES, LABELS, batch_size=4, shuffle=False, verbose=0)
    model.save(tmp_path / "model.keras")
    with pytest.warns(UserWarning, match="compile"):
        restored = keras.saving.load_model(tmp_path / "model.keras")
    if type(restored.optimizer) is keras.optimizers.AdamW:
        pytest.fail(FIXED.format("CaiTImageClassifier.compile_from_config"))
    assert int(restored.optimizer.iterations) == 0


# --- 3. `fit()` on arrays shuffles ----------------------------------------


def _fit_weights(make_model, shuffle):
    model = _compiled(make_model(), keras.optimizers.SGD(0.1))
    model.fit(IMAGES, LABELS, batch_size=4, epochs=2, shuffle=shuffle, verbose=0)
    return _flat_weights(model)


def test_fit_on_arrays_shuffles():
    unshuffled = _fit_weights(_cait, False)
    np.testing.assert_array_equal(_fit_weights(_cait, False), unshuffled)
    shuffled = _fit_weights(_cait, True)
    # KerasHub batched the arrays unshuffled: a distance of 0.
    assert np.linalg.norm(shuffled - unshuffled) > 1e-3


@pytest.mark.parametrize("pipeline", ["grain", "tf.data"])
def test_shuffled_batches_reshuffle_each_pass(pipeline, monkeypatch):
    if pipeline == "tf.data":
        monkeypatch.setitem(sys.modules, "grain", None)  # import grain fails
    samples = np.arange(10)
    dataset, steps = shuffled_batches((samples, samples), 4, seed=1, epochs=2)
    batches = [tuple(np.asarray(part) for part in batch) for batch in dataset]
    if pipeline == "grain":
        assert steps == 3 and len(batches) == 6
        passes = [batches[:3], batches[3:]]
    else:
        assert steps is None and len(batches) == 3
        passes = [batches, [tuple(np.asarray(p) for p in b) for b in dataset]]
    orders = []
    for batches in passes:
        assert [len(x) for x, _ in batches] == [4, 4, 2]
        order = np.concatenate([x for x, _ in batches])
        np.testing.assert_array_equal(order, np.concatenate([y for _, y in batches]))
        np.testing.assert_array_equal(np.sort(order), samples)
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], samples)


def test_keras_hub_vit_fit_on_arrays_does_not_shuffle():
    if not np.array_equal(_fit_weights(_vit, True), _fit_weights(_vit, False)):
        pytest.fail(FIXED.format("TrainingState.fit, model_extensions/shuffled_batches.py"))
