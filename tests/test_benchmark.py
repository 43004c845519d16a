"""tools/benchmark.py: FLOPs, share of the GEMM peak, the table, and one quick run (JAX only)."""

import json
import os
import subprocess
import sys

import keras
import pytest

from keras_cait.convert import timm_config
from tests.support import REPO, load_tool

benchmark = load_tool("benchmark")
XXS24 = timm_config.backbone_kwargs_from_timm(
    timm_config.resolve_timm_arguments("cait_xxs24_224", None))
JAX_ONLY = pytest.mark.skipif(keras.backend.backend() != "jax", reason="runs under JAX only")


def test_flops_of_cait_xxs24_224_and_percent_of_peak():
    # ~5.05 GFLOP per 224x224 image; the XLA test below counts independently.
    assert benchmark.flops_per_image(XXS24, 1000) / 1e9 == pytest.approx(5.05, rel=0.005)
    # Each self-attention block adds the same count; the head 2 * dim per class.
    flops = [benchmark.flops_per_image(dict(XXS24, num_layers=n), 1000) for n in (0, 24, 48)]
    assert flops[2] - flops[1] == flops[1] - flops[0] > 0
    assert benchmark.flops_per_image(XXS24, 1001) - benchmark.flops_per_image(XXS24, 1000) == 384
    # 100 img/s of 5 GFLOP each on a 1000 GFLOP/s machine: half the peak.
    assert benchmark.percent_of_peak(100, 5e9, 1000) == pytest.approx(50)
    assert benchmark.percent_of_peak(None, 5e9, 1000) is None
    assert benchmark.percent_of_peak(100, 5e9, None) is None


@JAX_ONLY
def test_flops_agree_with_xla_cost_analysis():
    import jax

    import keras_cait

    config = dict(XXS24, image_shape=(64, 64, 3), num_layers=2)
    model = keras_cait.CaiTImageClassifier(keras_cait.CaiTBackbone(**config), num_classes=10)
    variables = ([v.value for v in model.trainable_variables],
                 [v.value for v in model.non_trainable_variables])
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), "float32")
    forward = jax.jit(lambda variables, images: model.stateless_call(*variables, images)[0])
    cost = forward.lower(variables, images).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # XLA also counts norms, softmax and GELU, which the tool leaves out.
    assert benchmark.flops_per_image(config, 10) == pytest.approx(cost["flops"], rel=0.05)


def _round(speeds, folder, rss):
    """One round: timm and keras jax at batches 1 and 32, a folder row at 32."""
    def result(speed_1, speed_32, logits, rss=500.0):
        return {"batches": {"1": {"images_per_s": speed_1, "first_call_s": 2.0},
                            "32": {"images_per_s": speed_32, "first_call_s": 4.0}},
                "logits": logits, "peak_rss_mb": rss}
    return {"timm": result(*speeds[:2], [[1.0, 2.0]]),
            "keras jax": result(*speeds[2:], [[1.0, 2.5]], rss),
            "folder jax": {"batches": {"32": dict(zip(("images_per_s", "first_call_s"), folder))},
                           "peak_rss_mb": 800}}


def test_summary_takes_ratios_within_each_round_and_medians_over_rounds():
    rounds = [_round((10, 20, 20, 20), (5, 9), 900), _round((20, 10, 10, 20), (7, 11), 1100),
              _round((30, 40, 60, 20), (6, 10), 1000)]
    rounds[0]["onnxruntime"] = {"error": "failed"}
    table = {(r["row"], r["batch"]): r for r in
             benchmark.summarize(rounds, "timm", 1e9, peak_gflops=100)}
    assert set(table) == {("timm", 1), ("timm", 32), ("keras jax", 1), ("keras jax", 32),
                          ("folder jax", 32)}  # the failed row is left out
    keras_1 = table[("keras jax", 1)]
    # Round ratios 2, 0.5, 2: median 2 (the ratio of the medians would be 1).
    assert keras_1["ratio"] == pytest.approx(2.0)
    assert table[("keras jax", 32)]["ratio"] == pytest.approx(1.0)  # 1, 2, 0.5
    assert keras_1["images_per_s"] == 20 and keras_1["percent_of_peak"] == pytest.approx(20)
    assert keras_1["peak_rss_mb"] == 1000 and keras_1["first_call_s"] == 2.0
    assert keras_1["logit_difference"] == pytest.approx(0.5)
    assert table[("timm", 1)]["ratio"] == 1 and table[("timm", 1)]["logit_difference"] == 0
    assert table[("folder jax", 32)]["logit_difference"] is None
    assert table[("folder jax", 32)]["ratio"] == pytest.approx(0.25)  # 0.25, 0.7, 0.15

    lines = benchmark.markdown_table(list(table.values()), "timm").splitlines()
    assert lines[0].startswith("| row | batch | img/s | × timm | % of peak |")
    assert len(lines) == 2 + 5
    assert "| keras jax | 1 | 20.0 | 2.00 | 20.0 | 2.00 | 1,000 | 5.0e-01 |" in lines
    assert "| folder jax | 32 | 6.0 | 0.25 | 6.0 | 10.00 | 800 | – |" in lines


