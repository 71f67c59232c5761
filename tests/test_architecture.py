"""The folder tree is the architecture: import-linter's contracts (pyproject.toml) hold."""

import subprocess
import sys
from pathlib import Path

import pytest

from layerkit.plugins.manager import DEFAULT_PLUGINS

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("module", [m for m in DEFAULT_PLUGINS if m.startswith("layerkit.layers.")])
def test_layer_modules_stay_light(module):
    # a layer is importable without the model-file, training or schema machinery
    code = (f"import sys, {module}; heavy = [m for m in ('jsonschema', 'layerkit.modelfile.spec', "
            "'layerkit.nn.model', 'layerkit.training.trainer') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
