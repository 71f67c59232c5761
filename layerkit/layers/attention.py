"""Multi-head self-attention over a (T, D) sequence, with PyTorch's parameter layout.

For one sample ``x`` of shape (T, D) and ``H`` heads of size ``d = D / H``::

    q, k, v = split(x W_in^T + b_in)                 # each (T, D), then (H, T, d)
    A       = softmax(q k^T / sqrt(d) + mask)        # (H, T, T), one row per query
    y       = merge(dropout(A) v) W_out^T + b_out     # (T, D)

The mask is -inf where a query may not look: later positions when ``causal``, and keys whose
token id is ``padding_idx`` when the optional second input (the token ids) is given. A query
that may look nowhere gets an all-zero row of A (PyTorch gives NaN there).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from layerkit import hookimpl
from layerkit.errors import ShapeError
from layerkit.nn.layer import Coupling, Example, Layer, Params, ParamSpec, Shape


def masked_softmax(scores: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """Softmax over the last axis where ``allowed`` (broadcast against ``scores``) is true.

    Disallowed entries get exactly 0; a row with nothing allowed is all zeros instead of NaN.
    The row maximum is taken over the allowed entries only, so nothing overflows.
    """
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    top = scores.max(axis=-1, keepdims=True)
    top[~np.isfinite(top)] = 0.0  # a fully masked row: every entry is -inf, exp gives zeros
    e = np.exp(scores - top)
    total = e.sum(axis=-1, keepdims=True)
    total[total == 0] = 1.0
    e /= total
    return e


class MultiHeadAttention(Layer):
    """Multi-head scaled dot-product self-attention (PyTorch's MultiheadAttention, batch first)."""

    type = "multi_head_attention"
    description = (
        "Multi-head self-attention on a (T, D) sequence, as PyTorch's nn.MultiheadAttention(D, num_heads, "
        "batch_first=True) called with query = key = value: y = softmax(q k^T / sqrt(D / num_heads) + mask) v, "
        "per head, projected back to D. Tensors have PyTorch's names and shapes (in_proj_weight (3D, D), "
        "in_proj_bias (3D,), out_proj.weight (D, D), out_proj.bias (D,)) so weights port both ways. `causal` "
        "stops each position attending to later ones. With `padding_idx` the layer takes a second input, the "
        "(T,) token ids (usually the model input), and no query attends to a key whose id is padding_idx "
        "(PyTorch's key_padding_mask); a query with no key left gets zeros, where PyTorch gives NaN. "
        "`dropout` drops attention weights in training (inverted dropout).")
    params_schema = {
        "type": "object",
        "properties": {
            "num_heads": {"type": "integer", "minimum": 1, "default": 1,
                          "description": "number of heads; must divide the input's last axis D"},
            "causal": {"type": "boolean", "default": False,
                       "description": "each position attends only to itself and earlier positions"},
            "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.0,
                        "description": "probability of dropping each attention weight in training"},
            "use_bias": {"type": "boolean", "default": True,
                         "description": "learn in_proj_bias and out_proj.bias (PyTorch's bias)"},
            "padding_idx": {"type": ["integer", "null"], "minimum": 0, "default": None,
                            "description": "take a second input of token ids and mask keys with this id"},
            "vocab_size": {"type": ["integer", "null"], "minimum": 1, "default": None,
                           "description": "token ids of the second input lie in 0 .. vocab_size - 1 "
                                          "(required with padding_idx)"},
        },
        "additionalProperties": False,
    }
    examples = (
        Example({"num_heads": 2}, (4, 6), "two heads"),
        Example({"num_heads": 1, "causal": True}, (5, 3), "causal, one head"),
        Example({"num_heads": 3, "causal": True, "use_bias": False}, (3, 6), "causal, no biases"),
        Example({"num_heads": 2, "dropout": 0.25}, (4, 4), "dropout on the attention weights"),
        Example({"num_heads": 2, "causal": True, "padding_idx": 0, "vocab_size": 5}, [(4, 4), (4,)],
                "key padding mask from the token ids (second input)"),
    )
    # every sample attends only within itself; dropout masks come from the generator
    sample_coupling = Coupling.NONE

    # the hyper-parameters, set from the config by Layer.__init__
    num_heads: int
    causal: bool
    dropout: float
    use_bias: bool
    padding_idx: int | None
    vocab_size: int | None

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.uses_rng = float(self.dropout) > 0
        if self.padding_idx is not None:
            self.arity = 2
            self.input_kind = ("float", "tokens")

    def token_range(self) -> int:
        """Token ids of the second input lie in ``0 .. token_range() - 1`` (``vocab_size``)."""
        if self.padding_idx is None or self.vocab_size is None:
            raise TypeError("multi_head_attention takes token ids only with padding_idx and vocab_size set")
        return int(self.vocab_size)

    # -- static -------------------------------------------------------------------------------------
    def _sequence_shape(self, input_shape: Any) -> Shape:
        if self.padding_idx is None:
            return tuple(input_shape)
        seq, ids = (tuple(s) for s in input_shape)
        if len(ids) != 1 or (len(seq) == 2 and ids[0] != seq[0]):
            raise ShapeError(f"the token ids (second input) must have shape ({seq[0] if seq else 'T'},), "
                             f"one per position of the sequence {seq}, got {ids}")
        return seq

    def output_shape(self, input_shape: Any) -> Shape:
        seq = self._sequence_shape(input_shape)
        if len(seq) != 2:
            raise ShapeError(f"needs a (T, D) sequence (positions x features), got {seq}")
        d = seq[1]
        if d % int(self.num_heads):
            raise ShapeError(f"num_heads {self.num_heads} does not divide the feature size D = {d}")
        if self.padding_idx is not None:
            if self.vocab_size is None:
                raise ShapeError("padding_idx needs vocab_size, the number of token ids of the second input")
            if self.padding_idx >= self.vocab_size:
                raise ShapeError(f"padding_idx {self.padding_idx} is not below vocab_size {self.vocab_size}")
        return seq

    def param_specs(self, input_shape: Any) -> dict[str, ParamSpec]:
        d = self._sequence_shape(input_shape)[1]
        # PyTorch: xavier_uniform over the whole (3D, D) matrix, zero biases
        specs = {"in_proj_weight": ParamSpec((3 * d, d), "glorot_uniform", fan_in=d, fan_out=3 * d, decay=True),
                 "out_proj.weight": ParamSpec((d, d), "glorot_uniform", fan_in=d, fan_out=d, decay=True)}
        if self.use_bias:
            specs["in_proj_bias"] = ParamSpec((3 * d,), "zeros")
            specs["out_proj.bias"] = ParamSpec((d,), "zeros")
        return specs

    def flops(self, input_shape: Any) -> int:
        t, d = self._sequence_shape(input_shape)
        projections = 2 * t * d * 4 * d
        products = 2 * 2 * t * t * d
        return projections + products + 5 * int(self.num_heads) * t * t

    # -- compute ------------------------------------------------------------------------------------
    def _allowed(self, t: int, ids: np.ndarray | None) -> np.ndarray | None:
        """Where a query (row) may attend to a key (column), broadcast to (N, H, T, T); None: everywhere."""
        allowed = np.tril(np.ones((t, t), dtype=bool)) if self.causal else None
        if ids is not None:
            keys = (np.asarray(ids) != self.padding_idx)[:, None, None, :]
            allowed = keys if allowed is None else allowed & keys
        return allowed

    def _heads(self, a: np.ndarray) -> np.ndarray:
        """(N, T, D) -> (N, H, T, d)."""
        n, t, d = a.shape
        h = int(self.num_heads)
        return a.reshape(n, t, h, d // h).transpose(0, 2, 1, 3)

    def forward(self, params: Params, x: Any, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        x, ids = (x[0], x[1]) if self.padding_idx is not None else (x, None)
        n, t, d = x.shape
        w_in = params["in_proj_weight"]
        qkv = x @ w_in.T
        if self.use_bias:
            qkv += params["in_proj_bias"]
        q, k, v = (self._heads(qkv[..., i * d:(i + 1) * d]) for i in range(3))
        scale = 1.0 / math.sqrt(d // int(self.num_heads))
        scores = q @ k.transpose(0, 1, 3, 2)
        scores *= scale
        a = masked_softmax(scores, self._allowed(t, ids))
        rate = float(self.dropout)
        keep = None
        if training and rate > 0:
            if rng is None:
                # never fall back to global random state: that would make runs irreproducible
                raise ValueError("multi_head_attention with dropout needs the rng argument in training mode")
            keep = (rng.random(a.shape) >= rate).astype(x.dtype)
            keep *= 1.0 / (1.0 - rate)
        a_used = a * keep if keep is not None else a
        ctx = (a_used @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
        y = ctx @ params["out_proj.weight"].T
        if self.use_bias:
            y += params["out_proj.bias"]
        return y, (x, ids, q, k, v, a, keep, a_used, ctx, scale)

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        x, ids, q, k, v, a, keep, a_used, ctx, scale = cache
        n, t, d = x.shape
        # parameter gradients as one GEMM over every (sample, position) row
        grads = {"out_proj.weight": dy.reshape(-1, d).T @ ctx.reshape(-1, d)}
        dctx = self._heads(dy @ params["out_proj.weight"])
        dv = a_used.transpose(0, 1, 3, 2) @ dctx
        da = dctx @ v.transpose(0, 1, 3, 2)
        if keep is not None:
            da *= keep
        # softmax backward, row by row: dS = A * (dA - sum(dA * A)); masked entries have A = 0
        ds = da - np.einsum("nhij,nhij->nhi", da, a)[..., None]
        ds *= a
        ds *= scale
        dq = ds @ k
        dk = ds.transpose(0, 1, 3, 2) @ q
        dqkv = np.concatenate([g.transpose(0, 2, 1, 3).reshape(n, t, d) for g in (dq, dk, dv)], axis=-1)
        grads["in_proj_weight"] = dqkv.reshape(-1, 3 * d).T @ x.reshape(-1, d)
        if self.use_bias:
            grads["in_proj_bias"] = dqkv.sum(axis=(0, 1))
            grads["out_proj.bias"] = dy.sum(axis=(0, 1))
        dx = dqkv @ params["in_proj_weight"]
        return ([dx, None] if ids is not None else dx), grads

    # -- export -------------------------------------------------------------------------------------
    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        # inference form: no dropout. Each projection is a MatMul with a constant (D, D) block.
        seq, ids = (x[0], x[1]) if self.padding_idx is not None else (x, None)
        t, d = self._sequence_shape(input_shape)
        h = int(self.num_heads)
        w_in = np.asarray(params["in_proj_weight"])
        parts = []
        for i, name in enumerate(("q", "k", "v")):
            p = g.op("MatMul", [seq, g.const(w_in[i * d:(i + 1) * d].T, f"w_{name}")])
            if self.use_bias:
                p = g.op("Add", [p, g.const(np.asarray(params["in_proj_bias"])[i * d:(i + 1) * d], f"b_{name}")])
            p = g.op("Reshape", [p, g.const(np.array([0, 0, h, d // h]), "heads", dtype=np.int64)])
            parts.append(p)
        q = g.op("Transpose", [parts[0]], perm=[0, 2, 1, 3])
        kt = g.op("Transpose", [parts[1]], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [parts[2]], perm=[0, 2, 1, 3])
        scores = g.op("Mul", [g.op("MatMul", [q, kt]), g.const(1.0 / math.sqrt(d // h), "scale")], "scores")
        # a large negative number rather than -inf: a fully masked row stays finite and is zeroed below
        big = 1e30
        allowed = None
        if self.causal:
            allowed = g.const(np.tril(np.ones((t, t))), "causal")
        if ids is not None:
            pad = g.op("Equal", [ids, g.const(np.array(self.padding_idx), "padding_idx", dtype=np.int64)])
            keys = g.op("Unsqueeze", [g.op("Cast", [g.op("Not", [pad])], to=1),
                                      g.const(np.array([1, 2]), "axes", dtype=np.int64)], "keys")
            allowed = keys if allowed is None else g.op("Mul", [allowed, keys], "allowed")
        if allowed is not None:
            penalty = g.op("Mul", [g.op("Sub", [allowed, g.const(1.0, "one")]), g.const(big, "big")])
            scores = g.op("Add", [scores, penalty], "masked_scores")
        attn = g.op("Softmax", [scores], axis=-1)
        if ids is not None:
            attn = g.op("Mul", [attn, g.op("ReduceMax", [allowed], axes=[-1], keepdims=1)], "attention")
        ctx = g.op("Transpose", [g.op("MatMul", [attn, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.const(np.array([0, 0, d]), "merged", dtype=np.int64)], "context")
        y = g.op("MatMul", [ctx, g.const(np.asarray(params["out_proj.weight"]).T, "w_out")])
        return g.op("Add", [y, g.const(params["out_proj.bias"], "b_out")]) if self.use_bias else y


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    register(MultiHeadAttention)
