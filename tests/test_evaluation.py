"""`keras-cait evaluate` / `evaluate_folder` on an ImageFolder layout whose answer is known."""

import csv
import json
import os
import shutil
import sys

import numpy as np
import pytest
from keras_hub.src.utils.imagenet.imagenet_utils import IMAGENET_NAMES
from matplotlib import colormaps
from PIL import Image

import keras_cait
from keras_cait.explain.visualization import CONFUSION_COLORMAP
from keras_cait.inference.evaluation import class_indices, read_label_map
from keras_cait_base.errors import CaiTConfigError
from keras_cait_cli import main as cli
from tests.support import eager_predictions, make_photos

MARGIN = 2e-3  # probability gaps kept clear of the pipeline's rounding
WANTED = {1: 5, 3: 3, 8: 3}  # images wanted per rank of their label


def _labelled_folder(classifier, root):
    """Labels from the model's own ranking: 5 top-1, 3 top-5 only, 3 neither; plus a non-image."""
    pool = make_photos(root / "pool", 30, seed=1, size=(48, 40))  # one shape: fast
    scores, _ = eager_predictions(classifier, pool)
    chosen = {1: [], 3: [], 8: []}  # rank of the label -> [(path, label, top-1)]
    for path, row in zip(pool, scores):
        ranked = np.argsort(-row)
        if row[ranked[0]] - row[ranked[1]] < MARGIN:  # a clear top-1 only
            continue
        clear = {1: True, 3: row[ranked[2]] - row[ranked[5]] >= MARGIN,  # clearly in the top 5
                 8: row[ranked[4]] - row[ranked[7]] >= MARGIN}  # clearly outside it
        rank = next((r for r in (1, 3, 8) if len(chosen[r]) < WANTED[r] and clear[r]), None)
        if rank:
            chosen[rank].append((path, int(ranked[rank - 1]), int(ranked[0])))
    assert {r: len(v) for r, v in chosen.items()} == WANTED, "too few clear images"
    images = [item for items in chosen.values() for item in items]
    for index, (path, label, _) in enumerate(images):
        folder = root / "val" / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / f"{index:02d}{os.path.splitext(path)[1]}")
    bad_class = images[0][1]
    bad = root / "val" / f"c{bad_class}" / "bad.jpg"
    bad.write_text("not an image")

    classes = sorted({label for _, label, _ in images})
    other = {top1 for _, _, top1 in images} - set(classes)
    columns = [f"c{c}" for c in classes] + (["other"] if other else [])
    counts = np.zeros((len(classes), len(columns)), int)
    for _, label, top1 in images:
        counts[classes.index(label), classes.index(top1) if top1 in classes else len(classes)] += 1

    def count(c, group):
        return sum(label == c for _, label, _ in group)

    per_class = {f"c{c}": [count(c, images) + (c == bad_class), int(c == bad_class),
                           count(c, chosen[1]), count(c, chosen[1] + chosen[3])] for c in classes}
    matrix = {"rows": [f"c{c}" for c in classes], "columns": columns, "counts": counts.tolist()}
    return {"matrix": matrix, "per_class": per_class, "bad": str(bad)}


