"""Every layer in the live registry (built-ins and installed plugins) against the check engine: one
test per layer and class check (``dense-metadata``) and per layer, example and check
(``dense-0-gradients_match_finite_differences``)."""

from __future__ import annotations

import pytest

from layerkit.errors import ContractError
from layerkit.modelfile.spec import fill_defaults as fill_schema_defaults
from layerkit.plugins.manager import get_registry
from layerkit.testing import conformance_cases, layer_conformance_tests, run_case

REGISTRY = get_registry()
LAYER_TYPES = REGISTRY.names("layer")

test_layer_examples = layer_conformance_tests()


def test_registry_loaded_cleanly():
    assert not REGISTRY.problems, "\n".join(map(str, REGISTRY.problems))
    assert "dense" in LAYER_TYPES


def test_run_case_runs_class_and_example_checks():
    """The per-example runner of the first release still works (it runs the same engine)."""
    case = next(c for c in conformance_cases(registry=REGISTRY) if c.layer_type == "dense")
    run_case(case, REGISTRY)


def test_fill_defaults_alias_warns_and_still_works():
    from layerkit.testing import fill_defaults

    dense = REGISTRY.layer("dense")
    with pytest.warns(DeprecationWarning, match="layerkit.modelfile.spec.fill_defaults"):
        filled = fill_defaults(dense, {"units": 3})
    assert filled == fill_schema_defaults(dense.params_schema, {"units": 3})
    with pytest.warns(DeprecationWarning), pytest.raises(ContractError, match="does not validate"):
        fill_defaults(dense, {"unitz": 3})
