"""Forked worker processes as a group: the machinery under sample-parallel training.

Why processes and not the thread pool of ``parallel.threads``: a small net's step is a few
hundred short numpy calls, and every one of them hands the GIL over, so two threads running
whole steps gain little where two processes nearly double the throughput
(docs/performance.md has the measurements). What runs in the workers is the training
tier's business (``layerkit.training.sample_parallel``); this module only knows forked
processes, pipes, shared memory and one process-shared barrier:

- :class:`ForkedWorkers` forks ``shards - 1`` workers; the caller sends each one a message
  (bytes), the worker answers with bytes from :meth:`ForkedWorkers.serve`, or with the
  traceback of what it raised;
- :class:`ShardGroup` is one process of the group as a member of the collectives interface
  (``layerkit.parallel.collectives``): ``batch_sum`` through a shared float64 exchange and
  the barrier, summed in shard order, and passed on to the MPI ranks around it when there are
  several.

Workers die with their parent: each one closes its copies of the other pipe ends, asks
the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``) and checks that the
parent it was forked from is still there; the main process watches the workers and
breaks the barrier as soon as one of them dies, so nobody waits for a dead process.
The shared blocks are anonymous mappings and the barrier's semaphores are unlinked at
creation: nothing is left in /dev/shm whatever ends the run.

Linux only (it needs ``fork``); ``LAYERKIT_SAMPLE_PARALLEL=0`` turns sample-parallel
training off and ``=1`` skips its cost rule (:func:`setting`). ``LAYERKIT_PROCESSES`` is the
number of processes a batch is split over (default: ``LAYERKIT_NUM_THREADS``, its old name,
else the usable cores).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import signal
import threading
import traceback
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from layerkit.errors import TrainingError
from layerkit.parallel import collectives
from layerkit.parallel import threads as parallel

MAX_REDUCE = 1 << 14  # float64 values one batch_sum may carry at least (batch norm: 2 per channel + 1)
BARRIER_TIMEOUT_S = 600.0  # a shard this late at a batch_sum is taken for dead
_OK, _FAILED = b"\x00", b"\x01"  # the first byte of a worker's reply

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


def setting() -> str:
    """``LAYERKIT_SAMPLE_PARALLEL``: ``"off"``, ``"on"`` (no cost rule) or ``"auto"``."""
    value = os.environ.get("LAYERKIT_SAMPLE_PARALLEL", "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    if value in ("1", "on", "true", "yes", "force"):
        return "on"
    return "auto"


@functools.cache
def available() -> bool:
    """Whether this system can fork workers with shared memory and process-shared semaphores.

    The barrier batch norm needs is a POSIX semaphore, which some containers without a
    writable /dev/shm cannot create; there training simply stays in one process. The answer
    is found once per process (``available.cache_clear()`` asks the system again).
    """
    try:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        ctx.Barrier(2)
        mmap.mmap(-1, 4096).close()
    except (ImportError, OSError, ValueError):
        return False
    return True


def bounds(n: int, parts: int) -> list[int]:
    """``parts`` + 1 boundaries that cut ``n`` samples into contiguous, near-equal shares."""
    return [i * n // parts for i in range(parts + 1)]


class ShardGroup(collectives.Collectives):
    """One forked shard as a member of the group of every share of the batch: the shards of one
    :class:`ForkedWorkers` and, when it runs inside an MPI rank, those of the other ranks too.

    Sums go through the shared exchange buffer (float64) and the process-shared barrier; the
    first shard passes this host's sums on to the outer group. Every member must make the same
    calls in the same order.
    """

    def __init__(self, workers: ForkedWorkers, shard: int) -> None:
        self.workers, self.shard = workers, shard
        self.rank = workers.outer.rank * workers.shards + shard
        self.size = workers.outer.size * workers.shards
        self._calls = 0  # exchanges so far: alternates the two buffers

    def batch_sum(self, values: np.ndarray) -> np.ndarray:
        self._calls += 1
        return self.workers.exchange(self.shard, values, self._calls)

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(array).reshape(-1)
        step = self.workers.reduce_max
        for start in range(0, max(flat.size, 1), step):
            flat[start:start + step] = self.batch_sum(flat[start:start + step])
        np.copyto(array, flat.reshape(array.shape))
        return array

    def barrier(self) -> None:
        self.workers.barrier.wait(BARRIER_TIMEOUT_S)


class ForkedWorkers:
    """``shards - 1`` forked workers next to this process (shard 0), a barrier they all share
    and, with ``sync``, a ``batch_sum`` exchange of up to ``reduce_max`` float64 values.

    A subclass says what a worker does: :meth:`setup` once after the fork and :meth:`serve`
    for every message. The main process hands out work with :meth:`send` and collects it with
    :meth:`receive`; a worker that raised answers with its traceback, which :meth:`receive`
    raises as a :class:`~layerkit.errors.TrainingError`. Use as ``with workers: ...``.
    """

    def __init__(self, shards: int, *, sync: bool, reduce_max: int = MAX_REDUCE,
                 outer: collectives.Collectives = collectives.SINGLE) -> None:
        if shards < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 shards")
        self.shards, self.sync, self.outer = shards, sync, outer
        self.reduce_max = max(MAX_REDUCE, reduce_max)
        # batch_sum's exchange: two alternating buffers of one row per shard, so one barrier
        # per call suffices (a shard can only rewrite a buffer after everybody has read it);
        # one extra row: the whole group's sums when this group is inside an MPI rank
        self._reduce_block = mmap.mmap(-1, 2 * (shards + 1) * self.reduce_max * 8)
        self._reduce_buf = np.frombuffer(self._reduce_block, dtype=np.float64).reshape(2, shards + 1,
                                                                                      self.reduce_max)
        import multiprocessing

        # created before the fork, so every worker shares it
        self.barrier = multiprocessing.get_context("fork").Barrier(shards)
        self._parent = os.getpid()
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        self._held_blas = False
        self._pending: Any = None  # the main process's end of the pipe of the worker being forked
        self._watcher: threading.Thread | None = None
        self._wake_r = self._wake_w = -1  # wakes the watcher when the workers are closed

    # -- what a worker does (a subclass's part) --------------------------------------
    def setup(self, shard: int) -> None:
        """In worker ``shard``, once after the fork (nothing by default)."""

    def serve(self, shard: int, message: bytes) -> bytes:
        """In worker ``shard``: the reply to one message."""
        raise NotImplementedError

    # -- lifetime ----------------------------------------------------------------
    def __enter__(self) -> ForkedWorkers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Fork the workers (BLAS keeps one thread per process from now on: the shards use the cores)."""
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self._held_blas = not parallel.blas_held()
        parallel.hold_blas()
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
            if self.sync:
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
        if self._wake_r not in ready and self.barrier is not None:
            self.barrier.abort()

    def close(self) -> None:
        """Stop the workers (asked first, terminated after 2 s) and give BLAS its threads back."""
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

    def abort(self) -> None:
        """Break the barrier: no shard waits any longer for one that failed."""
        if self.barrier is not None:
            self.barrier.abort()

    # -- talking to the workers ---------------------------------------------------------
    def group(self, shard: int) -> ShardGroup:
        """Shard ``shard``'s member of the collectives group of every share of the batch."""
        return ShardGroup(self, shard)

    @contextmanager
    def reducing(self, shard: int) -> Iterator[None]:
        """This shard's batch_sum, installed for the duration of one step (without ``sync``: nothing)."""
        if not self.sync:
            yield
            return
        with collectives.reducing(self.group(shard)):
            yield

    def exchange(self, shard: int, values: np.ndarray, phase: int) -> np.ndarray:
        """The sum over every shard (and the outer group) of ``values``; all shards call it together."""
        values = np.asarray(values, dtype=np.float64).ravel()
        k = values.size
        if k > self.reduce_max:
            raise TrainingError(f"a batch_sum of {k} values is more than sample-parallel training carries "
                                f"({self.reduce_max}); set LAYERKIT_SAMPLE_PARALLEL=0")
        buf = self._reduce_buf[phase % 2]
        buf[shard, :k] = values
        self.barrier.wait(BARRIER_TIMEOUT_S)
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
        self.barrier.wait(BARRIER_TIMEOUT_S)
        return buf[self.shards, :k].copy()

    def send(self, w: int, payload: bytes) -> None:
        """Hand worker ``w`` (1 ..) one message (not empty: an empty message stops it)."""
        try:
            self._conns[w - 1].send_bytes(payload)
        except OSError:
            raise TrainingError(self._lost(w)) from None

    def receive(self, w: int) -> bytes:
        """Worker ``w``'s reply to its last message; a :class:`TrainingError` if it failed or died."""
        try:
            reply = self._conns[w - 1].recv_bytes()
        except (EOFError, OSError):
            raise TrainingError(self._lost(w)) from None
        if reply[:1] != _OK:
            raise TrainingError(f"sample-parallel worker {w} failed:\n{reply[1:].decode('utf-8', 'replace')}")
        return reply[1:]

    def _lost(self, w: int) -> str:
        proc = self._procs[w - 1]
        proc.join(timeout=1)
        return (f"sample-parallel worker {w} died (exit code {proc.exitcode}); "
                f"set LAYERKIT_SAMPLE_PARALLEL=0 to train in one process")

    # -- in the worker --------------------------------------------------------------
    def _worker_main(self, conn: Any, w: int) -> None:
        die_with_parent(self._parent)
        # the copies of the main process's pipe ends: holding them, a worker would never see
        # end-of-file when the main process dies
        for other in self._conns + [self._pending]:
            other.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        parallel.set_num_threads(1)  # the shards use the cores: serial loops, one BLAS thread
        parallel.hold_blas()
        self.setup(w)
        while True:
            try:
                msg = conn.recv_bytes()
            except (EOFError, OSError):
                return
            if not msg:
                return
            try:
                reply = _OK + self.serve(w, msg)
            except BaseException:
                self.abort()  # the other shards must not wait for this one
                reply = _FAILED + traceback.format_exc().encode()
            try:
                conn.send_bytes(reply)
            except OSError:
                return
