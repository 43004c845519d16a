"""tools/benchmark.py: runs end to end in quick mode (so it cannot rot), and
its FLOP count is right (shapes and timm keywords come from the package).

No timing is asserted: only that every measurement was taken and is sane.
"""

import json
import math
import subprocess
import sys

import keras
import pytest

from tests.support import REPO, load_tool

BENCHMARK = REPO / "tools" / "benchmark.py"

benchmark = load_tool("benchmark")


def test_flops_of_cait_xxs24_224():
    # The issue gives 5.05 GFLOP per 224x224 image for cait_xxs24_224.
    _, kwargs, num_classes, _ = benchmark.resolve_model("cait_xxs24_224", None)
    assert benchmark.flops_per_image(kwargs, num_classes) / 1e9 == pytest.approx(
        5.05, abs=0.01
    )
    # Doubling the self-attention depth adds exactly one more stack of blocks.
    deeper = dict(kwargs, num_layers=48)
    base = dict(kwargs, num_layers=0)
    assert benchmark.flops_per_image(deeper, 1000) - benchmark.flops_per_image(
        base, 1000
    ) == 2 * (
        benchmark.flops_per_image(kwargs, 1000) - benchmark.flops_per_image(base, 1000)
    )


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit, match="--model"):
        benchmark.resolve_model("resnet50", None)
    with pytest.raises(SystemExit, match="--config"):
        benchmark.resolve_model(None, "{not json")


def test_quick_benchmark_end_to_end(tmp_path):
    backend = keras.backend.backend()
    json_out = tmp_path / "results.json"
    markdown_out = tmp_path / "results.md"
    process = subprocess.run(
        [
            sys.executable, str(BENCHMARK), "--quick",
            "--backends", backend, "--conversion-backends", backend,
            "--json-out", str(json_out), "--markdown-out", str(markdown_out),
        ],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    results = json.loads(json_out.read_text())

    keras_result = results["keras"][backend]
    assert keras_result["backend"] == backend
    for batch in ("1", "2"):
        entry = keras_result["inference"][batch]
        assert len(entry["times_s"]) == results["setup"]["repeats"]
        assert math.isfinite(entry["images_per_s"]) and entry["images_per_s"] > 0
        assert entry["first_call_s"] > 0
    assert keras_result["training"]["batch_size"] == 2
    assert keras_result["training"]["images_per_s"] > 0
    assert keras_result["peak_rss_mb"] >= keras_result["peak_rss_inference_mb"] > 0
    assert keras_result["save_load"]["outputs_match"] is True
    assert keras_result["save_load"]["file_mb"] > 0
    assert results["matmul_peak_gflops"] > 0

    # timm is either measured or reported as missing, with the reason.
    timm = results["timm"]
    assert timm["available"] or "timm" in timm["reason"]

    # The seeded checkpoint went through from_preset into the same model, and
    # was loaded from Keras's own weights file in another fresh process.
    runs = results["conversion"]["backends"][backend]
    for step in ("from_preset", "from_keras_weights"):
        (conversion,) = runs[step]
        assert conversion["backend"] == backend
        assert conversion["num_params"] == keras_result["num_params"]
        assert conversion["peak_increase_mb"] >= 0 and conversion["seconds"] > 0
    assert math.isfinite(results["conversion"]["cache_saving"][backend])

    markdown = markdown_out.read_text()
    assert f"| {backend} |" in markdown
    assert "from_preset" in markdown
    assert "timm" in markdown


def test_conversion_only(tmp_path):
    """`--conversion-only` measures the loads alone."""
    backend = keras.backend.backend()
    json_out = tmp_path / "results.json"
    markdown_out = tmp_path / "results.md"
    process = subprocess.run(
        [
            sys.executable, str(BENCHMARK), "--quick", "--conversion-only",
            "--conversion-backends", backend, "--conversion-rounds", "1",
            "--json-out", str(json_out), "--markdown-out", str(markdown_out),
        ],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    results = json.loads(json_out.read_text())
    assert results["keras"] == {}
    runs = results["conversion"]["backends"][backend]
    assert len(runs["from_preset"]) == len(runs["from_keras_weights"]) == 1
    markdown = markdown_out.read_text()
    assert "would save" in markdown and "`load_weights`" in markdown
