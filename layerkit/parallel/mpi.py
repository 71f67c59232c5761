"""MPI ranks as a :class:`~layerkit.parallel.collectives.Collectives` group (``pip install 'layerkit[mpi]'``).

``mpiexec -n K layerkit fit ...`` starts K processes; :func:`world` sees from the
launcher's environment that it is one of them and wraps ``mpi4py``'s
``COMM_WORLD``. mpi4py is imported only then: ``layerkit fit`` without ``mpiexec``
(or with ``-n 1``) never loads MPI.

The sums go through ``MPI_Allreduce``; MPI implementations give every rank the same
result for the same inputs in the same order (MPICH and Open MPI reduce in a fixed
order for a fixed process count), and the trainer checks this after every epoch
(:meth:`MpiCollectives.same_everywhere`), so ranks can never drift apart silently.
"""

from __future__ import annotations

import os
import sys
import time
import zlib

import numpy as np

from layerkit.errors import LayerkitError, everywhere, install_hint
from layerkit.parallel.collectives import SINGLE, Collectives

# the number of processes mpiexec started, as each launcher tells its processes
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_WORLD_SIZE")
MAX_MESSAGE_BYTES = 1 << 28  # broadcasts go in pieces: MPI counts are 32-bit in older implementations


def launched_size() -> int:
    """How many processes the MPI launcher started (1 without one)."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


_world: Collectives | None = None


def world() -> Collectives:
    """This process's group: MPI's ranks under ``mpiexec -n K`` (K > 1), else the group of one."""
    global _world
    if _world is None:
        size = launched_size()
        if size < 2:
            _world = SINGLE
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise everywhere(LayerkitError(
                    f"started by an MPI launcher with {size} processes, but mpi4py is not installed: "
                    f"{install_hint('mpi')} (or run layerkit without mpiexec)")) from None
            _world = MpiCollectives(MPI.COMM_WORLD)
            _share_cores(cores_per_rank(_world.local_size))
    return _world


_blas_limit = None  # threadpoolctl's limiter holding this rank's BLAS to its cores


def _share_cores(cores: int) -> None:
    """K ranks on one host share its cores: each rank's thread pool, forked processes and BLAS
    threads get its part of them (LAYERKIT_NUM_THREADS, LAYERKIT_PROCESSES and OPENBLAS_NUM_THREADS
    or OMP_NUM_THREADS, when set, decide instead)."""
    global _blas_limit
    from layerkit.parallel import blas, threads

    if not os.environ.get("LAYERKIT_NUM_THREADS", "").strip():
        threads.set_num_threads(cores)
    if not any(os.environ.get(v, "").strip() for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        # two BLAS threads per rank on one core each would busy-wait on each other's cores
        _blas_limit = blas.limit_threads(cores)


def cores_per_rank(local_size: int) -> int:
    """This rank's part of the host's cores: all it may use when the launcher bound it to a
    subset, else the cores it may use divided by the ranks on this host."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    if usable < (os.cpu_count() or usable):
        return usable
    return max(1, usable // max(1, local_size))


class MpiCollectives(Collectives):
    """One MPI rank of ``comm``."""

    def __init__(self, comm) -> None:
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        #: ranks on this host, and this rank's place among them
        self.local_size, self.local_rank = node.Get_size(), node.Get_rank()
        node.Free()

    def allreduce_sum(self, array: np.ndarray) -> np.ndarray:
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def batch_sum(self, values: np.ndarray) -> np.ndarray:
        out = np.array(values, dtype=np.float64).ravel()
        return self.allreduce_sum(out)

    def barrier(self) -> None:
        self.comm.Barrier()

    # -- for starting a run: rank 0 reads, everybody gets the same -------------------
    def broadcast(self, obj):
        """Rank 0's ``obj`` (a small picklable value) on every rank."""
        return self.comm.bcast(obj, root=0)

    def broadcast_arrays(self, arrays: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Rank 0's named arrays on every rank (shapes and dtypes first, then the bytes in chunks)."""
        layout = self.broadcast(None if self.rank else {k: (v.shape, v.dtype.str) for k, v in arrays.items()})
        out = {}
        for key, (shape, dtype) in layout.items():
            buf = (np.ascontiguousarray(arrays[key]).reshape(shape) if self.rank == 0
                   else np.empty(shape, dtype=np.dtype(dtype)))
            flat = buf.reshape(-1).view(np.uint8)
            for start in range(0, flat.size, MAX_MESSAGE_BYTES):
                self.comm.Bcast(flat[start:start + MAX_MESSAGE_BYTES], root=0)
            out[key] = buf
        return out

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        return self.comm.allgather(obj)

    def same_everywhere(self, arrays) -> bool:
        """Whether ``arrays`` hold the same bytes on every rank (a CRC-32 compared over the group)."""
        crc = 0
        for a in arrays:
            crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8), crc)
        return len(set(self.gather(crc))) == 1

    def abort(self, code: int) -> None:
        """End every rank now (what an error on one rank must do: the others wait in a collective)."""
        sys.stdout.flush()
        sys.stderr.flush()
        # MPICH's launcher forwards each rank's output through a pipe and stops forwarding at the
        # abort: give it a moment to pass on what this rank just printed (the reason it failed)
        time.sleep(0.3)
        self.comm.Abort(code)
