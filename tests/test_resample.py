"""Position-embedding resampling against timm's `resample_abs_pos_embed`."""

import numpy as np
import pytest

from keras_cait.convert.resample import (
    resample_position_embedding,
    resize_weights,
)
from keras_cait.errors import CaiTConfigError, CaiTWeightsError
from tests.support import TIMM

CASES = {
    "14_to_24": ((14, 14), (24, 24)),
    "14_to_10": ((14, 14), (10, 10)),
    "24_to_14": ((24, 24), (14, 14)),
    "14_to_16x20": ((14, 14), (16, 20)),
}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(TIMM / "pos_embed_resample.npz"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_timm(reference, case):
    old_grid, new_grid = CASES[case]
    out = resample_position_embedding(reference[f"{case}_in"], old_grid, new_grid)
    expected = reference[f"{case}_out"]
    assert out.dtype == np.float32
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_plain_bicubic_coefficient_would_not_match(reference):
    # Guards the kernel choice: with PyTorch's non-antialiased coefficient
    # (-0.75) the same resampling misses timm by far more than 1e-5.
    grid = reference["14_to_24_in"][0].reshape(14, 14, -1)
    for a, close in ((-0.5, True), (-0.75, False)):
        weights = resize_weights(14, 24, a)
        out = np.einsum("ri,icd->rcd", weights, grid)
        out = np.einsum("cj,rjd->rcd", weights, out).reshape(1, 576, -1)
        error = np.abs(out - reference["14_to_24_out"]).max()
        assert (error < 1e-5) == close, (a, error)


def test_weight_rows_are_normalised_and_local():
    for old, new in ((14, 24), (24, 14), (7, 3), (5, 5)):
        weights = resize_weights(old, new)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    # Downsampling by 2 widens the support to 4 input pixels on each side.
    assert np.count_nonzero(resize_weights(24, 12)[6]) == 8
    np.testing.assert_allclose(resize_weights(9, 9), np.eye(9), atol=1e-12)


def test_same_grid_is_identity_and_accepts_2d():
    rng = np.random.default_rng(0)
    pos = rng.standard_normal((1, 12, 8)).astype(np.float32)
    np.testing.assert_array_equal(resample_position_embedding(pos, (3, 4), (3, 4)), pos)
    out = resample_position_embedding(pos[0], (3, 4), (6, 2))
    assert out.shape == (1, 12, 8)


def test_constant_embedding_stays_constant():
    pos = np.full((1, 20, 3), 0.25, np.float32)
    out = resample_position_embedding(pos, (4, 5), (7, 3))
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_bad_inputs():
    pos = np.zeros((1, 16, 4), np.float32)
    with pytest.raises(CaiTWeightsError, match="16 tokens.*needs 9"):
        resample_position_embedding(pos, (3, 3), (4, 4))
    with pytest.raises(CaiTWeightsError, match=r"\(1, num_patches, dim\)"):
        resample_position_embedding(np.zeros((2, 16, 4)), (4, 4), (2, 2))
    with pytest.raises(CaiTConfigError, match="new_grid"):
        resample_position_embedding(pos, (4, 4), (0, 3))
    with pytest.raises(CaiTConfigError, match="old_grid"):
        resample_position_embedding(pos, 16, (2, 2))
    bad = pos.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(CaiTWeightsError, match="non-finite"):
        resample_position_embedding(bad, (4, 4), (2, 2))
