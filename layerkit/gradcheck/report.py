"""A whole model's gradient check: every layer in isolation, then the loss end to end."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from layerkit.gradcheck.layers import NOT_DIFFERENTIATED, check_layer, random_input, random_params
from layerkit.gradcheck.model import check_end_to_end
from layerkit.gradcheck.numerics import (PASS_TOL, WARN_TOL, KINK_TOL, ABS_FLOOR, STATUS_ORDER, TensorResult,
                                         jsonable)
from layerkit.nn.layer import RESERVED_INPUT, input_kinds
from layerkit.nn.plan import BackwardCall
from layerkit.parallel import blas

# -- whole model ------------------------------------------------------------------

@dataclass
class CheckResult:
    """The outcome of one named contract check (:mod:`layerkit.testing.engine`) in a layer file's report."""

    layer: str
    example: str
    check: str
    member: str
    status: str  # pass | fail
    message: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


@dataclass
class GradCheckReport:
    """What ``check-grads`` found: one row per gradient tensor, and (for a layer file) one result per
    contract check; ``blame`` says where to look when the end-to-end check fails."""

    model: str
    rows: list[TensorResult]
    settings: dict[str, Any] = field(default_factory=dict)
    blame: str = ""
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def layer_rows(self) -> list[TensorResult]:
        return [r for r in self.rows if r.scope == "layer"]

    @property
    def model_rows(self) -> list[TensorResult]:
        return [r for r in self.rows if r.scope == "model"]

    @property
    def failures(self) -> list[TensorResult]:
        return [r for r in self.rows if r.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.failed_checks

    @property
    def kinks(self) -> int:
        return sum(r.kinks for r in self.rows)

    def verdict(self) -> str:
        counts = {s: sum(1 for r in self.rows if r.status == s) for s in STATUS_ORDER}
        errors = [r.max_rel_error for r in self.rows if r.max_rel_error is not None]
        worst = f"max relative error {max(errors):.1e}" if errors else "nothing compared"
        extra = []
        if counts["warn"]:
            extra.append(f"{counts['warn']} warning(s)")
        tokens = sum(1 for r in self.rows if r.strategy == NOT_DIFFERENTIATED)
        if counts["skipped"] - tokens:
            extra.append(f"{counts['skipped'] - tokens} tensor(s) not checkable (only kinks)")
        if tokens:
            extra.append(f"{tokens} token-id input(s) not differentiated")
        if self.kinks:
            extra.append(f"{self.kinks} kink coordinate(s) skipped")
        if self.checks:
            extra.insert(0, f"{len(self.checks) - len(self.failed_checks)} of {len(self.checks)} contract "
                            f"checks pass")
        tail = f" ({'; '.join(extra)})" if extra else ""
        if self.ok:
            return f"PASS: {len(self.rows)} gradient checks agree, {worst}{tail}"
        if not self.failures:
            names = ", ".join(f"{c.layer}: {c.check} [{c.member}]" for c in self.failed_checks[:6])
            more = " ..." if len(self.failed_checks) > 6 else ""
            return f"FAIL: {len(self.failed_checks)} contract check(s) failed: {names}{more}{tail}"
        names = ", ".join(f"{r.label}" + (" (end to end)" if r.scope == "model" else "")
                          + (f" (through {r.via})" if r.via != "backward" else "") for r in self.failures[:6])
        more = " ..." if len(self.failures) > 6 else ""
        return f"FAIL: {counts['fail']} of {len(self.rows)} gradient checks wrong: {names}{more}{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ok": self.ok,
            "verdict": self.verdict(),
            "blame": self.blame or None,
            "settings": self.settings,
            "thresholds": {"pass": PASS_TOL, "warn": WARN_TOL, "kink": KINK_TOL, "abs_floor": ABS_FLOOR},
            "layers": [r.to_dict() for r in self.layer_rows],
            "whole_model": [r.to_dict() for r in self.model_rows],
            "checks": [c.to_dict() for c in self.checks],
        }

    def render(self, console=None) -> None:
        from layerkit.gradcheck.render import render_report

        render_report(self, console)


