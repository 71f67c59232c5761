"""Checks of what a layer declares beyond forward/backward: its speed paths and its sample coupling.

Each check runs only for what the layer overrides or claims (:func:`layerkit.nn.layer.overrides`,
:attr:`~layerkit.nn.layer.Layer.fresh_dx`, :attr:`~layerkit.nn.layer.Layer.sample_coupling`),
because that is what training will run instead of, or around, ``backward``. A failure raises
``AssertionError`` naming the layer (in ``where``) and the contract member.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

from layerkit.nn.layer import Coupling, overrides
from layerkit.parallel import collectives

#: seconds a half waits for the other at a batch_sum before the check gives up on it
EXCHANGE_TIMEOUT_S = 30.0


def _list(value, multi: bool) -> list:
    return list(value) if multi else [value]


def _arrays(obj: Any, out: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Every ndarray inside a cache (nested tuples, lists, dicts)."""
    out = [] if out is None else out
    if isinstance(obj, np.ndarray):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _arrays(item, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            _arrays(item, out)
    return out



def _same_param_grads(what: str, got: dict, grads: dict) -> None:
    """A speed path's parameter gradients equal ``backward``'s, name for name and bit for bit."""
    assert set(got) == set(grads), f"{what} returned gradients for {sorted(got)}, backward for {sorted(grads)}"
    for tname, g in grads.items():
        assert np.asarray(got[tname]).dtype == np.asarray(g).dtype and np.array_equal(got[tname], g), (
            f"{what} gives a different gradient of {tname!r} than backward ({_differs(got[tname], g)}); "
            f"it must equal backward's bit for bit")

def _differs(a, b) -> str:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return f"shape {a.shape} instead of {b.shape}"
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} instead of {b.dtype}"
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return f"largest difference {np.nanmax(diff):.3g}" if diff.size else "different values"


class _Runner:
    """Forward passes that start from the same state and generator every time, so two paths
    can be compared bit for bit."""

    def __init__(self, layer, params, x, state, seed: int) -> None:
        self.layer, self.params, self.x, self.state, self.seed = layer, params, x, state, seed

    def forward(self, training: bool):
        state = {k: v.copy() for k, v in self.state.items()}
        return self.layer.forward(self.params, self.x, training, np.random.default_rng(self.seed), state)


def check_speed_paths(layer, params, x, state, *, multi: bool, where: str, seed: int = 0) -> None:
    """``backward`` leaves ``dy`` alone; every overridden speed path gives ``backward``'s numbers
    bit for bit; a ``fresh_dx`` claim holds. Run in the dtype training uses (float32)."""
    run = _Runner(layer, params, x, state, seed)
    for training in (True, False):
        mode = "training" if training else "inference"
        y, cache = run.forward(training)
        dy = np.random.default_rng(seed + 3).standard_normal(np.shape(y)).astype(np.asarray(y).dtype)
        dy_before = dy.copy()
        dx, grads = layer.backward(params, cache, dy)
        assert np.array_equal(dy, dy_before), (
            f"{where}: backward ({mode}) modified dy in place; only backward_inplace may")
        dxs, grads = _list(dx, multi), dict(grads or {})
        if getattr(layer, "fresh_dx", False):
            _check_fresh(dxs, dy, run, params, cache, where, "backward", mode)
        if overrides(layer, "backward_params"):
            _, cache = run.forward(training)
            only = dict(layer.backward_params(params, cache, dy) or {})
            assert np.array_equal(dy, dy_before), f"{where}: backward_params ({mode}) modified dy in place"
            _same_param_grads(f"{where}: backward_params ({mode})", only, grads)
        if overrides(layer, "backward_inplace"):
            _, cache = run.forward(training)
            owned = dy_before.copy()
            dx2, grads2 = layer.backward_inplace(params, cache, owned)
            dxs2, grads2 = _list(dx2, multi), dict(grads2 or {})
            assert len(dxs2) == len(dxs), (
                f"{where}: backward_inplace ({mode}) returned {len(dxs2)} input gradients, backward {len(dxs)}")
            for i, (a, b) in enumerate(zip(dxs2, dxs)):
                tname = f"input[{i}]" if multi else "input"
                assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b), (
                    f"{where}: backward_inplace ({mode}) gives a different {tname} gradient than backward on "
                    f"a copy of dy ({_differs(a, b)}); it must equal backward's bit for bit")
            _same_param_grads(f"{where}: backward_inplace ({mode})", grads2, grads)
            if getattr(layer, "fresh_dx", False):
                _check_fresh(dxs2, owned, run, params, cache, where, "backward_inplace", mode, may_be_dy=True)


