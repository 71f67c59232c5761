"""docs/layers.md is the generated reference of every built-in type, and stays current."""

from __future__ import annotations

from pathlib import Path

from layerkit.cli.catalog import builtin_catalog, catalog_markdown
from layerkit.nn.losses import SoftmaxCrossEntropy
from layerkit.plugins.manager import load_registry

PAGE = Path(__file__).resolve().parent.parent / "docs" / "layers.md"


def test_committed_page_is_current():
    assert PAGE.read_text() == builtin_catalog(), \
        "regenerate with: layerkit layers --markdown --builtin > docs/layers.md"


def test_every_builtin_type_and_schedule_has_an_entry():
    registry = load_registry(entry_points=False, disabled=set())
    page = builtin_catalog()
    for kind in ("layer", "loss", "optimizer"):
        for name in registry.names(kind):
            assert f"### `{name}`" in page, (kind, name)
    for name in ("constant", "step", "exponential", "cosine"):
        assert f"### `{name}`" in page


def test_a_changed_description_makes_the_page_stale(monkeypatch):
    monkeypatch.setattr(SoftmaxCrossEntropy, "description", "changed")
    registry = load_registry(entry_points=False, disabled=set())
    assert catalog_markdown(registry) != PAGE.read_text()
