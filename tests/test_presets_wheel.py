"""The preset JSON files ship in the wheel: build it, install it into a fresh
venv (dependencies from the development venv, not the repository), and list
the presets from outside the repository."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile

import keras
import pytest

from tests.support import REPO


@pytest.mark.skipif(
    keras.config.backend() != "jax",
    reason="backend-independent packaging check; run once (on jax)",
)
def test_wheel_ships_and_registers_the_presets(tmp_path):
    # `--no-isolation` builds with this venv's setuptools (no download).
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    # Build from a copy of the sources so no build/ folder is left (or
    # reused) in the repository.
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md", "presets", "keras_cait", "keras_cait_base",
                 "keras_cait_cli"):
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name,
                source / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(REPO / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(dist), str(source)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("keras_cait-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(
            n for n in archive.namelist() if n.startswith("keras_cait/presets/")
        )
        assert "keras_cait_cli/main.py" in archive.namelist()
        assert "keras_cait_base/engines.py" in archive.namelist()
    assert len(shipped) == 10 and all(n.endswith(".json") for n in shipped)

    # A fresh venv; the wheel is unpacked into its site-packages (a pure
    # Python wheel), the dependencies come from this venv via PYTHONPATH.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    deps = sysconfig.get_paths()["purelib"]
    env = dict(os.environ, PYTHONPATH=deps, KERAS_BACKEND="jax")
    code = (
        "import keras_cait, json; "
        "print(json.dumps([keras_cait.__file__, keras_cait.list_presets(), "
        "sorted(keras_cait.CaiTImageClassifier.presets)]))"
    )
    result = subprocess.run(
        [str(python), "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    location, names, registered = json.loads(result.stdout.strip().splitlines()[-1])
    assert location.startswith(site)
    assert len(names) == 10 and "cait_xxs24_224" in names
    assert registered == names

    # The command line finds the same files without importing keras_cait.
    result = subprocess.run(
        [str(python), "-m", "keras_cait_cli", "presets", "--json"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout)] == names
