"""Conformance tests for layer authors: does a layer honour the contract of :mod:`layerkit.nn.layer`?

Check one configuration by hand::

    from layerkit.testing import run_layer_test
    run_layer_test("swish", {"beta": 1.5}, (4, 3, 3))

or get every layer and every ``examples`` entry of a plugin as pytest cases,
in one line of a test module::

    from layerkit.testing import layer_conformance_tests
    test_my_layers = layer_conformance_tests(plugin="layerkit-activations")

See ``docs/plugins.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from layerkit.nn.layer import Coupling
from layerkit.plugins import registry_or_global

__all__ = ["run_layer_test", "layer_conformance_tests", "conformance_cases", "fill_defaults", "LayerCase",
           "check_layer_metadata"]


def fill_defaults(layer_cls, config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``config`` against the layer's ``params_schema`` and fill its defaults, as a model file would."""
    import jsonschema

    from layerkit.modelfile.spec import fill_defaults as fill_schema_defaults

    schema = layer_cls.params_schema
    name = getattr(layer_cls, "type", "") or layer_cls.__name__
    try:
        jsonschema.Draft202012Validator(schema).validate(dict(config))
    except jsonschema.ValidationError as exc:
        raise AssertionError(f"layer {name!r}: config {dict(config)} does not validate against its "
                             f"params_schema: {exc.message}") from None
    filled = fill_schema_defaults(schema, dict(config))
    try:
        jsonschema.Draft202012Validator(schema).validate(filled)
    except jsonschema.ValidationError as exc:
        raise AssertionError(f"layer {name!r}: a default in params_schema is invalid: {exc.message}") from None
    return filled


def check_layer_metadata(layer_cls) -> None:
    """What every registered layer must declare: a name, a description, a closed schema, examples."""
    import jsonschema

    name = getattr(layer_cls, "type", "")
    assert isinstance(name, str) and name, f"{layer_cls.__name__} has no type name"
    assert (layer_cls.description or "").strip(), f"layer {name!r} has no description"
    schema = layer_cls.params_schema
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise AssertionError(f"layer {name!r}: params_schema is not a valid JSON Schema: {exc.message}") from None
    assert schema.get("type") == "object", f"layer {name!r}: params_schema must have type 'object'"
    assert schema.get("additionalProperties") is False, (
        f"layer {name!r}: params_schema must set additionalProperties: false (typos must be errors)")
    assert len(layer_cls.examples) >= 1, f"layer {name!r} has no examples for the conformance tests"
    coupling = layer_cls.sample_coupling
    assert coupling in tuple(Coupling), (
        f"layer {name!r}: sample_coupling = {coupling!r} is not one of {[c.value for c in Coupling]}")
    for flag in ("has_kinks", "uses_rng", "fresh_dx", "infer_fresh", "commutes_with_max", "pools_max"):
        value = getattr(layer_cls, flag, False)
        assert isinstance(value, (bool, np.bool_)), f"layer {name!r}: {flag} must be True or False, not {value!r}"


def _shapes(value) -> list[tuple[int, ...]]:
    return [tuple(np.shape(v)) for v in value] if isinstance(value, (list, tuple)) else [tuple(np.shape(value))]


def _copy(value):
    return [v.copy() for v in value] if isinstance(value, list) else value.copy()


def _same(a, b) -> bool:
    if isinstance(a, list):
        return all(np.array_equal(x, y) for x, y in zip(a, b))
    return np.array_equal(a, b)


