"""load_image: Pillow reading, EXIF orientation, mode conversion, errors."""

import io

import numpy as np
import pytest
from PIL import Image

import keras_cait
from tests.support import IMAGES


def quadrants(height=20, width=40):
    """An RGB image with four distinct flat quadrants (orientation visible)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 2] = (255, 0, 0)
    image[: height // 2, width // 2 :] = (0, 255, 0)
    image[height // 2 :, : width // 2] = (0, 0, 255)
    image[height // 2 :, width // 2 :] = (255, 255, 0)
    return image


def with_orientation(array, path, orientation, format):
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation  # Orientation tag
    image.save(path, format=format, exif=exif.tobytes(), **(
        {"quality": 95} if format == "JPEG" else {}
    ))


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png"])
def test_shipped_photos(name):
    image = keras_cait.load_image(IMAGES / name)
    with Image.open(IMAGES / name) as pil:
        expected = np.asarray(pil.convert("RGB"))
        width, height = pil.size
    assert image.dtype == np.uint8 and image.shape == (height, width, 3)
    assert image.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(image, expected)


def test_greyscale_photo_becomes_three_equal_channels():
    image = keras_cait.load_image(str(IMAGES / "camera.png"))
    assert image.shape == (512, 512, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert image.std() > 10  # a photo, not a flat image


@pytest.mark.parametrize(
    "orientation, turn",
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # displayed rotated 90° clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    original = quadrants()
    path = tmp_path / "rotated.png"
    with_orientation(original, path, orientation, "PNG")
    with Image.open(path) as pil:  # stored unrotated, with the tag
        assert pil.size == (40, 20) and pil.getexif()[0x0112] == orientation
    np.testing.assert_array_equal(keras_cait.load_image(path), turn(original))


def test_exif_orientation_jpeg(tmp_path):
    path = tmp_path / "phone.jpg"
    original = quadrants(32, 64)
    with_orientation(original, path, 6, "JPEG")
    image = keras_cait.load_image(path)
    assert image.shape == (64, 32, 3)
    expected = np.rot90(original, -1).astype(int)
    assert np.abs(image.astype(int) - expected).mean() < 4


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:8, :, 0] = 255  # cyan
    cmyk[8:, :, 1] = 255  # magenta
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=100)
    with Image.open(path) as pil:
        assert pil.mode == "CMYK"
    image = keras_cait.load_image(path).astype(int)
    assert image.shape == (16, 16, 3)
    assert np.abs(image[:8] - (0, 255, 255)).max() <= 6
    assert np.abs(image[8:] - (255, 0, 255)).max() <= 6


def test_palette_png(tmp_path):
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    palette = [10, 20, 30, 200, 100, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    pil = Image.fromarray(indices, mode="P")
    pil.putpalette(palette)
    path = tmp_path / "palette.png"
    pil.save(path)
    image = keras_cait.load_image(path)
    expected = np.array(
        [[[10, 20, 30], [200, 100, 0]], [[0, 0, 255], [200, 100, 0]]], np.uint8
    )
    np.testing.assert_array_equal(image, expected)


def test_rgba_png_alpha_dropped_or_composited(tmp_path):
    rgba = np.array(
        [[[200, 10, 10, 0], [0, 0, 0, 128]], [[5, 6, 7, 255], [90, 90, 90, 255]]],
        np.uint8,
    )
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    # Default: alpha dropped, the stored colours kept (Image.convert("RGB")).
    np.testing.assert_array_equal(keras_cait.load_image(path), rgba[..., :3])
    # On white: transparent -> white, half transparent black -> mid grey.
    on_white = keras_cait.load_image(path, background=(255, 255, 255)).astype(int)
    np.testing.assert_array_equal(on_white[0, 0], (255, 255, 255))
    assert np.abs(on_white[0, 1] - 127).max() <= 1
    np.testing.assert_array_equal(on_white[1], rgba[1, :, :3])


def test_greyscale_alpha_and_16_bit(tmp_path):
    la = np.stack([np.full((3, 3), 77, np.uint8), np.zeros((3, 3), np.uint8)], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(keras_cait.load_image(tmp_path / "la.png"), 77)

    deep = np.array([[0, 257 * 128], [65535, 257 * 3]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as pil:
        assert pil.mode.startswith("I")
    image = keras_cait.load_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(image[..., 0], [[0, 128], [255, 3]])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


# --- errors ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(keras_cait.CaiTFileNotFoundError, match="nope.jpg"):
        keras_cait.load_image(path)
    with pytest.raises(FileNotFoundError):  # the standard type still works
        keras_cait.load_image(path)


def test_directory(tmp_path):
    with pytest.raises(keras_cait.CaiTImageError, match="directory"):
        keras_cait.load_image(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(keras_cait.CaiTImageError, match="notes.jpg.*not an image"):
        keras_cait.load_image(path)


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, format):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(buffer, format=format)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{format.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(keras_cait.CaiTImageError, match="cut.*truncated") as info:
        keras_cait.load_image(path)
    # Pillow's OSError does not leak, not even as the context.
    assert not isinstance(info.value, OSError)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("background", [(255, 255), "white", (0, 0, 300)])
def test_bad_background(tmp_path, background):
    with pytest.raises(keras_cait.CaiTImageError, match="background"):
        keras_cait.load_image(IMAGES / "chelsea.png", background=background)
