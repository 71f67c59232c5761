"""Synthetic sequence tasks: ``copy``, ``reverse``, ``sort`` and ``addition``, generated, never read.

Each sample is one sequence ``question <sep> answer`` written as next-token
pairs (``x = s[:-1]``, ``y = s[1:]``) and right-padded with ``<pad>`` (id 0);
the targets are :data:`~layerkit.data.sequences.IGNORE_INDEX` everywhere but at
the answer, so the loss scores the answer only. The same options always give
the same sequences (``task_seed``, not ``training.seed``), and no training
sequence equals a test sequence. docs/datasets.md shows the format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from layerkit import hookimpl
from layerkit.data import Dataset, RawData
from layerkit.data.record import array_fingerprint
from layerkit.data.sequences import IGNORE_INDEX, SequenceDataset
from layerkit.data.vocabulary import Vocabulary
from layerkit.errors import DataError

PAD, SEP = 0, 1
TRAIN_SAMPLES, TEST_SAMPLES = 10_000, 1_000
#: sums of more digits would overflow int64
MAX_DIGITS = 17


def _empty() -> np.ndarray:
    return np.empty((0,), dtype=np.int64)


class SyntheticTask(SequenceDataset):
    """A generated task (see the module docstring); subclasses implement :meth:`generate`."""

    files = ()

    def load(self, data_dir: str | Path | None = None, *, embedded: bool = False) -> RawData:
        if data_dir is not None and not embedded:
            raise DataError(f"{data_dir}: the {self.name} task is generated and reads no files; leave out the "
                            f"data directory")
        return RawData(_empty(), _empty(), _empty(), _empty(), source=f"the generated {self.name} task")

    def find(self, location: Path) -> Path | None:
        return None

    def vocabulary(self, options: dict) -> Vocabulary:
        raise NotImplementedError

    def generate(self, rng: np.random.Generator, n: int, options: dict, length: int | None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` sequences ``s`` of one length (int64, right-padded with PAD) and the mask of their answer
        tokens (the positions whose token is to be predicted)."""
        raise NotImplementedError

    def make(self, raw: RawData, options: dict, length: int | None, vocabulary: Vocabulary | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Vocabulary]:
        vocab = self.vocabulary(options)
        if vocabulary is not None and vocabulary != vocab:
            raise DataError(f"the model was trained on a vocabulary of {vocabulary.size} tokens, but the {self.name} "
                            f"task with these options has {vocab.size}; use the options the run was trained with")
        seed = int(options.get("task_seed", 0))
        x_test, y_test = self._pairs(*self.generate(np.random.default_rng([seed, 1]),
                                                    int(options.get("test_samples", TEST_SAMPLES)), options, length))
        x_train, y_train = self._pairs(*self.generate(np.random.default_rng([seed, 0]),
                                                      int(options.get("train_samples", TRAIN_SAMPLES)), options,
                                                      length))
        keep = ~np.isin(_rows(x_train), _rows(x_test))  # a fixed split: no test question is trained on
        x_train, y_train = x_train[keep], y_train[keep]
        # the sequences themselves are the record's "file": a change in how they are made is seen
        raw.fingerprint = [{"path": f"{self.name}-task", "size": int(x_train.nbytes + x_test.nbytes),
                            "sha256": array_fingerprint(x_train, y_train, x_test, y_test)}]
        return x_train, y_train, x_test, y_test, vocab

    @staticmethod
    def _pairs(seqs: np.ndarray, answer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(seqs[:, :-1])
        y = np.where(answer[:, 1:], seqs[:, 1:], IGNORE_INDEX).astype(np.int64)
        return x, y


def _rows(a: np.ndarray) -> np.ndarray:
    """Each row of a 2-d array as one comparable value."""
    a = np.ascontiguousarray(a)
    return a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()


class _SymbolTask(SyntheticTask):
    """copy, reverse and sort: ``a_1 .. a_n <sep> f(a)_1 .. f(a)_n``, ``n`` from ``min_length`` to
    ``length``, symbols ids 2 .. vocab_size - 1."""

    def vocabulary(self, options: dict) -> Vocabulary:
        size = int(options.get("vocab_size", 12))
        if size < 3:
            raise DataError(f"training.data.vocab_size: {size} leaves no symbols (ids 0 and 1 are <pad> and "
                            f"<sep>); give 3 or more")
        return Vocabulary("token", ("<pad>", "<sep>", *(str(i) for i in range(size - 2))), padding=PAD)

    def answer(self, a: np.ndarray, n: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def generate(self, rng: np.random.Generator, count: int, options: dict, length: int | None
                 ) -> tuple[np.ndarray, np.ndarray]:
        size = self.vocabulary(options).size
        longest = options.get("length")
        if longest is None:
            if length is not None and length % 2:
                raise DataError(f"the {self.name} task makes sequences of 2 x length tokens, so the model's input "
                                f"[{length}] must be even (or set training.data.length)")
            longest = 8 if length is None else length // 2
        if length is not None and 2 * longest != length:
            raise DataError(f"training.data.length: {longest} makes {self.name} sequences of {2 * longest} tokens, "
                            f"but the model's input is [{length}]; set the input shape to [{2 * longest}]")
        shortest = int(options.get("min_length", longest))
        if not 1 <= shortest <= longest:
            raise DataError(f"training.data.min_length: {shortest} must be from 1 to length ({longest})")
        n = rng.integers(shortest, longest + 1, size=count)[:, None]
        a = rng.integers(2, size, size=(count, longest))
        cols = np.arange(2 * longest + 1)[None, :]
        question = cols < n
        answer = (cols > n) & (cols <= 2 * n)
        a = np.where(question[:, :longest], a, PAD)
        b = self.answer(a, n)
        seqs = np.where(question, np.take_along_axis(a, np.minimum(cols, longest - 1), 1), PAD)
        seqs = np.where(cols == n, SEP, seqs)
        seqs = np.where(answer, np.take_along_axis(b, np.clip(cols - n - 1, 0, longest - 1), 1), seqs)
        return seqs.astype(np.int64), answer


class CopyTask(_SymbolTask):
    """Repeat the sequence after the separator."""

    name = "copy"
    description = "Synthetic: repeat a random sequence after <sep>. Options length, min_length, vocab_size."

    def answer(self, a: np.ndarray, n: np.ndarray) -> np.ndarray:
        return a


class ReverseTask(_SymbolTask):
    """Write the sequence backwards after the separator."""

    name = "reverse"
    description = "Synthetic: write a random sequence backwards after <sep>. Options length, min_length, vocab_size."

    def answer(self, a: np.ndarray, n: np.ndarray) -> np.ndarray:
        cols = np.arange(a.shape[1])[None, :]
        return np.where(cols < n, np.take_along_axis(a, np.clip(n - 1 - cols, 0, None), 1), PAD)


class SortTask(_SymbolTask):
    """Write the sequence's symbols in ascending order after the separator."""

    name = "sort"
    description = "Synthetic: sort a random sequence after <sep>. Options length, min_length, vocab_size."

    def answer(self, a: np.ndarray, n: np.ndarray) -> np.ndarray:
        # padding (0) sorts first; rolled to the end, it stays out of the answer
        ranked = np.sort(np.where(a == PAD, np.iinfo(np.int64).max, a), axis=1)
        return np.where(ranked == np.iinfo(np.int64).max, PAD, ranked)


class AdditionTask(SyntheticTask):
    """``a + b = c`` with ``digits``-digit numbers, written most significant digit first."""

    name = "addition"
    description = ("Synthetic: a+b=c with numbers of `digits` digits (zero-padded), the sum in digits+1 digits. "
                   "Option digits.")

    def vocabulary(self, options: dict) -> Vocabulary:
        if options.get("vocab_size") is not None and options["vocab_size"] != 13:
            raise DataError(f"training.data.vocab_size: {options['vocab_size']}, but the addition task's "
                            f"vocabulary is fixed (13 tokens: <pad>, =, the digits 0-9 and +); leave it out")
        return Vocabulary("token", ("<pad>", "=", *(str(d) for d in range(10)), "+"), padding=PAD)

    def generate(self, rng: np.random.Generator, count: int, options: dict, length: int | None
                 ) -> tuple[np.ndarray, np.ndarray]:
        digits = options.get("digits")
        if digits is None:
            if length is not None and (length - 2) % 3:
                raise DataError(f"the addition task makes sequences of 3 x digits + 2 tokens, which the model's "
                                f"input [{length}] is not (or set training.data.digits)")
            digits = 3 if length is None else (length - 2) // 3
        if not 1 <= digits <= MAX_DIGITS:
            raise DataError(f"training.data.digits: {digits} must be from 1 to {MAX_DIGITS}")
        if length is not None and 3 * digits + 2 != length:
            raise DataError(f"training.data.digits: {digits} makes addition sequences of {3 * digits + 2} tokens, "
                            f"but the model's input is [{length}]; set the input shape to [{3 * digits + 2}]")
        top = 10 ** digits
        a, b = rng.integers(0, top, size=count), rng.integers(0, top, size=count)

        def spelled(v: np.ndarray, width: int) -> np.ndarray:
            powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
            return (v[:, None] // powers[None, :]) % 10 + 2  # digit d is id d + 2

        plus, equals = np.full((count, 1), 12), np.full((count, 1), SEP)
        seqs = np.concatenate([spelled(a, digits), plus, spelled(b, digits), equals, spelled(a + b, digits + 1)],
                              axis=1)
        answer = np.zeros(seqs.shape, dtype=bool)
        answer[:, 2 * digits + 2:] = True
        return seqs.astype(np.int64), answer


TASKS = (CopyTask, ReverseTask, SortTask, AdditionTask)


@hookimpl
def layerkit_register_datasets(register: Callable[[type[Dataset]], None]) -> None:
    """The synthetic sequence tasks."""
    for cls in TASKS:
        register(cls)


__all__ = ["CopyTask", "ReverseTask", "SortTask", "AdditionTask", "SyntheticTask", "TASKS", "PAD", "SEP"]