def _model_forward_inputs(model, x: np.ndarray, forward_seed: int) -> dict[str, Any]:
    """What each node receives on this batch in training mode (state copied, not updated)."""
    rng = np.random.default_rng(forward_seed)
    values: dict[str, Any] = {RESERVED_INPUT: x}
    inputs: dict[str, Any] = {}
    for node in model.nodes:
        got = [values[r] for r in node.inputs]
        inp = got[0] if node.layer.arity == 1 else got
        inputs[node.name] = inp
        state = {k: v.copy() for k, v in model.state[node.name].items()}
        values[node.name] = node.layer.forward(model.params[node.name], inp, True, rng, state)[0]
    return inputs


def _random_model_input(model, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """A random batch for the model input: standard normal, or for token ids, ids every layer
    reading the input accepts (below the smallest ``token_range`` of its readers)."""
    if model.graph.input_dtype != "int64":
        return rng.standard_normal((batch_size, *model.graph.input_shape))
    ranges = []
    for node in model.nodes:
        for ref, kind in zip(node.inputs, input_kinds(node.layer, len(node.inputs)), strict=True):
            if ref == RESERVED_INPUT and kind == "tokens":
                ranges.append(int(node.layer.token_range()))
    return rng.integers(0, min(ranges) if ranges else 2, size=(batch_size, *model.graph.input_shape), dtype=np.int64)


def check_model(model, x: np.ndarray | None = None, y: np.ndarray | None = None, *, batch_size: int = 2,
                samples: int = 32, seed: int = 0, whole_model: bool = True, step: float = 1e-6,
                directions: int = 3, registry=None) -> GradCheckReport:
    """Check every layer of a built model in isolation and, with ``whole_model``, the loss gradient.

    With a real batch ``x`` (and labels ``y``), its first ``batch_size`` samples are used and each
    layer is checked on the activations it actually receives, with the model's parameters;
    without one, every layer gets random standard-normal inputs and random parameters
    (:func:`layerkit.gradcheck.layers.random_params`: at the initializer's spread).
    """
    # tiny float64 GEMMs: a second BLAS thread only synchronises (see blas.one_thread)
    with blas.one_thread():
        return _check_model(model, x, y, batch_size=batch_size, samples=samples, seed=seed,
                            whole_model=whole_model, step=step, directions=directions, registry=registry)


def _check_model(model, x, y, *, batch_size, samples, seed, whole_model, step, directions, registry
                 ) -> GradCheckReport:
    m64 = model.astype(np.float64)
    rng = np.random.default_rng(seed)
    real = x is not None
    if real:
        x = np.array(x[:batch_size], dtype=np.int64 if m64.graph.input_dtype == "int64" else np.float64)
        y = None if y is None else np.asarray(y)[:batch_size]
        acts = _model_forward_inputs(m64, x, int(rng.integers(2**31)))
    else:
        x = _random_model_input(m64, batch_size, rng)
    rows: list[TensorResult] = []
    for index, node in enumerate(m64.nodes):
        layer_rng = np.random.default_rng([seed, index])
        multi = node.layer.arity != 1
        if real:
            inp, params = acts[node.name], m64.params[node.name]
        else:
            inp = random_input(node.input_shape, batch_size, layer_rng, multi, node.layer)
            params = random_params(node.param_specs, layer_rng)
        # the method training calls for this node (the model's own plan: a frozen layer's input
        # gradient comes from backward_input), so what is checked is what trains
        call = model.plan.nodes[index].backward
        via = "backward" if call is BackwardCall.SKIP else call.value
        rows += check_layer(node.layer, params, inp, state=m64.state[node.name], samples=samples,
                            seed=int(layer_rng.integers(2**31)), step=step, name=node.name, via=via)
    report = GradCheckReport(m64.graph.spec.name, rows, {
        "batch_size": int(x.shape[0]), "samples": samples, "seed": seed, "step": step,
        "inputs": "real batch" if real else "random", "whole_model": whole_model,
        "directions": directions if whole_model else 0,
        "end_to_end_nudge": whole_model and any(n.layer.has_kinks for n in m64.nodes)})
    if whole_model:
        end_rows, blame = check_end_to_end(m64, x, y, rows, seed=seed, step=step, directions=directions,
                                           registry=registry)
        report.rows += end_rows
        report.blame = blame
    return report
