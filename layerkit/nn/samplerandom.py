"""Random numbers per sample: the same draws whichever process holds the sample.

A training step hands random layers (dropout) and the augmentation a :class:`SampleRandom`
instead of a shared generator. It knows the global index of every row of the batch it was
given, and every draw is made row by row from that sample's own stream: row ``i`` of a draw
depends only on (the run's seed, the epoch, the layer, which draw of the layer's forward this
is, the sample index ``samples[i]``, the element's position). A batch split over any number of
processes, forked or MPI ranks, therefore draws exactly the numbers the whole batch draws in one.

The generator is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011), counter-based, written here in vectorised numpy and checked against the Random123
known-answer vectors. Its 64-bit key comes from the seed, the epoch and the layer's name (a
BLAKE2b digest); its 128-bit counter is (element block, draw number, sample index): one call
computes the whole (rows x elements) grid at once, with no loop over samples. This is not
numpy's ``Philox`` bit generator (that one is Philox4x64, which numpy cannot vectorise), and
the streams do not match numpy's.

The draw methods mirror :class:`numpy.random.Generator`'s (``random``, ``uniform``,
``integers``, ``normal``, ``standard_normal``), with one rule: ``size`` puts the batch first.
``rng.random(x.shape)`` works as it does with a generator; a draw of another leading size is
refused, because it could not be assigned to samples.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

_MASK = np.uint64(0xFFFFFFFF)
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_ROUNDS = 10


def philox4x32(counter: tuple[np.ndarray, ...] | list[np.ndarray], key: tuple[int, int]) -> list[np.ndarray]:
    """Philox4x32-10 of the four 32-bit counter words (broadcastable arrays) under ``key`` (two
    32-bit ints): four uint32 arrays of output words. Vectorised: one call does a whole grid."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(_ROUNDS):
        p0 = c0 * _M0
        p1 = c2 * _M1
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _MASK,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _MASK)
        k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
    return [c.astype(np.uint32) for c in (c0, c1, c2, c3)]


