"""Sample-parallel training steps: one batch split over forked worker processes.

For models whose layers can be split over samples (``sample_coupling`` ``NONE``, or
``BATCH_SUMS``, below) ``Trainer.fit`` splits each batch into one contiguous shard per
process: the main process computes shard 0 and forked workers
(:class:`layerkit.parallel.processes.ForkedWorkers`) the others, each with the whole
forward, loss and backward of its shard. Workers read the parameters from shared memory
(the main process copies them in before each step) and write their gradients to shared
memory; the main process adds them to its own in shard order and runs the optimizer as usual.

Layers that need whole-batch statistics (batch norm) declare ``BATCH_SUMS`` and get them
through :func:`layerkit.parallel.collectives.batch_sum`: every shard writes its partial sums
to shared memory, waits at a barrier and adds all partials in shard order, so each shard
normalises with the statistics of the whole batch, exactly as one process would. Random
layers (dropout) and augmentation draw per sample (``layerkit.nn.samplerandom``): every
shard gets a ``SampleRandom`` of the epoch's key and its own sample indices, so it draws what
one process draws for those samples. Only layers without ``sample_rng`` (written for 0.1 or
0.2) still get one generator per shard, seeded from the trainer's generator at every step.

The split only depends on the batch and the shard count, and the gradients are summed in
a fixed order, so a run is bit-identical to itself for the same process count. A different
count gives a different split and so differs in rounding, like any change of summation order,
and nothing more.

Only where it pays: the parameter copy and the gradient sums cost a pass over the
parameters per step, so a net must do enough compute per parameter
(``MIN_FLOPS_PER_PARAM``) and per batch (``MIN_BATCH_FLOPS``). LeNet-style convnets
qualify; MLPs, whose work is all in their weights, keep OpenBLAS's threads instead.
``LAYERKIT_SAMPLE_PARALLEL=0`` turns it off and ``=1`` skips the cost rule (the tests use that).
"""

from __future__ import annotations

import mmap
import struct
import sys
import threading
from contextlib import nullcontext
from typing import Any, Callable

import numpy as np

from layerkit.errors import TrainingError
from layerkit.nn.layer import Coupling
from layerkit.nn.losses import Loss
from layerkit.nn.network import Network
from layerkit.nn.samplerandom import SampleRandom
from layerkit.parallel import collectives
from layerkit.parallel import threads as parallel
from layerkit.parallel.processes import (BARRIER_TIMEOUT_S, MAX_REDUCE, ForkedWorkers, available, bounds, processes,
                                         setting)

#: ``f(batch, rng) -> batch``: the training images' augmentation (``rng`` a ``SampleRandom``)
Augment = Callable[[np.ndarray, Any], np.ndarray]
#: (node name, tensor name) of every parameter, in the order gradients are handed around
Keys = list[tuple[str, str]]

# Cost rule (see the module docstring): below these the parameter copy and the gradient sums
# cost more than the split saves (measurements: docs/performance.md).
MIN_FLOPS_PER_PARAM = 8  # forward FLOPs per sample / parameter count
MIN_BATCH_FLOPS = 5_000_000  # forward FLOPs of one whole batch (break-even of cnn2_3class)
MIN_SHARD_SAMPLES = 8

_ALIGN = 16  # float32 elements: 64-byte aligned tensors in the shared blocks
_REPLY = struct.Struct("<dd")  # loss * counted terms, correct predictions (fractional for reconstructions)


def gradient_size(model: Network, keys: Keys) -> int:
    """Elements of the gradients of ``keys`` laid end to end (what one fused buffer holds)."""
    return sum(model.params[n][t].size for n, t in keys)


def gradient_views(flat: np.ndarray, model: Network, keys: Keys) -> list[np.ndarray]:
    """``flat`` (:func:`gradient_size` elements) cut, in ``keys`` order, into one view per
    parameter tensor, of its shape: the gradients as one buffer for one all-reduce or one sum."""
    views, start = [], 0
    for n, t in keys:
        shape = model.params[n][t].shape
        stop = start + model.params[n][t].size
        views.append(flat[start:stop].reshape(shape))
        start = stop
    return views


def unsplittable(model: Network) -> list[str]:
    """The nodes whose batch cannot be split over samples: coupled otherwise than through
    whole-batch sums, or uncoupled but keeping running state."""
    return [node.name for node in model.nodes
            if not (node.layer.sample_coupling == Coupling.BATCH_SUMS
                    or (node.layer.sample_coupling == Coupling.NONE and not node.state_specs))]


