"""Collection inputs (files, folders, globs, @lists) and prediction records (JSONL, CSV, resume)."""

import json
import os

import pytest

from keras_cait_base.errors import CaiTConfigError, CaiTFileNotFoundError
from keras_cait_base.io.image_paths import expand_image_paths
from keras_cait_base.io.records import RecordWriter, read_records


def _touch(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x")


def test_inputs_expand_in_order_each_file_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("b/z.png", "b/a/y.JPG", "b/a.jpg", "b/notes.txt", "b/.hidden/x.png",
                 "c/1.webp", "c/2.png", "solo.txt", "list/k.png"):
        _touch(name)
    os.symlink("nowhere.jpg", "b/broken.jpg")  # a broken link with an image name
    os.link("c/2.png", "c/3.png")  # a hard link: a file of its own
    with open("more.txt", "w") as f:
        f.write("list/k.png\n\n  c/*.png  \nb/z.png\n")

    paths = expand_image_paths(
        ["b", "solo.txt", "c/*.png", "missing.jpg", "@more.txt", "./b/z.png", "nomatch*.png"])
    assert paths == [
        # a folder: image extensions only (any case), recursively, sorted by
        # relative path, folder by folder; broken links count
        "b/.hidden/x.png", "b/a/y.JPG", "b/a.jpg", "b/broken.jpg", "b/z.png",
        "solo.txt",  # named: taken whatever its extension
        "c/2.png", "c/3.png",  # a glob, sorted
        "missing.jpg",  # missing: an input that fails later
        "list/k.png",  # the @list: its lines, expanded; c/*.png and b/z.png seen
        "nomatch*.png",  # a pattern without matches: an input that fails
    ]
    with pytest.raises(CaiTFileNotFoundError, match="'@absent.txt' not found"):
        expand_image_paths(["@absent.txt"])
    os.mkdir("empty")
    with pytest.raises(CaiTFileNotFoundError, match="No image files found .*'empty'"):
        expand_image_paths(["empty"])
    # A folder link cycle is walked once.
    _touch("d/a.png")
    os.symlink(tmp_path / "d", "d/loop")
    assert expand_image_paths([tmp_path / "d"]) == [str(tmp_path / "d" / "a.png")]


RECORDS = [
    {"image": "photos/ünïcode cat.jpg",
     "predictions": [{"label": "tabby", "class_id": 281, "probability": 0.6102},
                     {"label": None, "class_id": 3, "probability": 1 / 3}],
     "embedding": [0.1, -2.5e-08, 3.0]},
    {"image": "photos/bad,name\".jpg", "error": "Cannot read image: truncated"},
    {"image": "x.png",
     "predictions": [{"label": "a, b", "class_id": 0, "probability": 1e-30},
                     {"label": "c", "class_id": 7, "probability": 0.0}],
     "embedding": [1.0, 2.0, 3.0]},
]
IMAGES = [record["image"] for record in RECORDS]


@pytest.mark.parametrize("extension", [".jsonl", ".csv"])
def test_records_round_trip_and_resume_cuts_a_partial_line(tmp_path, extension):
    path = tmp_path / f"results{extension}"
    with RecordWriter(path, top=2, embeddings=True) as writer:
        writer.write(RECORDS[:2])
        writer.write(RECORDS[2:])
    assert read_records(path) == RECORDS  # both formats read back exactly
    data = path.read_bytes()
    if extension == ".jsonl":
        assert [json.loads(line) for line in data.splitlines()] == RECORDS
    else:
        assert data.splitlines()[0] == (b"image,error,class_id_1,label_1,probability_1,"
                                        b"class_id_2,label_2,probability_2,embedding")

    with pytest.raises(CaiTConfigError, match="already exists: pass --resume"):
        RecordWriter(path, top=2, embeddings=True)
    # An interrupted writer: the last line is cut in half.
    path.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 1 + 9])
    assert read_records(path) == RECORDS[:2]
    with RecordWriter(path, 2, True, resume=True, expected_images=IMAGES) as writer:
        assert (writer.kept, writer.kept_failures) == (2, 1)
        writer.write(RECORDS[2:])
    assert path.read_bytes() == data  # the half line replaced, nothing doubled

    for top, embeddings, images, match in (
        (2, True, ["other.jpg", *IMAGES[1:]], "record 1 is for .*expected 'other.jpg'"),
        (2, True, IMAGES[:2], "expected no more inputs"),
        (3, True, IMAGES, "other options"),
        (2, False, IMAGES, "other options"),
    ):
        with pytest.raises(CaiTConfigError, match=match):
            RecordWriter(path, top, embeddings, resume=True, expected_images=images)
    assert path.read_bytes() == data  # a refused resume changes nothing


def test_bad_records_files_are_clear_errors(tmp_path):
    with pytest.raises(CaiTConfigError, match=r"expected a \.jsonl or \.csv"):
        RecordWriter(tmp_path / "results.json", top=1, embeddings=False)
    for name, text, match in (("broken.jsonl", '{"image": "a.jpg", "error": "x"}\nnot json\n',
                               "line 2: not a JSON record"),
                              ("table.csv", "name,score\na,1\n", "not a records CSV")):
        (tmp_path / name).write_text(text)
        with pytest.raises(CaiTConfigError, match=match):
            read_records(tmp_path / name)
    with pytest.raises(CaiTFileNotFoundError):
        read_records(tmp_path / "absent.jsonl")
    # Resuming a file that holds only a partial CSV header starts it again.
    partial = tmp_path / "partial.csv"
    partial.write_text("image,err")
    with RecordWriter(partial, 1, False, resume=True, expected_images=["a"]) as writer:
        assert writer.kept == 0
        writer.write([{"image": "a", "error": "e"}])
    assert read_records(partial) == [{"image": "a", "error": "e"}]
