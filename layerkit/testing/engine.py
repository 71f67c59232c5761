"""The check engine: every claim a layer makes is one small named check.

:func:`yield_checks` yields the :class:`Check` objects that apply to a layer class (its static
checks) or to one of its examples (everything that runs the layer); a check applies to a
capability (``backward_inplace``, ``fresh_dx``, ``commutes_with_max`` ...) only when the layer
declares it. A :class:`Subject` is one layer on one example, built once and shared by the checks of
that example (every check gets its own copies of the arrays). A failed claim raises
:class:`~layerkit.errors.ContractError` naming the layer, the example, the check and the member.

The pytest plugin (one test per layer, example and check), :func:`layerkit.testing.run_layer_test`,
:func:`layerkit.testing.layer_conformance_tests`, ``layerkit check-grads FILE.py`` and ``--plugin``
loading all run these checks; the table of names is in ``docs/plugins.md``.

One more check is about kernels, not layers: :func:`check_kernel` (``kernel_matches_reference``)
runs a kernel's compiled implementation against its numpy reference on the inputs the kernel makes
(:mod:`layerkit.kernels`); pytest runs it over the live kernel registry and ``layerkit info --check``
on the installed one.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, cast

import numpy as np

from layerkit.errors import ContractError
from layerkit.nn.layer import Coupling, Example, Layer, ParamSpec, input_kinds, overrides
from layerkit.plugins.layer_checks import SIGNATURES, STATIC_CHECKS

__all__ = ["Check", "Subject", "CHECKS", "CAPABILITY_CHECKS", "yield_checks", "run_checks", "declares",
           "subject_for", "shape_text", "KERNEL_CHECK", "check_kernel"]

#: the forward seed every check uses, so two paths can be compared bit for bit
_MODES = (("training", True), ("inference", False))


class Broken(Exception):
    """Raised inside a check: which member broke the claim, how, and the numbers (made a ContractError)."""

    def __init__(self, member: str, detail: str, numbers: Mapping[str, Any] | None = None,
                 results: Sequence[Any] = ()) -> None:
        super().__init__(detail)
        self.member, self.detail, self.numbers, self.results = member, detail, dict(numbers or {}), list(results)


def shape_text(shape: Any) -> str:
    """``(2, 3)`` -> ``2x3``; a list of shapes -> ``[2x3, 4]``."""
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return "[" + ", ".join("x".join(map(str, s)) for s in shape) + "]"
    return "x".join(map(str, shape)) if isinstance(shape, (list, tuple)) else repr(shape)


def _difference(a: Any, b: Any) -> tuple[str, dict[str, Any]]:
    """How two arrays differ, in words and numbers."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return f"shape {a.shape} instead of {b.shape}", {}
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} instead of {b.dtype}", {}
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if not diff.size:
        return "different values", {}
    worst = float(np.nanmax(diff))
    return f"largest difference {worst:.3g}", {"max_difference": worst}


def _equal(a: Any, b: Any) -> bool:
    return np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)


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


def _copy(value: Any) -> Any:
    return [np.array(v, copy=True) for v in value] if isinstance(value, list) else np.array(value, copy=True)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(np.array_equal(a, b))


# -- what a layer declares ------------------------------------------------------------------

#: capability flags: the claim is the attribute being True
FLAG_CAPABILITIES = ("fresh_dx", "infer_fresh", "commutes_with_max", "pools_max")
#: capability methods: the claim is the layer providing its own
METHOD_CAPABILITIES = ("backward_params", "backward_inplace", "backward_input", "infer_inplace", "inference_affine",
                       "fold_affine")


def declares(layer: Any, name: str) -> bool:
    """Whether a layer (or class) makes the capability claim ``name``: a flag set to True, or a method
    of its own. Read with getattr and :func:`layerkit.nn.layer.overrides`, never assuming ``Layer``
    has the member (the capabilities live in mixins, :mod:`layerkit.nn.capabilities`)."""
    if name in FLAG_CAPABILITIES:
        return bool(getattr(layer, name, False))
    cls = layer if isinstance(layer, type) else type(layer)
    return callable(getattr(cls, name, None)) and overrides(cls, name)


# -- one layer on one example ---------------------------------------------------------------