def eligible(model: Network, loss: Loss) -> bool:
    """Whether every layer and the loss can be split over samples."""
    return loss.sample_coupling == Coupling.NONE and not unsplittable(model)


def shard_count(model: Network, loss: Loss, batch_size: int, threads: int | None = None) -> int:
    """Shards per batch for ``Trainer.fit``: 1 means the plain single-process step."""
    threads = processes() if threads is None else threads
    mode = setting()
    if (threads < 2 or mode == "off" or not sys.platform.startswith("linux") or not eligible(model, loss)
            or not available()):
        return 1
    shards = min(threads, batch_size // MIN_SHARD_SAMPLES)
    if shards < 2:
        return 1
    if mode == "auto":
        flops = model.graph.flops
        if flops < MIN_FLOPS_PER_PARAM * max(model.param_count, 1) or flops * batch_size < MIN_BATCH_FLOPS:
            return 1
    return shards


def share_gradients(model: Network, loss: Loss, x: np.ndarray, y: np.ndarray, idx: np.ndarray, n_total: int, seed: int,
                    stream: int, augment: Augment | None, random: bool, keys: Keys, key: int = 0
                    ) -> tuple[float, float, list[np.ndarray]]:
    """Loss times counted terms, correct predictions and gradients (``keys`` order) of the samples
    ``idx`` of a global batch whose loss counts ``n_total`` terms (``Loss.counted``: samples, or the
    tokens that count of a sequence batch); random layers and augmentation draw per sample under the
    epoch's ``key`` (layers without ``sample_rng`` from the stream ``(seed, stream)``). What every
    share of a split batch computes, forked or on an MPI rank."""
    xb, yb = x[idx], y[idx]
    rng = SampleRandom(key, idx, np.random.default_rng([seed, stream])) if random else None
    if augment is not None:
        xb = augment(xb, rng.child("augment") if rng is not None else None)
    # the loss averages over the share's terms; the step's gradient is the mean over the batch's
    terms = loss.counted(yb)
    value, out, grads = model.loss_and_gradients(loss, xb, yb, rng, share=terms / max(n_total, 1))
    hits = loss.correct(out, yb)
    return value * terms, hits, [grads[name][t] for name, t in keys]


class SampleParallel(ForkedWorkers):
    """Workers for one training run: ``with SampleParallel(...) as sp: sp.step(indices)``."""

    def __init__(self, model: Network, loss: Loss, x: np.ndarray, y: np.ndarray, shards: int,
                 augment: Augment | None = None, outer: collectives.Collectives = collectives.SINGLE,
                 rows: int = 1) -> None:
        sync = any(node.layer.sample_coupling == Coupling.BATCH_SUMS for node in model.nodes)
        # room for a few values per channel of the widest synced layer (batch norm sends 2 + 1), in
        # ``rows`` rows (fixed shares send one row per share)
        reduce_max = max([MAX_REDUCE] + [rows * (4 * int(node.output_shape[0]) + 4) for node in model.nodes
                                         if node.layer.sample_coupling == Coupling.BATCH_SUMS])
        super().__init__(shards, sync=sync, reduce_max=reduce_max, outer=outer)
        self.model, self.loss, self.x, self.y = model, loss, x, y
        self.augment = augment
        self.keys: Keys = model.trainable_keys()  # a frozen layer's tensors never change: the fork's copy does
        tensors = [model.params[n][t] for n, t in self.keys]
        self._offsets, total = [], 0
        for t in tensors:
            self._offsets.append(total)
            total += -(-t.size // _ALIGN) * _ALIGN
        self._total = max(total, _ALIGN)
        self._dtype = model.dtype
        itemsize = self._dtype.itemsize
        # anonymous shared mappings: the forked workers see the same pages
        self._param_block = mmap.mmap(-1, self._total * itemsize)
        self._grad_blocks = [mmap.mmap(-1, self._total * itemsize) for _ in range(shards - 1)]
        self._param_views = self._views(self._param_block)
        self._grad_views = [self._views(b) for b in self._grad_blocks]
        self._random = augment is not None or any(node.layer.uses_rng for node in model.nodes)

    def _views(self, block: mmap.mmap) -> list[np.ndarray]:
        flat = np.frombuffer(block, dtype=self._dtype)
        return [flat[o:o + self.model.params[n][t].size].reshape(self.model.params[n][t].shape)
                for o, (n, t) in zip(self._offsets, self.keys, strict=True)]

    def _share(self, idx: np.ndarray, n_total: int, seed: int, stream: int, key: int
               ) -> tuple[float, float, list[np.ndarray]]:
        return share_gradients(self.model, self.loss, self.x, self.y, idx, n_total, seed, stream, self.augment,
                               self._random, self.keys, key)

    # -- the step ------------------------------------------------------------------
    def step(self, idx: np.ndarray, rng: np.random.Generator | None = None, key: int = 0,
             terms: int | None = None) -> tuple[float, float, list[np.ndarray]]:
        """Mean loss, correct predictions and summed gradients (in ``keys`` order) of one batch.

        ``key`` is the epoch's per-sample key (``samplerandom.epoch_key``); ``rng`` (the trainer's
        generator) seeds the per-shard generators of layers without ``sample_rng``.
        """
        if terms is None:  # the caller may have counted them already (the training step has)
            terms = self.loss.counted(self.y[idx])
        seed = int(rng.integers(1 << 62)) if self._random and rng is not None else 0
        loss_sum, hits, grads = self.compute(idx, terms, seed, key=key)
        return loss_sum / max(terms, 1), hits, grads

    def compute(self, idx: np.ndarray, n_total: int, seed: int, first: int = 0, key: int = 0
                ) -> tuple[float, float, list[np.ndarray]]:
        """Loss times counted terms, correct predictions and gradients of the samples ``idx``, one share
        of a global batch whose loss counts ``n_total`` terms (the gradients are scaled by their share).

        Every shard draws per sample under ``key``; layers without ``sample_rng`` in shard ``s``
        draw from the stream ``(seed, first + s)``: under MPI, ``first`` numbers this rank's
        shards after those of the ranks before it.
        """
        n = len(idx)
        if self.sync and n < self.shards:
            # too few samples for every shard to take part in the batch_sum exchanges
            with parallel.serial(), (collectives.reducing(self.outer) if self.outer.size > 1 else nullcontext()):
                return self._share(np.asarray(idx), n_total, seed, first, key)
        cuts = bounds(n, min(self.shards, n))
        used = len(cuts) - 1
        for view, (name, t) in zip(self._param_views, self.keys, strict=True):
            np.copyto(view, self.model.params[name][t])
        idx = np.asarray(idx, dtype=np.int64)
        for w in range(1, used):
            self.send(w, np.concatenate(([n_total, seed, first, key], idx[cuts[w]:cuts[w + 1]])).astype(np.int64)
                      .tobytes())
        broken = False
        try:
            with parallel.serial(), self.reducing(0):
                loss_sum, hits, grads = self._share(idx[cuts[0]:cuts[1]], n_total, seed, first, key)
        except threading.BrokenBarrierError:
            broken = True  # a worker failed in the middle of the step: its reply says why
        except BaseException:
            self.abort()
            raise
        replies = [_REPLY.unpack(self.receive(w)) for w in range(1, used)]
        if broken:
            raise TrainingError("a sample-parallel step timed out waiting for its workers "
                                f"({BARRIER_TIMEOUT_S:.0f} s); set LAYERKIT_SAMPLE_PARALLEL=0 to train in one process")
        for w, (part_loss, part_hits) in enumerate(replies, 1):
            loss_sum += part_loss
            hits += part_hits
            for g, view in zip(grads, self._grad_views[w - 1], strict=True):
                g += view
        return loss_sum, hits, grads

    # -- in the worker --------------------------------------------------------------
    def setup(self, shard: int) -> None:
        for view, (name, t) in zip(self._param_views, self.keys, strict=True):
            self.model.params[name][t] = view  # this process's copy of the model reads shared memory
        # running statistics are the main process's to keep (it sees the same batch statistics)
        self.model.state = {name: {} for name in self.model.state}

    def serve(self, shard: int, message: bytes) -> bytes:
        header = np.frombuffer(message, dtype=np.int64)
        with self.reducing(shard):
            loss_sum, hits, grads = self._share(header[4:], int(header[0]), int(header[1]), int(header[2]) + shard,
                                                int(header[3]))
        for view, g in zip(self._grad_views[shard - 1], grads, strict=True):
            np.copyto(view, g)
        return _REPLY.pack(loss_sum, hits)
