"""Token vocabularies: how text becomes integer ids and back.

A :class:`Vocabulary` is saved with a run inside ``preprocessing.json`` (its
``vocabulary`` entry), so ``layerkit generate`` and ``evaluate`` encode text
exactly as training did. Three units:

- ``char``: one id per distinct character of the training text, in sorted
  (code point) order;
- ``byte``: the 256 byte values of the UTF-8 encoding, id = byte value;
- ``token``: named tokens of a synthetic task (``<pad>``, ``<sep>``, symbols).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from layerkit.errors import DataError

UNITS = ("char", "byte", "token")


@dataclass(frozen=True)
class Vocabulary:
    """The tokens of a sequence dataset: ``unit`` and, for ``char`` and ``token``, one string per id;
    ``padding`` is the padding id (None where sequences are never padded)."""

    unit: str
    tokens: tuple[str, ...] = ()
    padding: int | None = None

    @classmethod
    def of_text(cls, text: str) -> "Vocabulary":
        """The character vocabulary of ``text``: its distinct characters in code point order."""
        return cls("char", tuple(sorted(set(text))))

    @property
    def size(self) -> int:
        """How many ids there are (the model's number of token classes)."""
        return 256 if self.unit == "byte" else len(self.tokens)

    def unknown(self, text: str) -> list[str]:
        """The characters of ``text`` this vocabulary has no id for, in order of first appearance."""
        if self.unit == "byte":
            return []
        known = set(self.tokens)
        return list(dict.fromkeys(c for c in text if c not in known))

    def encode(self, text: str, source: str = "text") -> np.ndarray:
        """``text`` as int64 ids; a :class:`DataError` naming every character without an id."""
        if self.unit == "byte":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        if self.unit != "char":
            raise DataError(f"{source}: a vocabulary of {self.unit} units does not encode text")
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20]) + (f" and {len(missing) - 20} more"
                                                                 if len(missing) > 20 else "")
            raise DataError(f"{source}: {len(missing)} character{'s' if len(missing) > 1 else ''} not in the "
                            f"vocabulary of {self.size} the model was trained on: {shown}")
        # a lookup through the sorted code points: no Python loop over the text
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        table = np.array([ord(c) for c in self.tokens], dtype=np.int64)
        return np.searchsorted(table, points).astype(np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of ``ids`` (bytes that are not valid UTF-8 become U+FFFD)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise DataError(f"ids {int(ids.min())}..{int(ids.max())} are outside the vocabulary of {self.size}")
        if self.unit == "byte":
            return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        return "".join(self.tokens[i] for i in ids.tolist())

    # -- saving ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "tokens": list(self.tokens), "padding": self.padding}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "Vocabulary":
        """The inverse of :meth:`to_dict`; a :class:`DataError` naming ``source`` for anything malformed."""
        def bad(why: str) -> DataError:
            return DataError(f"{source}: vocabulary: {why}; the preprocessing record is damaged (re-run fit, "
                             f"or restore the file from the run)")

        if not isinstance(data, dict) or set(data) != {"unit", "tokens", "padding"}:
            raise bad("expected an object with unit, tokens and padding")
        unit, tokens, padding = data["unit"], data["tokens"], data["padding"]
        if unit not in UNITS:
            raise bad(f"unit {unit!r} is not one of {', '.join(UNITS)}")
        if not (isinstance(tokens, list) and all(isinstance(t, str) and t for t in tokens)):
            raise bad("tokens: expected a list of non-empty strings")
        if unit == "byte" and tokens:
            raise bad("tokens: a byte vocabulary lists none (its ids are the byte values)")
        if unit == "char" and (any(len(t) != 1 for t in tokens) or tokens != sorted(set(tokens))):
            raise bad("tokens: expected distinct single characters in code point order")
        if unit != "byte" and not tokens:
            raise bad("tokens: empty")
        vocab = cls(unit, tuple(tokens))
        if padding is not None and not (isinstance(padding, int) and not isinstance(padding, bool)
                                        and 0 <= padding < vocab.size):
            raise bad(f"padding: expected null or an id below {vocab.size}")
        return cls(unit, tuple(tokens), padding)


__all__ = ["Vocabulary", "UNITS"]