def run_layer_test(layer_type_or_class, config: Mapping[str, Any], input_shape, *, registry=None,
                   batch_size: int = 2, seed: int = 0, samples: int = 32) -> list:
    """Check one layer configuration against the contract; raise AssertionError naming layer and tensor.

    Checked: the config validates and its defaults fill in; declared output shape equals the
    forward output in training and inference mode; declared parameter and state tensors can be
    allocated and backward returns a gradient of the right shape for every one of them (and an
    input gradient of the input's shape); float32 in gives float32 out, forward and backward;
    forward leaves its input and parameters alone, backward leaves ``dy`` alone; every speed path the
    layer overrides gives ``backward``'s numbers bit for bit (``backward_params``: its parameter
    gradients; ``backward_inplace``: on a copy of ``dy``); a ``fresh_dx`` claim holds (no input
    gradient shares memory with ``dy``, the input, the parameters or the cache); a
    ``sample_coupling`` claim holds: ``NONE``, each half of a batch on its own, and ``BATCH_SUMS``,
    both halves at once with ``batch_sum`` exchanging their sums, give the whole batch's outputs,
    input gradients, summed parameter gradients (and running statistics) -- what sample-parallel
    training relies on (:mod:`layerkit.testing.contract`); ``infer`` (and ``infer_inplace``, on a
    copy) equals forward's inference output bit for bit, an ``infer_fresh`` claim holds, and the
    ``inference_affine`` / ``fold_affine`` claims hold (to float32 rounding); a ``commutes_with_max``
    or ``pools_max`` claim holds (a max pool before or after the activation: the same output and
    input gradient, bit for bit); gradients agree with
    finite differences in float64 (:func:`layerkit.gradcheck.layers.check_layer_config`). Returns the gradient-check results.
    """
    from layerkit.gradcheck.layers import check_layer_config, initial_state, random_input, random_params
    from layerkit.gradcheck.render import describe
    from layerkit.nn.initializers import initialize
    from layerkit.testing.contract import (check_inference_paths, check_max_commute, check_sample_coupling,
                                           check_speed_paths)

    cls = (registry_or_global(registry).layer(layer_type_or_class) if isinstance(layer_type_or_class, str)
           else layer_type_or_class)
    name = getattr(cls, "type", "") or cls.__name__
    filled = fill_defaults(cls, config)
    where = f"layer {name!r} (config {filled}, input shape {input_shape})"
    layer = cls(**copy.deepcopy(filled))
    multi = layer.arity != 1
    if multi:
        assert isinstance(input_shape, (list, tuple)) and all(isinstance(s, (list, tuple)) for s in input_shape), (
            f"{where}: a multi-input layer's example needs a list of input shapes")
        in_shape: Any = [tuple(s) for s in input_shape]
    else:
        in_shape = tuple(input_shape)

    declared = tuple(int(d) for d in layer.output_shape(in_shape))
    pspecs, sspecs = layer.param_specs(in_shape), layer.state_specs(in_shape)
    flops = layer.flops(in_shape)
    assert isinstance(flops, (int, np.integer)) and flops >= 0, f"{where}: flops() must be a non-negative int"
    scratch = layer.workspace_bytes(in_shape, batch_size)
    assert isinstance(scratch, (int, np.integer)) and scratch >= 0, (
        f"{where}: workspace_bytes() must be a non-negative int")

    rng = np.random.default_rng(seed)
    for kind, specs in (("parameter", pspecs), ("state", sspecs)):
        for tname, spec in specs.items():
            value = initialize(spec, rng, np.float32)
            assert value.shape == tuple(spec.shape), (
                f"{where}: {kind} {tname!r} declared {tuple(spec.shape)}, allocated {value.shape}")
            assert np.all(np.isfinite(value)), f"{where}: {kind} {tname!r} initialises to non-finite values"

    params = {k: v.astype(np.float32) for k, v in random_params(pspecs, rng).items()}
    x = random_input(in_shape, batch_size, rng, multi)
    x = [v.astype(np.float32) for v in x] if multi else x.astype(np.float32)
    for training in (True, False):
        mode = "training" if training else "inference"
        state = {k: v.astype(np.float32) for k, v in initial_state(sspecs).items()}
        x_before, p_before = _copy(x), {k: v.copy() for k, v in params.items()}
        y, cache = layer.forward(params, x, training, np.random.default_rng(seed), state)
        assert _same(x, x_before), f"{where}: forward ({mode}) modified its input in place"
        for tname in params:
            assert np.array_equal(params[tname], p_before[tname]), (
                f"{where}: forward ({mode}) modified parameter {tname!r}")
        assert np.shape(y) == (batch_size, *declared), (
            f"{where}: {mode} forward returned shape {np.shape(y)[1:]} per sample, output_shape() "
            f"declares {declared}")
        assert np.asarray(y).dtype == np.float32, (
            f"{where}: {mode} forward turned float32 input into {np.asarray(y).dtype}")
        assert np.all(np.isfinite(y)), f"{where}: {mode} forward produced non-finite values"
        if not training:
            check_inference_paths(layer, params, x, state, y, where=where, seed=seed)
            continue
        dy = np.random.default_rng(seed + 1).standard_normal(np.shape(y)).astype(np.float32)
        dx, grads = layer.backward(params, cache, dy)
        grads = dict(grads or {})
        dxs = list(dx) if multi else [dx]
        assert len(dxs) == len(_shapes(x)), f"{where}: backward returned {len(dxs)} input gradients " \
                                             f"for {len(_shapes(x))} inputs"
        for i, (g, shape) in enumerate(zip(dxs, _shapes(x))):
            tname = f"input[{i}]" if multi else "input"
            assert g is not None and np.shape(g) == shape, (
                f"{where}: backward returned {tname} gradient of shape {np.shape(g) if g is not None else None}, "
                f"expected {shape}")
            assert np.asarray(g).dtype == np.float32, f"{where}: {tname} gradient is {np.asarray(g).dtype}, " \
                                                      f"not float32"
        missing = [t for t in pspecs if t not in grads]
        assert not missing, f"{where}: backward returned no gradient for parameter(s) {missing}"
        extra = [t for t in grads if t not in pspecs]
        assert not extra, f"{where}: backward returned gradients for undeclared tensor(s) {extra}"
        for tname, spec in pspecs.items():
            assert np.shape(grads[tname]) == tuple(spec.shape), (
                f"{where}: gradient of {tname!r} has shape {np.shape(grads[tname])}, the parameter {tuple(spec.shape)}")
            assert np.asarray(grads[tname]).dtype == np.float32, (
                f"{where}: gradient of {tname!r} is {np.asarray(grads[tname]).dtype}, not float32")

    state = {k: v.astype(np.float32) for k, v in initial_state(sspecs).items()}
    check_speed_paths(layer, params, x, state, multi=multi, where=where, seed=seed)
    if getattr(layer, "commutes_with_max", False) or getattr(layer, "pools_max", False):
        check_max_commute(layer, in_shape, where=where, seed=seed)
    # four samples: each half then has two, so per-half statistics differ from the whole's
    x4 = random_input(in_shape, max(batch_size, 4), np.random.default_rng([seed, 4]), multi)
    check_sample_coupling(layer, params, x4, initial_state(sspecs), multi=multi, where=where, seed=seed)

    results = check_layer_config(cls, filled, in_shape, batch_size=batch_size, samples=samples, seed=seed)
    bad = [r for r in results if r.status == "fail"]
    if bad:
        lines = [f"{where}: gradient check failed for tensor(s) {', '.join(repr(r.tensor) for r in bad)}"]
        for r in bad:
            lines += describe(r)
        raise AssertionError("\n".join(lines))
    return results