def derive_key(*parts: int | str) -> int:
    """A 64-bit key from ints and strings (BLAKE2b), the same on every platform and process."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def epoch_key(seed: int, epoch: int) -> int:
    """The key of epoch ``epoch`` of a run seeded ``seed``: 63 bits, so it travels as an int64."""
    return derive_key("layerkit-samples", seed, epoch) >> 1


class SampleRandom:
    """The random numbers of one batch (or one share of it), drawn per sample.

    ``key``: the 64-bit key of the run and epoch (:meth:`for_epoch`), ``samples``: the global
    sample index of every row, ``legacy``: the :class:`numpy.random.Generator` that layers
    without ``sample_rng`` receive instead (see :attr:`layerkit.Layer.sample_rng`).
    """

    def __init__(self, key: int, samples: Any, legacy: np.random.Generator | None = None) -> None:
        self.key = int(key) & 0xFFFFFFFFFFFFFFFF
        self.samples = np.asarray(samples, dtype=np.int64).reshape(-1)
        if len(self.samples) and self.samples.min() < 0:
            raise ValueError("sample indices must not be negative")
        self.legacy = legacy
        self._draws = 0  # draws made so far: the second draw of a forward gets other numbers

    @classmethod
    def for_epoch(cls, seed: int, epoch: int, samples: Any, legacy: np.random.Generator | None = None
                  ) -> "SampleRandom":
        """The draws of the samples ``samples`` in epoch ``epoch`` of a run seeded ``seed``."""
        return cls(epoch_key(seed, epoch), samples, legacy)

    def child(self, label: str) -> "SampleRandom":
        """An independent stream for the same samples (one per layer, one for the augmentation)."""
        return SampleRandom(derive_key(self.key, label), self.samples, self.legacy)

    def rows(self, start: int, stop: int) -> "SampleRandom":
        """The same streams for rows ``start:stop`` only (what a share of the batch gets)."""
        return SampleRandom(self.key, self.samples[start:stop], self.legacy)

    def __len__(self) -> int:
        return len(self.samples)

    # -- the raw words -----------------------------------------------------------------
    def _per_row(self, size: Any) -> tuple[int, ...]:
        shape = (int(size),) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in (size or ()))
        if not shape or shape[0] != len(self.samples):
            raise ValueError(f"a per-sample draw needs size with the batch first ({len(self.samples)}, ...), "
                             f"got {shape}")
        return shape

    def words(self, shape: tuple[int, ...], per_element: int = 1) -> np.ndarray:
        """uint32 words, ``per_element`` of them for every element of ``shape`` (batch first), as
        an array of shape (rows, elements per row * per_element)."""
        n = len(self.samples)
        count = int(np.prod(shape[1:], dtype=np.int64)) * per_element
        blocks = -(-count // 4)
        draw, self._draws = self._draws, self._draws + 1
        sample = self.samples.astype(np.uint64)[:, None]
        out = philox4x32((np.arange(blocks, dtype=np.uint64)[None, :], np.uint64(draw),
                          sample & _MASK, sample >> np.uint64(32)), (self.key & 0xFFFFFFFF, self.key >> 32))
        grid = np.stack(np.broadcast_arrays(*out), axis=-1).reshape(n, blocks * 4)
        return grid[:, :count]

    # -- numpy.random.Generator's draws, batch first ---------------------------------
    def random(self, size: Any = None, dtype: Any = np.float64) -> np.ndarray:
        """Uniform in [0, 1): float32 from 24 random bits, float64 from 53."""
        shape = self._per_row(size)
        if np.dtype(dtype) == np.float32:
            u = self.words(shape) >> np.uint32(8)
            return (u.astype(np.float32) * np.float32(2.0 ** -24)).reshape(shape)
        if np.dtype(dtype) != np.float64:
            raise TypeError(f"random draws float32 or float64, not {np.dtype(dtype)}")
        w = self.words(shape, 2).astype(np.uint64)
        bits = ((w[:, 0::2] >> np.uint64(5)) << np.uint64(26)) | (w[:, 1::2] >> np.uint64(6))
        return (bits.astype(np.float64) * 2.0 ** -53).reshape(shape)

    def uniform(self, low: float = 0.0, high: float = 1.0, size: Any = None) -> np.ndarray:
        """Uniform in [low, high), float64."""
        return low + (high - low) * self.random(size)

    def integers(self, low: int, high: int | None = None, size: Any = None, dtype: Any = np.int64) -> np.ndarray:
        """Integers in [low, high) (in [0, low) with one bound), by the multiply-shift map of one
        32-bit word: the bias is below range / 2**32."""
        if high is None:
            low, high = 0, low
        span = int(high) - int(low)
        if not 0 < span <= 1 << 32:
            raise ValueError(f"integers needs 0 < high - low <= 2**32, got [{low}, {high})")
        shape = self._per_row(size)
        u = self.words(shape).astype(np.uint64)
        values = ((u * np.uint64(span)) >> np.uint64(32)).astype(np.int64) + int(low)
        return values.astype(dtype, copy=False).reshape(shape)

    def standard_normal(self, size: Any = None, dtype: Any = np.float64) -> np.ndarray:
        """Standard normal values (Box-Muller on two uniforms per value)."""
        shape = self._per_row(size)
        u = self.random((shape[0], 2, *shape[1:]))
        z = np.sqrt(-2.0 * np.log1p(-u[:, 0])) * np.cos(2.0 * np.pi * u[:, 1])
        return z.astype(dtype, copy=False)

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Any = None) -> np.ndarray:
        """Normal values with mean ``loc`` and standard deviation ``scale``, float64."""
        return loc + scale * self.standard_normal(size)


def layer_rng(rng: Any, layer: Any, name: str) -> Any:
    """What ``layer`` (node ``name``) receives as ``rng`` when the network is given ``rng``: its own
    per-sample stream when it declares ``sample_rng``, the legacy generator when it does not, and
    a plain generator passed through unchanged."""
    if not isinstance(rng, SampleRandom):
        return rng
    return rng.child(f"layer/{name}") if getattr(layer, "sample_rng", False) else rng.legacy
