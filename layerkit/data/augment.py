"""Training-time augmentation: a fresh random variant of each image every time it is drawn.

Only random shifts for now, the augmentation that matters for digits: a whole
number of pixels in [-shift, shift] along each spatial axis, drawn per image,
zero filled. One gather over the padded batch, no loop over samples. In training the
generator is a ``SampleRandom`` (``layerkit.nn.samplerandom``): an image's offsets depend on
its sample index and the epoch, not on which process holds it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def random_shift(x: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of the NCHW batch ``x`` with every image moved by its own random offset."""
    if shift <= 0 or x.ndim != 4 or len(x) == 0:
        return x
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2 * shift, w + 2 * shift), dtype=x.dtype)
    padded[:, :, shift:shift + h, shift:shift + w] = x
    # offset (dy, dx) takes the window starting at (shift - dy, shift - dx) of the padded image
    # batch first: a per-sample generator (SampleRandom) gives each image the offsets of its own stream
    starts = rng.integers(0, 2 * shift + 1, size=(n, 2))
    rows = starts[:, 0][:, None] + np.arange(h)  # (n, h)
    cols = starts[:, 1][:, None] + np.arange(w)  # (n, w)
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def augmenter(options: dict | None) -> Callable[[np.ndarray, np.random.Generator], np.ndarray] | None:
    """``f(batch, rng) -> batch`` for the model file's ``training.data.augment``, or None."""
    shift = int((options or {}).get("shift", 0))
    if shift <= 0:
        return None
    return lambda x, rng: random_shift(x, shift, rng)
