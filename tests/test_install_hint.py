"""Install hints name the command that works for this installation (issue #19, item 8)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import layerkit
import layerkit.errors
from layerkit.errors import LayerkitError, install_hint, source_checkout

CHECKOUT = Path(layerkit.__file__).resolve().parent.parent


def test_a_source_checkout_is_told_to_install_editable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the tests run from a checkout (pip install -e .): 'layerkit[onnx]' from PyPI is not this code
    assert source_checkout() == CHECKOUT
    monkeypatch.chdir(CHECKOUT)
    assert install_hint("onnx") == "pip install -e '.[onnx]'"
    monkeypatch.chdir(tmp_path)
    assert install_hint("onnx") == f"pip install -e '{CHECKOUT}[onnx]'"


def test_an_installed_wheel_is_told_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(layerkit.errors, "source_checkout", lambda package=None: None)
    assert install_hint("images") == "pip install 'layerkit[images]'"
    package = tmp_path / "layerkit"  # a copied package folder with no project around it
    package.mkdir()
    assert source_checkout(package) is None


def test_messages_use_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from layerkit.training.tensorboard import TensorBoardLogger

    monkeypatch.chdir(CHECKOUT)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    with pytest.raises(LayerkitError, match=r"needs tensorboardX: pip install -e '\.\[tensorboard\]'$"):
        TensorBoardLogger()
