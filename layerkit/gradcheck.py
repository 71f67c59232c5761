"""Gradient checks: analytic backward passes against central differences.

Two checks, both in float64 (see ``docs/gradcheck.md`` for the numbers):

* per layer, in isolation (:func:`check_layer`): the layer's output is reduced
  to ``L = sum(R * y)`` for a fixed random ``R``, so ``dL/dy = R`` is what
  backward receives; every input and parameter tensor is compared coordinate by
  coordinate (all of them for small tensors, a random sample for large ones);
* end to end (part of :func:`check_model`): the model's loss w.r.t. every
  parameter tensor, along random directions, which catches what no single
  layer shows (gradient accumulation at branches, arrays modified in place,
  the loss's own backward).

Non-differentiable points (relu at 0, max-pool ties) are recognised by the
one-sided differences disagreeing and skipped, never reported as failures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .errors import LayerkitError
from .layer import Layer
from .spec import RESERVED_INPUT

PASS_TOL = 1e-6
WARN_TOL = 1e-4
#: one-sided differences further apart than this (relative) mean a kink in the stencil
KINK_TOL = 1e-3
#: analytic and numeric both below this: agreement
ABS_FLOOR = 1e-10
#: round-off estimate of a numeric derivative: this many ulps of the output's scale over the step
NOISE_ULPS = 2
#: a difference as large as the round-off estimate scores at most PASS_TOL / 10
FLOOR_FACTOR = 10 / PASS_TOL
SWEEP_STEPS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
#: at most this many times ``samples`` candidates are tried when kinks are skipped
KINK_BUDGET = 8
EPS = float(np.finfo(np.float64).eps)

STATUS_ORDER = {"pass": 0, "skipped": 1, "warn": 2, "fail": 3}


# -- results ----------------------------------------------------------------------

@dataclass
class Worst:
    """The coordinate (or direction) with the largest error, and how the error moves with the step."""

    index: tuple[int, ...] | str
    analytic: float
    numeric: float
    rel_error: float
    sweep: list[tuple[float, float, float]] = field(default_factory=list)  # (step, numeric, rel_error)
    diagnosis: str = ""


@dataclass
class TensorResult:
    layer: str
    tensor: str
    shape: tuple[int, ...]
    checked: int
    total: int
    strategy: str
    max_rel_error: float | None
    status: str  # pass | warn | fail | skipped
    kinks: int = 0
    worst: Worst | None = None
    message: str = ""
    scope: str = "layer"  # "layer": in isolation; "model": end-to-end loss gradient
    layer_type: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    @property
    def label(self) -> str:
        return f"{self.layer}.{self.tensor}"

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    """Tuples to lists, and non-finite floats to strings: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def relative_error(analytic: float, numeric: float, noise: float = 0.0) -> float:
    """|a - n| / (|a| + |n|), the denominator floored at ``FLOOR_FACTOR * noise`` so that a
    difference within round-off always stays below ``PASS_TOL / 10``; when both values are
    below ``ABS_FLOOR`` they agree."""
    if not (math.isfinite(analytic) and math.isfinite(numeric)):
        return math.inf  # NaN must never compare as "not worse"
    if abs(analytic) < ABS_FLOOR and abs(numeric) < ABS_FLOOR:
        return 0.0
    floor = max(FLOOR_FACTOR * noise, ABS_FLOOR)
    return abs(analytic - numeric) / max(abs(analytic) + abs(numeric), floor)


def status_of(error: float) -> str:
    if error < PASS_TOL:
        return "pass"
    if error < WARN_TOL:
        return "warn"
    return "fail"


def _is_kink(forward: float, backward: float, atol: float) -> bool:
    """A kink inside [x - h, x + h] shows as one-sided slopes that disagree by far more
    than curvature (h * f'') or round-off can explain."""
    return abs(forward - backward) > KINK_TOL * (abs(forward) + abs(backward)) + 4 * atol + ABS_FLOOR


