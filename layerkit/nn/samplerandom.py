"""Random numbers per sample: the same draws whichever process holds the sample.

A training step hands random layers (dropout) and the augmentation a :class:`SampleRandom`
instead of a shared generator. It knows the global index of every row of the batch it was
given, and every draw is made row by row from that sample's own stream: row ``i`` of a draw
depends only on (the run's seed, the epoch, the layer, which draw of the layer's forward this
is, the sample index ``samples[i]``, the element's position). A batch split over any number of
processes, forked or MPI ranks, therefore draws exactly the numbers the whole batch draws in one.

The generator is counter-based SplitMix64 (Steele, Lea and Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014), the generator Java's ``SplittableRandom`` and
the seeding of the xoshiro family use, checked here against its published reference outputs:
value ``j`` of the stream seeded ``s`` is ``mix(s + (j + 1) * 0x9E3779B97F4A7C15)``, so a
whole (rows x elements) grid is one vectorised expression over a counter grid, with no loop
over samples. A draw's key comes from the seed, the epoch and the layer's name (a BLAKE2b
digest) and the draw's number; a sample's stream is seeded with value ``sample`` of the
draw's own stream. Each 64-bit value gives two float32 uniforms (24 bits each) or one float64
(53 bits). It takes a small fraction of the array operations of a Philox counter grid in
numpy, which matters for dropout on small dense layers (docs/distributed.md has the cost); it
does not reproduce numpy's generators' streams.

The draw methods mirror :class:`numpy.random.Generator`'s (``random``, ``uniform``,
``integers``, ``normal``, ``standard_normal``), with one rule: ``size`` puts the batch first.
``rng.random(x.shape)`` works as it does with a generator; a draw of another leading size is
refused, because it could not be assigned to samples.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on a uint64 array, in place (returns it)."""
    t = np.right_shift(z, np.uint64(30))
    z ^= t
    z *= _M1
    np.right_shift(z, np.uint64(27), out=t)
    z ^= t
    z *= _M2
    np.right_shift(z, np.uint64(31), out=t)
    z ^= t
    return z


def splitmix64(seed: Any, count: int) -> np.ndarray:
    """Values 0 .. count - 1 of the SplitMix64 streams seeded ``seed`` (a uint64 array, one stream
    per element): an array of shape ``seed.shape + (count,)``."""
    seeds = np.asarray(seed, dtype=np.uint64)
    steps = (np.arange(1, count + 1, dtype=np.uint64) * np.uint64(_GOLDEN))  # wraps mod 2**64
    return mix64(seeds[..., None] + steps)


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

    def words64(self, shape: tuple[int, ...], per_element: int = 1) -> np.ndarray:
        """uint64 values, ``per_element`` for every element of ``shape`` (batch first): an array of
        shape (rows, elements per row * per_element), row ``i`` from sample ``samples[i]``'s stream."""
        count = int(np.prod(shape[1:], dtype=np.int64)) * per_element
        draw, self._draws = self._draws, self._draws + 1
        # this draw's stream; value ``sample`` of it seeds the sample's stream
        (key,) = splitmix64(np.uint64((self.key + draw * _GOLDEN) & _MASK64), 1)
        seeds = mix64(np.uint64(key) + (self.samples.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN))
        return splitmix64(seeds, count)

    def words32(self, shape: tuple[int, ...]) -> np.ndarray:
        """uint32 values, one for every element of ``shape``: both halves of each 64-bit value (low
        half first, on every platform), shape (rows, elements per row)."""
        count = int(np.prod(shape[1:], dtype=np.int64))
        w = self.words64((shape[0], -(-count // 2)))
        return w.astype("<u8", copy=False).view("<u4")[:, :count]

    # -- numpy.random.Generator's draws, batch first ---------------------------------
    def random(self, size: Any = None, dtype: Any = np.float64) -> np.ndarray:
        """Uniform in [0, 1): float32 from 24 random bits, float64 from 53."""
        shape = self._per_row(size)
        if np.dtype(dtype) == np.float32:
            u = self.words32(shape) >> np.uint32(8)
            return (u.astype(np.float32) * np.float32(2.0 ** -24)).reshape(shape)
        if np.dtype(dtype) != np.float64:
            raise TypeError(f"random draws float32 or float64, not {np.dtype(dtype)}")
        w = self.words64(shape) >> np.uint64(11)
        return (w.astype(np.float64) * 2.0 ** -53).reshape(shape)

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
        u = self.words32(shape).astype(np.uint64)
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
