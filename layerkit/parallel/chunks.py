"""Chunks of a batch: how many samples a pass handles at a time, from one byte budget.

The big layers' passes are memory bound: a pass over the whole batch that makes a
temporary (a mask, a product, im2col columns) writes it out to memory and reads it back.
Done chunk by chunk, the temporary stays in the core's cache and is reused by the next
chunk. Every chunk size in layerkit derives from one budget, :data:`CHUNK_BYTES`, the
working set one core keeps in its L2 cache next to a GEMM's packed panels:

- a column buffer (convolution's im2col) is one array: a chunk of :data:`CHUNK_BYTES`
  (:func:`chunk_size`);
- an element-wise pass (ReLU, pooling, batch norm) keeps its input, its output and up to
  two temporaries of a chunk live at once: a chunk of a quarter of the budget
  (:data:`PASS_CHUNK_BYTES`, :func:`over_chunks`).

Chunk boundaries depend only on the shapes, never on the thread count, and a chunked
element-wise pass computes exactly what the whole-batch pass would; where a chunk feeds
a sum (a weight gradient), its size is part of the summation order and so of the result's
rounding. Which chunks run on the thread pool is ``layerkit.parallel.threads``' business.
The measurements behind the budget are in docs/performance.md.

Two other byte counts in the parallel tier are not chunk sizes and do not derive from the
budget: the thread pool's threshold (``threads.MIN_PARALLEL_BYTES``: how big a whole pass must
be to pay for handing it to threads) and the largest MPI message (``mpi.MAX_MESSAGE_BYTES``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from layerkit.parallel import threads

#: the one byte budget: one core's working set per chunk of samples
CHUNK_BYTES = 1 << 20
#: an element-wise pass's chunk: input, output and two temporaries share the budget
PASS_CHUNK_BYTES = CHUNK_BYTES // 4


def chunk_size(per_sample_bytes: int, n: int, budget: int = CHUNK_BYTES) -> int:
    """Samples per chunk (1 to ``n``) so that one chunk of ``per_sample_bytes`` a sample stays within ``budget``."""
    return max(1, min(n, budget // max(per_sample_bytes, 1)))


def sample_chunks(x: np.ndarray, budget: int = PASS_CHUNK_BYTES) -> tuple[list[slice], int]:
    """Slices over the batch axis of ``x`` of about ``budget`` bytes each, and the samples per slice."""
    n = x.shape[0] if x.ndim else 1
    step = chunk_size(x.nbytes // max(n, 1), n, budget)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)], step


def over_chunks(x: np.ndarray, work: Callable[[list[slice], int], object], nbytes: int | None = None) -> None:
    """Call ``work(chunk_slices, step)`` for groups of ``sample_chunks(x)``, on the pool when big.

    Each call gets a contiguous run of whole chunks and must only write those samples;
    ``step`` sizes its own scratch buffers (one set per worker thread). ``nbytes``: the bytes
    the whole pass reads and writes (default ``x.nbytes``), which decides whether the pool pays.
    """
    slices, step = sample_chunks(x)
    n = x.shape[0]
    nbytes = x.nbytes if nbytes is None else nbytes
    groups = threads.split(n, step, nbytes, "pass")
    threads.run(work, [([sl for sl in slices if a <= sl.start < b], step) for a, b in groups], nbytes, "pass")
