"""Reading inputs to predict on: images (PNG, JPEG...), .npy/.npz arrays and CSV rows.

Every reader returns raw values (``uint8`` for images and integer CSV) as a batch
that :meth:`Preprocessing.apply` turns into what the model saw in training, so
``layerkit predict`` on a PNG of a test image answers as ``evaluate`` did.

Image rules, for a model whose input is ``(C, H, W)``:

- **Channels**: a 1-channel model gets the image's luminance (Pillow's ``L``
  mode, ITU-R 601-2: ``0.299 R + 0.587 G + 0.114 B``); a 3-channel model gets
  RGB. Transparent pixels are laid over white first (a digit drawn on a
  transparent canvas reads as dark ink on white paper). Other channel counts
  cannot come from an image file.
- **Size**: an image must be ``W x H`` pixels; with ``resize=True`` it is
  stretched to that size (Lanczos filter, aspect ratio not kept).
- **Inversion**: MNIST digits are white on black. A photo or scan of dark
  ink on white paper needs ``invert=True`` (each pixel becomes 255 - value).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from layerkit.data.preprocess import check_numeric
from layerkit.errors import DataError, install_hint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
ARRAY_KEYS = ("x_test", "x", "images", "x_train")
#: refuse files over this before reading them (a CSV of Kaggle's 28,000 test images is 51 MB)
MAX_BYTES = 1 << 30


@dataclass
class Inputs:
    """One file's inputs: raw values, one row per sample, and a name per sample for reports."""

    source: str
    x: np.ndarray
    names: list[str]