def _diagnose(analytic: float, sweep: list[tuple[float, float, float]]) -> str:
    errors = [e for _, _, e in sweep]
    best_step, _, best = min(sweep, key=lambda s: s[2])
    if best < PASS_TOL:
        return (f"agrees at step {best_step:g} (error {best:.1e}): numerical trouble at the default step "
                f"(truncation at large steps, round-off at small ones), not a wrong gradient")
    spread = max(errors) / max(min(errors), 1e-300)
    numerics = [n for _, n, _ in sweep]
    if spread < 10:
        middle = numerics[len(numerics) // 2]
        ratio = f"; analytic/numeric = {analytic / middle:.4g}" if middle != 0 else ""
        return f"wrong at every step size: a bug in backward{ratio}"
    return "error changes with the step size: an undeclared kink or badly conditioned input"


# -- per-layer check --------------------------------------------------------------

def _as_f64(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [np.array(v, dtype=np.float64, copy=True) for v in value]
    return np.array(value, dtype=np.float64, copy=True)


class _LayerProbe:
    """Evaluates one layer's forward with one tensor perturbed, compared to the unperturbed output.

    ``L = sum(R * y)``; differences are taken elementwise (``R * (y+ - y0)``) so that outputs the
    perturbation does not touch cancel exactly instead of adding round-off.
    """

    def __init__(self, layer: Layer, params: dict[str, np.ndarray], x: Any,
                 state: Mapping[str, np.ndarray] | None, forward_seed: int) -> None:
        self.layer, self.params, self.x = layer, params, x
        self.state = {k: np.array(v, copy=True) for k, v in (state or {}).items()}
        self.forward_seed = forward_seed

    def forward(self) -> tuple[np.ndarray, Any]:
        # a fresh generator per call: dropout draws the same mask every time;
        # a fresh state copy: batch-norm running statistics never drift between calls
        rng = np.random.default_rng(self.forward_seed)
        state = {k: v.copy() for k, v in self.state.items()}
        x = [v.copy() for v in self.x] if isinstance(self.x, list) else self.x.copy()
        y, cache = self.layer.forward(self.params, x, True, rng, state)
        return np.asarray(y, dtype=np.float64), cache

    def setup(self, R: np.ndarray, y0: np.ndarray) -> None:
        self.R, self.y0 = R, y0
        self.Ry0 = R * y0

    def differences(self, flat: np.ndarray, i: int, step: float) -> tuple[float, float, float]:
        """(L(+h) - L(0), L(0) - L(-h), round-off allowance on the slopes)."""
        orig = flat[i]
        try:
            flat[i] = orig + step
            y_plus = self.forward()[0]
            flat[i] = orig - step
            y_minus = self.forward()[0]
        finally:
            flat[i] = orig
        up = float(np.sum(self.R * (y_plus - self.y0)))
        down = float(np.sum(self.R * (self.y0 - y_minus)))
        changed = (y_plus != self.y0) | (y_minus != self.y0)
        scale = math.sqrt(float(np.sum(np.square(self.Ry0[changed])))) if changed.any() else 0.0
        return up, down, NOISE_ULPS * EPS * scale / step


def _candidates(n: int, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    if n <= samples:
        return np.arange(n), True
    return rng.choice(n, size=min(n, KINK_BUDGET * samples), replace=False), False


def _sweep(diff: Callable[[float], tuple[float, float, float]], analytic: float) -> list[tuple[float, float, float]]:
    out = []
    for step in SWEEP_STEPS:
        up, down, noise = diff(step)
        numeric = (up + down) / (2 * step)
        out.append((step, numeric, relative_error(analytic, numeric, noise)))
    return out


def _compare_tensor(probe: _LayerProbe, array: np.ndarray, analytic: np.ndarray, *, layer_name: str,
                    tensor: str, samples: int, rng: np.random.Generator, step: float, kinks: bool,
                    layer_type: str) -> TensorResult:
    flat = array.reshape(-1)  # a view: the arrays here are fresh C-contiguous copies
    grad = np.asarray(analytic, dtype=np.float64).reshape(-1)
    candidates, exhaustive = _candidates(flat.size, samples, rng)
    worst_i, worst_err, worst_num, checked, skipped = -1, -1.0, 0.0, 0, 0
    undeclared_kink = False
    for i in candidates:
        if not exhaustive and checked >= samples:
            break
        up, down, noise = probe.differences(flat, int(i), step)
        if _is_kink(up / step, down / step, noise):
            if kinks:
                skipped += 1
                continue
            undeclared_kink = True
        numeric = (up + down) / (2 * step)
        err = relative_error(float(grad[i]), numeric, noise)
        checked += 1
        if err > worst_err:
            worst_i, worst_err, worst_num = int(i), err, numeric
    strategy = "exhaustive" if exhaustive else f"sampled {checked} of {flat.size}"
    result = TensorResult(layer_name, tensor, tuple(array.shape), checked, flat.size, strategy,
                          None, "skipped", skipped, layer_type=layer_type)
    if checked == 0:
        result.message = f"every coordinate tried ({skipped}) sits at a kink"
        return result
    result.max_rel_error = worst_err
    result.status = status_of(worst_err)
    index = tuple(int(k) for k in np.unravel_index(worst_i, array.shape))
    worst = Worst(index, float(grad[worst_i]), worst_num, worst_err)
    if result.status != "pass":
        worst.sweep = _sweep(lambda h: probe.differences(flat, worst_i, h), worst.analytic)
        worst.diagnosis = _diagnose(worst.analytic, worst.sweep)
        if result.status == "fail" and min(e for _, _, e in worst.sweep) < PASS_TOL:
            result.status = "warn"  # the gradient is right; the default step is not
        if undeclared_kink:
            worst.diagnosis += ("; one-sided differences disagree somewhere although the layer "
                                "declares has_kinks = False")
    result.worst = worst
    return result


def _failed(layer_name: str, tensor: str, shape, message: str, layer_type: str) -> TensorResult:
    size = int(np.prod(shape)) if shape is not None else 0
    return TensorResult(layer_name, tensor, tuple(shape or ()), 0, size, "-", None, "fail",
                        message=message, layer_type=layer_type)


def check_layer(layer: Layer, params: Mapping[str, np.ndarray], x: Any, *,
                state: Mapping[str, np.ndarray] | None = None, samples: int = 32, seed: int = 0,
                step: float = 1e-6, name: str | None = None) -> list[TensorResult]:
    """Check one layer's backward against central differences of ``sum(R * forward(x))``.

    ``x`` carries the batch axis (a list of arrays for multi-input layers); ``params`` and
    ``state`` are this layer's tensors. Everything is copied to float64 first. Returns one
    result per input tensor (``input`` or ``input[i]``) and per parameter tensor.
    """
    layer_name = name or layer.type or type(layer).__name__
    layer_type = layer.type or type(layer).__name__
    rng = np.random.default_rng(seed)
    multi = layer.arity != 1
    xs = _as_f64(list(x) if multi else x)
    p64 = {k: _as_f64(v) for k, v in params.items()}
    probe = _LayerProbe(layer, p64, xs, state, int(rng.integers(2**31)))
    input_names = [f"input[{i}]" for i in range(len(xs))] if multi else ["input"]
    inputs = xs if multi else [xs]

    try:
        y0, cache = probe.forward()
    except Exception as exc:
        return [_failed(layer_name, "forward", None, f"forward raised {type(exc).__name__}: {exc}", layer_type)]
    R = rng.standard_normal(y0.shape)
    probe.setup(R, y0)
    try:
        dx, grads = layer.backward(p64, cache, R.copy())
    except Exception as exc:
        return [_failed(layer_name, "backward", None, f"backward raised {type(exc).__name__}: {exc}", layer_type)]
    # copied now: a layer may reuse its buffers in the perturbed forwards that follow
    grads = {k: None if v is None else np.array(v, dtype=np.float64) for k, v in dict(grads or {}).items()}
    dxs = list(dx) if multi and isinstance(dx, (list, tuple)) else [dx]
    dxs = [None if d is None else np.array(d, dtype=np.float64) for d in dxs]

    results = []
    targets: list[tuple[str, np.ndarray, Any]] = []
    for i, (tname, arr) in enumerate(zip(input_names, inputs)):
        targets.append((tname, arr, dxs[i] if i < len(dxs) else None))
    for pname, arr in p64.items():
        targets.append((pname, arr, grads.pop(pname, None)))
    for tname, arr, analytic in targets:
        what = "input gradient" if tname.startswith("input") else "gradient"
        if analytic is None:
            results.append(_failed(layer_name, tname, arr.shape, f"backward returned no {what} for {tname!r}",
                                   layer_type))
            continue
        if np.shape(analytic) != arr.shape:
            results.append(_failed(layer_name, tname, arr.shape,
                                   f"backward returned a {what} of shape {tuple(np.shape(analytic))} "
                                   f"for {tname!r} of shape {arr.shape}", layer_type))
            continue
        try:
            results.append(_compare_tensor(probe, arr, analytic, layer_name=layer_name, tensor=tname,
                                           samples=samples, rng=rng, step=step, kinks=layer.has_kinks,
                                           layer_type=layer_type))
        except Exception as exc:  # a forward that cannot take a perturbed input is the layer's bug
            results.append(_failed(layer_name, tname, arr.shape, f"forward raised {type(exc).__name__} on a "
                                                                 f"perturbed {tname}: {exc}", layer_type))
    for extra in grads:
        results.append(_failed(layer_name, extra, None,
                               f"backward returned a gradient for {extra!r}, which is not a parameter", layer_type))
    return results


# -- random tensors for a layer -------------------------------------------------

def random_params(specs: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard-normal parameters: initial values (zero biases, unit scales) would hide
    backward bugs that multiply by them."""
    return {name: rng.standard_normal(tuple(spec.shape)) for name, spec in specs.items()}


def initial_state(specs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from .initializers import initialize

    return {name: initialize(spec, np.random.default_rng(0), np.float64) for name, spec in specs.items()}


def random_input(input_shape: Any, batch_size: int, rng: np.random.Generator, multi: bool) -> Any:
    if multi:
        return [rng.standard_normal((batch_size, *tuple(s))) for s in input_shape]
    return rng.standard_normal((batch_size, *tuple(input_shape)))


def check_layer_config(layer_cls: type[Layer], config: Mapping[str, Any], input_shape: Any, *,
                       batch_size: int = 2, samples: int = 32, seed: int = 0, step: float = 1e-6,
                       name: str | None = None) -> list[TensorResult]:
    """Check a layer class from a config and a per-sample input shape (random input and parameters).

    ``config`` must already have its defaults filled (see :func:`layerkit.testing.fill_defaults`).
    """
    layer = layer_cls(**dict(config))
    rng = np.random.default_rng([seed, 7])
    multi = layer.arity != 1
    x = random_input(input_shape, batch_size, rng, multi)
    params = random_params(layer.param_specs(input_shape), rng)
    state = initial_state(layer.state_specs(input_shape))
    return check_layer(layer, params, x, state=state, samples=samples, seed=seed, step=step,
                       name=name or layer.type)


# -- whole model ------------------------------------------------------------------

@dataclass
class GradCheckReport:
    model: str
    rows: list[TensorResult]
    settings: dict[str, Any] = field(default_factory=dict)
    blame: str = ""

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
        return not self.failures

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
        if counts["skipped"]:
            extra.append(f"{counts['skipped']} tensor(s) not checkable (only kinks)")
        if self.kinks:
            extra.append(f"{self.kinks} kink coordinate(s) skipped")
        tail = f" ({'; '.join(extra)})" if extra else ""
        if self.ok:
            return f"PASS: {len(self.rows)} gradient checks agree, {worst}{tail}"
        names = ", ".join(f"{r.label}" + (" (end to end)" if r.scope == "model" else "")
                          for r in self.failures[:6])
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
        }

    def render(self, console=None) -> None:
        from .gradcheck_render import render_report

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


def check_model(model, x: np.ndarray | None = None, y: np.ndarray | None = None, *, batch_size: int = 2,
                samples: int = 32, seed: int = 0, whole_model: bool = True, step: float = 1e-6,
                directions: int = 3, registry=None) -> GradCheckReport:
    """Check every layer of a built model in isolation and, with ``whole_model``, the loss gradient.

    With a real batch ``x`` (and labels ``y``), its first ``batch_size`` samples are used and each
    layer is checked on the activations it actually receives, with the model's parameters;
    without one, every layer gets random standard-normal inputs and parameters.
    """
    from .gradcheck_model import check_end_to_end

    m64 = model.astype(np.float64)
    rng = np.random.default_rng(seed)
    real = x is not None
    if real:
        x = np.array(x[:batch_size], dtype=np.float64)
        y = None if y is None else np.asarray(y)[:batch_size]
        acts = _model_forward_inputs(m64, x, int(rng.integers(2**31)))
    else:
        x = rng.standard_normal((batch_size, *m64.graph.input_shape))
    rows: list[TensorResult] = []
    for index, node in enumerate(m64.nodes):
        layer_rng = np.random.default_rng([seed, index])
        multi = node.layer.arity != 1
        if real:
            inp, params = acts[node.name], m64.params[node.name]
        else:
            inp = random_input(node.input_shape, batch_size, layer_rng, multi)
            params = random_params(node.param_specs, layer_rng)
        rows += check_layer(node.layer, params, inp, state=m64.state[node.name], samples=samples,
                            seed=int(layer_rng.integers(2**31)), step=step, name=node.name)
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


class GradCheckError(LayerkitError):
    """The gradient check could not run (e.g. no target fits the model's loss)."""
