"""The runtime network: a built graph plus its tensors, executing the planner's plan.

This is the training hot path: plain loops over the plan's node records, no plugin calls.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, cast

from numpy.typing import DTypeLike

import numpy as np

from layerkit.errors import CheckpointError
from layerkit.fileio import save_npz_atomic
from layerkit.nn.initializers import initialize
from layerkit.nn.capabilities import InplaceBackward, InplaceInfer, InputGradientOnly
from layerkit.nn.plan import BackwardCall, InferCall, Plan
from layerkit.nn.planner import plan_inference, plan_training
from layerkit.nn.samplerandom import SampleRandom, layer_rng
from layerkit.parallel import threads

if TYPE_CHECKING:  # the model runs a graph that modelfile built; it never imports that tier
    from layerkit.modelfile.shapes import Graph, Node
    from layerkit.nn.losses import Loss


class Network:
    """A built network: the graph, its tensors, and the forward, backward and inference passes.

    The executor of a :class:`~layerkit.nn.plan.Plan`: the planner (:mod:`layerkit.nn.planner`)
    decides per node which calls to make; this class makes them. ``predict`` returns the raw
    outputs (``layerkit.Model.predict``, in the API, returns class ids).
    """

    def __init__(self, graph: Graph, params: dict[str, dict[str, np.ndarray]],
                 state: dict[str, dict[str, np.ndarray]], dtype: DTypeLike = np.float32,
                 frozen: frozenset[str] | None = None) -> None:
        self.graph = graph
        self.nodes: list[Node] = graph.nodes
        self.params = params
        self.state = state
        self.dtype = np.dtype(dtype)
        #: the layers training leaves as they are (default: those the model file marks ``"trainable": false``)
        self.frozen: frozenset[str] = (frozenset(n.name for n in self.nodes if not getattr(n.spec, "trainable", True))
                                       if frozen is None else frozenset(frozen))
        #: one record per node: its wiring and the calls the passes chose (training)
        self.plan: Plan = plan_training(self.nodes, frozen=self.frozen)

    def set_frozen(self, names: frozenset[str]) -> None:
        """Freeze exactly the layers ``names`` (the others learn) and plan the backward pass again."""
        self.frozen = frozenset(names)
        self.plan = plan_training(self.nodes, frozen=self.frozen)

    def trainable_keys(self) -> list[tuple[str, str]]:
        """``(layer, tensor)`` of every tensor training updates, in the optimizer's order (frozen layers left out)."""
        return [(node.name, tname) for node in self.nodes if node.name not in self.frozen
                for tname in self.params[node.name]]

    @classmethod
    def initialize(cls, graph: Graph, seed: int = 0, dtype: DTypeLike = np.float32) -> Network:
        """Allocate parameters deterministically: one generator per tensor, seeded from
        (seed, layer name, tensor name), so adding or reordering layers does not
        reshuffle the others."""
        params: dict[str, dict[str, np.ndarray]] = {}
        state: dict[str, dict[str, np.ndarray]] = {}
        for node in graph.nodes:
            params[node.name] = {}
            for tname, pspec in node.param_specs.items():
                rng = np.random.default_rng([seed, *_name_key(node.name, tname)])
                params[node.name][tname] = initialize(pspec, rng, dtype)
            state[node.name] = {tname: initialize(sspec, np.random.default_rng(0), dtype)
                                for tname, sspec in node.state_specs.items()}
        return cls(graph, params, state, dtype)

    # -- compute -------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False,
                rng: np.random.Generator | SampleRandom | None = None) -> tuple[np.ndarray, list[Any]]:
        """The output for a batch and, per node, what its backward needs (its cache). A
        :class:`SampleRandom` ``rng`` gives each random layer its own per-sample stream."""
        values: list[Any] = [x]
        caches: list[Any] = []
        records = self.plan.nodes
        for rec in records:
            inp = values[rec.inputs[0]] if rec.single else [values[s] for s in rec.inputs]
            if rec.runs_after_pool:  # runs after the pool, in the pool's node
                values.append(inp)
                caches.append(None)
                continue
            y, cache = rec.layer.forward(self.params[rec.name], inp, training, layer_rng(rng, rec.layer, rec.name),
                                         self.state[rec.name])
            if rec.then is not None:
                act = records[rec.then]
                y, act_cache = act.layer.forward(self.params[act.name], y, training,
                                                 layer_rng(rng, act.layer, act.name), self.state[act.name])
                cache = (cache, act_cache)
            values.append(y)
            caches.append(cache)
        return values[-1], caches

    def backward(self, caches: list[Any], dout: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """Gradients of every parameter tensor, given d(loss)/d(output); makes the plan's backward calls."""
        records = self.plan.nodes
        n = len(records)
        dvalues: list[Any] = [None] * (n + 1)
        dvalues[n] = dout
        grads: dict[str, dict[str, np.ndarray]] = {}
        for rec in reversed(records):
            i, call = rec.index, rec.backward
            dy = dvalues[i + 1]
            dvalues[i + 1] = None
            if call is BackwardCall.SKIP:
                grads[rec.name] = {}
                caches[i] = None
                continue
            if dy is None:  # cannot happen in a validated graph; kept for safety
                continue
            if call is BackwardCall.BACKWARD_PARAMS:
                grads[rec.name] = rec.layer.backward_params(self.params[rec.name], caches[i], dy)
                caches[i] = None
                continue
            g: dict[str, np.ndarray]
            if rec.runs_after_pool:  # its backward ran in the pool's node: dy is the gradient of its input
                dx, g = dy, {}
            elif rec.then is not None:  # the pool, with the activation after it
                act = records[rec.then]
                pool_cache, act_cache = caches[i]
                dy, _ = getattr(act.layer, act.backward.value)(self.params[act.name], act_cache, dy)
                dx, g = rec.layer.backward(self.params[rec.name], pool_cache, dy)
            elif call is BackwardCall.BACKWARD_INPLACE:
                dx, g = cast(InplaceBackward, rec.layer).backward_inplace(self.params[rec.name], caches[i], dy)
            elif call is BackwardCall.BACKWARD_INPUT:  # frozen: no parameter gradient computed
                dx, g = cast(InputGradientOnly, rec.layer).backward_input(self.params[rec.name], caches[i], dy), {}
            else:
                dx, g = rec.layer.backward(self.params[rec.name], caches[i], dy)
            del dy
            caches[i] = None
            grads[rec.name] = {} if rec.frozen else g  # a frozen layer's gradients go nowhere
            dxs = [dx] if rec.single else dx
            for s, d in zip(rec.inputs, dxs, strict=True):
                if s == 0 or not records[s - 1].needs_grad:
                    continue  # the data, or computed from it alone: nobody reads this gradient
                dvalues[s] = d if dvalues[s] is None else dvalues[s] + d
        return grads

    def loss_and_gradients(self, loss: Loss, x: np.ndarray, y: np.ndarray,
                           rng: np.random.Generator | SampleRandom | None = None,
                           share: float = 1.0) -> tuple[float, np.ndarray, dict[str, dict[str, np.ndarray]]]:
        """One training pass over a batch: (mean loss, output, parameter gradients).

        ``share`` scales the gradients: a shard of a split batch passes its fraction of the
        batch, so that the shards' gradients add up to the batch mean's.
        """
        out, caches = self.forward(x, training=True, rng=rng)
        value, lcache = loss.forward(out, y)
        dout = loss.backward(lcache)
        if share != 1.0:
            dout = (dout * share).astype(out.dtype, copy=False)
        return float(value), out, self.backward(caches, dout)

    # -- inference -------------------------------------------------------------
    def inference_plan(self) -> Plan:
        """The plan with the inference passes run on it (batch norm folded from the current
        parameters, in-place calls): made again for every ``predict``/``evaluate`` call."""
        return plan_inference(self.plan, self.params, self.state, self.dtype)

    def infer(self, x: np.ndarray, plan: Plan | None = None) -> np.ndarray:
        """The inference-mode output for one batch: ``forward(x, training=False)[0]`` up to
        float32 rounding (batch norm folded into the layer before it), without caches, and
        every intermediate value dropped as soon as its last consumer has run."""
        plan = self.inference_plan() if plan is None else plan
        records = plan.nodes
        values: list[Any] = [x]
        for rec in records:
            params = self.params[rec.name] if rec.infer_params is None else rec.infer_params
            if rec.infer is InferCall.ALIAS:
                values.append(values[rec.alias if rec.alias is not None else rec.inputs[0]])
            elif rec.infer is InferCall.INFER_INPLACE:
                values.append(cast(InplaceInfer, rec.layer).infer_inplace(params, values[rec.inputs[0]],
                                                                          self.state[rec.name]))
            else:
                inp = values[rec.inputs[0]] if rec.single else [values[s] for s in rec.inputs]
                values.append(rec.layer.infer(params, inp, self.state[rec.name]))
            if rec.then is not None:  # the activation moved after this pool
                act = records[rec.then]
                inplace = rec.then_infer is InferCall.INFER_INPLACE
                run = cast(InplaceInfer, act.layer).infer_inplace if inplace else act.layer.infer
                values[-1] = run(self.params[act.name], values[-1], self.state[act.name])
            for s in rec.inputs:
                if plan.last_use(s) == rec.index:
                    values[s] = None
        return values[-1]

    def infer_batches(self, x: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
        """:meth:`infer` on every ``batch_size`` slice of ``x``, in order; the batches are spread
        over the layer thread pool (``LAYERKIT_NUM_THREADS``), one whole batch per thread."""
        plan = self.inference_plan()
        spans = [(i, i + batch_size) for i in range(0, len(x), batch_size)]
        dtype = self.input_dtype
        return threads.run_whole(lambda a, b: self.infer(np.ascontiguousarray(x[a:b], dtype=dtype), plan), spans)

    @property
    def input_dtype(self) -> np.dtype:
        """The dtype the input batches take: int64 for token ids (never converted to float),
        otherwise the network's float dtype."""
        return np.dtype(np.int64) if getattr(self.graph, "input_dtype", "float32") == "int64" else self.dtype

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The raw inference outputs for ``x``, batch by batch (see :meth:`infer_batches`)."""
        return np.concatenate(self.infer_batches(x, batch_size))

    # -- tensors -------------------------------------------------------------
    def parameters(self) -> Iterator[tuple[str, str, np.ndarray]]:
        """Every learnable tensor as ``(node name, tensor name, array)``."""
        for node in self.nodes:
            for tname, value in self.params[node.name].items():
                yield node.name, tname, value

    @property
    def param_count(self) -> int:
        """The number of learnable values."""
        return sum(v.size for _, _, v in self.parameters())

    @property
    def frozen_count(self) -> int:
        """The number of values in frozen layers (``"trainable": false``)."""
        return sum(v.size for name, _, v in self.parameters() if name in self.frozen)

    def astype(self, dtype: DTypeLike) -> Network:
        """A copy with every tensor cast to ``dtype`` (float64 for gradient checks), nothing frozen: a
        gradient check checks every layer's gradients, a frozen layer's included."""
        def cast(d: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
            return {k: {t: v.astype(dtype) for t, v in inner.items()} for k, inner in d.items()}
        return Network(self.graph, cast(self.params), cast(self.state), dtype, frozen=frozenset())

    def weights_dict(self) -> dict[str, np.ndarray]:
        out = {}
        for kind, table in (("params", self.params), ("state", self.state)):
            for node, tensors in table.items():
                for tname, value in tensors.items():
                    out[f"{kind}/{node}/{tname}"] = value
        return out

    def save_weights(self, path: str | Path) -> None:
        save_npz_atomic(path, self.weights_dict())

    def load_weights(self, path: str | Path) -> None:
        data = load_npz(path)
        self.set_weights(data, source=str(path))

    def set_weights(self, data: dict[str, np.ndarray], source: str = "weights") -> None:
        expected = {k: v for k, v in self.weights_dict().items()}
        missing = sorted(set(expected) - set(data))
        extra = sorted(set(data) - set(expected))
        problems = []
        if missing:
            problems.append(f"missing tensors: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if extra:
            problems.append(f"unexpected tensors: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
        for key in sorted(set(expected) & set(data)):
            if not np.issubdtype(data[key].dtype, np.number) or np.issubdtype(data[key].dtype, np.complexfloating):
                problems.append(f"{key} holds {data[key].dtype} values, not real numbers")
            elif data[key].shape != expected[key].shape:
                problems.append(f"{key} has shape {data[key].shape}, the model needs {expected[key].shape}")
        if problems:
            raise CheckpointError(f"{source}: does not fit model {self.graph.spec.name!r}: " + "; ".join(problems))
        for key, value in data.items():
            kind, node, tname = key.split("/", 2)
            table = self.params if kind == "params" else self.state
            table[node][tname][...] = value.astype(self.dtype)


def _name_key(layer: str, tensor: str) -> list[int]:
    # a stable digest (not hash(), which is salted per process) of the two names
    digest = hashlib.sha256(f"{layer}\0{tensor}".encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    # np.load sniffs the content and would call a text file "pickled data"; an .npz is a zip
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not an .npz file (weights and checkpoints are numpy .npz archives)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile/ValueError for corrupt or pickled content
        raise CheckpointError(f"{path}: not a readable .npz weights file ({type(exc).__name__}: {exc})") from None
