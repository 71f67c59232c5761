"""Plugins from single ``.py`` files: the lab workflow.

A student's layer lives in one file; ``--plugin FILE.py`` (or ``LAYERKIT_PLUGINS``, paths separated
by ``os.pathsep``) loads it for one run, without a package or an entry point. A file that defines
``layerkit_register_*`` hooks (marked with ``@layerkit.hookimpl``) is registered as it is; a file
without hooks has every :class:`~layerkit.nn.layer.Layer` subclass it defines (not imports) and whose
name does not start with ``_`` registered for it.

Everything that can be wrong with such a file is reported as :class:`PluginFileError` (exit 2), one
line per problem naming the file, the line and the contract member, never as a traceback from inside
layerkit: the file is the user's input. Unlike installed plugins (recorded and left out, see
:mod:`layerkit.plugins.manager`), a file named for a run is wanted by that run, so it fails the run.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import traceback
import types
from pathlib import Path
from typing import Any, Callable, Iterable

from layerkit import hookimpl
from layerkit.errors import LayerkitError, Problem
from layerkit.plugins.layer_checks import SIGNATURES, load_time_findings

__all__ = ["SIGNATURES", "ENV", "HOOK_NAMES", "PluginFileError", "FileContext", "load_plugin_file", "plugin_object",
           "plugin_files", "set_cli_plugin_files", "defined_layer_classes", "layer_contract_problems",
           "locate_exception"]

ENV = "LAYERKIT_PLUGINS"
HOOK_NAMES = ("layerkit_register_layers", "layerkit_register_losses", "layerkit_register_optimizers",
              "layerkit_register_datasets")


class PluginFileError(LayerkitError):
    """A plugin file cannot be used: it does not parse, import, or honour the layer contract."""


# -- which files ------------------------------------------------------------------

_cli_files: tuple[str, ...] = ()


def set_cli_plugin_files(paths: Iterable[str | os.PathLike]) -> bool:
    """The files named with ``--plugin`` for this command; True when that changed the set."""
    global _cli_files
    new = tuple(str(p) for p in paths)
    changed = new != _cli_files
    _cli_files = new
    return changed


def plugin_files() -> tuple[str, ...]:
    """``LAYERKIT_PLUGINS`` then ``--plugin`` files, each once, in order."""
    env = tuple(p for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip())
    seen: dict[str, None] = {}
    for p in (*env, *_cli_files):
        seen.setdefault(p, None)
    return tuple(seen)


# -- locating problems in the user's file -------------------------------------------

def _line_of(obj: Any) -> int | None:
    code = getattr(obj, "__code__", None)
    if code is not None:
        return code.co_firstlineno
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return None


def _where(display: str, line: int | None) -> str:
    return f"{display}:{line}" if line else display


def _frame_line(exc: BaseException, filename: str) -> int | None:
    """The line of the innermost traceback frame that lies in ``filename``."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


def _exc_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class FileContext:
    """A loaded plugin file: how to name places in it in messages."""

    def __init__(self, display: str, filename: str) -> None:
        self.display, self.filename = display, filename

    def problem(self, message: str, line: int | None = None) -> Problem:
        return Problem(message, source=_where(self.display, line))

    def at(self, obj: Any, message: str) -> Problem:
        return self.problem(message, _line_of(obj))

    def raised(self, exc: BaseException, member: str, fallback: Any = None) -> Problem:
        """An exception escaping from the user's code, located at its line in the file."""
        line = _frame_line(exc, self.filename) or _line_of(fallback)
        return self.problem(f"{member} raised {_exc_text(exc)}", line)

    def call(self, member: str, fn: Callable, *args: Any, fallback: Any = None) -> Any:
        """Call the user's code; any exception becomes a PluginFileError at its line."""
        try:
            return fn(*args)
        except LayerkitError as exc:
            if isinstance(exc, PluginFileError):
                raise
            raise PluginFileError(problems=[self.problem(f"{member}: {exc}",
                                                         _frame_line(exc, self.filename) or _line_of(fallback))]
                                  ) from None
        except Exception as exc:
            raise PluginFileError(problems=[self.raised(exc, member, fallback)]) from None


def locate_exception(exc: BaseException) -> Problem | None:
    """An exception raised in a loaded plugin file's code, as one problem at its line; None when the
    traceback never passes through such a file (then it is not the file's fault)."""
    last = None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename in _loaded:
            last = (code, tb.tb_lineno)
        tb = tb.tb_next
    if last is None:
        return None
    code, line = last
    where = getattr(code, "co_qualname", code.co_name)
    return Problem(f"{where} raised {_exc_text(exc)}", source=_where(_loaded[code.co_filename], line))


# -- loading ------------------------------------------------------------------------

_cache: dict[tuple[str, int, int], tuple[types.ModuleType, FileContext]] = {}
_loaded: dict[str, str] = {}  # resolved file name -> the path as the user gave it


