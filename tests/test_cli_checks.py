"""The `keras-cait` command line answers cheap mistakes in one sentence before Keras
loads; `cache-weights` fills an offline Hugging Face cache. No model is loaded here."""

import errno
import json
import os
import pathlib
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from safetensors.numpy import save_file

from keras_cait.inference import evaluation
from keras_cait_cli import cache_weights, checks, predict
from keras_cait_cli import main as cli
from tests.hf_cache import TIMM, add_snapshot
from tests.support import REPO
from tests.test_cli import _main

PHOTO = str(REPO / "examples" / "images" / "chelsea.png")
# Each case runs `main(argv)` in one fresh process that never imports Keras.
_DRIVER = r"""
import contextlib, io, json, sys, time
from keras_cait_cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code
    results.append({"argv": argv, "status": status, "stderr": err.getvalue(), "stdout": out.getvalue(),
                    "seconds": time.perf_counter() - start,
                    "keras": "keras" in sys.modules, "tensorflow": "tensorflow" in sys.modules})
print(json.dumps(results))
"""


def test_cheap_mistakes_and_help_are_answered_before_keras_is_imported(tmp_path):
    (tmp_path / "done.jsonl").write_text("")
    full, empty = tmp_path / "full", tmp_path / "empty"
    for folder in (full, empty):
        folder.mkdir()
    (full / "old.png").write_bytes(b"x")
    (tmp_path / "ft.keras").write_bytes(b"PK")
    t, e = str(tmp_path), str(tmp_path / "e")
    cases = {
        "misspelt preset": (["predict", PHOTO, "--preset", "cait_xxs42_224"],
                            "Unknown preset 'cait_xxs42_224'. Did you mean 'cait_xxs24_224'?"),
        "unknown preset": (["predict", PHOTO, "--preset", "nope"], "Unknown preset 'nope'. Choose one of cait_m36_384"),
        "output exists": (["predict", PHOTO, "--output", f"{t}/done.jsonl"], "already exists: add --resume"),
        "wrong extension": (["predict", PHOTO, "--output", f"{t}/out.txt"], "must end in .jsonl or .csv"),
        "parent is a file": (["predict", PHOTO, "--output", PHOTO + "/out.jsonl"], "chelsea.png is a file, not a folder"),
        "unwritable": (["predict", PHOTO, "--output", "/proc/out.jsonl"], "/proc is not writable"),
        "missing input": (["predict", f"{t}/cat.jgp"], "no input exists ("),
        "missing list": (["predict", f"@{t}/list.txt"], "list.txt (from @"),
        "a .keras preset": (["predict", PHOTO, "--preset", f"{t}/ft.keras"], "save_to_preset"),
        "attention overwrite": (["predict", PHOTO, "--attention", str(full)], "--attention"),
        "evaluate missing": (["evaluate", f"{t}/nope", "--output", e], "does not exist"),
        "evaluate empty": (["evaluate", str(empty), "--output", e], "is empty"),
        "evaluate overwrite": (["evaluate", str(full), "--output", str(full)], "nothing is overwritten"),
        "missing label map": (["evaluate", str(full), "--output", e, "--label-map", f"{t}/m.txt"], "--label-map"),
        "cache-weights without files": (["cache-weights", "--from", str(empty)], "neither config.json"),
        "cache dir is a file": (["predict", PHOTO, "--engine", "onnxruntime", "--cache-dir",
                                 f"{t}/ft.keras"], f"--cache-dir {t}/ft.keras: {t}/ft.keras is a file"),
        "cache dir in a file": (["predict", PHOTO, "--engine", "onnxruntime", "--cache-dir",
                                 f"{t}/ft.keras/sub"], f"ft.keras/sub: {t}/ft.keras is a file"),
    }
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    argvs = json.dumps([argv for argv, _ in cases.values()] + [["predict", "--help"]])
    run = subprocess.run([sys.executable, "-c", _DRIVER, argvs], env=env, capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    *results, shown = json.loads(run.stdout)
    # `predict --help`: its Ray example is one shell command, continued on the next line.
    assert "--ray \\\n      --ray-address auto" in shown["stdout"] and not shown["stderr"]
    for (name, (_, expected)), result in zip(cases.items(), results, strict=True):
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("keras-cait: error: "), (name, result)
        assert expected in lines[0] and "Errno" not in lines[0], (name, lines[0])
        assert result["status"] == 1, (name, result)
    # Keras and TensorFlow were never imported, so each answer is immediate.
    assert not any(r["keras"] or r["tensorflow"] for r in [*results, shown])
    assert max(r["seconds"] for r in results) < 5


def test_backend_preference_install_hints_and_quiet_environment(monkeypatch):
    present = {"tensorflow", "torch", "jax"}
    monkeypatch.setattr(checks, "installed", lambda name: name in present)
    assert checks.choose_backend(None, {})[0] == "jax"
    present.discard("jax")
    assert checks.choose_backend(None, {})[0] == "torch"
    present.discard("torch")
    backend, reason = checks.choose_backend(None, {})
    assert backend == "tensorflow" and "first installed of jax, torch, tensorflow" in reason
    assert checks.choose_backend(None, {"KERAS_BACKEND": "tensorflow"}) == ("tensorflow", "KERAS_BACKEND")
    with pytest.raises(checks.ArgumentProblem, match=r'torch backend \(--backend\) is not installed: pip install torch'):
        checks.choose_backend("torch", {})
    with pytest.raises(checks.ArgumentProblem, match=r"jax backend \(KERAS_BACKEND\) is not installed"):
        checks.choose_backend(None, {"KERAS_BACKEND": "jax"})
    # quiet_environment keeps what the user set, and sets nothing when loud.
    environ, loud = {"TF_CPP_MIN_LOG_LEVEL": "1"}, {}
    checks.quiet_environment(False, environ)
    assert environ["TF_CPP_MIN_LOG_LEVEL"] == "1" and environ["ABSL_MIN_LOG_LEVEL"] == "3"
    checks.quiet_environment(True, loud)
    assert loud == {}


@pytest.mark.parametrize("error, expected", [
    (FileExistsError(errno.EEXIST, "File exists", "out.jsonl"), "out.jsonl already exists: choose another path"),
    (FileNotFoundError(errno.ENOENT, "No such file", "/proc/x"), "/proc/x does not exist: check the path"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "/root/x is not accessible"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), "/ro/x is on a read-only file system: choose a writable folder"),
    (OSError(errno.ENOSPC, "No space left on device", "big.jsonl"), "big.jsonl cannot be written: the disk is full"),
])
def test_os_errors_become_sentences(error, expected):
    sentence = checks.os_error_sentence(error)
    assert sentence.startswith(expected) and "Errno" not in sentence


