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
from typing import Any, Callable, Mapping, cast

import numpy as np

from layerkit.gradcheck.numerics import (EPS, KINK_BUDGET, NOISE_ULPS, PASS_TOL, SWEEP_STEPS, TensorResult, Worst,
                                         as_f64, diagnose, is_kink, out_of_memory, relative_error, status_of)
from layerkit.nn.capabilities import InputGradientOnly
from layerkit.nn.layer import Layer, input_kinds

#: what the table says for an input of integer token ids, which has no gradient
NOT_DIFFERENTIATED = "not differentiated (token ids)"


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
                    layer_type: str, method: str = "backward") -> TensorResult:
    flat = array.reshape(-1)  # a view: the arrays here are fresh C-contiguous copies
    grad = np.asarray(analytic, dtype=np.float64).reshape(-1)
    candidates, exhaustive = _candidates(flat.size, samples, rng)
    worst_i, worst_err, worst_num, checked, skipped = -1, -1.0, 0.0, 0, 0
    undeclared_kink = False
    for i in candidates:
        if not exhaustive and checked >= samples:
            break
        up, down, noise = probe.differences(flat, int(i), step)
        if is_kink(up / step, down / step, noise):
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
        worst.diagnosis = diagnose(worst.analytic, worst.sweep, method)
        if result.status == "fail" and min(e for _, _, e in worst.sweep) < PASS_TOL:
            result.status = "warn"  # the gradient is right; the default step is not
        if undeclared_kink:
            worst.diagnosis += ("; one-sided differences disagree somewhere although the layer "
                                "declares has_kinks = False")
    result.worst = worst
    return result


def _failed(layer_name: str, tensor: str, shape, message: str, layer_type: str,
            via: str = "backward") -> TensorResult:
    size = int(np.prod(shape)) if shape is not None else 0
    return TensorResult(layer_name, tensor, tuple(shape or ()), 0, size, "-", None, "fail",
                        message=message, layer_type=layer_type, via=via)


#: the Layer methods a model's backward may call for a layer (``NodeRecord.backward`` in ``Network.plan``)
PATHS = ("backward", "backward_params", "backward_inplace", "backward_input")


def check_layer(layer: Layer, params: Mapping[str, np.ndarray], x: Any, *,
                state: Mapping[str, np.ndarray] | None = None, samples: int = 32, seed: int = 0,
                step: float = 1e-6, name: str | None = None, via: str = "backward") -> list[TensorResult]:
    """Check one layer's backward against central differences of ``sum(R * forward(x))``.

    ``x`` carries the batch axis (a list of arrays for multi-input layers); ``params`` and
    ``state`` are this layer's tensors. Everything is copied to float64 first. Returns one
    result per input tensor (``input`` or ``input[i]``) and per parameter tensor.

    ``via`` is the method whose gradients are compared, the one training calls for this layer:
    ``backward``; ``backward_inplace`` (given its own copy of ``dy``); ``backward_params``
    for the parameter gradients (the input gradient, which training never reads there, still
    comes from ``backward``); or ``backward_input`` for the input gradient (a frozen layer: the
    parameter gradients, which training never computes there, still come from ``backward``).
    """
    if via not in PATHS:
        raise ValueError(f"via must be one of {PATHS}, not {via!r}")
    layer_name = name or layer.type or type(layer).__name__
    layer_type = layer.type or type(layer).__name__
    rng = np.random.default_rng(seed)
    multi = layer.arity != 1
    kinds = input_kinds(layer, len(x) if multi else 1)
    xs = _inputs_f64(list(x) if multi else [x], kinds)
    xs = xs if multi else xs[0]
    p64 = {k: as_f64(v) for k, v in params.items()}
    probe = _LayerProbe(layer, p64, xs, state, int(rng.integers(2**31)))
    input_names = [f"input[{i}]" for i in range(len(xs))] if multi else ["input"]
    inputs = xs if multi else [xs]

    try:
        y0, cache = probe.forward()
    except MemoryError:
        raise out_of_memory() from None
    except Exception as exc:
        return [_failed(layer_name, "forward", None, f"forward raised {type(exc).__name__}: {exc}", layer_type)]
    R = rng.standard_normal(y0.shape)
    probe.setup(R, y0)
    try:
        if via == "backward_params":
            dx, _ = layer.backward(p64, cache, R.copy())
            dx = as_f64(dx)  # before the next forward, which may reuse the layer's buffers
            grads = layer.backward_params(p64, probe.forward()[1], R.copy())
        elif via == "backward_input":
            dx = cast(InputGradientOnly, layer).backward_input(p64, cache, R.copy())
            dx = None if dx is None else as_f64(dx)  # before the next forward, which may reuse buffers
            _, grads = layer.backward(p64, probe.forward()[1], R.copy())
        else:
            dx, grads = getattr(layer, via)(p64, cache, R.copy())
    except MemoryError:
        raise out_of_memory() from None
    except Exception as exc:
        return [_failed(layer_name, via, None, f"{via} raised {type(exc).__name__}: {exc}", layer_type)]
    # copied now: a layer may reuse its buffers in the perturbed forwards that follow
    grads = {k: None if v is None else np.array(v, dtype=np.float64) for k, v in dict(grads or {}).items()}
    dxs = list(dx) if multi and isinstance(dx, (list, tuple)) else [dx]
    dxs = [None if d is None else np.array(d, dtype=np.float64) for d in dxs]

    results = []
    targets: list[tuple[str, np.ndarray, Any]] = []
    for i, (tname, arr) in enumerate(zip(input_names, inputs, strict=True)):
        targets.append((tname, arr, dxs[i] if i < len(dxs) else None))
    for pname, arr in p64.items():
        targets.append((pname, arr, grads.pop(pname, None)))
    for (tname, arr, analytic), kind in zip(targets, [*kinds, *["float"] * len(p64)], strict=True):
        if kind == "tokens":
            results.append(TensorResult(layer_name, tname, tuple(arr.shape), 0, int(arr.size), NOT_DIFFERENTIATED,
                                        None, "skipped", message=NOT_DIFFERENTIATED, layer_type=layer_type,
                                        via=via))
            continue
        what = "input gradient" if tname.startswith("input") else "gradient"
        method = _method(via, tname.startswith("input"))
        if analytic is None:
            results.append(_failed(layer_name, tname, arr.shape, f"{method} returned no {what} for {tname!r}",
                                   layer_type, method))
            continue
        if np.shape(analytic) != arr.shape:
            results.append(_failed(layer_name, tname, arr.shape,
                                   f"{method} returned a {what} of shape {tuple(np.shape(analytic))} "
                                   f"for {tname!r} of shape {arr.shape}", layer_type, method))
            continue
        try:
            row = _compare_tensor(probe, arr, analytic, layer_name=layer_name, tensor=tname,
                                  samples=samples, rng=rng, step=step, kinks=layer.has_kinks,
                                  layer_type=layer_type, method=method)
            row.via = method
            results.append(row)
        except MemoryError:
            raise out_of_memory() from None
        except Exception as exc:  # a forward that cannot take a perturbed input is the layer's bug
            results.append(_failed(layer_name, tname, arr.shape, f"forward raised {type(exc).__name__} on a "
                                                                 f"perturbed {tname}: {exc}", layer_type, method))
    for extra in grads:
        results.append(_failed(layer_name, extra, None,
                               f"{_method(via, False)} returned a gradient for {extra!r}, which is not a parameter",
                               layer_type, _method(via, False)))
    return results


