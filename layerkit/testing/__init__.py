"""Conformance tests for layer authors: does a layer honour the contract of :mod:`layerkit.nn.layer`?

Every claim a layer makes is one named check of the engine in :mod:`layerkit.testing.engine`
(``output_shape_matches_forward``, ``gradients_match_finite_differences``,
``backward_inplace_equals_backward`` ...); a failed claim raises
:class:`~layerkit.errors.ContractError` naming the layer, the example, the check and the member.

Check one configuration by hand::

    from layerkit.testing import run_layer_test
    run_layer_test("swish", {"beta": 1.5}, (4, 3, 3))

or get every layer, example and check of a plugin as pytest cases, in one line of a test module::

    from layerkit.testing import layer_conformance_tests
    test_my_layers = layer_conformance_tests(plugin="layerkit-activations")

See ``docs/plugins.md``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from layerkit.errors import ContractError
from layerkit.plugins import registry_or_global
from layerkit.testing.engine import CHECKS, Broken, Check, Subject, subject_for, yield_checks

__all__ = ["run_layer_test", "layer_conformance_tests", "conformance_cases", "LayerCase", "check_layer_metadata",
           "CheckCase", "check_cases", "yield_checks", "Check", "Subject", "CHECKS", "ContractError",
           "fill_defaults"]


def fill_defaults(layer_cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """Deprecated since 0.2.0 (removed in 0.3.0): ``config`` validated against the layer's ``params_schema``,
    with its defaults filled in. Use :func:`layerkit.modelfile.spec.fill_defaults` (``(schema, config)``) to
    fill defaults; the ``config_validates`` check validates an example."""
    warnings.warn("layerkit.testing.fill_defaults(layer_cls, config) is deprecated; use "
                  "layerkit.modelfile.spec.fill_defaults(layer_cls.params_schema, config), which fills the "
                  "defaults (the config_validates check validates)", DeprecationWarning, stacklevel=2)
    subject = Subject(layer_cls, dict(config), ())
    try:
        return subject.filled
    except Broken as broken:
        raise subject.error("config_validates", broken) from None


def check_layer_metadata(layer_cls: type) -> None:
    """What every registered layer must declare, checked by the engine's class checks (``type_name``,
    ``method_signatures``, ``params_schema_valid``, ``declarations``, ``metadata``,
    ``schema_closed_and_defaults``): a type name, a description, a valid closed schema, examples.
    Raises :class:`ContractError` for the first claim that fails."""
    subject = Subject(layer_cls)
    for check in yield_checks(layer_cls):
        check.run(subject)


def run_layer_test(layer_type_or_class: str | type, config: Mapping[str, Any], input_shape: Any, *,
                   registry: Any = None, batch_size: int = 2, seed: int = 0, samples: int = 32) -> list:
    """Run every check of the engine that applies to one layer configuration; raise the first
    :class:`ContractError` (the layer, the example, the check, the member, the numbers).

    The checks are those of one example (``layerkit.testing.engine.CHECKS``, scope ``"example"``):
    the config validates; shapes, dtypes and finiteness of forward and backward; forward leaves its
    input, backward its ``dy`` alone; each declared capability holds (``backward_params``,
    ``backward_inplace``, ``fresh_dx``, ``infer_inplace``, ``infer_fresh``, ``inference_affine``,
    ``fold_affine``, ``commutes_with_max``, ``pools_max``); ``infer`` equals forward's inference
    output; a ``sample_coupling`` of NONE or BATCH_SUMS holds on two halves of a batch; gradients
    agree with finite differences in float64 (:func:`layerkit.gradcheck.layers.check_layer_config`).
    Returns the gradient-check results.
    """
    cls = (registry_or_global(registry).layer(layer_type_or_class) if isinstance(layer_type_or_class, str)
           else layer_type_or_class)
    subject = Subject(cls, dict(config), input_shape, batch_size=batch_size, seed=seed, samples=samples)
    results: list = []
    for check in yield_checks(cls, subject):
        got = check.run(subject)
        if check.name == "gradients_match_finite_differences":
            results = got
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


def _plugin_names(registry: Any, plugin: str) -> set[str]:
    """A plugin is named by its entry-point name or its distribution (pip) name."""
    def norm(text: str | None) -> str:
        return (text or "").replace("_", "-").lower()

    return {name for name, info in registry.plugins.items()
            if norm(name) == norm(plugin) or norm(info.distribution) == norm(plugin)}


def conformance_cases(plugin: str | None = None, *, registry: Any = None) -> list[LayerCase]:
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


def _entry_cases(entries: Any) -> list[LayerCase]:
    cases = []
    for entry in sorted(entries, key=lambda e: e.name):
        examples = list(getattr(entry.obj, "examples", ()))
        if not examples:
            cases.append(LayerCase(entry.name, problem=f"layer {entry.name!r} has no examples"))
        for i, ex in enumerate(examples):
            cases.append(LayerCase(entry.name, i, ex.config, ex.input_shape, ex.note))
    return cases


def run_case(case: LayerCase, registry: Any = None) -> None:
    """Every check of one (layer, example) case: the class checks, then the example's."""
    if case.problem:
        raise ContractError(case.problem, check="plugin_loads", layer=case.layer_type)
    cls = registry_or_global(registry).layer(case.layer_type)
    check_layer_metadata(cls)
    run_layer_test(cls, case.config, case.input_shape, registry=registry)