def _hub_download(cache, repo_id, filename):
    code = f"import huggingface_hub as h\nprint(h.hf_hub_download({repo_id!r}, {filename!r}))"
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return pathlib.Path(result.stdout.strip())


def test_cache_weights_fills_an_offline_cache_from_files_and_from_a_copied_cache(tmp_path):
    downloaded, cache = tmp_path / "tiny", tmp_path / "hub"
    metadata = downloaded / ".cache" / "huggingface" / "download"
    metadata.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (downloaded / name).write_bytes((TIMM / "tiny_token_head" / name).read_bytes())
    commit = "0123456789abcdef0123456789abcdef01234567"
    (metadata / "config.json.metadata").write_text(f"{commit}\netag\n1.0\n")
    line = cache_weights.cache_weights(downloaded, "hf://timm/tiny_token_head", cache,
                                       cli.presets_dir())
    assert "cached hf://timm/tiny_token_head (config.json, model.safetensors)" in line
    path = _hub_download(cache, "timm/tiny_token_head", "model.safetensors")
    assert path.parent.name == commit  # the commit hf download recorded
    assert path.read_bytes() == (TIMM / "tiny_token_head" / "model.safetensors").read_bytes()
    # A copied cache (another machine's ~/.cache/huggingface/hub) is merged.
    other = tmp_path / "other_hub"
    add_snapshot(other, "timm/tiny_avg_headless",
                 {"config.json": TIMM / "tiny_avg_headless" / "config.json"})
    assert "hf://timm/tiny_avg_headless" in cache_weights.cache_weights(other, None, cache)
    assert _hub_download(cache, "timm/tiny_avg_headless", "config.json").is_file()