def read_inputs(path: str | Path, input_shape: Sequence[int], *, invert: bool = False,
                resize: bool = False) -> Inputs:
    """Read one file by its suffix; a :class:`DataError` naming the file for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if path.stat().st_size > MAX_BYTES:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes, over the {MAX_BYTES:,}-byte limit for inputs")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        x = _batch(_read_npy(path), input_shape)
    elif suffix == ".npz":
        x = _batch(_read_npz(path), input_shape)
    elif suffix == ".csv":
        x = read_csv_rows(path, expected=math.prod(input_shape), input_shape=input_shape)
    elif suffix in IMAGE_SUFFIXES:
        x = read_image(path, input_shape, resize=resize)[None]
    else:
        raise DataError(f"{path}: unknown kind of input (use an image ({', '.join(IMAGE_SUFFIXES)}), "
                        f".npy, .npz or .csv)")
    x = check_numeric(x, str(path), "inputs")
    if invert:
        if x.dtype.kind in "iu":
            x = 255 - x.astype(np.int64)
            if x.size and x.min() < 0:
                raise DataError(f"{path}: --invert needs pixel values 0..255, got up to {x.max() + 255}")
            x = x.astype(np.uint8)
        else:
            x = 1.0 - x  # float images are taken as scaled to [0, 1]
    names = [path.name] if len(x) == 1 else [f"{path.name}[{i}]" for i in range(len(x))]
    return Inputs(str(path), x, names)


def _batch(x: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """A single sample (the input shape, or H x W for one channel) gains a batch axis."""
    shape = tuple(input_shape)
    if x.shape == shape or (len(shape) == 3 and shape[0] == 1 and x.shape == shape[1:]) or \
            (len(shape) == 3 and x.shape == (shape[1], shape[2], shape[0]) and shape[0] in (3, 4)):
        return x[None]
    if x.ndim == 0:
        raise DataError("a single number is not an input")
    return x


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # ValueError (pickled objects), OSError, malformed header
        raise DataError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from None


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.files)
            key = next((k for k in ARRAY_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(f"{path}: holds {', '.join(keys) or 'no arrays'}; name the inputs one of "
                                f"{', '.join(ARRAY_KEYS)} (or store only one array)")
            return data[key]
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None


def read_csv_rows(path: Path, *, expected: int | None = None, input_shape: Sequence[int] | None = None
                  ) -> np.ndarray:
    """Rows of numbers, one sample each; a header row is skipped and a ``label`` column dropped
    (Kaggle's digit-recognizer ``test.csv`` has ``pixel0..pixel783``, its ``train.csv`` a label first).
    A byte-order mark and CRLF line ends are fine. ``expected``: the number of values a row must
    have (the model's input size; ``input_shape`` names it in the message), counted in columns."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{path}: empty file")
    first = [c.strip() for c in lines[0].split(",")]
    header = not all(_is_number(c) for c in first)
    drop = first.index("label") if header and "label" in first else None
    body = lines[1:] if header else lines
    try:
        table = np.loadtxt(io.StringIO("\n".join(body)), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    if table.size == 0:
        raise DataError(f"{path}: no data rows")
    if header and table.shape[1] != len(first):
        raise DataError(f"{path}: the header has {len(first)} columns but the rows have {table.shape[1]}")
    label = drop is not None
    if expected is not None and table.shape[1] - label != expected:
        raise DataError(f"{path}: {table.shape[1]:,} columns, expected {expected + label:,} ("
                        f"{'a label column and ' if label else ''}{_values(expected, input_shape)})")
    if drop is not None:
        table = np.delete(table, drop, axis=1)
    if not np.isfinite(table).all():
        raise DataError(f"{path}: holds NaN or infinite values")
    if np.all(table == np.round(table)) and table.min() >= 0 and table.max() <= 255:
        return table.astype(np.uint8)  # pixels, as Kaggle stores them: scaled like the training images
    return table.astype(np.float32)


def _values(expected: int, input_shape: Sequence[int] | None) -> str:
    """What the columns of a row are for: ``784 pixels for the model's 1x28x28 input``."""
    shape = tuple(input_shape or ())
    if len(shape) == 3:
        return f"{expected:,} pixels for the model's {'x'.join(map(str, shape))} input"
    return f"{expected:,} {'features' if len(shape) == 1 else 'values'}"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_image(path: Path, input_shape: Sequence[int], *, resize: bool = False) -> np.ndarray:
    """One image file as ``uint8 (C, H, W)`` for a model with input ``(C, H, W)`` (rules: module docstring)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError(f"{path}: reading images needs Pillow: {install_hint('images')}") from None
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        flat = len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]
        if not flat:
            raise DataError(f"{path}: the model's input {shape} is not a 1- or 3-channel image; "
                            f"give the inputs as .npy, .npz or .csv")
        side = math.isqrt(shape[0])
        shape = (1, side, side)  # a flat model on square grey images (an MLP on MNIST)
    channels, height, width = shape
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba)
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                if not resize:
                    raise DataError(f"{path}: image is {image.size[0]}x{image.size[1]} pixels, the model takes "
                                    f"{width}x{height} (pass --resize to stretch it)")
                image = image.resize((width, height), Image.Resampling.LANCZOS)
            pixels = np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc})") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def border_brightness(x: np.ndarray) -> np.ndarray:
    """Per image of a raw ``(N, C, H, W)`` batch, the mean of its outermost pixels (a ring 1/14 of the
    smaller side wide, at least 1) on a 0..1 scale: integers count as 0..255, floats as 0..1. The
    border is where a digit's or a garment's background is, whatever the object in the middle."""
    height, width = x.shape[-2:]
    ring = max(1, min(height, width) // 14)
    mask = np.ones((height, width), dtype=bool)
    mask[ring:height - ring, ring:width - ring] = False
    values = x[..., mask].astype(np.float64)
    return values.reshape(len(x), -1).mean(axis=1) / (255.0 if x.dtype.kind in "iu" else 1.0)


def polarity_note(inputs: Inputs, background: str | None, invert: bool) -> str | None:
    """A ``note:`` line when the images of ``inputs`` (an image file, read) have the other background
    than the training images (``background``: "dark" or "light", see ``Dataset.background``):
    a black digit on white paper given to a model trained on MNIST's white on black."""
    if background not in ("dark", "light") or not inputs.source.lower().endswith(IMAGE_SUFFIXES) \
            or inputs.x.ndim != 4 or min(inputs.x.shape[-2:]) < 4:
        return None
    light = border_brightness(inputs.x) > 0.5
    if (light.mean() > 0.5) == (background == "light"):
        return None
    theirs = "light strokes on a dark background" if background == "dark" else "dark strokes on a light background"
    mine = "light" if background == "dark" else "dark"
    if invert:
        return (f"note: {inputs.source}: after --invert the background is {mine}, but the model was trained on "
                f"{theirs}; try without --invert")
    return (f"note: {inputs.source}: the background is {mine}, but the model was trained on {theirs}; pass "
            f"--invert if the image shows {'dark ink on light paper' if background == 'dark' else 'light on dark'}")


__all__ = ["Inputs", "read_inputs", "read_image", "read_csv_rows", "border_brightness", "polarity_note",
           "IMAGE_SUFFIXES"]