def _method(via: str, is_input: bool) -> str:
    """The method that gave an input's (``is_input``) or a parameter's gradient when checking ``via``:
    ``backward_params`` gives no input gradient and ``backward_input`` no parameter gradient, so
    those come from ``backward``."""
    if (via == "backward_params" and is_input) or (via == "backward_input" and not is_input):
        return "backward"
    return via


# -- random tensors for a layer -------------------------------------------------

def random_params(specs: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random normal parameters, never the initial values: zero biases and unit scales would
    hide backward bugs that multiply by them.

    A tensor whose initializer scales with its fans (``he_normal``, ``glorot_uniform``, ...)
    is drawn with that initializer's spread, so a wide layer is checked where it trains: unit
    weights on 128 recurrent units saturate every gate, and the gradient check then compares
    differences of saturated functions (large values, large round-off) instead of the layer's
    math. Constant-initialized tensors (biases, scales, slopes) are standard normal.
    """
    from layerkit.nn.initializers import init_std

    return {name: rng.standard_normal(tuple(spec.shape)) * (init_std(spec) or 1.0) for name, spec in specs.items()}


def initial_state(specs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from layerkit.nn.initializers import initialize

    return {name: initialize(spec, np.random.default_rng(0), np.float64) for name, spec in specs.items()}


def _inputs_f64(xs: list[Any], kinds: tuple[str, ...]) -> list[np.ndarray]:
    """Float inputs as float64 copies; token ids stay int64."""
    return [np.array(v, dtype=np.int64) if kind == "tokens" else as_f64(v) for v, kind in zip(xs, kinds, strict=True)]


def random_input(input_shape: Any, batch_size: int, rng: np.random.Generator, multi: bool,
                 layer: Any = None) -> Any:
    """Standard-normal inputs; for an input of kind ``"tokens"`` of ``layer``, int64 ids drawn
    uniformly from ``0 .. layer.token_range() - 1``."""
    shapes = list(input_shape) if multi else [input_shape]
    kinds = input_kinds(layer, len(shapes)) if layer is not None else ("float",) * len(shapes)
    out = []
    for shape, kind in zip(shapes, kinds, strict=True):
        size = (batch_size, *tuple(shape))
        out.append(rng.integers(0, layer.token_range(), size=size, dtype=np.int64) if kind == "tokens"
                   else rng.standard_normal(size))
    return out if multi else out[0]


def check_layer_config(layer_cls: type[Layer], config: Mapping[str, Any], input_shape: Any, *,
                       batch_size: int = 2, samples: int = 32, seed: int = 0, step: float = 1e-6,
                       name: str | None = None) -> list[TensorResult]:
    """Check a layer class from a config and a per-sample input shape (random input and parameters).

    ``config`` must already have its defaults filled (see :func:`layerkit.modelfile.spec.fill_defaults`).
    """
    layer = layer_cls(**dict(config))
    rng = np.random.default_rng([seed, 7])
    multi = layer.arity != 1
    x = random_input(input_shape, batch_size, rng, multi, layer)
    params = random_params(layer.param_specs(input_shape), rng)
    state = initial_state(layer.state_specs(input_shape))
    return check_layer(layer, params, x, state=state, samples=samples, seed=seed, step=step,
                       name=name or layer.type)
