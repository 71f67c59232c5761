"""Recurrent layers: ``rnn``, ``lstm`` and ``gru``, trained by backpropagation through time.

Input ``(T, D)`` per sample, output ``(T, units)`` (``return_sequences``) or the last step's
``(units,)``; the state starts at zero. The tensors are PyTorch's, with its names, shapes, gate
order and bias layout, so weights port both ways: ``weight_ih (G*units, D)``, ``weight_hh
(G*units, units)``, ``bias_ih`` and ``bias_hh`` ``(G*units,)``, with G = 1 (rnn), 4 (lstm: gates
i, f, g, o) or 3 (gru: r, z, n).

With ``padding_idx`` set the layer reads a second input, the token ids ``(T,)`` (usually the model
input): at a position holding ``padding_idx`` the state is carried through unchanged and the
output is zero.

The input projection of every step is one matrix product before the time loop, and every
parameter gradient one product after it; the loop over time steps in between is the only Python
loop (it is the recurrence itself).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from layerkit import hookimpl
from layerkit.errors import ShapeError
from layerkit.nn.layer import Coupling, Example, Layer, Params, ParamSpec, Shape, require_rank


def sigmoid(a: np.ndarray) -> np.ndarray:
    """The logistic function, written with tanh so that no large exponential overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _schema(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {
        "units": {"type": "integer", "minimum": 1, "description": "size of the hidden state"},
        "return_sequences": {"type": "boolean", "default": True,
                             "description": "output every step (T, units), or only the last (units,)"},
        "padding_idx": {"type": ["integer", "null"], "minimum": 0, "default": None,
                        "description": "when set, the layer takes a second input, the token ids (T,) (e.g. "
                                       "\"inputs\": [\"emb\", \"input\"]); steps holding this id carry the "
                                       "state through unchanged and output zeros"},
        **(extra or {}),
    }
    return {"type": "object", "properties": props, "required": ["units"], "additionalProperties": False}


def _examples(extra: dict[str, Any] | None = None) -> tuple[Example, ...]:
    extra = extra or {}
    return (
        Example({"units": 3, **extra}, (4, 2)),
        Example({"units": 2, "return_sequences": False, **extra}, (5, 3), "only the last step"),
        Example({"units": 2, "padding_idx": 0, **extra}, [(6, 2), (6,)], "padded positions masked by the ids"),
        Example({"units": 2, **extra}, (20, 2), "backpropagation through 20 steps"),
    )


class _Recurrent(Layer):
    """What the three recurrent layers share: the projections, the time loop, masking and export."""

    sample_coupling = Coupling.NONE
    #: gates per step: the factor G of the tensors' first axis
    gates: int = 1
    #: the ONNX operator
    onnx_op: str = ""

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        masked = self.config.get("padding_idx") is not None
        self.arity = 2 if masked else 1
        self.input_kind = ("float", "tokens") if masked else "float"

    def token_range(self) -> int:
        # random ids for the checks: the padding id and one other, so about half the steps are masked
        return int(self.padding_idx) + 2

    # -- shapes --------------------------------------------------------------------------
    def _split_shape(self, input_shape: Any) -> Shape:
        if self.arity == 2:
            seq, ids = tuple(input_shape[0]), tuple(input_shape[1])
            require_rank(seq, 2, "(steps, features)")
            if ids != seq[:1]:
                raise ShapeError(f"its second input (the token ids) must have shape ({seq[0]},), one id per "
                                 f"step, got {ids}")
            return seq
        require_rank(input_shape, 2, "(steps, features)")
        return tuple(input_shape)

    def output_shape(self, input_shape: Any) -> Shape:
        steps, _ = self._split_shape(input_shape)
        return (steps, self.units) if self.return_sequences else (self.units,)

    def param_specs(self, input_shape: Any) -> dict[str, ParamSpec]:
        _, d = self._split_shape(input_shape)
        gu = self.gates * self.units
        # PyTorch's U(-1/sqrt(units), 1/sqrt(units)) for every tensor: he_uniform's limit sqrt(6 / fan_in)
        fan = 6 * self.units
        return {"weight_ih": ParamSpec((gu, d), "he_uniform", fan_in=fan, decay=True),
                "weight_hh": ParamSpec((gu, self.units), "he_uniform", fan_in=fan, decay=True),
                "bias_ih": ParamSpec((gu,), "he_uniform", fan_in=fan),
                "bias_hh": ParamSpec((gu,), "he_uniform", fan_in=fan)}

    def flops(self, input_shape: Any) -> int:
        steps, d = self._split_shape(input_shape)
        gu = self.gates * self.units
        return steps * (2 * d * gu + 2 * self.units * gu + 8 * gu)

    # -- the cell: one step, forward and backward --------------------------------------------
    def step(self, params: Params, xg: np.ndarray, h: np.ndarray, c: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray | None, Any]:
        """``(h, c, cache)`` of one step from ``xg`` (the input projection with ``bias_ih``) and the
        previous state (``c`` is None except for the LSTM)."""
        raise NotImplementedError

    def step_back(self, params: Params, cache: Any, dh: np.ndarray, dc: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(d xg, d(h_prev W_hh^T + b_hh), d h_prev, d c_prev)`` of one step (before masking)."""
        raise NotImplementedError

    # -- the sequence -------------------------------------------------------------------------
    def forward(self, params: Params, x: Any, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        seq, keep = self._inputs(x)
        n, steps, _ = seq.shape
        dtype = seq.dtype
        # (T, N, G*U): every step's input projection in one product
        xg = np.ascontiguousarray((seq @ params["weight_ih"].T + params["bias_ih"]).transpose(1, 0, 2))
        h = np.zeros((n, self.units), dtype=dtype)
        c = np.zeros((n, self.units), dtype=dtype) if self.gates == 4 else None
        hs = np.empty((steps + 1, n, self.units), dtype=dtype)  # hs[t]: the state before step t
        hs[0] = h
        cells = []
        for t in range(steps):
            h_new, c_new, cell = self.step(params, xg[t], h, c)
            if keep is not None:  # padded step: the state goes through unchanged
                m = keep[t]
                h_new = np.where(m, h_new, h)
                if c is not None:
                    c_new = np.where(m, c_new, c)
            h, c = h_new, c_new
            hs[t + 1] = h
            cells.append(cell)
        out = hs[1:]
        if keep is not None:
            out = out * keep
        y = np.ascontiguousarray(out.transpose(1, 0, 2)) if self.return_sequences else hs[-1].copy()
        return y, (seq, keep, hs, cells)

    def _inputs(self, x: Any) -> tuple[np.ndarray, np.ndarray | None]:
        if self.arity == 1:
            return np.asarray(x), None
        seq, ids = x
        # (T, N, 1): 1 where the step is a real token, 0 at padding
        keep = (np.asarray(ids) != self.padding_idx).T[:, :, None].astype(np.asarray(seq).dtype)
        return np.asarray(seq), keep

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        dxg, grads = self._through_time(params, cache, dy)
        dx = (dxg @ params["weight_ih"]).transpose(1, 0, 2)
        dx = np.ascontiguousarray(dx)
        return ([dx, None] if self.arity == 2 else dx), grads

    def backward_params(self, params: Params, cache: Any, dy: np.ndarray) -> dict[str, np.ndarray]:
        return self._through_time(params, cache, dy)[1]

    def _through_time(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        seq, keep, hs, cells = cache
        steps, n, units = hs.shape[0] - 1, hs.shape[1], self.units
        dtype = hs.dtype
        if self.return_sequences:
            douts = dy.transpose(1, 0, 2)  # (T, N, U)
            if keep is not None:
                douts = douts * keep
        dxg = np.empty((steps, n, self.gates * units), dtype=dtype)
        dgh = np.empty_like(dxg)
        dh = np.zeros((n, units), dtype=dtype) if self.return_sequences else np.array(dy, dtype=dtype)
        dc = np.zeros((n, units), dtype=dtype) if self.gates == 4 else None
        for t in range(steps - 1, -1, -1):
            if self.return_sequences:
                dh = dh + douts[t]
            if keep is not None:
                m = keep[t]
                dh_cell, dh_skip = dh * m, dh * (1 - m)
                dc_cell = None if dc is None else dc * m
                dc_skip = None if dc is None else dc * (1 - m)
            else:
                dh_cell, dh_skip, dc_cell, dc_skip = dh, None, dc, None
            dxg[t], dgh[t], dh, dc = self.step_back(params, cells[t], dh_cell, dc_cell)
            if dh_skip is not None:
                dh = dh + dh_skip
                if dc is not None and dc_skip is not None:
                    dc = dc + dc_skip
        flat_x = seq.transpose(1, 0, 2).reshape(steps * n, -1)
        flat_h = hs[:-1].reshape(steps * n, units)
        gx, gh = dxg.reshape(steps * n, -1), dgh.reshape(steps * n, -1)
        grads = {"weight_ih": gx.T @ flat_x, "weight_hh": gh.T @ flat_h,
                 "bias_ih": gx.sum(axis=0), "bias_hh": gh.sum(axis=0)}
        return dxg, grads

    # -- export -------------------------------------------------------------------------------------
    def onnx_gate_order(self) -> list[int]:
        """The order of PyTorch's gates that the ONNX operator expects."""
        return list(range(self.gates))

    def onnx_attributes(self) -> dict[str, Any]:
        return {}

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        if self.arity == 2:
            return self._unrolled_onnx(g, x, input_shape, params)
        u = self.units

        def reorder(a: np.ndarray) -> np.ndarray:
            blocks = [a[k * u:(k + 1) * u] for k in range(self.gates)]
            return np.concatenate([blocks[k] for k in self.onnx_gate_order()])[None]

        w = g.const(reorder(params["weight_ih"]), "W")
        r = g.const(reorder(params["weight_hh"]), "R")
        b = g.const(np.concatenate([reorder(params["bias_ih"]), reorder(params["bias_hh"])], axis=1), "B")
        seq = g.op("Transpose", [x], "time_major", perm=[1, 0, 2])
        outs = g.op(self.onnx_op, [seq, w, r, b], "rnn", outputs=2, hidden_size=u, **self.onnx_attributes())
        if not self.return_sequences:
            return g.op("Squeeze", [outs[1], g.const(np.array([0]), "axis0", np.int64)], "last")
        ys = g.op("Squeeze", [outs[0], g.const(np.array([1]), "axis1", np.int64)], "steps")
        return g.op("Transpose", [ys], "batch_major", perm=[1, 0, 2])

    def _unrolled_onnx(self, g: Any, x: Any, input_shape: Any, params: Params) -> str:
        """The masked layer as one ONNX node per operation and step (the ONNX recurrent operators
        know only trailing padding)."""
        seq_name, ids = x
        steps = int(input_shape[0][0])
        keep = g.op("Cast", [g.op("Not", [g.op("Equal", [ids, g.const(np.array(self.padding_idx), "pad",
                                                                            np.int64)])])],
                    "keep", to=g.onnx.TensorProto.FLOAT)  # (N, T)
        xg = g.op("Add", [g.op("MatMul", [seq_name, g.const(params["weight_ih"].T, "W_ih_T")]),
                          g.const(params["bias_ih"], "b_ih")], "xg")  # (N, T, G*U)
        cells = _OnnxCell(g, self, params)
        first = g.op("Gather", [xg, g.const(np.array(0), "t0", np.int64)], axis=1)  # (N, G*U)
        zero = g.op("Mul", [cells.gate(first, 0), g.const(np.float32(0.0), "zero")], "h0")
        h, c = zero, (zero if self.gates == 4 else None)
        outs = []
        for t in range(steps):
            tt = g.const(np.array(t), f"t{t}", np.int64)
            m = g.op("Unsqueeze", [g.op("Gather", [keep, tt], axis=1), g.const(np.array([1]), "ax1", np.int64)])
            h_new, c_new = cells.step(g.op("Gather", [xg, tt], axis=1), h, c)
            h = _onnx_blend(g, m, h_new, h)
            if c is not None and c_new is not None:
                c = _onnx_blend(g, m, c_new, c)
            outs.append(g.op("Unsqueeze", [g.op("Mul", [h, m]), g.const(np.array([1]), "ax1", np.int64)]))
        if not self.return_sequences:
            return h
        return g.op("Concat", outs, "steps", axis=1)


def _onnx_blend(g: Any, m: str, new: str, old: str) -> str:
    """``old + m * (new - old)``: the new state where the step is real, the old one at padding."""
    return g.op("Add", [old, g.op("Mul", [m, g.op("Sub", [new, old])])])


class _OnnxCell:
    """One step of a recurrent layer as ONNX nodes (for the masked, unrolled export)."""

    def __init__(self, g: Any, layer: _Recurrent, params: Params) -> None:
        self.g, self.layer = g, layer
        self.w_hh = g.const(params["weight_hh"].T, "W_hh_T")
        self.b_hh = g.const(params["bias_hh"], "b_hh")

    def gate(self, a: str, k: int) -> str:
        u = self.layer.units
        g = self.g
        return g.op("Slice", [a, g.const(np.array([k * u]), "s", np.int64), g.const(np.array([(k + 1) * u]), "e",
                                                                                     np.int64),
                              g.const(np.array([1]), "ax", np.int64)])

    def step(self, xg: str, h: str, c: str | None) -> tuple[str, str | None]:
        g, kind = self.g, self.layer.type
        gh = g.op("Add", [g.op("MatMul", [h, self.w_hh]), self.b_hh])
        if kind == "rnn":
            act = "Tanh" if self.layer.nonlinearity == "tanh" else "Relu"
            return g.op(act, [g.op("Add", [xg, gh])]), None
        if kind == "lstm":
            a = g.op("Add", [xg, gh])
            i, f = g.op("Sigmoid", [self.gate(a, 0)]), g.op("Sigmoid", [self.gate(a, 1)])
            cand, o = g.op("Tanh", [self.gate(a, 2)]), g.op("Sigmoid", [self.gate(a, 3)])
            if c is None:  # an LSTM carries a cell state; _Recurrent passes it for gates == 4
                raise ValueError("an LSTM step needs its cell state")
            c_new = g.op("Add", [g.op("Mul", [f, c]), g.op("Mul", [i, cand])])
            return g.op("Mul", [o, g.op("Tanh", [c_new])]), c_new
        r = g.op("Sigmoid", [g.op("Add", [self.gate(xg, 0), self.gate(gh, 0)])])
        z = g.op("Sigmoid", [g.op("Add", [self.gate(xg, 1), self.gate(gh, 1)])])
        n = g.op("Tanh", [g.op("Add", [self.gate(xg, 2), g.op("Mul", [r, self.gate(gh, 2)])])])
        return g.op("Add", [n, g.op("Mul", [z, g.op("Sub", [h, n])])]), None


class RNN(_Recurrent):
    """Elman recurrent layer ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``, as PyTorch's ``nn.RNN``."""

    type = "rnn"
    description = ("Elman recurrent layer h_t = tanh(x_t W_ih^T + b_ih + h_(t-1) W_hh^T + b_hh) (or relu), as "
                   "PyTorch's RNN with batch_first: (T, D) in, (T, units) out, or (units,) for the last step.")
    params_schema = _schema({"nonlinearity": {"enum": ["tanh", "relu"], "default": "tanh"}})
    examples = (*_examples(), Example({"units": 3, "nonlinearity": "relu"}, (5, 2), "relu"))
    gates = 1
    onnx_op = "RNN"

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.has_kinks = self.nonlinearity == "relu"

    def step(self, params: Params, xg: np.ndarray, h: np.ndarray, c: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray | None, Any]:
        a = xg + h @ params["weight_hh"].T + params["bias_hh"]
        h_new = np.tanh(a) if self.nonlinearity == "tanh" else np.maximum(a, 0)
        return h_new, None, h_new

    def step_back(self, params: Params, cache: Any, dh: np.ndarray, dc: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        h_new = cache
        da = dh * (1 - h_new * h_new) if self.nonlinearity == "tanh" else dh * (h_new > 0)
        return da, da, da @ params["weight_hh"], None

    def onnx_attributes(self) -> dict[str, Any]:
        return {"activations": ["Tanh" if self.nonlinearity == "tanh" else "Relu"]}


class _LSTMCache:
    """What the unmasked LSTM's forward keeps for backward, batch-last: the input ``xs`` (D, T*N) and
    the hidden states ``hs`` (U, (T+1)*N), the positions ordered (t, n) with h before step t at t; the
    cell state before each step ``cs`` (T+1, U, N), tanh of each new cell state (T, U, N) and the gates
    i, f, g, o (T, 4U, N)."""

    __slots__ = ("xs", "hs", "cs", "tcs", "acts")

    def __init__(self, xs: np.ndarray, hs: np.ndarray, cs: np.ndarray, tcs: np.ndarray, acts: np.ndarray) -> None:
        self.xs, self.hs, self.cs, self.tcs, self.acts = xs, hs, cs, tcs, acts


class LSTM(_Recurrent):
    """Long short-term memory with PyTorch's gates i, f, g, o, as ``nn.LSTM``."""

    type = "lstm"
    description = ("Long short-term memory, as PyTorch's LSTM with batch_first (gates i, f, g, o; cell and hidden "
                   "state start at zero): (T, D) in, (T, units) out, or (units,) for the last step.")
    params_schema = _schema()
    examples = _examples()
    gates = 4
    onnx_op = "LSTM"

    # The unmasked sequence runs batch-last: every per-step array is (features, N), so a gate is a
    # contiguous block of rows of the (4U, N) step and every elementwise call runs on contiguous memory.
    def forward(self, params: Params, x: Any, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        if self.arity == 2:  # masked steps: the general loop, which blends the state per step
            return super().forward(params, x, training, rng, state)
        seq = np.asarray(x)
        n, steps, _ = seq.shape
        u, dtype = self.units, seq.dtype
        # sigmoid(a) = 0.5 tanh(a / 2) + 0.5: halving the rows of the sigmoid gates (i, f, o) is exact,
        # so one tanh over all four gates and one affine map (identity on g) give every activation
        half = np.ones((4 * u, 1), dtype=dtype)
        half[:2 * u] = half[3 * u:] = 0.5
        shift = (half == 0.5).astype(dtype) * half
        w_hh = params["weight_hh"] * half  # (4U, U)
        # (D, T*N), positions ordered (t, n): the input of all steps side by side
        xs = np.ascontiguousarray(seq.transpose(2, 1, 0)).reshape(-1, steps * n)
        # (T, 4U, N): every step's input projection and both biases before the loop
        acts = np.matmul(params["weight_ih"] * half, xs.reshape(-1, steps, n).transpose(1, 0, 2))
        acts += (params["bias_ih"] + params["bias_hh"])[:, None] * half
        # hs[:, t*N:(t+1)*N]: the state before step t, side by side as in xs
        hs = np.zeros((u, (steps + 1) * n), dtype=dtype)
        cs = np.zeros((steps + 1, u, n), dtype=dtype)  # cs[t]: the cell state before step t
        tcs = np.empty((steps, u, n), dtype=dtype)  # tanh of the cell state after step t
        rec = np.empty((4 * u, n), dtype=dtype)
        ig = np.empty((u, n), dtype=dtype)
        for t in range(steps):
            a = acts[t]
            np.matmul(w_hh, hs[:, t * n:(t + 1) * n], out=rec)
            a += rec
            np.tanh(a, out=a)
            a *= half
            a += shift  # a: the gates i, f, g, o, each (U, N)
            np.multiply(a[u:2 * u], cs[t], out=cs[t + 1])
            np.multiply(a[:u], a[2 * u:3 * u], out=ig)
            cs[t + 1] += ig
            np.tanh(cs[t + 1], out=tcs[t])
            np.multiply(a[3 * u:], tcs[t], out=hs[:, (t + 1) * n:(t + 2) * n])
        out = hs[:, n:].reshape(u, steps, n)
        y = np.ascontiguousarray(out.transpose(2, 1, 0)) if self.return_sequences else out[:, -1].T.copy()
        return y, _LSTMCache(xs, hs, cs, tcs, acts)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        if not isinstance(cache, _LSTMCache):
            return super().backward(params, cache, dy)
        da, grads = self.sequence_backward(params, cache, dy)
        steps, n = cache.tcs.shape[0], cache.tcs.shape[2]
        # dx = d a W_ih for all positions in one product: (T*N, D), then batch-first
        dx = (da.T @ params["weight_ih"]).reshape(steps, n, -1).transpose(1, 0, 2)
        return np.ascontiguousarray(dx), grads

    def backward_params(self, params: Params, cache: Any, dy: np.ndarray) -> dict[str, np.ndarray]:
        if not isinstance(cache, _LSTMCache):
            return super().backward_params(params, cache, dy)
        return self.sequence_backward(params, cache, dy)[1]

    def sequence_backward(self, params: Params, cache: _LSTMCache, dy: np.ndarray
                          ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(d a^T, grads)`` of the unmasked sequence: the gradients of the gates' pre-activations
        at all positions as (4U, T*N), ordered (t, n), and the parameter gradients."""
        xs, hs, cs, tcs, acts = cache.xs, cache.hs, cache.cs, cache.tcs, cache.acts
        steps, u, n = tcs.shape
        dtype = hs.dtype
        i, f, g, o = (acts[:, k * u:(k + 1) * u] for k in range(4))
        # the derivative factors of every step at once, before the loop:
        # d a_i = dc g i(1-i), d a_f = dc c_prev f(1-f), d a_g = dc i(1-g^2), d a_o = dh tanh(c) o(1-o)
        dgates = np.empty((steps, 4, u, n), dtype=dtype)
        d_i, d_f, d_g, d_o = (dgates[:, k] for k in range(4))
        np.subtract(1, i, out=d_i)
        d_i *= i
        d_i *= g
        np.subtract(1, f, out=d_f)
        d_f *= f
        d_f *= cs[:-1]
        np.multiply(g, g, out=d_g)
        np.subtract(1, d_g, out=d_g)
        d_g *= i
        np.subtract(1, o, out=d_o)
        d_o *= o
        d_o *= tcs
        dc_dh = np.multiply(tcs, tcs)  # d c_t / d h_t = o (1 - tanh(c_t)^2), through h = o tanh(c)
        np.subtract(1, dc_dh, out=dc_dh)
        dc_dh *= o
        w_hh_t = np.ascontiguousarray(params["weight_hh"].T)  # (U, 4U)
        da = np.empty((4 * u, steps * n), dtype=dtype)  # positions ordered (t, n), as xs and hs
        tmp = np.empty((u, n), dtype=dtype)
        dc = np.zeros((u, n), dtype=dtype)
        if self.return_sequences:
            douts = np.ascontiguousarray(np.asarray(dy, dtype=dtype).transpose(1, 2, 0))  # (T, U, N)
            dh = np.zeros((u, n), dtype=dtype)
        else:
            douts = None
            dh = np.array(np.asarray(dy).T, dtype=dtype)
        for t in range(steps - 1, -1, -1):
            if douts is not None:
                dh += douts[t]
            np.multiply(dh, dc_dh[t], out=tmp)
            dc += tmp
            da_t = da[:, t * n:(t + 1) * n]
            np.multiply(dc, dgates[t, :3], out=da_t[:3 * u].reshape(3, u, n))
            np.multiply(dh, dgates[t, 3], out=da_t[3 * u:])
            np.matmul(w_hh_t, da_t, out=dh)
            dc *= f[t]
        # both weight gradients as one product each over all N*T positions
        gb = da.sum(axis=1)
        grads = {"weight_ih": da @ xs.T, "weight_hh": da @ hs[:, :steps * n].T, "bias_ih": gb, "bias_hh": gb.copy()}
        return da, grads

    def step(self, params: Params, xg: np.ndarray, h: np.ndarray, c: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray | None, Any]:
        u = self.units
        a = xg + h @ params["weight_hh"].T + params["bias_hh"]
        i, f = sigmoid(a[:, :u]), sigmoid(a[:, u:2 * u])
        g, o = np.tanh(a[:, 2 * u:3 * u]), sigmoid(a[:, 3 * u:])
        if c is None:
            raise ValueError("an LSTM step needs its cell state")
        c_new = f * c + i * g
        tc = np.tanh(c_new)
        return o * tc, c_new, (i, f, g, o, c, tc)

    def step_back(self, params: Params, cache: Any, dh: np.ndarray, dc: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        i, f, g, o, c_prev, tc = cache
        if dc is None:
            raise ValueError("an LSTM step back needs the cell state's gradient")
        dc = dc + dh * o * (1 - tc * tc)
        da = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                             dh * tc * o * (1 - o)], axis=1)
        return da, da, da @ params["weight_hh"], dc * f

    def onnx_gate_order(self) -> list[int]:
        return [0, 3, 1, 2]  # ONNX: i, o, f, c


class GRU(_Recurrent):
    """Gated recurrent unit with PyTorch's gates r, z, n (reset applied after the recurrent product), as ``nn.GRU``."""

    type = "gru"
    description = ("Gated recurrent unit, as PyTorch's GRU with batch_first (gates r, z, n; the reset gate "
                   "multiplies h W_hn^T + b_hn): (T, D) in, (T, units) out, or (units,) for the last step.")
    params_schema = _schema()
    examples = _examples()
    gates = 3
    onnx_op = "GRU"

    def step(self, params: Params, xg: np.ndarray, h: np.ndarray, c: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray | None, Any]:
        u = self.units
        gh = h @ params["weight_hh"].T + params["bias_hh"]
        r = sigmoid(xg[:, :u] + gh[:, :u])
        z = sigmoid(xg[:, u:2 * u] + gh[:, u:2 * u])
        hn = gh[:, 2 * u:]
        n = np.tanh(xg[:, 2 * u:] + r * hn)
        return n + z * (h - n), None, (r, z, n, hn, h)

    def step_back(self, params: Params, cache: Any, dh: np.ndarray, dc: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        r, z, n, hn, h = cache
        dn = dh * (1 - z) * (1 - n * n)
        dr = dn * hn * r * (1 - r)
        dz = dh * (h - n) * z * (1 - z)
        dxg = np.concatenate([dr, dz, dn], axis=1)
        dgh = np.concatenate([dr, dz, dn * r], axis=1)
        return dxg, dgh, dgh @ params["weight_hh"] + dh * z, None

    def onnx_gate_order(self) -> list[int]:
        return [1, 0, 2]  # ONNX: z, r, h

    def onnx_attributes(self) -> dict[str, Any]:
        return {"linear_before_reset": 1}


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    register(RNN)
    register(LSTM)
    register(GRU)
