"""A built model: the graph plus its tensors, with forward and backward passes.

This is the training hot path: plain loops over nodes, no plugin calls.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from layerkit.errors import CheckpointError
from layerkit.fileio import save_npz_atomic
from layerkit.nn.initializers import initialize
from layerkit.nn.layer import RESERVED_INPUT, overrides
from layerkit.parallel import threads

if TYPE_CHECKING:  # the model runs a graph that modelfile built; it never imports that tier
    from layerkit.modelfile.shapes import Graph, Node


class Model:
    def __init__(self, graph: Graph, params: dict[str, dict[str, np.ndarray]],
                 state: dict[str, dict[str, np.ndarray]], dtype=np.float32) -> None:
        self.graph = graph
        self.nodes: list[Node] = graph.nodes
        self.params = params
        self.state = state
        self.dtype = np.dtype(dtype)
        # per node: positions in the value list, so forward is index lookups only
        names = [RESERVED_INPUT] + [n.name for n in self.nodes]
        slot = {name: i for i, name in enumerate(names)}
        self._in_slots = [[slot[r] for r in n.inputs] for n in self.nodes]
        self._single = [n.layer.arity == 1 for n in self.nodes]
        # Which values need a gradient: those computed from a parameter. The data does not, nor
        # does anything computed from the data alone (an MLP's flatten), so backward stops where
        # no parameter lies upstream: a layer fed only by such values computes its parameter
        # gradients through ``backward_params`` (the MLP's first dense layer: 17% of its
        # backward FLOPs were an input gradient nobody read), and a parameterless one is skipped.
        needs = [False]
        for node, slots in zip(self.nodes, self._in_slots):
            needs.append(bool(node.param_specs) or any(needs[s] for s in slots))
        self._needs_grad = needs
        # An activation that commutes with max (relu) whose only reader is the next node, a max
        # pool, runs after that pool on the pooled output instead of before it: the same numbers
        # (the conformance suite checks both claims bit for bit) on a quarter of the elements.
        # Its own node passes its input through; the pool's node runs both.
        self.pool_first = [False] * len(self.nodes)
        readers = [0] * (len(self.nodes) + 1)
        for slots in self._in_slots:
            for s in slots:
                readers[s] += 1
        for i in range(len(self.nodes) - 1):
            act, pool = self.nodes[i].layer, self.nodes[i + 1].layer
            self.pool_first[i] = bool(act.commutes_with_max and pool.pools_max and not act.uses_rng
                                      and self._single[i] and self._single[i + 1]
                                      and self._in_slots[i + 1] == [i + 1] and readers[i + 1] == 1
                                      and not self.nodes[i].param_specs
                                      and not (i > 0 and self.pool_first[i - 1]))
        # per value slot, the last node that reads it: inference drops it after that node
        self._last_use = [-1] * (len(self.nodes) + 1)
        for i, slots in enumerate(self._in_slots):
            for s in slots:
                self._last_use[s] = i
        self.backward_plan = self._plan()

    def _plan(self) -> list[str]:
        """Per node, the Layer method :meth:`backward` calls: ``backward``, ``backward_params``,
        ``backward_inplace``, or ``skip``. The gradient checker reads it to check what trains.

        ``backward_inplace`` gets a ``dy`` nobody else holds: one made by a single consumer
        that declares ``fresh_dx``, or a sum of several consumers' gradients (a new array).
        The loss's ``dout`` belongs to the caller. This saves the fresh output array of
        memory-bound layers (relu, batch norm).
        """
        n = len(self.nodes)
        plan = [""] * n
        writers: list[list[int]] = [[] for _ in range(n + 1)]  # per value: nodes that add a gradient to it

        def fresh(k: int) -> bool:
            # the layer whose input gradient node k hands down: the pool's, when k ran after it
            layer = self.nodes[k + 1].layer if self.pool_first[k] else self.nodes[k].layer
            return self._single[k] and bool(layer.fresh_dx)

        for i in range(n - 1, -1, -1):
            node, slots = self.nodes[i], self._in_slots[i]
            feeds_grad = any(self._needs_grad[s] for s in slots)
            if not feeds_grad:
                plan[i] = "backward_params" if node.param_specs else "skip"
                continue
            dy_writers = writers[i + 1]
            owned = len(dy_writers) > 1 or (len(dy_writers) == 1 and fresh(dy_writers[0]))
            plan[i] = "backward_inplace" if owned else "backward"
            for s in slots:
                if self._needs_grad[s]:
                    writers[s].append(i)
        for i in range(n - 1):
            if self.pool_first[i] and plan[i + 1] != "skip":
                # the activation now receives the pool's dy, the pool the activation's fresh dx
                plan[i] = plan[i + 1]
                plan[i + 1] = "backward"
        return plan

    @classmethod
    def initialize(cls, graph: Graph, seed: int = 0, dtype=np.float32) -> "Model":
        """Allocate parameters deterministically: one generator per tensor, seeded from
        (seed, layer name, tensor name), so adding or reordering layers does not
        reshuffle the others."""
        params, state = {}, {}
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
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, list[Any]]:
        values: list[Any] = [x]
        caches: list[Any] = []
        for i, (node, slots, single) in enumerate(zip(self.nodes, self._in_slots, self._single)):
            inp = values[slots[0]] if single else [values[s] for s in slots]
            if self.pool_first[i]:  # runs after the pool, in the pool's node
                values.append(inp)
                caches.append(None)
                continue
            y, cache = node.layer.forward(self.params[node.name], inp, training, rng, self.state[node.name])
            if i and self.pool_first[i - 1]:
                act = self.nodes[i - 1]
                y, act_cache = act.layer.forward(self.params[act.name], y, training, rng, self.state[act.name])
                cache = (cache, act_cache)
            values.append(y)
            caches.append(cache)
        return values[-1], caches

    def backward(self, caches: list[Any], dout: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """Gradients of every parameter tensor, given d(loss)/d(output); follows ``backward_plan``."""
        n = len(self.nodes)
        dvalues: list[Any] = [None] * (n + 1)
        dvalues[n] = dout
        grads: dict[str, dict[str, np.ndarray]] = {}
        for i in range(n - 1, -1, -1):
            node, call = self.nodes[i], self.backward_plan[i]
            dy = dvalues[i + 1]
            dvalues[i + 1] = None
            if call == "skip":
                grads[node.name] = {}
                caches[i] = None
                continue
            if dy is None:  # cannot happen in a validated graph; kept for safety
                continue
            if call == "backward_params":
                grads[node.name] = node.layer.backward_params(self.params[node.name], caches[i], dy)
                caches[i] = None
                continue
            if self.pool_first[i]:  # its backward ran in the pool's node: dy is the gradient of its input
                dx, g = dy, {}
            elif i and self.pool_first[i - 1]:  # the pool, with the activation after it
                act = self.nodes[i - 1]
                pool_cache, act_cache = caches[i]
                dy, _ = getattr(act.layer, self.backward_plan[i - 1])(self.params[act.name], act_cache, dy)
                dx, g = node.layer.backward(self.params[node.name], pool_cache, dy)
            elif call == "backward_inplace":
                dx, g = node.layer.backward_inplace(self.params[node.name], caches[i], dy)
            else:
                dx, g = node.layer.backward(self.params[node.name], caches[i], dy)
            del dy
            caches[i] = None
            grads[node.name] = g
            dxs = [dx] if self._single[i] else dx
            for s, d in zip(self._in_slots[i], dxs):
                if not self._needs_grad[s]:
                    continue  # the data, or computed from it alone: nobody reads this gradient
                dvalues[s] = d if dvalues[s] is None else dvalues[s] + d
        return grads

    def loss_and_gradients(self, loss, x: np.ndarray, y: np.ndarray, rng: np.random.Generator | None = None,
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
    def inference_plan(self) -> list[tuple[int, Any, bool]]:
        """Per node, ``(slot, params, inplace)``: ``slot`` is -1 where the node runs ``infer`` (or
        ``infer_inplace`` when ``inplace``) with ``params``, else the value slot its output
        equals because the node was folded away.

        A layer whose inference is a per-channel affine map (``Layer.inference_affine``: batch
        norm) and whose input comes from a single-input layer that can absorb it
        (``Layer.fold_affine``: conv, dense) and feeds nobody else, is folded into that layer's
        parameters: conv + batch norm runs as one convolution. A single-input layer that is
        the last reader of a value only the model holds (made by a layer declaring
        ``infer_fresh``, or in place itself) runs ``infer_inplace``: relu overwrites its input.
        An activation in :attr:`pool_first` has the slot of its input: :meth:`infer` runs it
        after the pool that reads it. Built from the current parameters, so it is made again
        for every ``predict``/``evaluate`` call.
        """
        n = len(self.nodes)
        uses = [0] * (n + 1)
        for slots in self._in_slots:
            for s in slots:
                uses[s] += 1
        plan: list[tuple[int, Any]] = [(slots[0], None) if moved else (-1, self.params[node.name])
                                       for node, slots, moved in zip(self.nodes, self._in_slots, self.pool_first)]
        for j, (node, slots) in enumerate(zip(self.nodes, self._in_slots)):
            s = slots[0]
            if not self._single[j] or s == 0 or uses[s] != 1 or plan[s - 1][0] != -1 or not self._single[s - 1]:
                continue
            affine = node.layer.inference_affine(self.params[node.name], self.state[node.name])
            if affine is None:
                continue
            scale, shift = (np.asarray(a, dtype=self.dtype) for a in affine)
            folded = self.nodes[s - 1].layer.fold_affine(plan[s - 1][1], scale, shift)
            if folded is not None:
                plan[s - 1], plan[j] = (-1, folded), (s, None)
        owned = [False] * (n + 1)  # the value's array belongs to the model alone (never the input x)
        steps: list[tuple[int, Any, bool]] = []
        for j, ((alias, params), node, slots) in enumerate(zip(plan, self.nodes, self._in_slots)):
            if alias >= 0:
                owned[j + 1] = owned[alias]
                steps.append((alias, None, False))
                continue
            inplace = (self._single[j] and owned[slots[0]] and self._last_use[slots[0]] == j
                       and overrides(node.layer, "infer_inplace"))
            owned[j + 1] = inplace or bool(node.layer.infer_fresh)
            steps.append((-1, params, inplace))
        return steps

    def infer(self, x: np.ndarray, plan: list[tuple[int, Any, bool]] | None = None) -> np.ndarray:
        """The inference-mode output for one batch: ``forward(x, training=False)[0]`` up to
        float32 rounding (batch norm folded into the layer before it), without caches, and
        every intermediate value dropped as soon as its last consumer has run."""
        plan = self.inference_plan() if plan is None else plan
        values: list[Any] = [x]
        last = self._last_use
        for j, (node, slots, single, (alias, params, inplace)) in enumerate(
                zip(self.nodes, self._in_slots, self._single, plan)):
            if alias >= 0:
                values.append(values[alias])
            elif inplace:
                values.append(node.layer.infer_inplace(params, values[slots[0]], self.state[node.name]))
            else:
                inp = values[slots[0]] if single else [values[s] for s in slots]
                values.append(node.layer.infer(params, inp, self.state[node.name]))
            if j and self.pool_first[j - 1]:  # the activation moved after this pool
                act = self.nodes[j - 1]
                run = act.layer.infer_inplace if node.layer.infer_fresh else act.layer.infer
                values[-1] = run(self.params[act.name], values[-1], self.state[act.name])
            for s in slots:
                if last[s] == j:
                    values[s] = None
        return values[-1]

    def infer_batches(self, x: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
        """:meth:`infer` on every ``batch_size`` slice of ``x``, in order; the batches are spread
        over the layer thread pool (``LAYERKIT_NUM_THREADS``), one whole batch per thread."""
        plan = self.inference_plan()
        spans = [(i, i + batch_size) for i in range(0, len(x), batch_size)]
        return threads.run_whole(
            lambda a, b: self.infer(np.ascontiguousarray(x[a:b], dtype=self.dtype), plan), spans)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.concatenate(self.infer_batches(x, batch_size))

    # -- tensors -------------------------------------------------------------
    def parameters(self) -> Iterator[tuple[str, str, np.ndarray]]:
        for node in self.nodes:
            for tname, value in self.params[node.name].items():
                yield node.name, tname, value

    @property
    def param_count(self) -> int:
        return sum(v.size for _, _, v in self.parameters())

    def astype(self, dtype) -> "Model":
        cast = lambda d: {k: {t: v.astype(dtype) for t, v in inner.items()} for k, inner in d.items()}
        return Model(self.graph, cast(self.params), cast(self.state), dtype)

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
