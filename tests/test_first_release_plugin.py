"""A plugin written as layerkit 0.1.0's README and docs showed it still loads, conforms and trains.

The package in tests/first_release_plugin/ uses the first release's import path (``from layerkit.layer
import ...``) and declarations (``per_sample``, ``stochastic``); its ``__init__.py`` is the README's
example verbatim. It is installed the way pip would leave it (a package and its ``.dist-info`` with the
``layerkit`` entry points in a site directory) and driven in fresh processes, as a user would: every
warning except a DeprecationWarning is an error there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parent / "first_release_plugin"
ENTRY_POINTS = {"my_layers": "my_layers", "my_layers_learnable": "my_layers.learnable"}
WARNING_LINE = re.compile(r"^\S+:\d+: (\w+): (.*)$", flags=re.M)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site directory holding the plugin as an installed distribution ``my-layers`` 0.1.0."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(FIXTURE / "my_layers", site / "my_layers")
    info = site / "my_layers-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-layers\nVersion: 0.1.0\n"
                                   "Requires-Dist: layerkit>=0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(
        "[layerkit]\n" + "".join(f"{name} = {module}\n" for name, module in ENTRY_POINTS.items()), encoding="utf-8")
    return site


def run(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -W error -W always::DeprecationWarning ARGS`` with the plugin installed; fails on exit != 0."""
    env = dict(os.environ, PYTHONPATH=str(site), LAYERKIT_NUM_THREADS="1",
               # layerkit-activations, installed next to it, registers a "swish" too: the README's plugin
               # would clash with it (as documented), so it is switched off the first release's way
               LAYERKIT_DISABLE_PLUGINS="activations")
    env["XDG_CACHE_HOME"] = str(site / "cache")  # the embedded MNIST sample, whatever the machine has cached
    for name in ("PYTHONWARNINGS", "LAYERKIT_DATA_DIR", "LAYERKIT_PLUGINS"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-W", "error", "-W", "always::DeprecationWarning", *args],
                          capture_output=True, text=True, env=env, cwd=cwd or site, timeout=300)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def deprecations(stderr: str) -> list[str]:
    """The warnings printed on stderr; anything but a DeprecationWarning fails the test."""
    found = WARNING_LINE.findall(stderr)
    assert all(kind == "DeprecationWarning" for kind, _ in found), stderr
    return [message for _, message in found]


def test_the_plugin_loads_through_its_entry_points(site):
    done = run(site, "-m", "layerkit", "plugins")
    plugins = {p["plugin"]: p for p in json.loads(done.stdout)["plugins"]}
    for name, layers in (("my_layers", ["swish"]), ("my_layers_learnable", ["channel_scale", "gaussian_noise"])):
        assert plugins[name]["distribution"] == "my-layers", plugins[name]
        assert plugins[name]["errors"] == [] and sorted(plugins[name]["provides"]["layer"]) == layers
    warned = deprecations(done.stderr)
    # the old import path and each old declaration warn, naming what to write instead
    assert any("layerkit.layer is deprecated" in m and "from layerkit import Layer" in m for m in warned), warned
    assert any("Scale: 'per_sample' is deprecated, declare sample_coupling = Coupling.NONE" in m for m in warned)
    assert any("GaussianNoise:" in m and "'stochastic' is deprecated" in m for m in warned), warned


def test_the_plugin_passes_the_conformance_suite(site, tmp_path):
    # the README's test file, plus the first release's fixtures and marker, run by pytest as its author would
    (tmp_path / "test_my_layers.py").write_text((FIXTURE / "conformance.py").read_text(encoding="utf-8"),
                                                encoding="utf-8")
    done = run(site, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-W",
               "always::DeprecationWarning", "test_my_layers.py", cwd=tmp_path)
    # "my_layers" is also the distribution's name (my-layers, normalised): one test per check of each of
    # its 3 layers and 6 examples (the engine's ids), then the 6 examples through the old fixtures
    passed = re.search(r"\b(\d+) passed\b", done.stdout)
    assert passed and int(passed.group(1)) > 6 * 10, done.stdout
    assert not re.search(r"\bfailed|error", done.stdout), done.stdout


def test_a_model_with_its_layers_trains(site, tmp_path):
    shutil.copy(FIXTURE / "model.json", tmp_path / "model.json")
    done = run(site, "-m", "layerkit", "fit", "model.json", "--epochs", "1", "--train-limit", "256",
               "--test-limit", "64", "--quiet", "--out", str(tmp_path / "run"), cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics, done.stdout
    assert re.search(r"test accuracy \d", done.stdout), done.stdout
    deprecations(done.stderr)


def test_a_warning_other_than_a_deprecation_fails():
    assert deprecations("a.py:3: DeprecationWarning: old\n  x\n") == ["old"]
    with pytest.raises(AssertionError):
        deprecations("a.py:3: DeprecationWarning: old\nb.py:9: RuntimeWarning: overflow in exp\n")
