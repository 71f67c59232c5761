"""The package as pip users get it: build the wheel, install it into a fresh environment, and from a
folder outside the repository train a shipped model by name and predict with the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from layerkit.modelfile import zoo

from conftest import ROOT

pytest.importorskip("setuptools", minversion="70.1", reason="building the wheel needs setuptools >= 70.1 (test extra)")


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done


def test_wheel_installs_and_trains_a_shipped_model_outside_the_repository(tmp_path):
    # a copy of the sources, so that the build leaves nothing behind in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "layerkit", src / "layerkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", tmp_path / "dist", src])
    (wheel,) = (tmp_path / "dist").glob("layerkit-*.whl")

    # a fresh environment that sees this one's dependencies (numpy, jsonschema...) but not its layerkit:
    # a path line in a .pth adds the folder without running the editable install's own .pth hooks
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (purelib / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([*pip, "--python", python, "install", "--no-index", "--no-deps", "-q", wheel])

    work = tmp_path / "elsewhere"
    work.mkdir()
    # only the wheel's layerkit: the checkout's editable plugins are not installed in this environment
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "LAYERKIT_DISABLE_PLUGINS": "activations",
           "LAYERKIT_SAMPLE_PARALLEL": "0"}
    env.pop("LAYERKIT_DATA_DIR", None)
    env.pop("PYTHONPATH", None)
    where = _run([python, "-c", "import layerkit; print(layerkit.__file__)"], cwd=work, env=env).stdout
    assert where.startswith(str(purelib)), where
    layerkit = venv / "bin" / "layerkit"
    _run([layerkit, "fit", "lenet5", "--epochs", "1", "--train-limit", "200", "--test-limit", "50",
          "--out", "run", "--quiet"], cwd=work, env=env)
    with np.load(ROOT / "layerkit" / "data" / "embedded" / "mnist_sample.npz") as data:
        np.save(work / "digits.npy", data["x_test"][:3])
    out = _run([layerkit, "predict", "run", "digits.npy", "--json"], cwd=work, env=env).stdout
    assert [r["input"] for r in json.loads(out)] == ["digits.npy[0]", "digits.npy[1]", "digits.npy[2]"]
    listing = _run([layerkit, "models"], cwd=work, env=env).stdout
    assert "lenet5" in listing and zoo.RESULTS["lenet5"] in listing
    schema = purelib / "layerkit" / "schemas" / "model.schema.json"
    assert json.loads(schema.read_text())["$defs"]["layer.conv2d"]  # what the shipped models' $schema names
