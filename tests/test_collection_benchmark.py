"""The collection benchmark's inputs (tools/collection_benchmark.py): JPEG
files of varied sizes and crops, seeded."""

import sys

from PIL import Image

from tests.support import REPO

sys.path.insert(0, str(REPO / "tools"))
import collection_benchmark  # noqa: E402


def test_the_collection_is_jpeg_files_of_256_to_640_pixels(tmp_path):
    paths = collection_benchmark.make_collection(tmp_path / "a", 12)
    again = collection_benchmark.make_collection(tmp_path / "b", 12)
    assert len(paths) == 12
    sizes = []
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert all(256 <= side <= 640 for side in image.size)
            sizes.append(image.size)
    assert len(set(sizes)) > 6  # varied
    assert [open(p, "rb").read() for p in paths] == [open(p, "rb").read() for p in again]
