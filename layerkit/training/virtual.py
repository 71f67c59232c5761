"""Fixed shares (``training.virtual_shares``): the same training on any number of processes.

By default a batch split over K processes is computed as K shares, so its float32 numbers
depend on K: a GEMM over 64 samples rounds differently from two over 32 (BLAS picks other
blockings, and the per-share weight gradients are added after), and a net that amplifies
rounding (AlexNet-style with batch norm and Adam) ends an epoch 1e-4 away from where one
process ends it. With ``training.virtual_shares`` S every batch is cut into the same S
contiguous shares (``bounds(n, S)``) whatever the process count, and

- every share is computed by the same code on the same samples (:func:`share_gradients`, one
  BLAS thread, no layer thread pool): its float32 numbers do not depend on who computes it;
- a process holding several shares runs them in lockstep threads
  (``layerkit.parallel.lockstep``), which meet at batch norm's sums (without batch norm, one
  after the other);
- batch norm's sums gather one row per share from every process and add the rows in share
  order (exact, ``Lockstep.batch_sum``);
- the shares' gradients are added in float64 (each process its own shares in order, then the
  processes) and rounded to float32 once; the loss and accuracy terms travel one per share
  and are added in share order.

So one process, forked processes, MPI ranks and any mix whose process count divides S train
bit-identical models (the float64 sums of float32 gradients could in principle round
differently when grouped differently; docs/distributed.md has the measurements). Layers
without ``sample_rng`` draw from the stream ``(seed, share)``, which does not depend on the
process count either.

A batch of fewer than S samples (an epoch's last one can be) is computed whole by every
process, the same way, and nothing but the stop flag is exchanged.
"""

from __future__ import annotations

import mmap
import threading

import numpy as np

from layerkit.errors import LayerkitError, Problem, TrainingError, everywhere
from layerkit.nn.layer import Coupling
from layerkit.nn.network import Network
from layerkit.parallel import collectives, lockstep
from layerkit.parallel import threads as parallel
from layerkit.parallel.collectives import Collectives
from layerkit.parallel.processes import BARRIER_TIMEOUT_S, bounds
from layerkit.training.sample_parallel import (Augment, Keys, SampleParallel, eligible, shard_count,
                                               gradient_size, gradient_views, share_gradients,
                                               unsplittable)


def setting(training: dict) -> int:
    """``training.virtual_shares`` (0: off, the shares follow the processes)."""
    return int(training.get("virtual_shares") or 0)


