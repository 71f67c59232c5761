"""Every layer in the live registry (built-ins and installed plugins) against the layer contract:
metadata, shapes, schema round-trip, dtypes and float64 gradients, for every example."""

from __future__ import annotations

import pytest

from layerkit.plugins.manager import get_registry
from layerkit.testing import check_layer_metadata, layer_conformance_tests

REGISTRY = get_registry()
LAYER_TYPES = REGISTRY.names("layer")

test_layer_examples = layer_conformance_tests()


def test_registry_loaded_cleanly():
    assert not REGISTRY.problems, "\n".join(map(str, REGISTRY.problems))
    assert "dense" in LAYER_TYPES


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_layer_metadata(layer_type):
    """At least one example, a description, and a closed params schema (typos are errors)."""
    check_layer_metadata(REGISTRY.layer(layer_type))
