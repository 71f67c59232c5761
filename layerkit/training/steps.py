"""The trainer's step: one global batch in, its mean loss, correct predictions and gradients out.

One call, several ways of computing it (:func:`make_step` picks):

- :class:`LocalStep`: the whole batch in this process.
- :class:`ForkedStep`: the batch split over forked processes on this machine
  (``layerkit.training.sample_parallel``).
- :class:`DistributedStep`: the batch split over MPI ranks (``layerkit.parallel.mpi``),
  each rank's share computed in its process or split again over forked processes.
- :class:`VirtualStep`: with ``training.virtual_shares``, the batch cut into fixed shares that
  any of the three setups shares out (``layerkit.training.virtual``): bit-identical numbers
  whatever the process count.

Every split follows the same rules, so they all train the same model up to float32
rounding: each share's gradient is scaled by its fraction of the batch and the shares
are summed in a fixed order (the forked shards in shard order, then the ranks with one
all-reduce); batch norm sees whole-batch statistics through
``layerkit.parallel.collectives.batch_sum``; dropout and augmentation draw per sample
(``layerkit.nn.samplerandom.SampleRandom`` under the epoch's key, with each share's global
sample indices), so every split draws the numbers one process draws. Layers without
``sample_rng`` (written for 0.1 or 0.2) still draw per share: in share ``s`` from the stream
``(seed, s)``, ``seed`` drawn from the trainer's generator once per step, and in a single
process from the trainer's generator directly.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from layerkit.nn.samplerandom import SampleRandom
from layerkit.parallel import collectives
from layerkit.parallel.collectives import Collectives
from layerkit.parallel import threads as parallel
from layerkit.training import virtual
from layerkit.training.sample_parallel import (SampleParallel, gradient_size, gradient_views, shard_count,
                                               share_gradients)

#: mean loss, correct predictions (fractional for reconstructions), gradients, stop, and the terms the
#: mean is over (``Loss.counted`` of the batch's targets: samples, or counted tokens)
StepResult = tuple[float, float, list[np.ndarray], bool, int]


def _bounds(n: int, parts: int) -> list[int]:
    return [i * n // parts for i in range(parts + 1)]


class Step:
    """``step(idx, rng, stop, key)`` -> (mean loss, correct predictions, gradients in ``keys`` order, stop,
    counted terms).

    The mean is over the terms the loss counts (``Loss.counted``): samples, or a sequence batch's
    tokens that count; a split batch weights each share by its counted terms.

    ``key`` is the epoch's per-sample key (``samplerandom.epoch_key``). ``stop`` says that this
    process wants to stop after this batch (Ctrl-C); the step returns whether the group stops,
    which every member must agree on.
    """

    #: processes one batch is split over, in total (1: not split)
    shares = 1

    def __call__(self, idx: np.ndarray, rng: np.random.Generator, stop: bool = False, key: int = 0) -> StepResult:
        raise NotImplementedError


class LocalStep(Step):
    """The whole batch in this process; random layers draw per sample (layers without
    ``sample_rng`` from the trainer's generator)."""

    def __init__(self, model, loss, x, y, augment, keys) -> None:
        self.model, self.loss, self.x, self.y, self.augment, self.keys = model, loss, x, y, augment, keys
        self.random = random_model(model, augment)

    def __call__(self, idx, rng, stop=False, key=0) -> StepResult:
        xb, yb = self.x[idx], self.y[idx]
        draws = SampleRandom(key, idx, rng) if self.random else rng
        if self.augment is not None:
            xb = self.augment(xb, draws.child("augment") if isinstance(draws, SampleRandom) else draws)
        value, out, grads = self.model.loss_and_gradients(self.loss, xb, yb, draws)
        hits = self.loss.correct(out, yb)
        return value, hits, [grads[n][t] for n, t in self.keys], stop, self.loss.counted(yb)


class ForkedStep(Step):
    """The batch split over the forked processes of ``SampleParallel``."""

    def __init__(self, workers: SampleParallel) -> None:
        self.workers, self.shares = workers, workers.shards

    def __call__(self, idx, rng, stop=False, key=0) -> StepResult:
        terms = self.workers.loss.counted(self.workers.y[idx])
        value, hits, grads = self.workers.step(idx, rng, key, terms=terms)
        return value, hits, grads, stop, terms


class DistributedStep(Step):
    """Rank ``r`` of ``comm`` computes the ``r``-th contiguous share of every batch, the
    ranks add their gradients, loss and counts with two all-reduces (the gradients in
    one buffer), and every rank applies the same update."""

    def __init__(self, comm: Collectives, model, loss, x, y, augment, keys, workers: SampleParallel | None,
                 random: bool) -> None:
        self.comm, self.model, self.loss, self.x, self.y = comm, model, loss, x, y
        self.augment, self.keys, self.workers, self.random = augment, keys, workers, random
        self.per_rank = workers.shards if workers is not None else 1
        self.shares = comm.size * self.per_rank
        self._flat = np.empty(gradient_size(model, keys), dtype=model.dtype)  # the gradients, for one all-reduce
        self._views = gradient_views(self._flat, model, keys)

    def __call__(self, idx, rng, stop=False, key=0) -> StepResult:
        comm, n = self.comm, len(idx)
        terms = self.loss.counted(self.y[idx])  # what the batch's mean loss averages over
        seed = int(rng.integers(1 << 62)) if self.random else 0
        if n < comm.size:
            # fewer samples than ranks (an epoch's last batch can be): every rank computes the
            # whole batch from the same stream, so they still agree without exchanging gradients
            loss_sum, hits, grads = share_gradients(self.model, self.loss, self.x, self.y, np.asarray(idx), terms,
                                                    seed, 0, self.augment, self.random, self.keys, key)
            for view, g in zip(self._views, grads, strict=True):
                np.copyto(view, g)
        else:
            bounds = _bounds(n, comm.size)
            mine = np.asarray(idx[bounds[comm.rank]:bounds[comm.rank + 1]])
            first = comm.rank * self.per_rank
            if self.workers is not None:
                loss_sum, hits, grads = self.workers.compute(mine, terms, seed, first, key)
            else:
                with collectives.reducing(comm):
                    loss_sum, hits, grads = share_gradients(self.model, self.loss, self.x, self.y, mine, terms, seed,
                                                            first, self.augment, self.random, self.keys, key)
            for view, g in zip(self._views, grads, strict=True):
                np.copyto(view, g)
            comm.allreduce_sum(self._flat)
        totals = np.array([loss_sum, hits, float(stop)], dtype=np.float64)
        if n >= comm.size:
            comm.allreduce_sum(totals)
        else:
            totals[2] = comm.allreduce_sum(np.array([float(stop)]))[0]
        return float(totals[0]) / max(terms, 1), float(totals[1]), self._views, bool(totals[2]), terms


class VirtualStep(Step):
    """The batch cut into ``total`` fixed shares (``training.virtual_shares``,
    ``layerkit.training.virtual``), shared out over ``comm``'s ranks and each rank's forked
    ``workers``: the same numbers whatever the process count."""

    def __init__(self, comm: Collectives, model, loss, x, y, augment, keys, workers: virtual.VirtualWorkers | None,
                 total: int) -> None:
        self.comm, self.model, self.loss, self.x, self.y = comm, model, loss, x, y
        self.augment, self.keys, self.workers, self.total = augment, keys, workers, total
        self.random = random_model(model, augment)
        self.per_rank = workers.shards if workers is not None else 1
        self.shares = total
        self.local = total // (comm.size * self.per_rank)
        self._flat64 = np.zeros(gradient_size(model, keys), dtype=np.float64)  # the gradients, added in float64
        self._flat = np.empty(self._flat64.size, dtype=model.dtype)  # and rounded once, for the optimizer
        self._parts64 = gradient_views(self._flat64, model, keys)
        self._views = gradient_views(self._flat, model, keys)
        self.runner = None if workers is not None else virtual.ShareRunner(model, loss, x, y, augment, keys, total,
                                                                           self.local, self.random)

    def __call__(self, idx, rng, stop=False, key=0) -> StepResult:
        comm, n, total = self.comm, len(idx), self.total
        terms = self.loss.counted(self.y[idx])
        seed = int(rng.integers(1 << 62)) if self.random else 0
        idx = np.asarray(idx)
        if n < total:
            # fewer samples than shares (an epoch's last batch can be): every process computes the
            # whole batch, the same way, and only the stop flag is exchanged
            with parallel.serial():
                loss_sum, hits, grads = share_gradients(self.model, self.loss, self.x, self.y, idx, terms, seed, 0,
                                                        self.augment, self.random, self.keys, key)
            for view, g in zip(self._views, grads, strict=True):
                np.copyto(view, g)
            if comm.size > 1:
                stop = bool(comm.allreduce_sum(np.array([float(stop)]))[0])
            return float(loss_sum) / max(terms, 1), float(hits), self._views, stop, terms
        first = comm.rank * self.per_rank * self.local
        parts = np.zeros(2 * total + 1, dtype=np.float64)  # per share: loss x counted terms, then hits; stop
        if self.workers is not None:
            self.workers.compute_shares(idx, first, terms, seed, key, self._flat64, parts)
        else:
            self._flat64[:] = 0
            self.runner.compute(idx, first, terms, seed, key, comm, self._parts64, parts)
        parts[-1] = float(stop)
        if comm.size > 1:
            comm.allreduce_sum(self._flat64)
            comm.allreduce_sum(parts)  # each rank's terms are at its own shares: exact
        np.copyto(self._flat, self._flat64, casting="same_kind")
        loss_sum, hits = virtual.add_in_order(parts[:total]), virtual.add_in_order(parts[total:2 * total])
        return loss_sum / max(terms, 1), hits, self._views, bool(parts[-1]), terms


def random_model(model, augment) -> bool:
    return augment is not None or any(node.layer.uses_rng for node in model.nodes)


def share_dependent_layers(model) -> list[str]:
    """The nodes whose random numbers depend on how the batch is split: layers with ``uses_rng``
    but not ``sample_rng`` (written for 0.1 or 0.2)."""
    return [node.name for node in model.nodes if node.layer.uses_rng and not getattr(node.layer, "sample_rng", False)]


@contextmanager
def make_step(model, loss, x, y, augment, keys, shards: int, comm: Collectives = collectives.SINGLE,
              virtual_shares: int = 0):
    """The step for this process: over ``comm``'s ranks when it has several, each rank's share
    split again over ``shards`` forked processes when ``shards`` > 1; with ``virtual_shares``, the
    batch cut into that many fixed shares, shared out over the processes."""
    if virtual_shares:
        with _virtual_step(model, loss, x, y, augment, keys, shards, comm, virtual_shares) as step:
            yield step
        return
    if comm.size == 1 and shards < 2:
        yield LocalStep(model, loss, x, y, augment, keys)
        return
    workers = SampleParallel(model, loss, x, y, shards, augment=augment, outer=comm) if shards > 1 else None
    try:
        if workers is not None:
            workers.start()
        if comm.size == 1:
            yield ForkedStep(workers)
        else:
            yield DistributedStep(comm, model, loss, x, y, augment, keys, workers, random_model(model, augment))
    finally:
        if workers is not None:
            workers.close()


def shards_for(model, loss, batch_size: int, comm: Collectives = collectives.SINGLE) -> int:
    """Forked processes per rank: the split of one rank's share of a batch (1: none)."""
    return shard_count(model, loss, max(1, batch_size // comm.size))


@contextmanager
def _virtual_step(model, loss, x, y, augment, keys, shards: int, comm: Collectives, total: int):
    # one BLAS thread: a share's numbers must not depend on how many threads BLAS would use
    held = not parallel.blas_held()
    parallel.hold_blas()
    workers = (virtual.VirtualWorkers(model, loss, x, y, shards, total, augment=augment, outer=comm)
               if shards > 1 else None)
    try:
        if workers is not None:
            workers.start()
        yield VirtualStep(comm, model, loss, x, y, augment, keys, workers, total)
    finally:
        if workers is not None:
            workers.close()
        if held:
            parallel.release_blas()
