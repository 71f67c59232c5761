"""One exception hierarchy for everything a user can get wrong.

The CLI catches :class:`LayerkitError` and prints ``str(error)`` (one line per
problem) with ``error.exit_code``; anything else escaping is a bug in layerkit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence


def format_path(path: Sequence[str | int]) -> str:
    """Render a JSON path the way users read it: ``layers[3].kernel_size``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one place in one file."""

    message: str
    path: tuple[str | int, ...] = ()
    source: str | None = None  # file name as the user typed it

    def __str__(self) -> str:
        where = [w for w in (self.source, format_path(self.path)) if w]
        return ": ".join([*where, self.message])


class LayerkitError(Exception):
    """Base of every error caused by user input, plugins, data or files."""

    exit_code = 2

    def __init__(self, message: str | None = None, problems: Iterable[Problem] = ()):
        self.problems = list(problems)
        if message is None:
            message = "\n".join(str(p) for p in self.problems)
        super().__init__(message)


class ModelFileError(LayerkitError):
    """The model file is not valid JSON or breaks the schema; carries every problem at once."""


class ShapeError(LayerkitError):
    """A layer cannot accept the shape it is given."""


class GraphError(LayerkitError):
    """The layer graph is broken: unknown input names, cycles, unused branches."""


class SizeLimitError(LayerkitError):
    """The model would need more parameters or activation memory than allowed."""


class PluginError(LayerkitError):
    """A plugin is broken or two plugins clash."""


class RegistryError(LayerkitError):
    """An unknown layer/loss/optimizer/dataset name, or a duplicate registration."""


class DataError(LayerkitError):
    """A dataset file is missing, corrupt, or does not fit the model."""


class CheckpointError(LayerkitError):
    """A weights file or run directory cannot be used."""


class TrainingError(LayerkitError):
    """Training had to stop, e.g. the loss became NaN or infinite."""

    exit_code = 1


class CheckFailed(LayerkitError):
    """A check (gradient check, evaluation threshold) ran and failed."""

    exit_code = 1


class ContractError(LayerkitError, AssertionError):
    """A layer breaks a claim of the layer contract: one named check of :mod:`layerkit.testing` failed.

    The one error the check engine raises for a failed claim. It names the ``layer`` (its ``type``),
    the ``example`` it ran on (config and input shape, empty for a check of the class alone), the
    ``check`` (a stable name such as ``backward_inplace_equals_backward``), the contract ``member``
    at fault (the method or declaration, e.g. ``backward_inplace``, ``fresh_dx``) and the
    ``numbers`` that show it (e.g. ``{"max_difference": 0.5}``). ``detail`` is the explanation
    alone; ``str(error)`` is one line with all of them (more lines follow for a gradient check).

    It is also an :class:`AssertionError`, so that pytest reports it as a failed test and code
    written for the first release (``pytest.raises(AssertionError)``) keeps working; it is
    raised explicitly, never by an ``assert``, so every check holds under ``python -O``.
    Exit status 1: a check ran and failed.
    """

    exit_code = 1

    def __init__(self, detail: str, *, check: str = "", layer: str = "", example: str = "", member: str = "",
                 numbers: Mapping[str, Any] | None = None, results: Sequence[Any] = ()) -> None:
        self.detail, self.check, self.layer, self.example, self.member = detail, check, layer, example, member
        self.numbers = dict(numbers or {})
        #: the gradient-check rows, for ``gradients_match_finite_differences``
        self.results = list(results)
        where = f"layer {layer!r}" if layer else "layer"
        if example:
            where += f" ({example})"
        head = f"{where}: check {check} failed" if check else where
        if member:
            head += f" [{member}]"
        super().__init__(f"{head}: {detail}")


def everywhere(error: BaseException) -> BaseException:
    """Mark ``error`` as raised by every MPI rank at the same point (from values the ranks agreed
    on): rank 0 reports it and the others end quietly with the same exit code, no MPI abort."""
    error.everywhere = True  # type: ignore[attr-defined]
    return error
