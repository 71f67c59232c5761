"""Sample-parallel training steps: one batch split over forked worker processes.

Why processes and not the thread pool of ``parallel``: a small net's step is a few
hundred numpy calls of 10-50 us each, and every one of them hands the GIL over.
Two threads each running whole LeNet-style steps reached 1.07x one thread on this
2-core machine (17,000 voluntary context switches in 120 steps), two processes
1.97x. So for models where every layer is per-sample (no batch statistics, no
randomness) ``Trainer.fit`` splits each batch into one contiguous shard per
thread: the main process computes shard 0 and forked workers the others, each
with the whole forward, loss and backward of its shard. Workers read the
parameters from shared memory (the main process copies them in before each
step) and write their gradients to shared memory; the main process adds them to
its own in shard order and runs the optimizer as usual.

The split only depends on the batch and the shard count, and the gradients are
summed in a fixed order, so a run is bit-identical to itself for the same thread
count. A different thread count gives a different split and so differs in
rounding, like any change of summation order.

Only where it pays: the parameter copy and the gradient sums cost a pass over the
parameters per step, so a net must do enough compute per parameter
(``MIN_FLOPS_PER_PARAM``) and per batch (``MIN_BATCH_FLOPS``). LeNet-style convnets
qualify; MLPs, whose work is all in their weights, keep OpenBLAS's threads instead.
Linux only (it needs ``fork``); ``LAYERKIT_SAMPLE_PARALLEL=0`` turns it off and
``=1`` skips the cost rule (the tests use that).
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import sys
import traceback
import warnings
import numpy as np

from . import parallel
from .errors import TrainingError

# Cost rule (see the module docstring); measured on this 2-core machine with
# bench/speed.py's nets and the model zoo, see docs/performance.md.
MIN_FLOPS_PER_PARAM = 8  # forward FLOPs per sample / parameter count
MIN_BATCH_FLOPS = 4_000_000  # forward FLOPs of one whole batch
MIN_SHARD_SAMPLES = 8

_ALIGN = 16  # float32 elements: 64-byte aligned tensors in the shared blocks
_REPLY = struct.Struct("<dq")  # loss * samples, correct predictions


def _setting() -> str:
    value = os.environ.get("LAYERKIT_SAMPLE_PARALLEL", "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    if value in ("1", "on", "true", "yes", "force"):
        return "on"
    return "auto"


def eligible(model, loss) -> bool:
    """Whether every layer and the loss can be split over samples."""
    if not getattr(loss, "per_sample", False):
        return False
    return all(getattr(node.layer, "per_sample", False) and not node.layer.stochastic and not node.state_specs
               for node in model.nodes)


def plan_shards(model, loss, batch_size: int, threads: int | None = None) -> int:
    """Shards per batch for ``Trainer.fit``: 1 means the plain single-process step."""
    threads = parallel.num_threads() if threads is None else threads
    setting = _setting()
    if threads < 2 or setting == "off" or not sys.platform.startswith("linux") or not eligible(model, loss):
        return 1
    shards = min(threads, batch_size // MIN_SHARD_SAMPLES)
    if shards < 2:
        return 1
    if setting == "auto":
        flops = model.graph.flops
        if flops < MIN_FLOPS_PER_PARAM * max(model.param_count, 1) or flops * batch_size < MIN_BATCH_FLOPS:
            return 1
    return shards


def _bounds(n: int, shards: int) -> list[int]:
    return [i * n // shards for i in range(shards + 1)]


class SampleParallel:
    """Workers for one training run: ``with SampleParallel(...) as sp: sp.step(indices)``."""

    def __init__(self, model, loss, x: np.ndarray, y: np.ndarray, shards: int) -> None:
        if shards < 2:
            raise ValueError("SampleParallel needs at least 2 shards")
        self.model, self.loss, self.x, self.y, self.shards = model, loss, x, y, shards
        self.keys = [(node.name, t) for node in model.nodes for t in model.params[node.name]]
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
        self._conns: list = []
        self._procs: list = []
        self._held_blas = False

    def _views(self, block) -> list[np.ndarray]:
        flat = np.frombuffer(block, dtype=self._dtype)
        return [flat[o:o + self.model.params[n][t].size].reshape(self.model.params[n][t].shape)
                for o, (n, t) in zip(self._offsets, self.keys)]

    # -- lifetime ----------------------------------------------------------------
    def __enter__(self) -> "SampleParallel":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self._held_blas = parallel._blas_saved is None
        parallel._hold_blas()  # one BLAS thread per process: the shards use the cores
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns about fork() in a process with threads (OpenBLAS's);
                # the workers only run numpy and layerkit code, never the parent's threads
                warnings.simplefilter("ignore", DeprecationWarning)
                for w in range(1, self.shards):
                    here, there = ctx.Pipe()
                    proc = ctx.Process(target=self._worker_main, args=(there, w), daemon=True,
                                       name=f"layerkit-shard-{w}")
                    proc.start()
                    there.close()
                    self._conns.append(here)
                    self._procs.append(proc)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send_bytes(b"")
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []
        if self._held_blas:
            parallel._release_blas()
            self._held_blas = False

    # -- the step ------------------------------------------------------------------
    def step(self, idx: np.ndarray) -> tuple[float, int, list[np.ndarray]]:
        """Mean loss, correct predictions and summed gradients (in ``keys`` order) of one batch."""
        n = len(idx)
        bounds = _bounds(n, min(self.shards, n))
        used = len(bounds) - 1
        for view, (name, t) in zip(self._param_views, self.keys):
            np.copyto(view, self.model.params[name][t])
        idx = np.asarray(idx, dtype=np.int64)
        for w in range(1, used):
            self._send(w, np.concatenate(([n], idx[bounds[w]:bounds[w + 1]])).astype(np.int64).tobytes())
        with parallel.serial():
            loss_sum, hits, grads = self._shard(idx[bounds[0]:bounds[1]], n)
        for w in range(1, used):
            part_loss, part_hits = self._receive(w)
            loss_sum += part_loss
            hits += part_hits
            for g, view in zip(grads, self._grad_views[w - 1]):
                g += view
        return loss_sum / n, hits, grads

    def _shard(self, idx: np.ndarray, n_total: int) -> tuple[float, int, list[np.ndarray]]:
        model, loss = self.model, self.loss
        xb, yb = self.x[idx], self.y[idx]
        out, caches = model.forward(xb, training=True)
        value, lcache = loss.forward(out, yb)
        # the loss averages over the shard; the step's gradient is the batch mean
        dout = loss.backward(lcache) * (len(idx) / n_total)
        grads = model.backward(caches, dout.astype(out.dtype, copy=False))
        hits = int(np.count_nonzero(loss.predict(out) == yb))
        return float(value) * len(idx), hits, [grads[name][t] for name, t in self.keys]

    def _send(self, w: int, payload: bytes) -> None:
        try:
            self._conns[w - 1].send_bytes(payload)
        except OSError:
            raise TrainingError(self._lost(w)) from None

    def _receive(self, w: int) -> tuple[float, int]:
        try:
            reply = self._conns[w - 1].recv_bytes()
        except (EOFError, OSError):
            raise TrainingError(self._lost(w)) from None
        if len(reply) != _REPLY.size:
            raise TrainingError(f"sample-parallel worker {w} failed:\n{reply.decode('utf-8', 'replace')}")
        return _REPLY.unpack(reply)

    def _lost(self, w: int) -> str:
        proc = self._procs[w - 1]
        proc.join(timeout=1)
        return (f"sample-parallel worker {w} died (exit code {proc.exitcode}); "
                f"set LAYERKIT_SAMPLE_PARALLEL=0 to train in one process")

    # -- in the worker --------------------------------------------------------------
    def _worker_main(self, conn, w: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
        parallel._forked_worker()
        for view, (name, t) in zip(self._param_views, self.keys):
            self.model.params[name][t] = view  # this process's copy of the model reads shared memory
        grad_views = self._grad_views[w - 1]
        while True:
            try:
                msg = conn.recv_bytes()
            except (EOFError, OSError):
                return
            if not msg:
                return
            try:
                header = np.frombuffer(msg, dtype=np.int64)
                loss_sum, hits, grads = self._shard(header[1:], int(header[0]))
                for view, g in zip(grad_views, grads):
                    np.copyto(view, g)
                reply = _REPLY.pack(loss_sum, hits)
            except BaseException:
                reply = traceback.format_exc().encode()
            try:
                conn.send_bytes(reply)
            except OSError:
                return

