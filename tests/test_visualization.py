"""Attention pictures: rendered PNGs have the right size, panels and content."""

import sys
from unittest import mock

import numpy as np
import pytest
from PIL import Image

import keras_cait
from keras_cait.explain import visualization
from tests.support import IMAGES, REPO

pytest.importorskip("matplotlib")

GRID = (14, 14)


def _attention(heads=4, seed=0):
    """A class-attention map (heads, 1, 1 + 196) with a bright patch per head."""
    logits = np.random.default_rng(seed).normal(size=(heads, 1, 1 + GRID[0] * GRID[1])).astype("float32")
    for head in range(heads):
        logits[head, 0, 1 + 30 * head + 5] += 8.0
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def _png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def _assert_nontrivial(pixels, min_colours=500):
    assert pixels.std() > 20.0  # not a blank or single-colour picture
    assert len(np.unique(pixels.reshape(-1, 3).astype(np.uint8), axis=0)) > min_colours


def test_head_figure_has_one_panel_per_head(tmp_path):
    figure = visualization.plot_attention_heads(_attention(heads=6), GRID, title="class attention 0",
                                                columns=3, panel_size=2.0)
    drawn = [ax for ax in figure.axes if ax.images]
    assert [ax.get_title() for ax in drawn] == [f"head {h}" for h in range(6)]
    # Each panel shows its own head's grid: the bright patch of head h.
    for head, ax in enumerate(drawn):
        shown = np.asarray(ax.images[0].get_array())
        assert shown.shape == GRID
        assert np.unravel_index(shown.argmax(), GRID) == divmod(30 * head + 5, 14)
    pixels = _png(visualization.save_figure(figure, tmp_path / "sub" / "heads.png", dpi=50))
    assert pixels.shape[:2] == (2 * 2 * 50 + 20, 3 * 2 * 50)  # rows x columns
    _assert_nontrivial(pixels, min_colours=100)  # colormapped grids, text


def test_saliency_overlay_on_the_original_photo(tmp_path):
    photo = keras_cait.load_image(IMAGES / "chelsea.png")
    assert photo.shape == (300, 451, 3)
    figure = visualization.plot_saliency(photo, _attention(), GRID, crop_pct=1.0)
    image_ax, overlay_ax = figure.axes
    np.testing.assert_allclose(image_ax.images[0].get_array(), photo / 255.0, atol=1e-6)
    overlay = overlay_ax.images[1].get_array()
    # The map covers the centred 300 x 300 square the converter keeps.
    assert visualization.crop_box(photo.shape, GRID, 1.0) == (0, 76, 300, 300)
    assert overlay.mask[:, :76].all() and overlay.mask[:, 376:].all()
    assert not overlay.mask[:, 76:376].any()
    assert overlay.min() == 0.0 and overlay.max() == 1.0
    pixels = _png(visualization.save_figure(figure, tmp_path / "saliency.png", dpi=50))
    assert pixels.shape[0] == 200 and pixels.shape[1] > 2 * 200
    _assert_nontrivial(pixels)


def test_saved_attention_figures_for_each_block(tmp_path):
    maps = {"class_attention_0": _attention(seed=1), "class_attention_1": _attention(seed=2),
            "predictions": np.zeros(10)}
    picture = np.random.default_rng(3).integers(0, 255, (224, 224, 3), np.uint8)
    paths = visualization.save_attention_figures(maps, tmp_path, "photo", picture, GRID,
                                                 title="photo.jpg", dpi=40)
    names = [p.rsplit("/", 1)[1] for p in paths]
    assert names == ["photo_class_attention_0.png", "photo_class_attention_1.png", "photo_saliency.png"]
    for path in paths:
        _assert_nontrivial(_png(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary files left


def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch):
    figure = visualization.plot_attention_heads(_attention(), GRID)

    monkeypatch.setattr(figure, "savefig", mock.Mock(side_effect=RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        visualization.save_figure(figure, tmp_path / "heads.png")
    assert list(tmp_path.iterdir()) == []


def test_display_image_undoes_the_converter_normalisation():
    photo = keras_cait.load_image(IMAGES / "coffee.png")
    converter = keras_cait.CaiTImageConverter(image_size=32, interpolation="nearest")
    picture = visualization.display_image(np.asarray(converter(photo)), converter.mean, converter.std)
    assert picture.shape == (32, 32, 3)
    assert picture.min() >= 0.0 and picture.max() <= 1.0
    # Nearest resizing keeps original pixel values: they come back exactly.
    assert np.isin(np.round(picture * 255).astype(np.uint8), photo).all()
    np.testing.assert_allclose(visualization.display_image(photo), photo / 255.0)
    grey = visualization.display_image(np.full((4, 5), 255, np.uint8))
    assert grey.shape == (4, 5, 3) and (grey == 1.0).all()


@pytest.mark.parametrize("call, message", [
    (lambda: visualization.plot_attention_heads(_attention()[None], GRID), "index the batch"),
    (lambda: visualization.plot_saliency(np.zeros((8, 8, 3)), _attention()), "grid_size"),
    (lambda: visualization.display_image(np.zeros((8, 8, 2))), "height, width, 3"),
    (lambda: visualization.save_attention_figures({}, ".", "x", None, GRID), "class_attention"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(keras_cait.CaiTConfigError, match=message):
        call()


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(keras_cait.CaiTConfigError, match=r"pip install matplotlib .*\.\[viz\]"):
        visualization.plot_attention_heads(_attention(), GRID)


def test_example_script_walks_the_tutorial_path(tiny_preset, tmp_path, monkeypatch, capsys):
    import runpy
    output = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["attention_maps.py", str(IMAGES / "chelsea.png"), "--preset",
                                      tiny_preset, "--output", str(output)])
    runpy.run_path(str(REPO / "examples" / "attention_maps.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "class_attention_0: (1, 4, 1, 17)" in printed
    assert "talking_head_attention_1: (1, 4, 16, 16)" in printed
    assert "Top-5:" in printed and "Most attended patch" in printed
    # The pictures' content: test_saved_attention_figures_for_each_block.
    assert sorted(p.name for p in output.iterdir()) == [
        "chelsea_class_attention_0.png", "chelsea_class_attention_1.png", "chelsea_saliency.png"]