def _module_name(path: Path) -> str:
    stem = re.sub(r"\W", "_", path.stem) or "plugin"
    return f"layerkit_plugin_file_{stem}_{abs(hash(str(path))) % 10**8}"


def load_plugin_file(path: str | os.PathLike) -> tuple[types.ModuleType, FileContext]:
    """Execute a plugin file as a module (once per version of the file); PluginFileError if it cannot."""
    display = str(path)
    p = Path(path)
    if p.suffix != ".py":
        raise PluginFileError(problems=[Problem("a plugin file must be a Python file ending in .py",
                                                source=display)])
    try:
        resolved = p.resolve(strict=True)
        stat = resolved.stat()
        source = resolved.read_bytes()
    except FileNotFoundError:
        raise PluginFileError(problems=[Problem("no such plugin file", source=display)]) from None
    except OSError as exc:
        raise PluginFileError(problems=[Problem(f"cannot read the plugin file: {exc.strerror or exc}",
                                                source=display)]) from None
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    if key in _cache:
        return _cache[key]
    filename = str(resolved)
    ctx = FileContext(display, filename)
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise PluginFileError(problems=[ctx.problem(f"syntax error: {exc.msg}", exc.lineno)]) from None
    except ValueError as exc:  # null bytes
        raise PluginFileError(problems=[ctx.problem(f"cannot compile: {exc}")]) from None
    name = _module_name(resolved)
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module  # dataclasses, pickling and inspect look classes' modules up here
    directory = str(resolved.parent)
    added = directory not in sys.path
    if added:  # so that the file can import a helper module next to it
        sys.path.insert(0, directory)
    try:
        exec(code, module.__dict__)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        line = _frame_line(exc, filename)
        if isinstance(exc, ImportError):
            what = f"import failed: {exc}"
        elif isinstance(exc, SystemExit):
            what = f"the file calls exit({exc.code!r}) when imported"
        else:
            what = f"raised {_exc_text(exc)} when imported"
        raise PluginFileError(problems=[ctx.problem(what, line)]) from None
    finally:
        if added:
            try:
                sys.path.remove(directory)
            except ValueError:
                pass
    _cache[key] = (module, ctx)
    _loaded[filename] = display
    return module, ctx


# -- what a file provides -------------------------------------------------------------

def defined_layer_classes(module: types.ModuleType) -> list[type]:
    """Layer subclasses defined in the module itself (not imported), public names, in file order."""
    from layerkit.nn.layer import Layer

    found = [obj for name, obj in vars(module).items()
             if isinstance(obj, type) and issubclass(obj, Layer) and obj is not Layer
             and obj.__module__ == module.__name__ and not name.startswith("_")]
    return sorted(found, key=lambda c: _line_of(c) or 0)


def layer_contract_problems(cls: type, ctx: FileContext) -> list[Problem]:
    """What a layer class defined in a plugin file gets wrong, statically, with the lines: the findings
    of the check engine's load-time static checks (:mod:`layerkit.plugins.layer_checks`)."""
    return [ctx.at(obj, message) for obj, message in load_time_findings(cls)]


class _AutoRegister:
    """The plugin object for a file without hooks: registers the layers it defines."""

    def __init__(self, name: str, classes: list[type]) -> None:
        self.__name__ = name
        self._classes = classes

    @hookimpl
    def layerkit_register_layers(self, register):
        for cls in self._classes:
            register(cls)


def plugin_object(path: str | os.PathLike) -> tuple[object, FileContext, list[type]]:
    """Load a plugin file; return the object to register with pluggy, its context and its layer classes.

    Raises PluginFileError for every problem in the file at once.
    """
    module, ctx = load_plugin_file(path)
    classes = defined_layer_classes(module)
    problems = [p for cls in classes for p in layer_contract_problems(cls, ctx)]
    hooks = [h for h in HOOK_NAMES if callable(getattr(module, h, None))]
    marker = f"{hookimpl.project_name}_impl"
    for hook in hooks:
        if not hasattr(getattr(module, hook), marker):
            problems.append(ctx.at(getattr(module, hook),
                                   f"{hook} is not marked as a hook: put @layerkit.hookimpl above it"))
    for name in dir(module):
        if name.startswith("layerkit_") and name not in HOOK_NAMES and callable(getattr(module, name)):
            problems.append(ctx.at(getattr(module, name), f"{name} is not a layerkit hook "
                                                          f"(known hooks: {', '.join(HOOK_NAMES)})"))
    if problems:
        raise PluginFileError(problems=problems)
    if hooks:
        return module, ctx, classes
    if not classes:
        raise PluginFileError(problems=[ctx.problem(
            "defines no layer: subclass layerkit.nn.layer.Layer, or register classes with "
            "@layerkit.hookimpl def layerkit_register_layers(register)")])
    return _AutoRegister(module.__name__, classes), ctx, classes
