"""load_image: Pillow reading, EXIF orientation, mode conversion, errors."""

import io

import numpy as np
import pytest
from PIL import Image

import keras_cait
from tests.support import IMAGES

RGBA = np.array(
    [[[200, 10, 10, 0], [0, 0, 0, 128]], [[5, 6, 7, 255], [90, 90, 90, 255]]], np.uint8
)


def quadrants(height, width):
    """An RGB image with four distinct flat quadrants (orientation visible)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 2] = (255, 0, 0)
    image[: height // 2, width // 2 :] = (0, 255, 0)
    image[height // 2 :, : width // 2] = (0, 0, 255)
    image[height // 2 :, width // 2 :] = (255, 255, 0)
    return image


@pytest.mark.parametrize(
    "name", ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png"]
)
def test_shipped_photos(name):
    image = keras_cait.load_image(str(IMAGES / name))  # a str path as well as Path
    with Image.open(IMAGES / name) as pil:
        expected = np.asarray(pil.convert("RGB"))
        width, height = pil.size
    assert image.dtype == np.uint8 and image.shape == (height, width, 3)
    assert image.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(image, expected)  # greyscale camera.png: 3 equal channels


@pytest.mark.parametrize("orientation, turn, format", [
    (1, lambda a: a, "PNG"),
    (3, lambda a: np.rot90(a, 2), "PNG"),
    (6, lambda a: np.rot90(a, -1), "PNG"),  # displayed rotated 90° clockwise
    (8, lambda a: np.rot90(a, 1), "PNG"),
    (2, lambda a: a[:, ::-1], "PNG"),
    (6, lambda a: np.rot90(a, -1), "JPEG"),  # a phone photo
])
def test_exif_orientation_is_applied(tmp_path, orientation, turn, format):
    original, path = quadrants(32, 64), tmp_path / f"rotated.{format.lower()}"
    pil = Image.fromarray(original)
    exif = pil.getexif()
    exif[0x0112] = orientation  # Orientation tag
    pil.save(path, format=format, exif=exif.tobytes(), quality=95)
    with Image.open(path) as pil:  # stored unrotated, with the tag
        assert pil.size == (64, 32) and pil.getexif()[0x0112] == orientation
    image, expected = keras_cait.load_image(path), turn(original)
    if format == "PNG":
        np.testing.assert_array_equal(image, expected)
    else:
        assert image.shape == expected.shape
        assert np.abs(image.astype(int) - expected.astype(int)).mean() < 4


def _halves(top, bottom, width=16):
    """A (2 * 8, width) image: `top` in the upper half, `bottom` in the lower."""
    return np.concatenate([np.full((8, width, len(top)), top, np.uint8),
                           np.full((8, width, len(bottom)), bottom, np.uint8)])


@pytest.mark.parametrize("name, array, mode, stored, expected, tolerance", [
    ("cmyk.jpg", _halves((255, 0, 0, 0), (0, 255, 0, 0)), "CMYK", "CMYK",  # cyan, magenta
     _halves((0, 255, 255), (255, 0, 255)), 6),
    ("palette.png", np.array([[0, 1], [2, 1]], np.uint8), "P", "P",
     [[[10, 20, 30], [200, 100, 0]], [[0, 0, 255], [200, 100, 0]]], 0),
    ("rgba.png", RGBA, "RGBA", "RGBA", RGBA[..., :3], 0),  # alpha dropped, colours kept
    ("la.png", np.stack([np.full((3, 3), 77), np.zeros((3, 3))], -1).astype(np.uint8), "LA",
     "LA", np.full((3, 3, 3), 77), 0),
    ("deep.png", np.array([[0, 257 * 128], [65535, 257 * 3]], np.uint16), None, "I",
     np.repeat([[[0], [128]], [[255], [3]]], 3, axis=-1), 0),
])
def test_other_modes_become_rgb(tmp_path, name, array, mode, stored, expected, tolerance):
    pil = Image.fromarray(array, mode=mode)
    if mode == "P":
        pil.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    pil.save(tmp_path / name, quality=100)
    with Image.open(tmp_path / name) as saved:
        assert saved.mode.startswith(stored)
    image = keras_cait.load_image(tmp_path / name)
    assert image.dtype == np.uint8 and image.shape == np.shape(expected)
    assert np.abs(image.astype(int) - expected).max() <= tolerance


def test_rgba_png_composited_on_a_background(tmp_path):
    Image.fromarray(RGBA, mode="RGBA").save(tmp_path / "rgba.png")
    on_white = keras_cait.load_image(tmp_path / "rgba.png", background=(255, 255, 255))
    on_white = on_white.astype(int)  # transparent -> white, half transparent black -> mid grey
    np.testing.assert_array_equal(on_white[0, 0], (255, 255, 255))
    assert np.abs(on_white[0, 1] - 127).max() <= 1
    np.testing.assert_array_equal(on_white[1], RGBA[1, :, :3])


@pytest.mark.parametrize("name, content, error, match", [
    ("nope.jpg", None, keras_cait.CaiTFileNotFoundError, "nope.jpg"),
    ("nope.jpg", None, FileNotFoundError, "nope.jpg"),  # the standard type still works
    ("", None, keras_cait.CaiTImageError, "directory"),
    ("notes.jpg", "this is not an image\n", keras_cait.CaiTImageError, "notes.jpg.*not an image"),
])
def test_unreadable_input_is_named(tmp_path, name, content, error, match):
    if content:
        (tmp_path / name).write_text(content)
    with pytest.raises(error, match=match):
        keras_cait.load_image(tmp_path / name)


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, format):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(buffer, format=format)
    path = tmp_path / f"cut.{format.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(keras_cait.CaiTImageError, match="cut.*truncated") as info:
        keras_cait.load_image(path)
    # Pillow's OSError does not leak, not even as the context.
    assert not isinstance(info.value, OSError)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("background", [(255, 255), "white", (0, 0, 300)])
def test_bad_background(background):
    with pytest.raises(keras_cait.CaiTImageError, match="background"):
        keras_cait.load_image(IMAGES / "chelsea.png", background=background)