# -- pytest parametrisation ------------------------------------------------------

@dataclass(frozen=True)
class LayerCase:
    """One (layer, example) pair; ``problem`` set means the case exists only to fail with it."""

    layer_type: str
    index: int = 0
    config: Any = None
    input_shape: Any = None
    note: str = ""
    problem: str = ""

    @property
    def id(self) -> str:
        return f"{self.layer_type}-{self.index}" if not self.problem else f"{self.layer_type}-problem"


def _plugin_names(registry, plugin: str) -> set[str]:
    """A plugin is named by its entry-point name or its distribution (pip) name."""
    norm = lambda s: (s or "").replace("_", "-").lower()
    return {name for name, info in registry.plugins.items()
            if norm(name) == norm(plugin) or norm(info.distribution) == norm(plugin)}


def conformance_cases(plugin: str | None = None, *, registry=None) -> list[LayerCase]:
    """Every (layer, example) of one plugin (entry-point or distribution name), or of all plugins."""
    registry = registry_or_global(registry)
    if plugin is None:
        entries = list(registry.entries["layer"].values())
    else:
        names = _plugin_names(registry, plugin)
        if not names:
            known = ", ".join(sorted(registry.plugins)) or "none"
            return [LayerCase(plugin, problem=f"plugin {plugin!r} is not installed or not found "
                                              f"(loaded plugins: {known})")]
        cases = [LayerCase(n, problem=f"plugin {n!r} failed to load: {'; '.join(registry.plugins[n].errors)}")
                 for n in sorted(names) if registry.plugins[n].errors]
        entries = [e for e in registry.entries["layer"].values() if e.plugin in names]
        if not entries and not cases:
            cases.append(LayerCase(plugin, problem=f"plugin {plugin!r} registers no layers"))
        if cases:
            return cases + _entry_cases(entries)
    return _entry_cases(entries)


def _entry_cases(entries) -> list[LayerCase]:
    cases = []
    for entry in sorted(entries, key=lambda e: e.name):
        examples = list(getattr(entry.obj, "examples", ()))
        if not examples:
            cases.append(LayerCase(entry.name, problem=f"layer {entry.name!r} has no examples"))
        for i, ex in enumerate(examples):
            cases.append(LayerCase(entry.name, i, ex.config, ex.input_shape, ex.note))
    return cases


def run_case(case: LayerCase, registry=None) -> None:
    if case.problem:
        raise AssertionError(case.problem)
    cls = registry_or_global(registry).layer(case.layer_type)
    check_layer_metadata(cls)
    run_layer_test(cls, case.config, case.input_shape, registry=registry)


def layer_conformance_tests(plugin: str | None = None, *, registry=None):
    """A pytest test function parametrised over every layer x example of ``plugin`` (all when None).

    Assign it to a ``test_*`` name in a test module; each case reports as ``LAYER-INDEX``.
    """
    import pytest

    cases = conformance_cases(plugin, registry=registry)

    @pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])
    def test_layer_conformance(case: LayerCase) -> None:
        run_case(case, registry)

    return test_layer_conformance