def test_bad_arguments_are_named(tmp_path):
    for arguments, expected in (
        (["--backends", "cntk"], "--backends/--rows/--export-backend: unknown ['cntk']"),
        (["--export-backend", "cntk"], "unknown ['cntk']"),
        (["--backends", ""], "--backends: none given"),
        (["--rounds", "0"], "--rounds: expected at least 1, got 0"),
        (["--rows", "keras,pooling"], "unknown ['pooling']"),
        (["--images", str(tmp_path / "missing")], "--images:"),
        (["--json-out", str(tmp_path / "no" / "b.json")], "--json-out: its folder"),
        (["--model", "cait_huge"], "--model: 'cait_huge' is not one of"),
        (["--baseline", str(tmp_path)], "--baseline: .* is not a keras-cait source tree"),
    ):
        with pytest.raises(SystemExit, match=expected.replace("[", r"\[")):
            benchmark.main(arguments)


@JAX_ONLY  # a fresh process per row, each naming its own backend: one run covers them all
def test_quick_run_measures_every_row(tmp_path):
    process = subprocess.run(
        [sys.executable, str(REPO / "tools" / "benchmark.py"), "--quick", "--backends", "jax",
         "--baseline", str(REPO), "--json-out", str(tmp_path / "b.json"), "--markdown-out", str(tmp_path / "b.md")],
        capture_output=True, text=True, timeout=900, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads((tmp_path / "b.json").read_text())
    rows = {(r["row"], r["batch"]): r for r in report["table"]}
    folders = {"folder keras jax", "folder keras jax keep-aspect", "folder onnxruntime",
               "folder openvino f32", "folder openvino bf16"}
    expected = {"keras jax", "keras jax baseline", "int8 jax", "onnxruntime", "openvino f32", "openvino bf16", *folders}
    assert expected <= {name for name, _ in rows}, report["rounds"][0]
    assert report["gemm_peak_gflops"] > 1 and report["machine"]["cpu"]
    markdown = (tmp_path / "b.md").read_text()
    assert "| command | img/s | × folder keras jax | whole command img/s |" in markdown
    assert "GEMM peak" in markdown and "| onnxruntime | 32 |" in markdown
    for name in folders:  # the command line's own table, every folder row
        assert f"| {name} | " in markdown.split("| command |")[1], name
    for key, row in rows.items():  # no timing asserted, only that every figure was taken
        assert row["peak_rss_mb"] > 50 and row["first_call_s"] > 0, key
        if not key[0].startswith("folder "):  # 4 tiny images: the time of their copies is noise
            assert row["images_per_s"] > 0 and row["percent_of_peak"] > 0, key
    # Same weights: float32 rows agree with the reference (timm, else Keras on JAX).
    assert report["reference"] in ("timm", "keras jax")
    assert "| backend | batch | img/s | baseline img/s | × baseline |" in markdown
    assert "| jax | 32 | " in markdown.split("× baseline |")[1]
    for name in ("keras jax", "keras jax baseline", "onnxruntime", "openvino f32"):
        assert rows[(name, 1)]["logit_difference"] < 1e-4, name
    for name in ("int8 jax", "openvino bf16"):  # only roughly
        assert 0 < rows[(name, 1)]["logit_difference"] < 0.5, name
    for name in folders:  # the main job's path, from the saved preset; engines from the cache
        assert (name, 1) not in rows and rows[(name, 32)]["logit_difference"] is None