@dataclass(frozen=True)
class CheckCase:
    """One check of one layer (``index`` None: a class check) or of one (layer, example); ``problem``
    set means the case exists only to fail with it (a plugin that did not load, a layer without
    examples). ``id`` is ``LAYER-CHECK`` or ``LAYER-INDEX-CHECK``, e.g. ``swish-0-fresh_dx``."""

    layer_type: str
    check: str
    index: int | None = None
    config: Any = None
    input_shape: Any = None
    problem: str = ""

    @property
    def id(self) -> str:
        if self.problem:
            return f"{self.layer_type}-problem"
        if self.index is None:
            return f"{self.layer_type}-{self.check}"
        return f"{self.layer_type}-{self.index}-{self.check}"

    def run(self, registry: Any = None) -> Any:
        """Run the check; raises :class:`ContractError` when the claim does not hold."""
        if self.problem:
            raise ContractError(self.problem, check=self.check, layer=self.layer_type)
        cls = registry_or_global(registry).layer(self.layer_type)
        subject = Subject(cls) if self.index is None else subject_for(cls, self.config, self.input_shape,
                                                                      index=self.index)
        return CHECKS[self.check].run(subject)


def check_cases(plugin: str | None = None, *, registry: Any = None) -> list[CheckCase]:
    """Every check of every layer (and example) of one plugin, or of all: the class checks once per
    layer, then each example's applicable checks (:func:`yield_checks`)."""
    reg = registry_or_global(registry)
    out: list[CheckCase] = []
    seen: set[str] = set()
    for case in conformance_cases(plugin, registry=registry):
        if case.problem:
            out.append(CheckCase(case.layer_type, "plugin_loads", problem=case.problem))
            continue
        cls = reg.layer(case.layer_type)
        if case.layer_type not in seen:
            seen.add(case.layer_type)
            out += [CheckCase(case.layer_type, c.name) for c in yield_checks(cls)]
        subject = subject_for(cls, case.config, case.input_shape, index=case.index)
        out += [CheckCase(case.layer_type, c.name, case.index, case.config, case.input_shape)
                for c in yield_checks(cls, subject)]
    return out


def layer_conformance_tests(plugin: str | None = None, *, registry: Any = None) -> Callable[..., None]:
    """A pytest test function parametrised over every layer x example x check of ``plugin`` (all when None).

    Assign it to a ``test_*`` name in a test module; each case reports as ``LAYER-INDEX-CHECK``
    (``swish-0-gradients_match_finite_differences``), a class check as ``LAYER-CHECK``.
    """
    import pytest

    cases = check_cases(plugin, registry=registry)

    @pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])
    def test_layer_conformance(case: CheckCase) -> None:
        case.run(registry)

    return test_layer_conformance
