"""The ``text`` dataset: any UTF-8 text as next-token windows, and the offline default corpus.

``--data-dir`` (or ``training.data.data_dir``) names a text file (gzipped or not)
or a folder, whose ``*.txt`` files (not its subfolders) are read in name order.
Without one, the default corpus is read: the Python standard library's own
top-level modules (:func:`default_corpus`), which every Python installation has,
so a character model trains offline with no flags. The file list and the Python
version go into the run's ``data.json``; another Python version reads other
files, and resume and evaluate refuse them.
"""

from __future__ import annotations

import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from layerkit import hookimpl
from layerkit.data import Dataset, RawData
from layerkit.data.idx import read_bytes
from layerkit.data.record import file_fingerprint
from layerkit.data.sequences import SequenceDataset, window_length, windows
from layerkit.data.vocabulary import Vocabulary
from layerkit.errors import DataError

#: the default corpus stops before this many bytes
CORPUS_BYTES = 2_000_000
TEXT_SUFFIX = ".txt"


def default_corpus(limit: int = CORPUS_BYTES) -> tuple[Path, list[Path]]:
    """The standard library folder and the modules of the default corpus: its top-level ``*.py``
    files whose names do not start with an underscore, in name order, while their total size stays
    within ``limit`` bytes. The same Python installation always gives the same list."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    try:
        candidates = sorted(p for p in stdlib.glob("*.py") if not p.name.startswith("_") and p.is_file())
    except OSError as exc:
        raise DataError(f"{stdlib}: cannot list the Python standard library ({exc.strerror or exc})") from None
    chosen, total = [], 0
    for path in candidates:
        size = path.stat().st_size
        if total + size > limit:
            break
        chosen.append(path)
        total += size
    if not chosen:
        raise DataError(f"{stdlib}: no Python sources found for the default text corpus (this Python ships its "
                        f"standard library compiled only); pass --data-dir FILE with a text file")
    return stdlib, chosen


@dataclass
class TextRaw(RawData):
    """What the ``text`` loader read: the bytes of every file, in order."""

    data: bytes = b""


def _empty() -> np.ndarray:
    return np.empty((0,), dtype=np.int64)


class TextDataset(SequenceDataset):
    """Any UTF-8 text (a file or a folder of ``*.txt`` files) as character or byte windows;
    the Python standard library's sources when no file is given."""

    name = "text"
    description = ("Any UTF-8 text as next-character windows of the model's input length: --data-dir names a "
                   "file or a folder of .txt files; without one, the Python standard library's own sources.")
    files = ("a text file, or a folder of *.txt files",)

    def load(self, data_dir: str | Path | None = None, *, embedded: bool = False) -> RawData:
        # no search of $LAYERKIT_DATA_DIR or the cache: any .txt there would silently become the corpus
        if data_dir is None or embedded:
            raw = self.fallback()
            if raw is None:  # the standard library has no readable module: nothing to train on
                raise DataError("no text given and no default corpus found: pass --data-dir FILE")
            return raw
        return super().load(data_dir)

    def find(self, location: Path) -> Path | None:
        if location.is_file():
            return location
        if location.is_dir() and self._texts(location):
            return location
        return None

    @staticmethod
    def _texts(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.name.endswith(TEXT_SUFFIX) and p.is_file())

    def read(self, found: Path) -> RawData:
        paths = [found] if found.is_file() else self._texts(found)
        if not paths:
            raise DataError(f"{found}: no *{TEXT_SUFFIX} files here")
        data = b"".join(read_bytes(p) for p in paths)
        return TextRaw(_empty(), _empty(), _empty(), _empty(), source=str(found), files=[str(p) for p in paths],
                       data=data)

    def fallback(self) -> RawData | None:
        stdlib, paths = default_corpus()
        data = b"".join(read_bytes(p) for p in paths)
        version = platform.python_version()
        source = f"the Python {version} standard library ({len(paths)} modules in {stdlib})"
        notice = (f"no text given: using the default corpus, {len(paths)} modules of the Python {version} standard "
                  f"library ({len(data):,} bytes); pass --data-dir FILE to train on your own text")
        return TextRaw(_empty(), _empty(), _empty(), _empty(), source=source, notice=notice,
                       fingerprint=[file_fingerprint(p) for p in paths], data=data)

    def make(self, raw: RawData, options: dict, length: int | None, vocabulary: Vocabulary | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Vocabulary]:
        data = raw.data if isinstance(raw, TextRaw) else b""
        unit = options.get("unit", "char")
        if not data:
            raise DataError(f"{raw.source}: no text (the file is empty)")
        if vocabulary is not None and vocabulary.unit != unit:
            raise DataError(f"training.data.unit: {unit!r}, but the model was trained on {vocabulary.unit} tokens")
        if unit == "byte":
            vocab = vocabulary or Vocabulary("byte")
            ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{raw.source}: not UTF-8 text ({exc.reason} at byte {exc.start:,}); convert it, "
                                f"or set training.data.unit to \"byte\"") from None
            vocab = vocabulary or Vocabulary.of_text(text)
            ids = vocab.encode(text, raw.source)
        length = window_length(self.name, length, options)
        stride = int(options.get("stride") or length)
        fraction = float(options.get("test_fraction", 0.1))
        split = len(ids) - int(round(len(ids) * fraction))
        x_train, y_train = windows(ids[:split], length, stride, raw.source, "training")
        x_test, y_test = windows(ids[split:], length, stride, raw.source, "test")
        return x_train, y_train, x_test, y_test, vocab


@hookimpl
def layerkit_register_datasets(register: Callable[[type[Dataset]], None]) -> None:
    """The ``text`` dataset."""
    register(TextDataset)


__all__ = ["TextDataset", "default_corpus", "CORPUS_BYTES"]