def _check_fresh(dxs, dy, run: _Runner, params, cache, where: str, method: str, mode: str,
                 may_be_dy: bool = False) -> None:
    """What ``fresh_dx`` promises: the model may hand these arrays to the next layer's in-place backward."""
    others = [("dy", dy)] if not may_be_dy else []
    xs = run.x if isinstance(run.x, list) else [run.x]
    others += [(f"input[{i}]" if len(xs) > 1 else "input", v) for i, v in enumerate(xs)]
    others += [(f"parameter {k!r}", v) for k, v in params.items()]
    others += [("an array of its cache", v) for v in _arrays(cache)]
    for i, d in enumerate(dxs):
        if not isinstance(d, np.ndarray):
            continue
        if may_be_dy and d is dy:
            continue  # handing back the exclusive dy is what backward_inplace is for
        for what, other in others:
            assert not np.shares_memory(d, other), (
                f"{where}: declares fresh_dx, but the input gradient backward{'_inplace' if may_be_dy else ''} "
                f"({mode}) returns shares memory with {what}; {method} must return a new array")


# -- sample coupling ------------------------------------------------------------------

class TwoHalvesReducer:
    """A ``batch_sum`` reducer for two threads, each computing one half of a batch.

    Each half writes its partial sums, both meet at a barrier, and each gets the sum of
    both halves in the same order (first half + second half), as the sample-parallel
    processes do. A second barrier keeps a fast half from overwriting its slot before the
    other has read it.
    """

    def __init__(self, halves: int = 2, timeout: float | None = None) -> None:
        self.barrier = threading.Barrier(halves, timeout=EXCHANGE_TIMEOUT_S if timeout is None else timeout)
        self.slots: list[np.ndarray | None] = [None] * halves
        self.local = threading.local()
        self.calls = [0] * halves

    def __call__(self, values: np.ndarray) -> np.ndarray:
        me = self.local.half
        self.calls[me] += 1
        self.slots[me] = np.array(values, dtype=np.float64).ravel()
        self.barrier.wait()
        try:
            sizes = [len(part) for part in self.slots]
            if len(set(sizes)) > 1:
                raise threading.BrokenBarrierError(f"the halves passed {sizes} values to the same batch_sum call")
            total = self.slots[0].copy()
            for part in self.slots[1:]:
                total = total + part
        finally:
            self.barrier.wait()
        return total.reshape(np.shape(values))

    def run(self, work: list[Callable[[], Any]]) -> list[Any]:
        """Run ``work[i]`` in thread ``i`` with this reducer as ``batch_sum``; re-raise the first failure."""
        results: list[Any] = [None] * len(work)
        errors: list[BaseException | None] = [None] * len(work)

        def body(i: int) -> None:
            self.local.half = i
            try:
                results[i] = work[i]()
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller below
                errors[i] = exc
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(i,), name=f"layerkit-half-{i}") for i in range(len(work))]
        # installed once for the process (batch_sum reads one process-wide group), around both threads
        with collectives.reducing(self):
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        real = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
        if real:
            raise real[0]
        if any(errors):
            raise errors[0]
        return results


def _close(a, b) -> bool:
    return np.allclose(a, b, rtol=1e-9, atol=1e-12)