def forked_processes(model: Network, loss, batch_size: int, shares: int, comm: Collectives) -> tuple[int, int]:
    """Forked processes per rank with ``shares`` fixed shares, and how many the machine would use
    otherwise: the most of those that divide each rank's shares. Refuses a rank count that does
    not divide the shares, or a model whose batch cannot be split."""
    def refuse(message: str) -> BaseException:
        return everywhere(LayerkitError(problems=[Problem(message, ("training", "virtual_shares"),
                                                          model.graph.spec.source)]))

    if not eligible(model, loss):
        coupled = unsplittable(model)
        what = f"layers {', '.join(coupled)} couple" if coupled else "the loss couples"
        raise refuse(f"needs a batch that can be split, but {what} the samples of a batch; drop virtual_shares "
                     f"for this model")
    if shares % comm.size:
        raise refuse(f"{shares} shares cannot be shared out over {comm.size} MPI ranks: run a number of ranks "
                     f"that divides it")
    per_rank = shares // comm.size
    wanted = shard_count(model, loss, max(1, batch_size // comm.size))
    return max(d for d in range(1, min(wanted, per_rank) + 1) if per_rank % d == 0), wanted


class ShareRunner:
    """Computes shares ``first .. first + local - 1`` of a batch cut into ``total`` fixed shares,
    in this process: each in its own thread, in lockstep at batch norm's sums."""

    def __init__(self, model: Network, loss, x: np.ndarray, y: np.ndarray, augment: Augment | None, keys: Keys,
                 total: int, local: int, random: bool) -> None:
        self.model, self.loss, self.x, self.y, self.augment, self.keys = model, loss, x, y, augment, keys
        self.total, self.local, self.random = total, local, random
        # without whole-batch sums (no batch norm) the shares need not meet: one after the other
        self.together = any(node.layer.sample_coupling == Coupling.BATCH_SUMS for node in model.nodes)
        # one network per thread over the same parameters; only the first keeps the running
        # statistics (every share normalises with the same whole-batch statistics)
        self.views = [model] + [Network(model.graph, model.params, {name: {} for name in model.state}, model.dtype,
                                        frozen=model.frozen) for _ in range(local - 1)]

    def compute(self, idx: np.ndarray, first: int, n_total: int, seed: int, key: int, outer: Collectives,
                grads: list[np.ndarray], terms: np.ndarray) -> None:
        """Add this process's shares of the batch ``idx`` into ``grads`` (float64, zeroed by the caller
        or holding the shares before), and write each share's loss times counted terms and correct
        predictions to ``terms[share]`` and ``terms[total + share]``."""
        cuts = bounds(len(idx), self.total)
        group = lockstep.Lockstep(self.local, self.total, first, outer)

        def one(s: int) -> tuple[float, float, list[np.ndarray]]:
            share = first + s
            return share_gradients(self.views[s], self.loss, self.x, self.y, idx[cuts[share]:cuts[share + 1]],
                                   n_total, seed, share, self.augment, self.random, self.keys, key)

        with parallel.serial(), collectives.reducing(group):
            results = lockstep.run(group, one, together=self.together)
        for s, (loss_sum, hits, share_grads) in enumerate(results):
            terms[first + s], terms[self.total + first + s] = loss_sum, hits
            for acc, g in zip(grads, share_grads, strict=True):
                acc += g


def add_in_order(values: np.ndarray) -> float:
    """The sum of ``values`` from the first to the last (the same order on every process)."""
    total = 0.0
    for v in values:
        total += float(v)
    return total


class VirtualWorkers(SampleParallel):
    """Forked processes for fixed shares: process ``w`` of the ``shards`` (``w`` = 0 is this one)
    computes its ``local`` consecutive shares in lockstep threads and hands back their gradients
    added in float64 (through shared memory) and their loss terms."""

    def __init__(self, model: Network, loss, x: np.ndarray, y: np.ndarray, shards: int, total: int,
                 augment: Augment | None = None, outer: Collectives = collectives.SINGLE) -> None:
        super().__init__(model, loss, x, y, shards, augment=augment, outer=outer, rows=total)
        self.total, self.local = total, total // (outer.size * shards)
        size = gradient_size(model, self.keys)
        self._sum_blocks = [mmap.mmap(-1, max(size, 1) * 8) for _ in range(shards - 1)]
        self._sums = [np.frombuffer(b, dtype=np.float64)[:size] for b in self._sum_blocks]
        self._runner: ShareRunner | None = None

    def _shares(self) -> ShareRunner:
        if self._runner is None:  # in a worker: after setup, over the parameters in shared memory
            self._runner = ShareRunner(self.model, self.loss, self.x, self.y, self.augment, self.keys, self.total,
                                       self.local, self._random)
        return self._runner

    def compute_shares(self, idx: np.ndarray, first: int, n_total: int, seed: int, key: int,
                       flat: np.ndarray, terms: np.ndarray) -> None:
        """This rank's shares (from ``first``) of the batch ``idx``: gradients added into ``flat``
        (float64, ``keys`` order, zeroed here) and loss terms into ``terms`` (see ``ShareRunner``)."""
        for view, (name, t) in zip(self._param_views, self.keys, strict=True):
            np.copyto(view, self.model.params[name][t])
        idx = np.asarray(idx, dtype=np.int64)
        for w in range(1, self.shards):
            self.send(w, np.concatenate(([n_total, seed, first + w * self.local, key], idx)).astype(np.int64)
                      .tobytes())
        flat[:] = 0
        broken = False
        try:
            self._shares().compute(idx, first, n_total, seed, key, self.group(0),
                                   gradient_views(flat, self.model, self.keys), terms)
        except threading.BrokenBarrierError:
            broken = True  # a worker failed in the middle of the step: its reply says why
        except BaseException:
            self.abort()
            raise
        replies = [np.frombuffer(self.receive(w), dtype=np.float64) for w in range(1, self.shards)]
        if broken:
            raise TrainingError("a sample-parallel step timed out waiting for its workers "
                                f"({BARRIER_TIMEOUT_S:.0f} s); set LAYERKIT_SAMPLE_PARALLEL=0 to train in one process")
        for w, reply in enumerate(replies, 1):
            terms[:reply.size] += reply  # each process's terms are at its own shares: exact
            flat += self._sums[w - 1]

    def serve(self, shard: int, message: bytes) -> bytes:
        header = np.frombuffer(message, dtype=np.int64)
        flat = self._sums[shard - 1]
        flat[:] = 0
        terms = np.zeros(2 * self.total, dtype=np.float64)
        self._shares().compute(header[4:], int(header[2]), int(header[0]), int(header[1]), int(header[3]),
                               self.group(shard), gradient_views(flat, self.model, self.keys), terms)
        return terms.tobytes()
