"""Mutated model files: whatever a user writes, only LayerkitError may come out."""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import shipped_model_files
from layerkit.errors import LayerkitError
from layerkit.modelfile.shapes import build_graph
from layerkit.plugins.manager import get_registry
from layerkit.modelfile.spec import parse_json, spec_from_dict

SHIPPED = [json.loads(p.read_text()) for p in shipped_model_files()]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["input", "same", "conv1", "logits", "relu", "dense",
                                                          "add", "concat", "flatten", "mnist", "sgd"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
keys = st.one_of(st.text(max_size=10), st.sampled_from(["type", "name", "inputs", "units", "filters",
                                                        "kernel_size", "padding", "stride", "output", "shape",
                                                        "format", "layers", "rate", "pool_size", "axis"]))


def _containers(node, path=()):
    yield path, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        if isinstance(child, (dict, list)):
            yield from _containers(child, path + (key,))


@st.composite
def mutated_models(draw):
    model = copy.deepcopy(draw(st.sampled_from(SHIPPED)))
    for _ in range(draw(st.integers(1, 4))):
        containers = list(_containers(model))
        _, node = draw(st.sampled_from(containers))
        action = draw(st.sampled_from(["set", "delete", "rename", "wrap", "swap"]))
        if isinstance(node, dict):
            existing = list(node)
            key = draw(st.sampled_from(existing)) if existing and action != "set" else draw(keys)
            if action == "delete" and key in node:
                del node[key]
            elif action == "rename" and key in node:
                node[draw(keys)] = node.pop(key)
            elif action == "wrap" and key in node:
                node[key] = [node[key]] if draw(st.booleans()) else {"x": node[key]}
            else:
                node[key] = draw(values)
        elif isinstance(node, list) and node:
            i = draw(st.integers(0, len(node) - 1))
            if action == "delete":
                del node[i]
            elif action == "swap":
                j = draw(st.integers(0, len(node) - 1))
                node[i], node[j] = node[j], node[i]
            elif action == "wrap":
                node[i] = [node[i]]
            else:
                node[i] = draw(values)
    return model


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_models())
def test_mutated_models_only_raise_layerkit_errors(model):
    registry = get_registry()
    try:
        spec = spec_from_dict(model, source="fuzz.json", registry=registry)
        build_graph(spec, registry)
    except LayerkitError as error:
        assert str(error).strip(), "an error must say something"
        assert "Traceback" not in str(error)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60) | st.sampled_from([json.dumps(m) for m in SHIPPED]).flatmap(
    lambda text: st.integers(0, len(text)).map(lambda cut: text[:cut])))
def test_any_text_parses_or_fails_cleanly(text):
    try:
        parse_json(text, "fuzz.json")
    except LayerkitError as error:
        assert str(error).startswith("fuzz.json: invalid JSON")