def test_evaluate_a_folder_whose_answer_is_known(
    tiny_classifier, tiny_preset, tmp_path, capfd, backend
):
    expected = _labelled_folder(tiny_classifier, tmp_path)
    label_map = tmp_path / "classes.txt"  # timm's format: line k names class k
    label_map.write_text("".join(f"c{k}\n" for k in range(10)))
    output = tmp_path / "eval"
    status = cli.main(["evaluate", str(tmp_path / "val"), "--preset", tiny_preset, "--output",
                       str(output), "--label-map", str(label_map), "--batch-size", "4",
                       "--backend", backend])
    out, err = capfd.readouterr()
    assert status == 3, err  # one image failed
    assert "1 of 12 inputs failed" in err
    lines = out.splitlines()
    assert lines[:3] == ["top-1   45.455%  (5 of 11)", "top-5   72.727%  (8 of 11)",
                         "images  12 (1 failed)"]
    assert lines[3].startswith("speed   ") and lines[3].endswith(" images/s")

    summary = json.loads((output / "summary.json").read_text())
    assert summary["top1"] == pytest.approx(100 * 5 / 11)
    assert summary["top5"] == pytest.approx(100 * 8 / 11)
    assert (summary["images"], summary["evaluated"], summary["failed"]) == (12, 11, 1)
    assert summary["num_classes"] == 10 and summary["backend"] == backend
    assert [f["image"] for f in summary["failures"]] == [expected["bad"]]
    assert summary["confusion_matrix"] == expected["matrix"]
    assert sorted(summary["files"]) == sorted(
        str(output / name) for name in ("summary.json", "per_class.csv", "confusion_matrix.png"))
    with open(output / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = ("images", "failed", "top1_correct", "top5_correct")
    assert {row["folder"]: [int(row[k]) for k in keys] for row in rows} == expected["per_class"]
    assert [int(row["class_id"]) for row in rows] == sorted(
        int(name[1:]) for name in expected["per_class"])

    # The picture decodes; each cell has the colour of its count.
    with Image.open(output / "confusion_matrix.png") as png:
        png.load()
        assert png.format == "PNG" and min(png.size) > 200
        assert json.loads(png.text["confusion_matrix"]) == expected["matrix"]
        picture = np.asarray(png.convert("RGB")).astype(int)
    counts = np.array(expected["matrix"]["counts"])
    colormap = colormaps[CONFUSION_COLORMAP]
    palette = {value: np.array(colormap(value / counts.max(), bytes=True)[:3])
               for value in np.unique(counts)}
    cells = np.zeros(picture.shape[:2], bool)
    for colour in palette.values():
        cells |= np.abs(picture - colour).max(axis=-1) <= 1
    ys, xs = np.nonzero(cells)  # the matrix: the box of the cell colours
    height = (ys.max() + 1 - ys.min()) / counts.shape[0]
    width = (xs.max() + 1 - xs.min()) / counts.shape[1]
    for (row, column), value in np.ndenumerate(counts):
        y, x = int(ys.min() + (row + 0.2) * height), int(xs.min() + (column + 0.2) * width)
        assert np.abs(picture[y, x] - palette[value]).max() <= 1, (row, column, value)


def test_class_folders_map_to_classes(tmp_path):
    wnids = [IMAGENET_NAMES[index][0] for index in (0, 281, 999)]
    assert class_indices(wnids, 1000) == dict(zip(wnids, (0, 281, 999)))
    assert class_indices(["0", "7"], 10) == {"0": 0, "7": 7}
    mapping = tmp_path / "map.json"
    mapping.write_text('{"cats": 3, "dogs": 5}')
    assert read_label_map(mapping) == {"cats": 3, "dogs": 5}
    assert class_indices(["dogs"], 10, mapping) == {"dogs": 5}
    for arguments, match in (
        ((wnids, 10), "model has 10 classes"),
        ((["n99999999"], 1000), "not ImageNet-1k WordNet ids"),
        ((["cats", "dogs"], 10), "--label-map"),
        ((["3", "12"], 10), "outside the model's 10 classes"),
        ((["birds", "cats"], 10, mapping), r"no class for the folders \['birds'\]"),
        ((["a", "b"], 10, {"a": 1, "b": 1}), "map to the same class"),
    ):
        with pytest.raises(CaiTConfigError, match=match):
            class_indices(*arguments)
    mapping.write_text('{"cats": "3"}')
    with pytest.raises(CaiTConfigError, match="must be integers"):
        read_label_map(mapping)
    names = tmp_path / "classes.txt"
    names.write_text("cats\n\ndogs\n")
    assert read_label_map(names) == {"cats": 0, "dogs": 2}


def test_evaluate_without_matplotlib_writes_the_rest(tiny_classifier, tmp_path, monkeypatch):
    make_photos(tmp_path / "val" / "2", 2)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.warns(UserWarning, match="matplotlib"):
        summary = keras_cait.evaluate_folder(
            tmp_path / "val", tiny_classifier, output_dir=tmp_path / "eval")
    assert sorted(os.listdir(tmp_path / "eval")) == ["per_class.csv", "summary.json"]
    assert summary["images"] == 2 and summary["confusion_matrix"]["rows"] == ["2"]
