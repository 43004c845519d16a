"""Intermediate self-attention block outputs (timm's `forward_intermediates`)."""

import keras
import numpy as np
import pytest

import keras_cait
from keras_cait.model_extensions.derived_models import block_indices
from keras_cait_base.errors import CaiTConfigError
from tests.support import TINY_BACKBONE, to_numpy

SHAPE = dict(TINY_BACKBONE, image_shape=(32, 48, 3), num_layers=3)


@pytest.fixture(scope="module")
def backbone():
    keras.utils.set_random_seed(1)
    return keras_cait.CaiTBackbone(**SHAPE, layer_scale_init_value=0.5)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((2, 32, 48, 3)).astype("float32")


def test_token_and_grid_shapes(backbone, images):
    tokens = backbone.get_intermediate_outputs(images, indices=[0, -1])
    assert list(tokens) == ["self_attention_block_0", "self_attention_block_2"]
    for value in tokens.values():
        assert tuple(value.shape) == (2, 4 * 6, 48)
    grids = backbone.get_intermediate_outputs(images, indices=2, output_format="grid")
    assert list(grids) == ["self_attention_block_1", "self_attention_block_2"]
    for value in grids.values():
        assert tuple(value.shape) == (2, 4, 6, 48)
    # The grid is the row-major token sequence, reshaped.
    grid, last = (to_numpy(x["self_attention_block_2"]) for x in (grids, tokens))
    np.testing.assert_array_equal(grid.reshape(2, 24, 48), last)


def test_last_block_through_final_norm_equals_backbone_output(backbone, images):
    patches = to_numpy(backbone(images))[:, 1:]
    normed = backbone.get_intermediate_outputs(images, indices=[-1], norm=True)
    np.testing.assert_allclose(to_numpy(normed["self_attention_block_2"]), patches, atol=1e-5)
    raw = backbone.get_intermediate_outputs(images, indices=[-1])["self_attention_block_2"]
    norm_layer = backbone.get_layer("final_layernorm")
    np.testing.assert_allclose(to_numpy(norm_layer(raw)), patches, atol=1e-5)
    # Without the norm the tokens are different (the test above is meaningful).
    assert not np.allclose(to_numpy(raw), patches)


def test_blocks_differ_and_model_is_cached_and_shares_weights(backbone, images):
    model = backbone.intermediate_model()
    assert backbone.intermediate_model() is model
    assert backbone.intermediate_model(indices=[2, 0, 1]) is model
    outputs = {k: to_numpy(v) for k, v in model(images).items()}
    assert len(outputs) == 3
    assert not np.allclose(outputs["self_attention_block_0"], outputs["self_attention_block_1"])
    assert {id(w) for w in model.weights} <= {id(w) for w in backbone.weights}


def test_backbone_still_saves_after_deriving(backbone, images, tmp_path):
    backbone.intermediate_model(indices=1, output_format="grid", norm=True)
    backbone.attention_model(indices=[0])
    backbone.save(tmp_path / "backbone.keras")
    restored = keras.saving.load_model(tmp_path / "backbone.keras")
    np.testing.assert_allclose(to_numpy(restored(images)), to_numpy(backbone(images)), atol=1e-6)
    got, want = (
        to_numpy(model.get_intermediate_outputs(images, indices=[1])["self_attention_block_1"])
        for model in (restored, backbone)
    )
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_block_selection_follows_timm(backbone):
    assert block_indices(4, None) == (0, 1, 2, 3)
    assert block_indices(4, 1) == (3,)
    assert block_indices(4, 3) == (1, 2, 3)
    assert block_indices(4, [-1, 0, 3]) == (0, 3)
    assert block_indices(4, (), allow_empty=True) == ()
    for bad, message in (
        (0, "between 1 and"),
        (5, "between 1 and"),
        ([4], "out of range"),
        ([-5], "out of range"),
        ([], "empty"),
        (["0"], "must be ints"),
        ([True], "must be ints"),
        (True, "None, an int"),
        (1.5, "None, an int"),
        ("all", "None, an int"),  # one spelling: None is every block
    ):
        with pytest.raises(CaiTConfigError, match=message):
            block_indices(4, bad)
    # The models check the selection with it.
    for method in (backbone.attention_model, backbone.intermediate_model):
        with pytest.raises(CaiTConfigError, match="out of range"):
            method([-4])


def test_bad_output_format_and_one_spelling_of_the_block_selection(backbone):
    with pytest.raises(CaiTConfigError, match="output_format"):
        backbone.intermediate_model(output_format="NCHW")
    for method in (backbone.attention_model, backbone.intermediate_model):
        for old in ("blocks", "self_attention_blocks"):
            with pytest.raises(TypeError, match=old):
                method(**{old: 1})
