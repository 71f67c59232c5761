"""The end-to-end part of :func:`layerkit.gradcheck.report.check_model`: the model's loss gradient.

Each parameter tensor is checked along a few random directions ``v`` (the
analytic ``g . v`` against ``(L(p + h v) - L(p - h v)) / 2h``): two full
forwards per direction whatever the tensor's size, which keeps big models
fast, and a wrong coordinate anywhere in the tensor shows up in the sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layerkit.gradcheck.numerics import (ABS_FLOOR, EPS, NOISE_ULPS, PASS_TOL, SWEEP_STEPS, GradCheckError,
                                         TensorResult, Worst, diagnose, is_kink, out_of_memory, relative_error,
                                         status_of)
from layerkit.nn.network import Network
from layerkit.plugins import registry_or_global

LOSS_ROW = "(loss)"
#: relative change of the loss a directional step aims for
DELTA_L = 1e-7
#: central quotients at h and h/4 further apart than this (relative) mean a kink was crossed
STEP_TOL = 1e-7
#: size of the nudge off a kink, relative to the tensor's spread
NUDGE = 1e-4


def _loss_object(model: Network, registry) -> tuple[Any, str]:
    registry = registry_or_global(registry)
    spec = dict(model.graph.spec.loss)
    kind = spec.pop("type")
    return registry.get("loss", kind)(**spec), kind


def _make_target(loss, kind: str, out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels for classification losses, real targets for regression ones: whichever the loss accepts."""
    n = out.shape[0]
    options = []
    if out.ndim == 2 and kind != "mse":
        options.append(rng.integers(0, out.shape[1], size=n))
    if out.ndim == 3 and kind != "mse":  # a class id per position of a sequence
        options.append(rng.integers(0, out.shape[2], size=out.shape[:2]))
    options.append(rng.standard_normal(out.shape))
    if out.ndim == 2:
        options.append(rng.integers(0, out.shape[1], size=n))
    problems = []
    for target in options:
        try:
            value = float(loss.forward(out, target)[0])
            if np.isfinite(value):
                return target
        except Exception as exc:  # try the next kind of target
            problems.append(f"{type(exc).__name__}: {exc}")
    raise GradCheckError(f"cannot make a target for loss {kind!r} on outputs of shape {out.shape[1:]}: "
                         + "; ".join(problems))


class _EndToEnd:
    def __init__(self, model: Network, x: np.ndarray, target, loss, forward_seed: int) -> None:
        self.model, self.x, self.target, self.loss = model, x, target, loss
        self.forward_seed = forward_seed
        # running statistics are restored before every forward so they never drift
        self.state0 = {n: {k: v.copy() for k, v in t.items()} for n, t in model.state.items()}

    def _reset_state(self) -> None:
        for name, tensors in self.state0.items():
            for k, v in tensors.items():
                np.copyto(self.model.state[name][k], v)

    def loss_value(self) -> float:
        self._reset_state()
        out, _ = self.model.forward(self.x, True, np.random.default_rng(self.forward_seed))
        return float(self.loss.forward(out, self.target)[0])

    def gradients(self) -> tuple[float, np.ndarray, dict]:
        self._reset_state()
        out, caches = self.model.forward(self.x, True, np.random.default_rng(self.forward_seed))
        value, lcache = self.loss.forward(out, self.target)
        dout = self.loss.backward(lcache)
        grads = self.model.backward(caches, np.asarray(dout, dtype=np.float64))
        self._reset_state()
        return float(value), out, grads

    def along(self, array: np.ndarray, direction: np.ndarray, step: float, base: float) -> tuple[float, float, float]:
        orig = array.copy()
        try:
            array += step * direction
            plus = self.loss_value()
            np.copyto(array, orig)
            array -= step * direction
            minus = self.loss_value()
        finally:
            np.copyto(array, orig)
        noise = NOISE_ULPS * EPS * max(abs(plus), abs(minus), abs(base), 1.0) / step
        return plus - base, base - minus, noise


def _step_dependent(run: "_EndToEnd", array: np.ndarray, v: np.ndarray, h: float, base: float,
                    numeric: float) -> bool:
    """A kink crossed inside the stencil makes the quotient depend on the step; for a smooth loss
    quarter the step changes it only by round-off (truncation is ~h^2, negligible at these steps)."""
    up, down, noise = run.along(array, v, h / 4, base)
    quarter = (up + down) / (h / 2)
    return abs(numeric - quarter) > STEP_TOL * (abs(numeric) + abs(quarter)) + 4 * noise + ABS_FLOOR