class Subject:
    """One layer class on one example (config and per-sample input shape), built once.

    The checks of an example share it; each gets its own copies of the input, parameters and state
    (:meth:`x`, :meth:`params`, :meth:`state`), so a layer that writes into them spoils nothing else.
    Without a config it stands for the class alone (the static checks). ``label`` names the layer in
    gradient-check rows (its type by default).
    """

    def __init__(self, layer_cls: Any, config: Mapping[str, Any] | None = None, input_shape: Any = None, *,
                 index: int | None = None, label: str | None = None, batch_size: int = 2, seed: int = 0,
                 samples: int = 32) -> None:
        self.cls, self.config, self.input_shape, self.index = layer_cls, config, input_shape, index
        self.name = getattr(layer_cls, "type", "") or layer_cls.__name__
        self.label = label or self.name
        self.batch_size, self.seed, self.samples = batch_size, seed, samples
        self._built: dict[str, Any] = {}

    # -- naming ---------------------------------------------------------------------------
    @property
    def example(self) -> str:
        """The example in words, as ContractError shows it."""
        if self.config is None:
            return ""
        where = f"examples[{self.index}]: " if self.index is not None else ""
        config = self._built.get("filled", self.config)
        return f"{where}config {dict(config)}, input shape {shape_text(self.input_shape)}"

    def error(self, check: str, broken: Broken) -> ContractError:
        return ContractError(broken.detail, check=check, layer=self.name, example=self.example,
                             member=broken.member, numbers=broken.numbers, results=broken.results)

    # -- calling the layer's code ---------------------------------------------------------
    def call(self, member: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call the layer's code; an exception from it is a broken claim of ``member``."""
        try:
            return fn(*args)
        except (Broken, ContractError, MemoryError, KeyboardInterrupt, threading.BrokenBarrierError):
            raise
        except Exception as exc:
            raise Broken(member, f"raised {type(exc).__name__}: {exc}") from exc

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._built:
            self._built[key] = make()
        return self._built[key]

    @property
    def filled(self) -> dict[str, Any]:
        """The example's config, validated against ``params_schema``, with the defaults filled in."""
        return self._once("filled", self._fill)

    def _fill(self) -> dict[str, Any]:
        import jsonschema

        from layerkit.modelfile.spec import fill_defaults

        schema = self.cls.params_schema
        config = dict(self.config or {})
        try:
            jsonschema.Draft202012Validator(schema).validate(config)
        except jsonschema.ValidationError as exc:
            raise Broken("params_schema", f"config {config} does not validate against its params_schema: "
                                          f"{exc.message}") from None
        except jsonschema.SchemaError as exc:
            raise Broken("params_schema", f"params_schema: {exc.message}") from None
        filled = fill_defaults(schema, config)
        try:
            jsonschema.Draft202012Validator(schema).validate(filled)
        except jsonschema.ValidationError as exc:
            raise Broken("params_schema", f"a default in params_schema is invalid: {exc.message}") from None
        return filled

    @property
    def layer(self) -> Layer:
        return self._once("layer", lambda: self.call("__init__", lambda: self.cls(**copy.deepcopy(self.filled))))

    @property
    def multi(self) -> bool:
        return self.layer.arity != 1

    @property
    def in_shape(self) -> Any:
        return self._once("in_shape", self._in_shape)

    def _in_shape(self) -> Any:
        shape = self.input_shape
        if self.multi:
            if not (isinstance(shape, (list, tuple)) and all(isinstance(s, (list, tuple)) for s in shape)):
                raise Broken("examples", f"takes several inputs (arity {self.layer.arity}), so its input shape "
                                         f"must be a list of shapes")
            return [tuple(int(d) for d in s) for s in shape]
        return tuple(int(d) for d in shape)

    @property
    def declared(self) -> tuple[int, ...]:
        """``output_shape(input shape)``, a tuple of ints."""
        return self._once("declared", self._declared)

    def _declared(self) -> tuple[int, ...]:
        out = self.call("output_shape", self.layer.output_shape, self.in_shape)
        try:
            return tuple(int(d) for d in out)
        except (TypeError, ValueError):
            raise Broken("output_shape", f"must return a tuple of ints, returned {out!r}") from None

    def specs(self, member: str) -> dict[str, ParamSpec]:
        """``param_specs`` or ``state_specs`` at the example's input shape."""
        def make() -> dict[str, ParamSpec]:
            got = self.call(member, getattr(self.layer, member), self.in_shape)
            if not isinstance(got, Mapping) or not all(isinstance(v, ParamSpec) for v in got.values()):
                raise Broken(member, f"must return {{name: ParamSpec(shape, ...)}}, returned {got!r}")
            return dict(got)
        return self._once(member, make)

    def _arrays_f32(self) -> tuple[dict[str, np.ndarray], Any]:
        from layerkit.gradcheck.layers import random_input, random_params
        from layerkit.nn.initializers import initialize

        rng = np.random.default_rng(self.seed)
        pspecs, sspecs = self.specs("param_specs"), self.specs("state_specs")
        for specs in (pspecs, sspecs):  # the draws the initializers take, as training's first step
            for spec in specs.values():
                initialize(spec, rng, np.float32)
        params = {k: v.astype(np.float32) for k, v in random_params(pspecs, rng).items()}
        x = random_input(self.in_shape, self.batch_size, rng, self.multi, self.layer)
        return params, self._cast(x, np.float32)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Each input's kind, ``"float"`` or ``"tokens"`` (:attr:`Layer.input_kind`)."""
        return input_kinds(self.layer, len(self.in_shape) if self.multi else 1)

    def _cast(self, x: Any, dtype: Any) -> Any:
        """Float inputs to ``dtype`` (fresh copies); token ids stay int64."""
        xs = [np.array(v, dtype=np.int64 if kind == "tokens" else dtype, copy=True)
              for v, kind in zip(x if self.multi else [x], self.kinds, strict=True)]
        return xs if self.multi else xs[0]

    def params(self, dtype: Any = np.float32) -> dict[str, np.ndarray]:
        """Standard-normal parameters (a fresh copy each call)."""
        base = self._once("arrays", self._arrays_f32)[0]
        return {k: np.array(v, dtype=dtype, copy=True) for k, v in base.items()}

    def x(self, dtype: Any = np.float32) -> Any:
        """A batch of ``batch_size`` standard-normal inputs (a fresh copy each call)."""
        base = self._once("arrays", self._arrays_f32)[1]
        return self._cast(base, dtype)

    def state(self, dtype: Any = np.float32) -> dict[str, np.ndarray]:
        """The state tensors' initial values (a fresh copy each call)."""
        from layerkit.gradcheck.layers import initial_state

        base = self._once("state0", lambda: initial_state(self.specs("state_specs")))
        return {k: np.array(v, dtype=dtype, copy=True) for k, v in base.items()}

    # -- forward and backward, their results checked for form -------------------------------
    def output_gradient(self, y: Any) -> np.ndarray:
        """The checks' standard-normal ``dy`` for the output ``y`` (the same draw every call)."""
        return np.random.default_rng(self.seed + 3).standard_normal(np.shape(y)).astype(np.asarray(y).dtype)

    def forward(self, params: dict, x: Any, training: bool, state: dict | None = None,
                layer: Any = None) -> tuple[Any, Any]:
        layer = self.layer if layer is None else layer
        dtype = np.asarray(x[0] if isinstance(x, list) else x).dtype
        state = self.state(np.float32 if dtype.kind in "iu" else dtype) if state is None else state
        out = self.call("forward", layer.forward, params, x, training, np.random.default_rng(self.seed), state)
        if not isinstance(out, tuple) or len(out) != 2:
            got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
            raise Broken("forward", f"must return (output, cache), returned {got}; the contract is "
                                    f"{SIGNATURES['forward']}")
        return out

    def backward(self, params: dict, cache: Any, dy: np.ndarray, method: str = "backward"
                 ) -> tuple[list[Any], dict[str, Any]]:
        out = self.call(method, getattr(self.layer, method), params, cache, dy)
        if not isinstance(out, tuple) or len(out) != 2:
            got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
            raise Broken(method, f"must return (input gradient, {{parameter: gradient}}), returned {got}; "
                                 f"the contract is {SIGNATURES['backward']}")
        dx, grads = out
        if grads is not None and not isinstance(grads, Mapping):
            raise Broken(method, f"the second thing returned must be a dict {{parameter name: gradient}} "
                                 f"(empty for no parameters), got {type(grads).__name__}")
        dxs = list(dx) if self.multi and isinstance(dx, (list, tuple)) else [dx]
        return dxs, dict(grads or {})

    def tensor_names(self) -> list[str]:
        n = len(self.in_shape) if self.multi else 1
        return [f"input[{i}]" for i in range(n)] if self.multi else ["input"]


# -- checks -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One named claim: ``run(subject)`` returns quietly or raises :class:`ContractError`.

    ``scope`` is ``"layer"`` (the class alone) or ``"example"`` (the layer run on one example);
    ``at_load`` marks the checks ``--plugin`` loading runs (the ones without which nothing can run);
    ``member`` is the contract member the claim is about.
    """

    name: str
    member: str
    scope: str
    at_load: bool
    fn: Callable[[Subject], Any]
    doc: str

    def run(self, subject: Subject) -> Any:
        """Run the check on ``subject``; its result (the gradient rows for the gradient check)."""
        try:
            return self.fn(subject)
        except Broken as broken:
            raise subject.error(self.name, broken) from broken.__cause__


def _static(name: str) -> Check:
    fn, member, at_load = STATIC_CHECKS[name]

    def run(s: Subject) -> None:
        findings = fn(s.cls)
        if findings:
            raise Broken(member, "; ".join(message for _, message in findings))

    return Check(name, member, "layer", at_load, run, (fn.__doc__ or "").strip())


def _config_validates(s: Subject) -> None:
    _ = s.filled, s.layer, s.in_shape
    kinds = getattr(s.layer, "input_kind", "float")
    if not all(k in ("float", "tokens") for k in ((kinds,) if isinstance(kinds, str) else kinds)):
        raise Broken("input_kind", f"must be 'float' or 'tokens' (or a tuple of them, one per input), got {kinds!r}")
    if "tokens" in s.kinds:
        top = s.call("token_range", s.layer.token_range)
        if not isinstance(top, (int, np.integer)) or isinstance(top, bool) or top < 1:
            raise Broken("token_range", f"must return a positive int (ids 0 .. token_range - 1), returned {top!r}")


def _size_estimates(s: Subject) -> None:
    flops = s.call("flops", s.layer.flops, s.in_shape)
    if not isinstance(flops, (int, np.integer)) or isinstance(flops, bool) or flops < 0:
        raise Broken("flops", f"must return a non-negative int, returned {flops!r}")
    scratch = s.call("workspace_bytes", s.layer.workspace_bytes, s.in_shape, s.batch_size)
    if not isinstance(scratch, (int, np.integer)) or isinstance(scratch, bool) or scratch < 0:
        raise Broken("workspace_bytes", f"must return a non-negative int, returned {scratch!r}")


def _tensors_initialize(s: Subject) -> None:
    from layerkit.nn.initializers import initialize

    rng = np.random.default_rng(s.seed)
    for kind, member in (("parameter", "param_specs"), ("state", "state_specs")):
        for tname, spec in s.specs(member).items():
            value = s.call(member, initialize, spec, rng, np.float32)
            if value.shape != tuple(spec.shape):
                raise Broken(member, f"{kind} {tname!r} declared {tuple(spec.shape)}, allocated {value.shape}")
            if not np.all(np.isfinite(value)):
                raise Broken(member, f"{kind} {tname!r} initialises to non-finite values")


def _output_shape_matches_forward(s: Subject) -> None:
    want = (s.batch_size, *s.declared)
    for mode, training in _MODES:
        y, _ = s.forward(s.params(), s.x(), training)
        if np.shape(y) != want:
            hint = ("" if overrides(s.cls, "output_shape") else
                    "; the inherited output_shape() returns the input shape: define output_shape(self, input_shape)")
            raise Broken("forward", f"returned an output of shape {shape_text(np.shape(y))} for a batch of "
                                    f"{s.batch_size} ({mode}); output_shape() says {shape_text(s.declared)} per "
                                    f"sample, i.e. {shape_text(want)}{hint}")


def _forward_output_finite(s: Subject) -> None:
    for mode, training in _MODES:
        y, _ = s.forward(s.params(), s.x(), training)
        bad = int(np.size(y) - np.count_nonzero(np.isfinite(y)))
        if bad:
            raise Broken("forward", f"{mode} forward produced {bad} non-finite value(s) on finite input",
                         {"non_finite": bad})


def _float32_stays_float32(s: Subject) -> None:
    params = s.params()
    for mode, training in _MODES:
        y, cache = s.forward(params, s.x(), training)
        if np.asarray(y).dtype != np.float32:
            raise Broken("forward", f"{mode} forward turned float32 input into {np.asarray(y).dtype}")
        if training:
            dy = np.random.default_rng(s.seed + 1).standard_normal(np.shape(y)).astype(np.float32)
            dxs, grads = s.backward(params, cache, dy)
            for tname, g in [*zip(s.tensor_names(), dxs, strict=False), *grads.items()]:
                if g is None:  # a token input's place (checked by backward_gradient_shapes)
                    continue
                if np.asarray(g).dtype != np.float32:
                    what = f"{tname} gradient" if tname.startswith("input") else f"gradient of {tname!r}"
                    raise Broken("backward", f"the {what} is {np.asarray(g).dtype}, not float32")


def _forward_leaves_input_unchanged(s: Subject) -> None:
    for mode, training in _MODES:
        params, x = s.params(), s.x()
        x_before, p_before = _copy(x), {k: v.copy() for k, v in params.items()}
        s.forward(params, x, training)
        if not _same(x, x_before):
            raise Broken("forward", f"forward ({mode}) modified its input in place")
        for tname in params:
            if not np.array_equal(params[tname], p_before[tname]):
                raise Broken("forward", f"forward ({mode}) modified parameter {tname!r}")


def _backward_gradient_shapes(s: Subject) -> None:
    params, x = s.params(), s.x()
    y, cache = s.forward(params, x, True)
    dy = np.random.default_rng(s.seed + 1).standard_normal(np.shape(y)).astype(np.float32)
    dxs, grads = s.backward(params, cache, dy)
    xs = x if s.multi else [x]
    if len(dxs) != len(xs):
        raise Broken("backward", f"returned {len(dxs)} input gradients for {len(xs)} inputs")
    for tname, g, xi, kind in zip(s.tensor_names(), dxs, xs, s.kinds, strict=True):
        if kind == "tokens":
            if g is not None:
                raise Broken("backward", f"the {tname} holds token ids, which have no gradient: backward must "
                                         f"return None in its place")
            continue
        if g is None or np.shape(g) != np.shape(xi):
            raise Broken("backward", f"the {tname} gradient has shape "
                                     f"{None if g is None else shape_text(np.shape(g))}, the input "
                                     f"{shape_text(np.shape(xi))}")
    pspecs = s.specs("param_specs")
    missing = [t for t in pspecs if t not in grads]
    if missing:
        raise Broken("backward", f"returned no gradient for parameter(s) {missing}")
    extra = [t for t in grads if t not in pspecs]
    if extra:
        raise Broken("backward", f"returned gradients for undeclared tensor(s) {extra}, which param_specs "
                                 f"does not declare")
    for tname, spec in pspecs.items():
        if np.shape(grads[tname]) != tuple(spec.shape):
            raise Broken("backward", f"the gradient of {tname!r} has shape {shape_text(np.shape(grads[tname]))}, "
                                     f"the parameter {shape_text(tuple(spec.shape))}")


def _backward_leaves_dy_unchanged(s: Subject) -> None:
    params = s.params()
    for mode, training in _MODES:
        y, cache = s.forward(params, s.x(), training)
        dy = s.output_gradient(y)
        before = dy.copy()
        s.backward(params, cache, dy)
        if not np.array_equal(dy, before):
            raise Broken("backward", f"backward ({mode}) modified dy in place; only backward_inplace may")


def _gradients_match_finite_differences(s: Subject) -> list:
    from layerkit.gradcheck.layers import check_layer_config
    from layerkit.gradcheck.render import describe

    _ = s.in_shape
    rows = s.call("forward", lambda: check_layer_config(s.cls, s.filled, s.in_shape, batch_size=s.batch_size,
                                                        samples=s.samples, seed=s.seed, name=s.label))
    bad = [r for r in rows if r.status == "fail"]
    if bad:
        errors = [r.max_rel_error for r in bad if r.max_rel_error is not None]
        lines = [f"the gradient of {', '.join(repr(r.tensor) for r in bad)} disagrees with finite differences "
                 f"(float64)"]
        for r in bad:
            lines += describe(r)
        raise Broken(bad[0].via, "\n".join(lines), {"max_rel_error": max(errors)} if errors else {}, rows)
    return rows


def _split_batch_equals_whole(s: Subject) -> None:
    from layerkit.gradcheck.layers import random_input
    from layerkit.testing import contract

    layer, multi = s.layer, s.multi
    coupling = layer.sample_coupling
    name = "NONE" if coupling == Coupling.NONE else "BATCH_SUMS"
    claim = f"declares sample_coupling = {name}"
    params = s.params(np.float64)
    # four samples: each half then has two, so per-half statistics differ from the whole's
    xs = random_input(s.in_shape, max(s.batch_size, 4), np.random.default_rng([s.seed, 4]), multi, layer)
    n = len(xs[0]) if multi else len(xs)
    cut = n // 2
    training = not layer.uses_rng

    def part(a: int, b: int) -> Any:
        return [v[a:b] for v in xs] if multi else xs[a:b]

    def whole_or_half(a: int, b: int, dy: np.ndarray) -> tuple:
        st = s.state(np.float64)
        y, cache = s.forward(params, part(a, b), training, st)
        dxs, grads = s.backward(params, cache, dy[a:b])
        return np.asarray(y), dxs, grads, st

    y0, _ = s.forward(params, xs, training, s.state(np.float64))
    dy = np.random.default_rng(s.seed + 2).standard_normal(np.shape(y0))
    y, dxs, grads, st = whole_or_half(0, n, dy)
    work = [lambda: whole_or_half(0, cut, dy), lambda: whole_or_half(cut, n, dy)]
    if coupling == Coupling.NONE:
        pieces = [w() for w in work]
        how = "on half a batch"
    else:
        reducer = contract.TwoHalvesReducer()
        try:
            pieces = reducer.run(work)
        except threading.BrokenBarrierError:
            raise Broken("sample_coupling", f"{claim}, but its two halves of a batch did not make the same "
                                            f"batch_sum calls (calls per half: {reducer.calls})") from None
        how = "on two halves of a batch with batch_sum adding both halves' sums"

    def close(a: Any, b: Any, what: str) -> None:
        if not np.allclose(a, b, rtol=1e-9, atol=1e-12):
            text, numbers = _difference(a, b)
            raise Broken("sample_coupling", f"{claim}, but {what} ({text})", numbers)

    close(np.concatenate([p[0] for p in pieces]), y, f"its forward output {how} differs from the whole batch's")
    for i, g in enumerate(dxs):
        if g is None:  # a token input
            continue
        close(np.concatenate([p[1][i] for p in pieces]), g,
              f"its {s.tensor_names()[i]} gradient {how} differs from the whole batch's")
    for tname, g in grads.items():
        close(pieces[0][2][tname] + pieces[1][2][tname], g,
              f"the gradients of {tname!r} {how} do not add up to the whole batch's")
    if coupling == Coupling.BATCH_SUMS and training:
        for tname, v in st.items():
            close(pieces[0][3][tname], v, f"the state {tname!r} updated {how} differs from the whole batch's")


def _split_batch_draws_the_same_numbers(s: Subject) -> None:
    from layerkit.gradcheck.layers import random_input
    from layerkit.nn.samplerandom import SampleRandom, derive_key

    layer, multi = s.layer, s.multi
    params = s.params(np.float64)
    xs = random_input(s.in_shape, max(s.batch_size, 4), np.random.default_rng([s.seed, 5]), multi)
    n = len(xs[0]) if multi else len(xs)
    cut = n // 2
    # global sample indices that are not the row numbers: the draws must follow the indices given
    samples = 3 + 7 * np.arange(n)
    key = derive_key("split_batch_draws_the_same_numbers", s.seed)

    def run(a: int, b: int) -> np.ndarray:
        part = [v[a:b] for v in xs] if multi else xs[a:b]
        out = s.call("forward", layer.forward, params, part, True, SampleRandom(key, samples[a:b]),
                     s.state(np.float64))
        if not isinstance(out, tuple) or len(out) != 2:
            raise Broken("forward", f"must return (output, cache); the contract is {SIGNATURES['forward']}")
        return np.asarray(out[0])

    whole, halves = run(0, n), np.concatenate([run(0, cut), run(cut, n)])
    if not (whole.shape == halves.shape and np.allclose(halves, whole, rtol=1e-9, atol=1e-12)):
        text, numbers = _difference(halves, whole)
        raise Broken("sample_rng", f"declares sample_rng, but in training two halves of a batch, each given its "
                                   f"samples' SampleRandom, draw other numbers than the whole batch ({text}): "
                                   f"draw with rng.random(x.shape)-style calls, batch first, never from a "
                                   f"generator of the whole batch", numbers)


def _inference_output(s: Subject) -> tuple[dict, Any, dict, Any]:
    params, x, state = s.params(), s.x(), s.state()
    y, _ = s.forward(params, _copy(x), False, {k: v.copy() for k, v in state.items()})
    return params, x, state, y


def _infer_equals_forward(s: Subject) -> None:
    params, x, state, y = _inference_output(s)
    x_before = _copy(x)
    got = s.call("infer", s.layer.infer, params, x, state)
    if not _same(x, x_before):
        raise Broken("infer", "infer modified its input in place")
    if not _equal(got, y):
        text, numbers = _difference(got, y)
        raise Broken("infer", f"infer differs from forward's inference output ({text}); it must equal it "
                              f"bit for bit", numbers)


def _backward_params_equals_backward(s: Subject) -> None:
    params = s.params()
    for mode, training in _MODES:
        y, cache = s.forward(params, s.x(), training)
        dy = s.output_gradient(y)
        before = dy.copy()
        _, grads = s.backward(params, cache, dy)
        _, cache = s.forward(params, s.x(), training)
        only = dict(s.call("backward_params", s.layer.backward_params, params, cache, dy) or {})
        if not np.array_equal(dy, before):
            raise Broken("backward_params", f"backward_params ({mode}) modified dy in place")
        _same_param_grads("backward_params", mode, only, grads)


def _same_param_grads(method: str, mode: str, got: dict, grads: dict) -> None:
    if set(got) != set(grads):
        raise Broken(method, f"{method} ({mode}) returned gradients for {sorted(got)}, backward for {sorted(grads)}")
    for tname, g in grads.items():
        if not _equal(got[tname], g):
            text, numbers = _difference(got[tname], g)
            raise Broken(method, f"{method} ({mode}) gives a different gradient of {tname!r} than backward "
                                 f"({text}); it must equal backward's bit for bit", numbers)


def _same_input_grads(method: str, mode: str, got: list, dxs: list, names: Any, than: str) -> None:
    if len(got) != len(dxs):
        raise Broken(method, f"{method} ({mode}) returned {len(got)} input gradients, backward {len(dxs)}")
    for tname, a, b in zip(names, got, dxs, strict=True):
        if not _equal(a, b):
            text, numbers = _difference(a, b)
            raise Broken(method, f"{method} ({mode}) gives a different {tname} gradient than {than} ({text}); "
                                 f"it must equal backward's bit for bit", numbers)


def _backward_inplace_equals_backward(s: Subject) -> None:
    params = s.params()
    for mode, training in _MODES:
        y, cache = s.forward(params, s.x(), training)
        dy = s.output_gradient(y)
        dxs, grads = s.backward(params, cache, dy.copy())
        _, cache = s.forward(params, s.x(), training)
        dxs2, grads2 = s.backward(params, cache, dy.copy(), "backward_inplace")
        _same_input_grads("backward_inplace", mode, dxs2, dxs, s.tensor_names(), "backward on a copy of dy")
        _same_param_grads("backward_inplace", mode, grads2, grads)


def _backward_input_equals_backward(s: Subject) -> None:
    params = s.params()
    for mode, training in _MODES:
        y, cache = s.forward(params, s.x(), training)
        dy = s.output_gradient(y)
        before = dy.copy()
        dxs, _ = s.backward(params, cache, dy.copy())
        _, cache = s.forward(params, s.x(), training)
        got = s.call("backward_input", cast(Any, s.layer).backward_input, params, cache, dy)
        if not np.array_equal(dy, before):
            raise Broken("backward_input", f"backward_input ({mode}) modified dy in place")
        if not s.multi and isinstance(got, tuple):
            raise Broken("backward_input", f"backward_input ({mode}) returned a tuple; it returns the input "
                                           f"gradient alone, not (input gradient, parameter gradients)")
        dxs2 = list(got) if s.multi and isinstance(got, (list, tuple)) else [got]
        _same_input_grads("backward_input", mode, dxs2, dxs, s.tensor_names(), "backward")


def _fresh_dx(s: Subject) -> None:
    params = s.params()
    methods = ["backward", *(["backward_inplace"] if declares(s.layer, "backward_inplace") else []),
               *(["backward_input"] if declares(s.layer, "backward_input") else [])]
    for mode, training in _MODES:
        for method in methods:
            x = s.x()
            y, cache = s.forward(params, x, training)
            dy = s.output_gradient(y)
            if method == "backward_input":
                got = s.call(method, cast(Any, s.layer).backward_input, params, cache, dy)
                dxs = list(got) if s.multi and isinstance(got, (list, tuple)) else [got]
            else:
                dxs, _ = s.backward(params, cache, dy, method)
            others = [("dy", dy)] if method != "backward_inplace" else []
            xs = x if isinstance(x, list) else [x]
            others += [(name, v) for name, v in zip(s.tensor_names(), xs, strict=True)]
            others += [(f"parameter {k!r}", v) for k, v in params.items()]
            others += [("an array of its cache", v) for v in _arrays(cache)]
            for d in dxs:
                if not isinstance(d, np.ndarray) or (method == "backward_inplace" and d is dy):
                    continue  # handing back the exclusive dy is what backward_inplace is for
                for what, other in others:
                    if np.shares_memory(d, other):
                        raise Broken("fresh_dx", f"declares fresh_dx, but the input gradient {method} ({mode}) "
                                                 f"returns shares memory with {what}; {method} must return a "
                                                 f"new array")


def _infer_fresh(s: Subject) -> None:
    params, x, state, _ = _inference_output(s)
    got = s.call("infer", s.layer.infer, params, x, state)
    inputs = list(x) if isinstance(x, list) else [x]
    if any(np.shares_memory(got, a) for a in [*inputs, *params.values()]):
        raise Broken("infer_fresh", "declares infer_fresh, but infer's output shares memory with its input or "
                                    "a parameter")


def _infer_inplace_equals_infer(s: Subject) -> None:
    params, x, state, y = _inference_output(s)
    if isinstance(x, list):
        raise Broken("infer_inplace", "infer_inplace is for single-input layers")
    mine = x.copy()
    got = s.call("infer_inplace", cast(Any, s.layer).infer_inplace, params, mine, state)
    if not _equal(got, y):
        text, numbers = _difference(got, y)
        raise Broken("infer_inplace", f"infer_inplace differs from infer ({text})", numbers)
    if got is not mine and np.shares_memory(got, mine):
        raise Broken("infer_inplace", "infer_inplace returned a view of its input instead of the input itself "
                                      "or a new array")
    if any(np.shares_memory(got, p) for p in params.values()):
        raise Broken("infer_inplace", "infer_inplace returned an array that shares memory with a parameter")


def _near(a: Any, b: Any) -> bool:
    """Equal to float32 rounding of a few operations (folding multiplies the weights first)."""
    return np.shape(a) == np.shape(b) and bool(np.allclose(a, b, rtol=1e-4, atol=1e-5))


def _inference_affine_matches_infer(s: Subject) -> None:
    params, x, state, y = _inference_output(s)
    affine = s.call("inference_affine", cast(Any, s.layer).inference_affine, params, state)
    if affine is None:
        return
    bshape = (1, -1) + (1,) * (np.ndim(y) - 2)
    scale, shift = (np.asarray(a, dtype=np.float32).reshape(bshape) for a in affine)
    want = x * scale + shift
    if not _near(y, want):
        text, numbers = _difference(want, y)
        raise Broken("inference_affine", f"inference_affine's (scale, shift) do not give its inference output "
                                         f"x * scale + shift ({text})", numbers)


def _fold_affine_matches_infer(s: Subject) -> None:
    params, x, state, y = _inference_output(s)
    # the channel axis the layer names (AbsorbsAffine.affine_axis, per sample; dense: the last)
    axis = 1 + getattr(s.layer, "affine_axis", 0) % max(np.ndim(y) - 1, 1) if np.ndim(y) >= 2 else 1
    channels = np.shape(y)[axis] if np.ndim(y) >= 2 else 0
    rng = np.random.default_rng([s.seed, 7])
    scale = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    shift = rng.standard_normal(channels).astype(np.float32)
    p_before = {k: v.copy() for k, v in params.items()}
    folded = s.call("fold_affine", cast(Any, s.layer).fold_affine, params, scale, shift)
    for tname in params:
        if not np.array_equal(params[tname], p_before[tname]):
            raise Broken("fold_affine", f"fold_affine modified parameter {tname!r}")
    if folded is None:
        return
    bshape = tuple(-1 if i == axis else 1 for i in range(np.ndim(y)))
    want = y * scale.reshape(bshape) + shift.reshape(bshape)
    got = s.call("infer", s.layer.infer, folded, x, state)
    if not _near(got, want):
        text, numbers = _difference(got, want)
        raise Broken("fold_affine", f"infer with fold_affine's parameters is not infer(x) * scale + shift per "
                                    f"channel ({text})", numbers)


#: the pools an activation claiming ``commutes_with_max`` is checked against: windows that tile
#: the input, and overlapping padded ones (ties across windows, padding that never wins)
MAX_POOLS = ({"pool_size": 2}, {"pool_size": 3, "stride": 2, "padding": 1})
#: the per-sample shape those checks use (three channels)
COMMUTE_SHAPE = (3, 6, 6)


def _max_pairs(s: Subject, claim: str) -> list[tuple]:
    from layerkit.gradcheck.layers import initial_state, random_params
    from layerkit.layers.activations import ReLU
    from layerkit.layers.pooling import MaxPool2D
    from layerkit.modelfile.spec import fill_defaults

    layer = s.layer
    if claim == "pools_max":
        return [(ReLU(), {}, {}, layer, s.in_shape, "pools_max (after relu)")]
    if layer.arity != 1:
        raise Broken(claim, "commutes_with_max is for single-input layers")
    shape = tuple(s.call("output_shape", layer.output_shape, COMMUTE_SHAPE))
    if shape != COMMUTE_SHAPE:
        raise Broken(claim, f"declares commutes_with_max, but is not element-wise (output shape {shape} for "
                            f"input {COMMUTE_SHAPE})")
    rng = np.random.default_rng([s.seed, 11])
    params = {k: v.astype(np.float32) for k, v in random_params(layer.param_specs(COMMUTE_SHAPE), rng).items()}
    state = initial_state(layer.state_specs(COMMUTE_SHAPE))
    return [(layer, params, state, MaxPool2D(**fill_defaults(MaxPool2D.params_schema, config)), COMMUTE_SHAPE,
             f"commutes_with_max (with max_pool2d {config})") for config in MAX_POOLS]


def _max_claim(claim: str) -> Callable[[Subject], None]:
    """A ``commutes_with_max`` or ``pools_max`` claim: a max pool over the activation's output and the
    same pool over its input followed by the activation give the same output and input gradient, bit
    for bit in float32, in training and in inference (what the model relies on when it runs the pool
    first). Inputs lie on a coarse grid, so windows hold ties and relu outputs exact zeros."""

    def run(s: Subject) -> None:
        rng = np.random.default_rng([s.seed, 12])
        for act, params, state, pool, shape, what in _max_pairs(s, claim):
            x = (rng.integers(-3, 4, (4, *shape)) * 0.5).astype(np.float32)
            for mode, training in _MODES:
                def fwd(lay: Any, p: dict, v: np.ndarray, training: bool = training, state: dict = state) -> tuple:
                    return s.forward(p, v, training, {k: np.array(a) for k, a in state.items()}, layer=lay)

                a, a_cache = fwd(act, params, x)
                y, p_cache = fwd(pool, {}, a)
                q, q_cache = fwd(pool, {}, x)
                z, z_cache = fwd(act, params, q)
                if not np.array_equal(y, z):
                    text, numbers = _difference(z, y)
                    raise Broken(claim, f"declares {what}, but pooling before the activation changes the {mode} "
                                        f"output ({text})", numbers)
                if not training:
                    continue
                dy = np.random.default_rng([s.seed, 12]).standard_normal(np.shape(y)).astype(np.float32)
                dx = act.backward(params, a_cache, pool.backward({}, p_cache, dy)[0])[0]
                dx_moved = pool.backward({}, q_cache, act.backward(params, z_cache, dy)[0])[0]
                if not np.array_equal(dx, dx_moved):
                    text, numbers = _difference(dx_moved, dx)
                    raise Broken(claim, f"declares {what}, but pooling before the activation changes the input "
                                        f"gradient ({text})", numbers)

    return run


def _example(name: str, member: str, fn: Callable[[Subject], Any], doc: str, at_load: bool = False) -> Check:
    return Check(name, member, "example", at_load, fn, doc)


#: every check, by name, in the order they run (cheap and basic first, the gradient check last)
CHECKS: dict[str, Check] = {c.name: c for c in (
    *(_static(name) for name in STATIC_CHECKS),
    _example("config_validates", "params_schema", _config_validates,
             "the example's config validates against params_schema, with its defaults too; the layer builds",
             at_load=True),
    _example("size_estimates", "flops/workspace_bytes", _size_estimates,
             "flops() and workspace_bytes() return non-negative ints"),
    _example("tensors_initialize", "param_specs/state_specs", _tensors_initialize,
             "every declared parameter and state tensor allocates with its initializer: declared shape, finite",
             at_load=True),
    _example("output_shape_matches_forward", "forward", _output_shape_matches_forward,
             "forward's output has output_shape()'s shape, in training and inference mode", at_load=True),
    _example("forward_output_finite", "forward", _forward_output_finite,
             "forward's output is finite on finite input"),
    _example("float32_stays_float32", "forward/backward", _float32_stays_float32,
             "float32 in gives float32 out: the output and every gradient"),
    _example("forward_leaves_input_unchanged", "forward", _forward_leaves_input_unchanged,
             "forward leaves its input and its parameters alone"),
    _example("backward_gradient_shapes", "backward", _backward_gradient_shapes,
             "backward returns one input gradient per input, of its shape, and a gradient of the right shape "
             "for every declared parameter, and nothing else", at_load=True),
    _example("backward_leaves_dy_unchanged", "backward", _backward_leaves_dy_unchanged,
             "backward leaves dy alone (another layer may read it)"),
    _example("split_batch_equals_whole", "sample_coupling", _split_batch_equals_whole,
             "sample_coupling NONE or BATCH_SUMS: two halves of a batch give the whole batch's outputs, "
             "gradients (summed) and running statistics"),
    _example("split_batch_draws_the_same_numbers", "sample_rng", _split_batch_draws_the_same_numbers,
             "uses_rng with sample_rng (and sample_coupling NONE): in training, two halves of a batch with their "
             "samples' SampleRandom draw what the whole batch draws: the same output"),
    _example("infer_equals_forward", "infer", _infer_equals_forward,
             "infer equals forward's inference output bit for bit and leaves its input alone"),
    _example("backward_params_equals_backward", "backward_params", _backward_params_equals_backward,
             "backward_params gives backward's parameter gradients bit for bit and leaves dy alone"),
    _example("backward_inplace_equals_backward", "backward_inplace", _backward_inplace_equals_backward,
             "backward_inplace gives backward's gradients (on a copy of dy) bit for bit"),
    _example("backward_input_equals_backward", "backward_input", _backward_input_equals_backward,
             "backward_input gives backward's input gradient bit for bit and leaves dy alone"),
    _example("fresh_dx", "fresh_dx", _fresh_dx,
             "fresh_dx: no input gradient shares memory with dy, the input, a parameter or the cache"),
    _example("infer_fresh", "infer_fresh", _infer_fresh,
             "infer_fresh: infer's output shares no memory with the input or a parameter"),
    _example("infer_inplace_equals_infer", "infer_inplace", _infer_inplace_equals_infer,
             "infer_inplace (on a copy of the input) gives infer's output bit for bit, as that copy or a new array"),
    _example("inference_affine_matches_infer", "inference_affine", _inference_affine_matches_infer,
             "inference_affine's (scale, shift) give the inference output as x * scale + shift"),
    _example("fold_affine_matches_infer", "fold_affine", _fold_affine_matches_infer,
             "infer with fold_affine's parameters gives infer(x) * scale + shift; params are left alone"),
    _example("commutes_with_max", "commutes_with_max", _max_claim("commutes_with_max"),
             "commutes_with_max: a max pool before or after the activation gives the same output and gradient"),
    _example("pools_max", "pools_max", _max_claim("pools_max"),
             "pools_max: relu before or after the pool gives the same output and gradient"),
    _example("gradients_match_finite_differences", "backward", _gradients_match_finite_differences,
             "backward's gradients agree with central differences of forward, in float64"),
)}

#: the checks that apply only when the layer declares the capability they are about (their ``member``)
CAPABILITY_CHECKS = {c.name: c.member for c in CHECKS.values()
                     if c.member in FLAG_CAPABILITIES + METHOD_CAPABILITIES}


def _applies(check: Check, subject: Subject) -> bool:
    try:
        layer: Any = subject.layer
    except (Broken, ContractError):
        layer = subject.cls  # it cannot be built: config_validates says why; decide by the class
    if check.name in CAPABILITY_CHECKS:
        return declares(layer, CAPABILITY_CHECKS[check.name])
    if check.name == "split_batch_equals_whole":
        return getattr(layer, "sample_coupling", Coupling.OTHER) in (Coupling.NONE, Coupling.BATCH_SUMS)
    if check.name == "split_batch_draws_the_same_numbers":
        return (bool(getattr(layer, "uses_rng", False)) and bool(getattr(layer, "sample_rng", False))
                and getattr(layer, "sample_coupling", Coupling.OTHER) == Coupling.NONE)
    return True


def yield_checks(layer_cls: type, example: Example | Subject | None = None) -> Iterator[Check]:
    """The checks for ``layer_cls``: its static (class) checks when ``example`` is None, else those that
    apply to the layer on that example (an :class:`~layerkit.nn.layer.Example` or a built
    :class:`Subject`): the core claims always, a capability's check only where it is declared."""
    if example is None:
        yield from (c for c in CHECKS.values() if c.scope == "layer")
        return
    subject = example if isinstance(example, Subject) else subject_for(layer_cls, example.config, example.input_shape)
    yield from (c for c in CHECKS.values() if c.scope == "example" and _applies(c, subject))


_subjects: dict[tuple, Subject] = {}


def subject_for(layer_cls: type, config: Mapping[str, Any] | None, input_shape: Any, *, index: int | None = None,
                batch_size: int = 2, seed: int = 0, samples: int = 32) -> Subject:
    """The shared :class:`Subject` for a layer and example: built once, so that the checks of one example
    (each its own pytest test) pay for the setup once."""
    key = (layer_cls, repr(config), repr(input_shape), index, batch_size, seed, samples)
    if key not in _subjects:
        if len(_subjects) > 512:
            _subjects.clear()
        _subjects[key] = Subject(layer_cls, config, input_shape, index=index, batch_size=batch_size, seed=seed,
                                 samples=samples)
    return _subjects[key]


def run_checks(subject: Subject, *, scope: str = "example", at_load: bool = False) -> dict[str, Any]:
    """Run every check of ``scope`` that applies to ``subject`` (only the load-time ones with ``at_load``);
    raise the first :class:`ContractError`. Returns each check's result by name."""
    checks = yield_checks(subject.cls, None if scope == "layer" else subject)
    return {c.name: c.run(subject) for c in checks if c.at_load or not at_load}


# -- compiled kernels ---------------------------------------------------------------------------

#: the check a compiled kernel must pass (:func:`check_kernel`)
KERNEL_CHECK = "kernel_matches_reference"


def check_kernel(kernel: Any, compiled: Any = None, *, seed: int = 0) -> int:
    """Compare ``compiled`` (default: the kernel's compiled implementation, which imports numba) with
    the numpy reference of ``kernel`` (a :class:`layerkit.kernels.kernel.Kernel`) on every example
    input the kernel makes, output by output, within the kernel's stated tolerance. Raises
    :class:`~layerkit.errors.ContractError` (check ``kernel_matches_reference``) at the first output
    outside it; returns the number of examples compared, 0 when there is nothing compiled to compare."""
    from layerkit.kernels.select import compiled as load_compiled

    impl = load_compiled(kernel.name) if compiled is None else compiled
    if impl is None:
        return 0
    count = 0
    for example in kernel.examples(np.random.default_rng(seed)):
        # the reference on a copy, so that nothing it does to its inputs reaches the compiled run
        want = kernel.run(kernel.reference, copy.deepcopy(example))
        try:
            got = kernel.run(impl, example)
        except Exception as exc:  # the compiled code's failure is the check's finding
            raise ContractError(f"raised {type(exc).__name__}: {exc}", check=KERNEL_CHECK, layer=kernel.name,
                                example=example.what, member=f"{impl.path} kernel") from exc
        for output, value in want.items():
            why = kernel.tolerance.mismatch(got[output], value)
            if why:
                raise ContractError(f"its {output} differs from the numpy reference (tolerance: {kernel.tolerance}): "
                                    f"{why}", check=KERNEL_CHECK, layer=kernel.name, example=example.what,
                                    member=f"{impl.path} kernel")
        count += 1
    return count
