"""The preset JSON files ship in the wheel, installed into a fresh venv outside the repository."""

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


@pytest.mark.skipif(keras.config.backend() != "jax",
                    reason="backend-independent packaging check; run once (on jax)")
def test_wheel_ships_and_registers_the_presets(tmp_path):
    # `--no-isolation` builds with this venv's setuptools (no download).
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    # From a copy of the sources: no build/ folder is left (or reused) in the repository.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("presets", "keras_cait", "keras_cait_base", "keras_cait_cli"):
        shutil.copytree(REPO / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(dist),
                    str(source)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = dist.glob("keras_cait-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    shipped = sorted(n for n in names if n.startswith("keras_cait/presets/"))
    assert "keras_cait_cli/main.py" in names and "keras_cait_base/engines.py" in names
    assert len(shipped) == 10 and all(n.endswith(".json") for n in shipped)

    # A fresh venv with the (pure Python) wheel unpacked; dependencies via PYTHONPATH.
    venv.create(tmp_path / "venv", with_pip=False)
    python = str(tmp_path / "venv" / "bin" / "python")
    site = str(tmp_path / "venv" / "lib" / f"python{sysconfig.get_python_version()}" / "site-packages")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"], KERAS_BACKEND="jax")
    code = ("import keras_cait, json; print(json.dumps([keras_cait.__file__, "
            "keras_cait.list_presets(), sorted(keras_cait.CaiTImageClassifier.presets)]))")
    result = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    location, names, registered = json.loads(result.stdout.strip().splitlines()[-1])
    assert location.startswith(site)
    assert len(names) == 10 and "cait_xxs24_224" in names
    assert registered == names
    # The command line finds the same files without importing keras_cait.
    result = subprocess.run([python, "-m", "keras_cait_cli", "presets", "--json"], env=env,
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout)] == names