def _directional(run: _EndToEnd, array: np.ndarray, grad: np.ndarray, base: float, rng: np.random.Generator,
                 *, directions: int, step: float, layer: str, tensor: str, layer_type: str,
                 kinky: bool) -> TensorResult:
    worst: Worst | None = None
    worst_dir = None
    checked = kinks = 0
    for _ in range(directions * 4):  # retries when a direction crosses a kink
        if checked >= directions:
            break
        v = rng.standard_normal(array.shape)
        analytic = float(np.sum(grad * v))
        # move the loss by about DELTA_L: every relu or max-pool boundary crossed inside the
        # stencil bends the difference quotient, and how many get crossed grows with the move
        h = min(step, DELTA_L * max(abs(base), 1.0) / max(abs(analytic), 1e-300))
        up, down, noise = run.along(array, v, h, base)
        numeric = (up + down) / (2 * h)
        err = relative_error(analytic, numeric, noise)
        # a kink only matters when it would make the check fail; testing for one costs two forwards
        if err >= PASS_TOL and (is_kink(up / h, down / h, noise)
                                or (kinky and _step_dependent(run, array, v, h, base, numeric))):
            kinks += 1
            continue
        checked += 1
        if worst is None or err > worst.rel_error:
            worst, worst_dir, worst_h = Worst(f"direction {checked}", analytic, numeric, err), v, h
    result = TensorResult(layer, tensor, tuple(array.shape), checked, array.size,
                          f"{checked} random direction(s)", None, "skipped", kinks, scope="model",
                          layer_type=layer_type)
    if worst is None:
        result.message = "every direction tried crosses a kink"
        return result
    result.max_rel_error, result.status, result.worst = worst.rel_error, status_of(worst.rel_error), worst
    if result.status != "pass":
        sweep = []
        for h in (s * worst_h / step for s in SWEEP_STEPS):
            up, down, noise = run.along(array, worst_dir, h, base)
            numeric = (up + down) / (2 * h)
            sweep.append((h, numeric, relative_error(worst.analytic, numeric, noise)))
        worst.sweep, worst.diagnosis = sweep, diagnose(worst.analytic, sweep)
        if result.status == "fail" and min(e for _, _, e in sweep) < PASS_TOL:
            result.status = "warn"
    return result


def _nudged(run: "_EndToEnd", node: str, tname: str, array: np.ndarray, rng: np.random.Generator,
            skipped: TensorResult, check: dict) -> TensorResult:
    """Every direction crossed a kink (e.g. a zero bias on zero inputs puts relus exactly at 0):
    move this tensor a little off the kink, recompute the gradient there and check again."""
    orig = array.copy()
    try:
        array += NUDGE * max(float(np.std(orig)), 1.0) * rng.standard_normal(array.shape)
        base, _, grads = run.gradients()
        row = _directional(run, array, np.asarray(grads[node][tname], np.float64), base, rng, **check)
    finally:
        np.copyto(array, orig)
    row.kinks += skipped.kinks
    row.strategy += ", nudged off a kink"
    return row


def _check_loss(loss, kind: str, out: np.ndarray, target, step: float, rng: np.random.Generator) -> TensorResult:
    """d loss / d output, coordinate by coordinate (outputs are small: batch x classes)."""
    out = np.array(out, dtype=np.float64)
    value, cache = loss.forward(out, target)
    dout = np.asarray(loss.backward(cache), dtype=np.float64)
    name = f"{LOSS_ROW[:-1]} {kind})"
    if dout.shape != out.shape:
        return TensorResult(name, "output", out.shape, 0, out.size, "-", None, "fail", scope="model",
                            layer_type=kind, message=f"loss backward returned shape {dout.shape}, "
                                                     f"the output has shape {out.shape}")
    flat = out.reshape(-1)
    idx = np.arange(flat.size) if flat.size <= 64 else rng.choice(flat.size, 64, replace=False)
    worst = None
    for i in idx:
        orig = flat[i]
        flat[i] = orig + step
        plus = float(loss.forward(out, target)[0])
        flat[i] = orig - step
        minus = float(loss.forward(out, target)[0])
        flat[i] = orig
        numeric = (plus - minus) / (2 * step)
        noise = NOISE_ULPS * EPS * max(abs(value), 1.0) / step
        err = relative_error(float(dout.flat[i]), numeric, noise)
        if worst is None or err > worst.rel_error:
            worst = Worst(tuple(int(k) for k in np.unravel_index(i, out.shape)), float(dout.flat[i]), numeric, err)
    strategy = "exhaustive" if len(idx) == flat.size else f"sampled {len(idx)} of {flat.size}"
    return TensorResult(name, "output", out.shape, len(idx), flat.size, strategy, worst.rel_error,
                        status_of(worst.rel_error), worst=worst, scope="model", layer_type=kind)