def check_inference_paths(layer, params, x, state, y, *, where: str, seed: int = 0) -> None:
    """The inference paths against forward's inference output ``y``: ``infer`` and ``infer_inplace``
    bit for bit, an ``infer_fresh`` claim (no memory shared with the input or a parameter), the
    ``inference_affine`` and ``fold_affine`` claims to float32 rounding (a fold rounds anew)."""
    x_before = [v.copy() for v in x] if isinstance(x, list) else x.copy()
    inferred = layer.infer(params, x, state)
    same_x = all(np.array_equal(a, b) for a, b in zip(x, x_before)) if isinstance(x, list) else \
        np.array_equal(x, x_before)
    assert same_x, f"{where}: infer modified its input in place"
    assert np.asarray(inferred).dtype == np.asarray(y).dtype and np.array_equal(inferred, y), (
        f"{where}: infer differs from forward's inference output ({_differs(inferred, y)})")
    inputs = list(x) if isinstance(x, list) else [x]
    if getattr(layer, "infer_fresh", False):
        assert not any(np.shares_memory(inferred, a) for a in [*inputs, *params.values()]), (
            f"{where}: declares infer_fresh, but infer's output shares memory with its input or a parameter")
    if overrides(layer, "infer_inplace"):
        assert not isinstance(x, list), f"{where}: infer_inplace is for single-input layers"
        mine = x.copy()
        got = layer.infer_inplace(params, mine, state)
        assert np.asarray(got).dtype == np.asarray(y).dtype and np.array_equal(got, y), (
            f"{where}: infer_inplace differs from infer ({_differs(got, y)})")
        assert got is mine or not np.shares_memory(got, mine), (
            f"{where}: infer_inplace returned a view of its input instead of the input itself or a new array")
        assert not any(np.shares_memory(got, p) for p in params.values()), (
            f"{where}: infer_inplace returned an array that shares memory with a parameter")
    bshape = (1, -1) + (1,) * (np.ndim(y) - 2)
    affine = layer.inference_affine(params, state) if overrides(layer, "inference_affine") else None
    if affine is not None:
        scale, shift = (np.asarray(a, dtype=np.float32).reshape(bshape) for a in affine)
        assert _near(y, x * scale + shift), (
            f"{where}: inference_affine's (scale, shift) do not give its inference output x * scale + shift "
            f"({_differs(x * scale + shift, y)})")
    channels = np.shape(y)[1] if np.ndim(y) >= 2 else 0
    rng = np.random.default_rng([seed, 7])
    scale = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    shift = rng.standard_normal(channels).astype(np.float32)
    p_before = {k: v.copy() for k, v in params.items()}
    folded = layer.fold_affine(params, scale, shift) if overrides(layer, "fold_affine") else None
    for tname in params:
        assert np.array_equal(params[tname], p_before[tname]), f"{where}: fold_affine modified parameter {tname!r}"
    if folded is not None:
        want = y * scale.reshape(bshape) + shift.reshape(bshape)
        got = layer.infer(folded, x, state)
        assert _near(got, want), (
            f"{where}: infer with fold_affine's parameters is not infer(x) * scale + shift per channel "
            f"({_differs(got, want)})")


def _near(a, b) -> bool:
    """Equal to float32 rounding of a few operations (folding multiplies the weights first)."""
    return np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=1e-4, atol=1e-5)


def check_sample_coupling(layer, params, x, state, *, multi: bool, where: str, seed: int = 0) -> None:
    """A ``NONE`` or ``BATCH_SUMS`` claim: two halves of a batch give the whole batch's numbers.

    ``NONE``: each half on its own. ``BATCH_SUMS``: both halves at once, in two threads whose
    ``batch_sum`` calls add both halves' sums (:class:`TwoHalvesReducer`); the first half's
    running statistics must also equal the whole batch's (the process that trains keeps them).
    Float64, so only a real dependence between samples shows. A layer that draws random numbers
    is compared in inference mode, where it draws none.
    """
    coupling = layer.sample_coupling
    if coupling not in (Coupling.NONE, Coupling.BATCH_SUMS):
        return
    name = "NONE" if coupling == Coupling.NONE else "BATCH_SUMS"
    claim = f"declares sample_coupling = {name}"
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    xs = [np.asarray(v, dtype=np.float64) for v in x] if multi else np.asarray(x, dtype=np.float64)
    n = len(xs[0]) if multi else len(xs)
    if n < 2:
        return
    cut = n // 2
    training = not layer.uses_rng

    def part(a, b):
        return [v[a:b] for v in xs] if multi else xs[a:b]

    def whole_or_half(a, b, dy):
        st = {k: np.array(v, dtype=np.float64) for k, v in state.items()}
        y, cache = layer.forward(params, part(a, b), training, np.random.default_rng(seed), st)
        dx, grads = layer.backward(params, cache, dy[a:b])
        return np.asarray(y), _list(dx, multi), dict(grads or {}), st

    y0, _ = layer.forward(params, xs, training, np.random.default_rng(seed),
                          {k: np.array(v, dtype=np.float64) for k, v in state.items()})
    dy = np.random.default_rng(seed + 2).standard_normal(np.shape(y0))
    y, dxs, grads, st = whole_or_half(0, n, dy)
    work = [lambda: whole_or_half(0, cut, dy), lambda: whole_or_half(cut, n, dy)]
    if coupling == Coupling.NONE:
        pieces = [w() for w in work]
        how = "on half a batch"
    else:
        reducer = TwoHalvesReducer()
        try:
            pieces = reducer.run(work)
        except threading.BrokenBarrierError:
            raise AssertionError(f"{where}: {claim}, but its two halves of a batch did not make the same "
                                 f"batch_sum calls (calls per half: {reducer.calls})") from None
        how = "on two halves of a batch with batch_sum adding both halves' sums"
    assert _close(y, np.concatenate([p[0] for p in pieces])), (
        f"{where}: {claim}, but its forward output {how} differs from the whole batch's")
    for i, g in enumerate(dxs):
        tname = f"input[{i}]" if multi else "input"
        assert _close(g, np.concatenate([p[1][i] for p in pieces])), (
            f"{where}: {claim}, but its {tname} gradient {how} differs from the whole batch's")
    for tname, g in grads.items():
        assert _close(g, pieces[0][2][tname] + pieces[1][2][tname]), (
            f"{where}: {claim}, but the gradients of {tname!r} {how} do not add up to the whole batch's")
    if coupling == Coupling.BATCH_SUMS and training:
        for tname, v in st.items():
            assert _close(pieces[0][3][tname], v), (
                f"{where}: {claim}, but the state {tname!r} updated {how} differs from the whole batch's")