def test_cache_weights_refuses_bad_sources(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    def refused(preset, match, *presets):
        with pytest.raises(cache_weights.CacheWeightsError, match=match):
            cache_weights.cache_weights(folder, preset, tmp_path / "hub", *presets)
    refused("cait_xxs24_224", "has no model.safetensors", cli.presets_dir())
    (folder / "model.safetensors").write_bytes(b"\x05\x00")
    refused("cait_xxs24_224", "not a safetensors file", cli.presets_dir())
    save_file({"w": np.zeros(2, "float32")}, folder / "model.safetensors")
    refused(None, "name the preset")
    refused("cait_xxs42", "unknown preset 'cait_xxs42'", cli.presets_dir())
    (folder / "config.json").write_text('{"architecture": "cait_xxs24_224"}')
    refused("cait_s24_384", "is for 'cait_xxs24_224', not 'cait_s24_384'", cli.presets_dir())
    assert not (tmp_path / "hub").exists()  # nothing written on an error
    json.loads((folder / "config.json").read_text())


def test_resume_of_a_complete_file_loads_no_model(tmp_path, capfd, monkeypatch, backend):
    output = tmp_path / "done.jsonl"
    prediction = {"label": "tabby", "class_id": 281, "probability": 0.5}
    record = json.dumps({"image": PHOTO, "predictions": [prediction]}) + "\n"
    output.write_text(record)
    monkeypatch.setattr(predict, "load_classifier", mock.Mock(side_effect=AssertionError("loaded")))
    resume = ("--output", str(output), "--resume", "--backend", backend)
    status, _, err = _main(capfd, "predict", PHOTO, *resume, "--top", "1")
    assert status == 0 and "is complete (every input has a record); nothing to do" in err
    assert output.read_text() == record  # resuming a finished run writes nothing
    # Complete, but written with another --top: refused, as a resumed run refuses it.
    status, _, err = _main(capfd, "predict", PHOTO, *resume)
    assert status == 1 and "Use the same --top and --embeddings" in err
    # Complete with an error record: the exit status of the run that wrote it.
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    output.write_text(json.dumps({"image": str(broken), "error": "cannot read"}) + "\n")
    status, _, err = _main(capfd, "predict", str(broken), *resume, "--top", "1")
    assert status == cli.FAILED_INPUTS and "nothing to do" in err and "1 of 1 inputs failed" in err


def test_one_record_interrupts_and_evaluate_top_k(tmp_path, capfd, monkeypatch, backend):
    output = str(tmp_path / "new.jsonl")
    argv = ("predict", PHOTO, "--output", output, "--backend", backend)
    summary = {"output": output, "images": 1, "kept": 0, "written": 1, "failed": 0}
    monkeypatch.setattr(predict, "predict", lambda args: (None, summary))
    status, _, err = _main(capfd, *argv)
    assert status == 0 and f"wrote 1 record to {output}" in err
    monkeypatch.setattr(predict, "predict", mock.Mock(side_effect=KeyboardInterrupt))
    status, _, err = _main(capfd, *argv)
    assert status == 130
    assert err.strip().endswith("interrupted; run the same command with --resume to continue it")
    lines = evaluation.format_summary({"top1": 50.0, "top5": 100.0, "top1_correct": 1, "top5_correct": 2,
                                       "evaluated": 2, "images": 2, "failed": 0,
                                       "images_per_second": 1.0, "num_classes": 3}).splitlines()
    assert lines[1].startswith("top-3 ")
