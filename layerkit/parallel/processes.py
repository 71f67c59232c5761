"""Sample-parallel training steps: one batch split over forked worker processes.

Why processes and not the thread pool of ``parallel``: a small net's step is a few
hundred numpy calls of 10-50 us each, and every one of them hands the GIL over.
Two threads each running whole LeNet-style steps reached 1.07x one thread on this
2-core machine (17,000 voluntary context switches in 120 steps), two processes
1.97x. So for models whose layers can be split over samples (``sample_coupling``
``NONE``, or ``BATCH_SUMS``, below) ``Trainer.fit`` splits each batch into
one contiguous shard per thread: the main process computes shard 0 and forked
workers the others, each with the whole forward, loss and backward of its shard. Workers read the
parameters from shared memory (the main process copies them in before each
step) and write their gradients to shared memory; the main process adds them to
its own in shard order and runs the optimizer as usual.

Layers that need whole-batch statistics (batch norm) declare ``BATCH_SUMS`` and
get them through :func:`batch_sum`: every shard writes its partial sums to shared
memory, waits at a barrier and adds all partials in shard order, so each shard
normalises with the statistics of the whole batch, exactly as one process would.
Random layers (dropout) and augmentation draw from one generator per shard,
seeded from the trainer's generator at every step.

The split only depends on the batch and the shard count, and the gradients are
summed in a fixed order, so a run is bit-identical to itself for the same thread
count. A different thread count gives a different split and so differs in
rounding, like any change of summation order.

Only where it pays: the parameter copy and the gradient sums cost a pass over the
parameters per step, so a net must do enough compute per parameter
(``MIN_FLOPS_PER_PARAM``) and per batch (``MIN_BATCH_FLOPS``). LeNet-style convnets
qualify; MLPs, whose work is all in their weights, keep OpenBLAS's threads instead.
Linux only (it needs ``fork``); ``LAYERKIT_SAMPLE_PARALLEL=0`` turns it off and
``=1`` skips the cost rule (the tests use that). ``LAYERKIT_PROCESSES`` is the number of
processes a batch is split over (default: ``LAYERKIT_NUM_THREADS``, its old name, else
the usable cores).

Workers die with their parent: each one closes its copies of the other pipe ends, asks
the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``) and checks that the
parent it was forked from is still there; the main process watches the workers and
breaks the batch-norm barrier as soon as one of them dies, so nobody waits for a dead
process. The shared blocks are anonymous mappings and the barrier's semaphores are
unlinked at creation: nothing is left in /dev/shm whatever ends the run.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import struct
import sys
import threading
import traceback
import warnings
from contextlib import contextmanager, nullcontext

import numpy as np

from layerkit.parallel import threads as parallel
from layerkit.errors import TrainingError
from layerkit.parallel import collectives

# Cost rule (see the module docstring); measured on this 2-core machine with
# bench/speed.py's nets and the model zoo, see docs/performance.md.
MIN_FLOPS_PER_PARAM = 8  # forward FLOPs per sample / parameter count
# forward FLOPs of one whole batch: cnn2_3class (4.1 MFLOP) measured break-even, cnn2 (5.2) +24%
MIN_BATCH_FLOPS = 5_000_000
MIN_SHARD_SAMPLES = 8

_ALIGN = 16  # float32 elements: 64-byte aligned tensors in the shared blocks
_REPLY = struct.Struct("<dd")  # loss * samples, correct predictions (fractional for reconstructions)
MAX_REDUCE = 1 << 14  # float64 values one batch_sum may carry at least (batch norm: 2 per channel + 1)
BARRIER_TIMEOUT_S = 600.0  # a shard this late at a batch_sum is taken for dead
# values of layerkit.nn.layer.Coupling (a str enum: equal to these strings); this tier sits below nn
NONE, BATCH_SUMS = "none", "batch_sums"

_processes: int | None = None  # set_processes(); None: from the environment


def processes() -> int:
    """Processes each training batch may be split over: ``LAYERKIT_PROCESSES``, else the
    old name ``LAYERKIT_NUM_THREADS`` (through the thread pool's size), else the usable cores."""
    if _processes is not None:
        return _processes
    value = os.environ.get("LAYERKIT_PROCESSES", "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            pass
    return parallel.num_threads()


def set_processes(n: int | None) -> None:
    """Override ``processes()`` in this process (None: back to the environment)."""
    global _processes
    _processes = None if n is None else max(1, int(n))


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a forked child: SIGKILL when ``parent`` dies (Linux), and exit now if it already has.

    The kernel sends the signal when the parent thread that forked us exits; the
    getppid check closes the window between fork and prctl.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _setting() -> str:
    value = os.environ.get("LAYERKIT_SAMPLE_PARALLEL", "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    if value in ("1", "on", "true", "yes", "force"):
        return "on"
    return "auto"


_available: bool | None = None


def available() -> bool:
    """Whether this system can fork workers with shared memory and process-shared semaphores.

    The barrier batch norm needs is a POSIX semaphore, which some containers without a
    writable /dev/shm cannot create; there training simply stays in one process.
    """
    global _available
    if _available is None:
        try:
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            ctx.Barrier(2)
            mmap.mmap(-1, 4096).close()
            _available = True
        except (ImportError, OSError, ValueError):
            _available = False
    return _available


def eligible(model, loss) -> bool:
    """Whether every layer and the loss can be split over samples."""
    if loss.sample_coupling != NONE:
        return False
    return all(node.layer.sample_coupling == BATCH_SUMS
               or (node.layer.sample_coupling == NONE and not node.state_specs) for node in model.nodes)


def plan_shards(model, loss, batch_size: int, threads: int | None = None) -> int:
    """Shards per batch for ``Trainer.fit``: 1 means the plain single-process step."""
    threads = processes() if threads is None else threads
    setting = _setting()
    if (threads < 2 or setting == "off" or not sys.platform.startswith("linux") or not eligible(model, loss)
            or not available()):
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


class ShardGroup(collectives.Collectives):
    """One forked shard as a member of the group of every share of the batch: the shards of this
    ``SampleParallel`` and, when it runs inside an MPI rank, those of the other ranks too.

    Sums go through the shared exchange buffer (float64) and the process-shared barrier; the
    first shard passes this host's sums on to the outer group. Every member must make the same
    calls in the same order.
    """

    def __init__(self, workers: "SampleParallel", shard: int) -> None:
        self.workers, self.shard = workers, shard
        self.rank = workers.outer.rank * workers.shards + shard
        self.size = workers.outer.size * workers.shards
        self._calls = 0  # exchanges so far: alternates the two buffers

    def batch_sum(self, values: np.ndarray) -> np.ndarray:
        self._calls += 1
        return self.workers._exchange(self.shard, values, self._calls)

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(array).reshape(-1)
        step = self.workers._reduce_max
        for start in range(0, max(flat.size, 1), step):
            flat[start:start + step] = self.batch_sum(flat[start:start + step])
        np.copyto(array, flat.reshape(array.shape))
        return array

    def barrier(self) -> None:
        self.workers._barrier.wait(BARRIER_TIMEOUT_S)


def share_gradients(model, loss, x: np.ndarray, y: np.ndarray, idx: np.ndarray, n_total: int, seed: int, stream: int,
                    augment, random: bool, keys) -> tuple[float, int, list[np.ndarray]]:
    """Loss times samples, correct predictions and gradients (``keys`` order) of the samples ``idx``
    of a global batch of ``n_total``; random layers and augmentation draw from the stream
    ``(seed, stream)``. What every share of a split batch computes, forked or on an MPI rank."""
    xb, yb = x[idx], y[idx]
    rng = np.random.default_rng([seed, stream]) if random else None
    if augment is not None:
        xb = augment(xb, rng)
    # the loss averages over the share; the step's gradient is the batch mean
    value, out, grads = model.loss_and_gradients(loss, xb, yb, rng, share=len(idx) / n_total)
    hits = loss.correct(out, yb)
    return value * len(idx), hits, [grads[name][t] for name, t in keys]


class SampleParallel:
    """Workers for one training run: ``with SampleParallel(...) as sp: sp.step(indices)``."""

    def __init__(self, model, loss, x: np.ndarray, y: np.ndarray, shards: int, augment=None,
                 outer: collectives.Collectives = collectives.SINGLE) -> None:
        if shards < 2:
            raise ValueError("SampleParallel needs at least 2 shards")
        self.model, self.loss, self.x, self.y, self.shards = model, loss, x, y, shards
        self.augment = augment  # f(batch, rng) -> batch for the training images, or None
        self.outer = outer  # the MPI ranks this process is one of, or the group of one
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
        self._sync = any(node.layer.sample_coupling == BATCH_SUMS for node in model.nodes)
        self._random = augment is not None or any(node.layer.uses_rng for node in model.nodes)
        # batch_sum's exchange: two alternating buffers of one row per shard, so one barrier
        # per call suffices (a shard can only rewrite a buffer after everybody has read it)
        # room for a few values per channel of the widest synced layer (batch norm sends 2 + 1)
        self._reduce_max = max([MAX_REDUCE] + [4 * int(node.output_shape[0]) + 4 for node in model.nodes
                                               if node.layer.sample_coupling == BATCH_SUMS])
        # one extra row: the whole group's sums when this group is inside an MPI rank
        self._reduce_block = mmap.mmap(-1, 2 * (shards + 1) * self._reduce_max * 8)
        self._reduce_buf = np.frombuffer(self._reduce_block, dtype=np.float64).reshape(2, shards + 1, self._reduce_max)
        import multiprocessing

        # created before the fork, so every worker shares it
        self._barrier = multiprocessing.get_context("fork").Barrier(shards)
        self._parent = os.getpid()
        self._pending = None  # the main process's end of the pipe of the worker being forked
        self._watcher: threading.Thread | None = None
        self._wake_r = self._wake_w = -1  # wakes the watcher when the workers are closed

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
        self._held_blas = not parallel.blas_held()
        parallel.hold_blas()  # one BLAS thread per process: the shards use the cores
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns about fork() in a process with threads (OpenBLAS's);
                # the workers only run numpy and layerkit code, never the parent's threads
                warnings.simplefilter("ignore", DeprecationWarning)
                for w in range(1, self.shards):
                    here, there = ctx.Pipe()
                    self._pending = here
                    proc = ctx.Process(target=self._worker_main, args=(there, w), daemon=True,
                                       name=f"layerkit-shard-{w}")
                    proc.start()
                    self._pending = None
                    there.close()
                    self._conns.append(here)
                    self._procs.append(proc)
            if self._sync:
                self._wake_r, self._wake_w = os.pipe()
                self._watcher = threading.Thread(target=self._watch, name="layerkit-shard-watch", daemon=True)
                self._watcher.start()
        except BaseException:
            self.close()
            raise

    def _watch(self) -> None:
        """Break the barrier when a worker dies, so the main process is not left waiting in it."""
        from multiprocessing.connection import wait

        ready = wait([p.sentinel for p in self._procs] + [self._wake_r])
        if self._wake_r not in ready and self._barrier is not None:
            self._barrier.abort()

    def close(self) -> None:
        if self._watcher is not None:
            os.write(self._wake_w, b"x")
            self._watcher.join()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self._watcher, self._wake_r, self._wake_w = None, -1, -1
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
            parallel.release_blas()
            self._held_blas = False

    # -- the step ------------------------------------------------------------------
    def step(self, idx: np.ndarray, rng: np.random.Generator | None = None) -> tuple[float, int, list[np.ndarray]]:
        """Mean loss, correct predictions and summed gradients (in ``keys`` order) of one batch.

        ``rng`` (the trainer's generator) seeds the per-shard generators of random layers.
        """
        n = len(idx)
        seed = int(rng.integers(1 << 62)) if self._random and rng is not None else 0
        loss_sum, hits, grads = self.compute(idx, n, seed)
        return loss_sum / n, hits, grads

    def compute(self, idx: np.ndarray, n_total: int, seed: int, first: int = 0
                ) -> tuple[float, int, list[np.ndarray]]:
        """Loss times samples, correct predictions and gradients of the samples ``idx``, one share of a
        global batch of ``n_total`` (the gradients are scaled by their share of it).

        Shard ``s`` draws its random numbers from the stream ``(seed, first + s)``: under MPI,
        ``first`` numbers this rank's shards after those of the ranks before it.
        """
        n = len(idx)
        if self._sync and n < self.shards:
            # too few samples for every shard to take part in the batch_sum exchanges
            with parallel.serial(), (collectives.reducing(self.outer) if self.outer.size > 1 else nullcontext()):
                return share_gradients(self.model, self.loss, self.x, self.y, np.asarray(idx), n_total, seed, first,
                                       self.augment, self._random, self.keys)
        bounds = _bounds(n, min(self.shards, n))
        used = len(bounds) - 1
        for view, (name, t) in zip(self._param_views, self.keys):
            np.copyto(view, self.model.params[name][t])
        idx = np.asarray(idx, dtype=np.int64)
        for w in range(1, used):
            self._send(w, np.concatenate(([n_total, seed, first], idx[bounds[w]:bounds[w + 1]])).astype(np.int64)
                       .tobytes())
        broken = False
        try:
            with parallel.serial(), self._reducing(0):
                loss_sum, hits, grads = share_gradients(self.model, self.loss, self.x, self.y, idx[bounds[0]:bounds[1]],
                                                        n_total, seed, first, self.augment, self._random, self.keys)
        except threading.BrokenBarrierError:
            broken = True  # a worker failed in the middle of the step: its reply says why
        except BaseException:
            if self._barrier is not None:
                self._barrier.abort()
            raise
        replies = [self._receive(w) for w in range(1, used)]
        if broken:
            raise TrainingError("a sample-parallel step timed out waiting for its workers "
                                f"({BARRIER_TIMEOUT_S:.0f} s); set LAYERKIT_SAMPLE_PARALLEL=0 to train in one process")
        for w, (part_loss, part_hits) in enumerate(replies, 1):
            loss_sum += part_loss
            hits += part_hits
            for g, view in zip(grads, self._grad_views[w - 1]):
                g += view
        return loss_sum, hits, grads

    def group(self, shard: int) -> "ShardGroup":
        """Shard ``shard``'s member of the collectives group of every share of the batch."""
        return ShardGroup(self, shard)

    @contextmanager
    def _reducing(self, shard: int):
        """This shard's batch_sum, installed for the duration of one step."""
        if not self._sync:
            yield
            return
        with collectives.reducing(self.group(shard)):
            yield

    def _exchange(self, shard: int, values: np.ndarray, phase: int) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64).ravel()
        k = values.size
        if k > self._reduce_max:
            raise TrainingError(f"a batch_sum of {k} values is more than sample-parallel training carries "
                                f"({self._reduce_max}); set LAYERKIT_SAMPLE_PARALLEL=0")
        buf = self._reduce_buf[phase % 2]
        buf[shard, :k] = values
        self._barrier.wait(BARRIER_TIMEOUT_S)
        if self.outer.size == 1:
            total = buf[0, :k].copy()
            for row in buf[1:self.shards]:
                total += row[:k]
            return total
        # inside an MPI rank: the first shard passes this host's sum on to the other ranks
        # and hands the group's sum back through the extra row
        if shard == 0:
            total = buf[0, :k].copy()
            for row in buf[1:self.shards]:
                total += row[:k]
            buf[self.shards, :k] = self.outer.batch_sum(total)
        self._barrier.wait(BARRIER_TIMEOUT_S)
        return buf[self.shards, :k].copy()

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
        die_with_parent(self._parent)
        # the copies of the main process's pipe ends: holding them, a worker would never see
        # end-of-file when the main process dies
        for other in self._conns + [self._pending]:
            other.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        parallel.set_num_threads(1)  # the shards use the cores: serial loops, one BLAS thread
        parallel.hold_blas()
        for view, (name, t) in zip(self._param_views, self.keys):
            self.model.params[name][t] = view  # this process's copy of the model reads shared memory
        # running statistics are the main process's to keep (it sees the same batch statistics)
        self.model.state = {name: {} for name in self.model.state}
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
                with self._reducing(w):
                    loss_sum, hits, grads = share_gradients(self.model, self.loss, self.x, self.y, header[3:],
                                                            int(header[0]), int(header[1]), int(header[2]) + w,
                                                            self.augment, self._random, self.keys)
                for view, g in zip(grad_views, grads):
                    np.copyto(view, g)
                reply = _REPLY.pack(loss_sum, hits)
            except BaseException:
                if self._barrier is not None:
                    self._barrier.abort()  # the other shards must not wait for this one
                reply = traceback.format_exc().encode()
            try:
                conn.send_bytes(reply)
            except OSError:
                return