# -- an activation moved after the max pool that reads it ------------------------------------------

#: the pools an activation claiming ``commutes_with_max`` is checked against: windows that tile
#: the input, and overlapping padded ones (ties across windows, padding that never wins)
MAX_POOLS = ({"pool_size": 2}, {"pool_size": 3, "stride": 2, "padding": 1})
#: the per-sample shape those checks use (three channels)
COMMUTE_SHAPE = (3, 6, 6)


def check_max_commute(layer, in_shape, *, where: str, seed: int = 0) -> None:
    """A ``commutes_with_max`` or ``pools_max`` claim: a max pool over the activation's output and the
    same pool over its input followed by the activation give the same output and the same input
    gradient, bit for bit in float32, in training and in inference; what ``Model`` relies on when it
    runs the pool first. An activation is checked against :data:`MAX_POOLS` on :data:`COMMUTE_SHAPE`,
    a pool against relu on its own input shape; the inputs lie on a coarse grid, so windows hold ties
    and relu outputs exact zeros."""
    from layerkit.gradcheck.layers import initial_state, random_params
    from layerkit.layers.activations import ReLU
    from layerkit.layers.pooling import MaxPool2D
    from layerkit.modelfile.spec import fill_defaults

    rng = np.random.default_rng([seed, 11])
    pairs = []
    if getattr(layer, "commutes_with_max", False):
        assert layer.arity == 1, f"{where}: commutes_with_max is for single-input layers"
        assert tuple(layer.output_shape(COMMUTE_SHAPE)) == COMMUTE_SHAPE, (
            f"{where}: declares commutes_with_max, but is not element-wise (output shape "
            f"{tuple(layer.output_shape(COMMUTE_SHAPE))} for input {COMMUTE_SHAPE})")
        params = {k: v.astype(np.float32) for k, v in random_params(layer.param_specs(COMMUTE_SHAPE), rng).items()}
        state = initial_state(layer.state_specs(COMMUTE_SHAPE))
        for config in MAX_POOLS:
            pool = MaxPool2D(**fill_defaults(MaxPool2D.params_schema, config))
            pairs.append((layer, params, state, pool, COMMUTE_SHAPE, f"commutes_with_max (with max_pool2d {config})"))
    if getattr(layer, "pools_max", False):
        pairs.append((ReLU(), {}, {}, layer, tuple(in_shape), "pools_max (after relu)"))
    for act, params, state, pool, shape, claim in pairs:
        x = (rng.integers(-3, 4, (4, *shape)) * 0.5).astype(np.float32)
        for training in (True, False):
            mode = "training" if training else "inference"
            run = lambda lay, p, v: lay.forward(p, v, training, np.random.default_rng(seed), state)  # noqa: E731
            a, a_cache = run(act, params, x)
            y, p_cache = run(pool, {}, a)
            q, q_cache = run(pool, {}, x)
            z, z_cache = run(act, params, q)
            assert np.array_equal(y, z), (
                f"{where}: declares {claim}, but pooling before the activation changes the {mode} output "
                f"({_differs(z, y)})")
            if not training:
                continue
            dy = np.random.default_rng([seed, 12]).standard_normal(np.shape(y)).astype(np.float32)
            dx = act.backward(params, a_cache, pool.backward({}, p_cache, dy)[0])[0]
            dx_moved = pool.backward({}, q_cache, act.backward(params, z_cache, dy)[0])[0]
            assert np.array_equal(dx, dx_moved), (
                f"{where}: declares {claim}, but pooling before the activation changes the input gradient "
                f"({_differs(dx_moved, dx)})")