def _blame(model: Network, end_rows: list[TensorResult], layer_rows: list[TensorResult]) -> str:
    failed = [r for r in end_rows if r.status == "fail"]
    if not failed:
        return ""
    loss_rows = [r for r in failed if r.layer.startswith(LOSS_ROW)]
    if loss_rows:
        return f"the loss {loss_rows[0].layer_type!r}: its backward disagrees with its forward"
    bad_layers = sorted({r.layer for r in layer_rows if r.status == "fail"},
                        key=lambda n: [node.name for node in model.nodes].index(n))
    if bad_layers:
        detail = "; ".join(f"{r.label}: {r.message or f'max relative error {r.max_rel_error:.1e}'}"
                           for r in layer_rows if r.status == "fail" and r.layer in bad_layers[:3])
        return (f"layer(s) {', '.join(map(repr, bad_layers))} fail in isolation too ({detail}); "
                f"the end-to-end error follows from them")
    order = [node.name for node in model.nodes]
    # gradients flow backwards: the failing tensor nearest the output marks where they first go wrong
    last_bad = max(failed, key=lambda r: order.index(r.layer)).layer
    after = [r.layer for r in end_rows if r.scope == "model" and r.status != "fail" and r.layer in order
             and order.index(r.layer) > order.index(last_bad)]
    upto = min(after, key=order.index) if after else order[-1]
    span = order[order.index(last_bad):order.index(upto) + 1]
    return (f"every layer passes in isolation, but the end-to-end gradient first goes wrong at "
            f"{last_bad!r} (walking back from the output); suspect the wiring between "
            f"{' -> '.join(span)}: a layer changing its input, output or dy in place, or gradients "
            f"summed wrongly where branches meet")


def _crashed(what: str, exc: Exception) -> TensorResult:
    return TensorResult("(model)", what, (), 0, 0, "-", None, "fail", scope="model",
                        message=f"{what} raised {type(exc).__name__}: {exc}")


def check_end_to_end(model: Network, x: np.ndarray, y, layer_rows: list[TensorResult], *, seed: int, step: float,
                     directions: int, registry=None) -> tuple[list[TensorResult], str]:
    rng = np.random.default_rng([seed, 99])
    loss, kind = _loss_object(model, registry)
    forward_seed = int(rng.integers(2**31))
    kinky = any(node.layer.has_kinks for node in model.nodes)
    if kinky:
        # zero biases on zero pixels put relus exactly at 0: a kink AT the base point has equal
        # central quotients at every step, so no numeric test can tell it from a bug; a small
        # nudge of every parameter moves the base point off it
        for _, _, array in model.parameters():
            array += NUDGE * max(float(np.std(array)), 1.0) * rng.standard_normal(array.shape)
    try:
        out, _ = model.forward(x, True, np.random.default_rng(forward_seed))
    except MemoryError:
        raise out_of_memory() from None
    except Exception as exc:  # a plugin layer that crashes in a model: report it, no traceback
        return [_crashed("forward", exc)], f"the model's forward pass raised {type(exc).__name__}: {exc}"
    target = y if y is not None else _make_target(loss, kind, np.asarray(out, np.float64), rng)
    rows = [_check_loss(loss, kind, np.asarray(out, np.float64), target, step, rng)]
    run = _EndToEnd(model, x, target, loss, forward_seed)
    try:
        base, _, grads = run.gradients()
    except MemoryError:
        raise out_of_memory() from None
    except Exception as exc:
        return rows + [_crashed("backward", exc)], f"the model's backward pass raised {type(exc).__name__}: {exc}"
    for node in model.nodes:
        for tname, array in model.params[node.name].items():
            grad = grads.get(node.name, {}).get(tname)
            if grad is None or np.shape(grad) != array.shape:
                rows.append(TensorResult(node.name, tname, array.shape, 0, array.size, "-", None, "fail",
                                         scope="model", layer_type=node.layer.type,
                                         message="model.backward produced no gradient of the right shape"))
                continue
            check = dict(directions=directions, step=step, layer=node.name, tensor=tname,
                         layer_type=node.layer.type, kinky=kinky)
            row = _directional(run, array, np.asarray(grad, np.float64), base, rng, **check)
            if row.status == "skipped":
                row = _nudged(run, node.name, tname, array, rng, row, check)
            rows.append(row)
    return rows, _blame(model, rows, layer_rows)
