"""Embedding: integer token ids in, one learned vector per id out."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from layerkit import hookimpl
from layerkit.errors import ShapeError
from layerkit.nn.layer import Coupling, Example, Layer, Params, ParamSpec, Shape


def scatter_rows(ids: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """``out[k] = sum of rows[j] over every j with ids[j] == k``, for ``k < count``: the gradient of a
    gather, without ``np.add.at``: the rows sorted by id, then one segment sum per distinct id."""
    ids = ids.reshape(-1)
    rows = rows.reshape(len(ids), -1)
    out = np.zeros((count, rows.shape[1]), dtype=rows.dtype)
    if len(ids) == 0:
        return out
    order = np.argsort(ids, kind="stable")
    present, starts = np.unique(ids[order], return_index=True)
    out[present] = np.add.reduceat(rows[order], starts, axis=0)
    return out


class Embedding(Layer):
    """``y[..., :] = weight[ids[...]]``: a table lookup from token ids, as PyTorch's ``nn.Embedding``."""

    type = "embedding"
    sample_coupling = Coupling.NONE
    input_kind = "tokens"
    description = ("Token ids (int64) in, learned vectors out, as PyTorch's Embedding: a (T,) input of ids gives "
                   "(T, embedding_dim). The row of padding_idx starts at zero and gets no gradient; positions "
                   "holding it output zeros.")
    params_schema = {
        "type": "object",
        "properties": {
            "num_embeddings": {"type": "integer", "minimum": 1, "description": "vocabulary size: ids are 0 .. "
                                                                              "num_embeddings - 1"},
            "embedding_dim": {"type": "integer", "minimum": 1, "description": "length of each vector"},
            "padding_idx": {"type": ["integer", "null"], "minimum": 0, "default": None,
                            "description": "the id of the padding token: its row stays zero (no gradient)"},
        },
        "required": ["num_embeddings", "embedding_dim"],
        "additionalProperties": False,
    }
    examples = (
        Example({"num_embeddings": 7, "embedding_dim": 3}, (5,)),
        Example({"num_embeddings": 5, "embedding_dim": 4, "padding_idx": 0}, (6,), "with a padding row"),
        Example({"num_embeddings": 6, "embedding_dim": 2}, (2, 3), "a 2-d grid of ids"),
    )

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        if self.padding_idx is not None and self.padding_idx >= self.num_embeddings:
            raise ShapeError(f"padding_idx {self.padding_idx} is not below num_embeddings {self.num_embeddings}")

    def token_range(self) -> int:
        return int(self.num_embeddings)

    def output_shape(self, input_shape: Shape) -> Shape:
        return (*input_shape, self.embedding_dim)

    def param_specs(self, input_shape: Shape) -> dict[str, ParamSpec]:
        zero = () if self.padding_idx is None else (int(self.padding_idx),)
        # N(0, 1) rows, as PyTorch: lecun_normal with fan_in 1
        return {"weight": ParamSpec((self.num_embeddings, self.embedding_dim), "lecun_normal", fan_in=1,
                                    fan_out=self.embedding_dim, decay=True, zero_rows=zero)}

    def flops(self, input_shape: Shape) -> int:
        return 0

    def forward(self, params: Params, x: np.ndarray, training: bool = False, rng: np.random.Generator | None = None,
                state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, Any]:
        ids = np.asarray(x)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise ValueError(f"token ids must lie in 0 .. {self.num_embeddings - 1}, got "
                             f"{int(ids.min())} .. {int(ids.max())}")
        y = np.take(params["weight"], ids, axis=0)
        if self.padding_idx is not None:
            # the padding row is zero (it starts so and never gets a gradient); masking the output
            # too makes the gradient exact whatever a loaded checkpoint holds there
            y *= (ids != self.padding_idx)[..., None]
        return y, ids

    def backward(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        return None, self.backward_params(params, cache, dy)

    def backward_params(self, params: Params, cache: Any, dy: np.ndarray) -> dict[str, np.ndarray]:
        grad = scatter_rows(cache, dy, self.num_embeddings)
        if self.padding_idx is not None:
            grad[self.padding_idx] = 0.0
        return {"weight": grad.astype(params["weight"].dtype, copy=False)}

    def to_onnx(self, g: Any, x: Any, input_shape: Any, params: Params, state: Params) -> str:
        weight = np.array(params["weight"], copy=True)
        if self.padding_idx is not None:
            weight[self.padding_idx] = 0.0  # what forward's mask gives
        return g.op("Gather", [g.const(weight, "weight"), x], axis=0)


@hookimpl
def layerkit_register_layers(register: Callable[[type[Layer]], None]) -> None:
    register(Embedding)
