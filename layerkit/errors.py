"""One exception hierarchy for everything a user can get wrong.

The CLI catches :class:`LayerkitError` and prints ``str(error)`` (one line per
problem) with ``error.exit_code``; anything else escaping is a bug in layerkit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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


class KernelError(LayerkitError):
    """LAYERKIT_KERNELS names an unknown kernel path, or asks for numba where it is not installed."""


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


def install_hint(extra: str) -> str:
    """The command that installs layerkit's optional ``extra`` the way this layerkit was installed:
    ``pip install -e '.[onnx]'`` in a source checkout (with its path when it is not the current
    folder), ``pip install 'layerkit[onnx]'`` otherwise."""
    import shlex

    root = source_checkout()
    if root is None:
        return f"pip install {shlex.quote(f'layerkit[{extra}]')}"
    try:
        here = root.resolve() == Path.cwd().resolve()
    except OSError:  # the current folder was removed
        here = False
    target = "." if here else str(root)
    return f"pip install -e {shlex.quote(f'{target}[{extra}]')}"


def source_checkout(package: Path | None = None) -> Path | None:
    """The source tree this layerkit runs from (an editable install, or the package on the path),
    or None for an installed wheel. ``package``: the package folder (default: this one)."""
    import json
    from importlib import metadata
    from urllib.parse import unquote, urlparse

    package = package or Path(__file__).resolve().parent
    if not {"site-packages", "dist-packages"} & set(package.parts):
        root = package.parent
        return root if (root / "pyproject.toml").is_file() else None
    try:  # an editable install whose package was copied or linked into site-packages
        info = json.loads(metadata.distribution("layerkit").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError, OSError):
        return None
    if not (info.get("dir_info") or {}).get("editable"):
        return None
    url = urlparse(info.get("url", ""))
    return Path(unquote(url.path)) if url.scheme == "file" else None
