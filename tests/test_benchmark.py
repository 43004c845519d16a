"""tools/benchmark.py: runs end to end in quick mode (so it cannot rot), and
its FLOP count is right (shapes and timm keywords come from the package).

No timing is asserted: only that every measurement was taken and is sane.
"""

import json
import math
import os
import statistics
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

    # The machine and each process's threads and load are recorded.
    cpu = results["setup"]["cpu"]
    assert cpu["cpu_count"] == os.cpu_count() and cpu["model"]
    assert keras_result["threads"]["os_threads"] >= 1
    assert len(keras_result["load_average_start"]) == 3
    assert 0 < keras_result["rss_after_import_mb"] <= keras_result["peak_rss_mb"]

    # Peak memory as in an install of this backend alone: no other framework.
    alone = results["one_framework"][backend]
    assert alone["frameworks"] == [backend]
    assert alone["inference"]["2"]["peak_rss_mb"] >= alone["rss_after_import_mb"] > 0

    # timm runs side by side (through the torchvision stand-in where
    # torchvision is missing), or is reported as missing, with the reason.
    timm = results["timm"]
    assert timm["available"] or "timm" in timm["reason"]
    if timm["available"]:
        assert timm["keras_imported"] is False  # timm's process is timm's alone
        assert timm["rss_after_import_mb"] > 0
        entry = results["side_by_side"][backend]
        for batch in ("1", "2"):
            assert entry["speed"][batch]["ratio"] == pytest.approx(
                keras_result["inference"][batch]["images_per_s"]
                / timm["inference"][batch]["images_per_s"]
            )
        assert "× timm" in markdown_out.read_text()

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


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="runs its own workers: once (on jax)"
)
def test_baseline_workers_alternate_and_import_the_baseline(tmp_path):
    """`--baseline DIR` runs DIR's keras_cait in workers alternating with this
    tree's and reports after/before ratios."""
    import shutil

    baseline = tmp_path / "baseline"
    shutil.copytree(REPO / "keras_cait", baseline / "keras_cait")
    json_out = tmp_path / "results.json"
    process = subprocess.run(
        [
            sys.executable, str(BENCHMARK), "--quick", "--backends", "jax",
            "--baseline", str(baseline), "--rounds", "1", "--train-batch-size", "0",
            "--no-save-load", "--no-timm", "--conversion-model", "none",
            "--json-out", str(json_out),
        ],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    runs = json.loads(json_out.read_text())["comparison"]["jax"]
    assert [r["keras_cait_path"] for r in runs["after"]] == [str(REPO / "keras_cait")]
    assert [r["keras_cait_path"] for r in runs["before"]] == [
        str(baseline / "keras_cait")
    ]
    assert "| jax | 2 |" in process.stdout and "fastest after/before" in process.stdout


def test_cpu_description_lists_this_cpus_simd_flags():
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    described = benchmark.cpu_description()
    assert described["simd"] == [f for f in benchmark.SIMD_FLAGS if f in flags]
    assert described["usable_cpus"] == len(os.sched_getaffinity(0))


def test_side_by_side_ratios_and_targets():
    """Medians over processes, their ratio to timm's, and each target's verdict."""

    def run(ips1, ips32, rss):
        return {"inference": {
            "1": {"images_per_s": ips1, "peak_rss_mb": rss},
            "32": {"images_per_s": ips32, "peak_rss_mb": rss},
        }, "rss_after_import_mb": 100.0}

    results = {
        "setup": {"batch_sizes": [1, 32]},
        "timm_runs": [run(10, 20, 400), run(12, 22, 500), run(11, 21, 450)],
        "keras_runs": {
            "jax": [run(11, 40, 1000), run(14, 30, 800), {"error": "x"}],
            "torch": [run(11, 26, 1000)],
        },
    }
    table = benchmark.side_by_side(results)
    jax = table["jax"]
    assert jax["images_per_s"]["1"] == 12.5  # median of 11 and 14
    assert jax["speed"]["1"] == {"ratio": 12.5 / 11, "target": 1.2, "met": False}
    assert jax["speed"]["32"]["ratio"] == 35 / 21 and jax["speed"]["32"]["met"]
    assert jax["rss"]["1"]["ratio"] == 900 / 450 and jax["rss"]["1"]["met"]
    assert table["torch"]["speed"]["1"]["met"]  # 1.0 at batch 1 on torch
    assert not table["torch"]["rss"]["32"]["met"]  # 1000 / 450 > 2
    assert "missed by 5%" in benchmark._verdict(12.5 / 11, 1.2)


def test_pool_runs_takes_medians_over_every_runs_processes(tmp_path):
    """`--pool`: each ratio is of the medians over all runs' processes, not a
    median of the runs' ratios; runs of another batch size are refused."""

    def proc(ips1, ips32, rss=500.0):
        return {"inference": {
            "1": {"images_per_s": ips1, "peak_rss_mb": rss},
            "8": {"images_per_s": ips32, "peak_rss_mb": rss},
            "32": {"images_per_s": ips32, "peak_rss_mb": rss},
        }, "rss_after_import_mb": 100.0}

    def run(path, after, before, timm, batch_sizes=(1, 32)):
        path.write_text(json.dumps({
            "setup": {"model": "m", "batch_sizes": list(batch_sizes)},
            "timm_runs": [proc(t, t) for t in timm],
            "keras_runs": {"jax": [proc(a, a) for a in after]},
            "comparison": {"jax": {
                "after": [proc(a, a) for a in after],
                "before": [proc(b, b) for b in before],
            }},
            "one_framework": {"jax": {"inference": {
                "1": {"peak_rss_mb": 700.0}, "32": {"peak_rss_mb": 900.0}}}},
        }))
        return str(path)

    first = run(tmp_path / "a.json", after=[10, 11, 30], before=[12, 13, 14], timm=[9, 9, 9])
    second = run(tmp_path / "b.json", after=[31, 32, 33], before=[10, 11, 40], timm=[8, 30, 30])
    pooled = benchmark.pool_runs([first, second], ["jax"])
    after = [10, 11, 30, 31, 32, 33]
    before = [12, 13, 14, 10, 11, 40]
    timm = [9, 9, 9, 8, 30, 30]
    assert pooled["side_by_side"]["jax"]["speed"]["1"]["ratio"] == (
        statistics.median(after) / statistics.median(timm)
    )
    report = benchmark.pool_report(pooled)
    ratio = statistics.median(after) / statistics.median(before)
    assert f"| jax | 1 | 6 / 6 | {ratio:.3f} | {33 / 40:.3f} |" in report
    assert pooled["one_framework"]["jax"]["inference"]["32"]["peak_rss_mb"] == 900.0
    other = run(tmp_path / "c.json", [1], [1], [1], batch_sizes=(1, 8))
    with pytest.raises(SystemExit, match="c.json has batch_sizes"):
        benchmark.pool_runs([first, other], ["jax"])
    for name, text in (("bad.json", "{"), ("list.json", "[]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit, match=name):
            benchmark.pool_runs([first, str(tmp_path / name)], ["jax"])
    # A process without a batch size's figures is named; errored ones are left out.
    broken = json.loads((tmp_path / "b.json").read_text())
    del broken["keras_runs"]["jax"][1]["inference"]["32"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(SystemExit, match=r"keras_runs\.jax\[1\]\.inference\.32"):
        benchmark.pool_runs([first, str(tmp_path / "broken.json")], ["jax"])
    broken["keras_runs"]["jax"][1] = {"error": "crashed"}
    broken["timm_runs"][0] = {"available": False, "reason": "no timm"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    pooled = benchmark.pool_runs([first, str(tmp_path / "broken.json")], ["jax", "torch"])
    assert len(pooled["keras_runs"]["jax"]) == 5 and len(pooled["timm_runs"]) == 5
    assert "torch" not in pooled["keras_runs"]  # no process: no row
