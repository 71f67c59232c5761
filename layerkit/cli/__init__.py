"""The ``layerkit`` command line.

Commands live in one module per topic (inspect, check, train) and attach
themselves to :data:`app`. :func:`main` is the console-script entry point: it
turns every :class:`~layerkit.errors.LayerkitError` into its one-line-per-problem
message and exit code (2 bad input, 1 failed check), never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any, cast

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from layerkit import __version__
from layerkit.errors import LayerkitError


class _FlagOption(TyperOption):
    """A boolean flag: its help row shows ``--json``, not ``--json <bool>``."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


class _Argument(TyperArgument):
    """A positional argument whose usage reads as click's: ``MODEL``, ``[DIR]``, ``INPUT...``.

    typer braces required arguments (``{MODEL}``) and brackets a metavar that already has
    brackets (``[[DIR]]``)."""

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.metavar or (self.name or "").upper() + ("..." if self.nargs != 1 else "")
        return [name if self.required or name.startswith("[") else f"[{name}]"]


def tidy_help(param: Any) -> None:
    """Make ``param`` render as a flag or a plain argument in help and usage lines.

    typer builds its parameter objects itself, with no hook for their class, so the class of
    each is swapped here, on the commands of this app only (layout-compatible subclasses)."""
    if type(param) is TyperOption and (param.is_flag or param.count):
        param.__class__ = _FlagOption
    elif type(param) is TyperArgument:
        param.__class__ = _Argument


class _TidyParams:
    """Every command and group of the app: flags as flags, usage lines without braces."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = cast(Any, super()).get_params(ctx)
        for param in params:
            tidy_help(param)
        return cast(list[Any], params)


class LayerkitCommand(_TidyParams, TyperCommand):
    """A command of the ``layerkit`` app (see :class:`_TidyParams`)."""


class LayerkitGroup(_TidyParams, TyperGroup):
    """A group of commands of the ``layerkit`` app (see :class:`_TidyParams`)."""


app = typer.Typer(
    name="layerkit",
    cls=LayerkitGroup,
    help="Neural-network layers as plugins, models as JSON files, gradients you can check.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"layerkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Neural-network layers as plugins, models as JSON files, gradients you can check."""


def fail(error: LayerkitError) -> None:
    """Print a user error on stderr and exit with its code."""
    text = str(error) or type(error).__name__
    for line in text.splitlines():
        typer.echo(f"error: {line}" if not line.startswith("  ") else line, err=True)
    raise typer.Exit(error.exit_code)


def main(argv: list[str] | None = None) -> int:
    from layerkit.parallel.mpi import launched_size

    if launched_size() > 1:
        return _main_rank(argv)
    return _run(argv)[0]


def _run(argv: list[str] | None, rank: int = 0, held: list[str] | None = None) -> tuple[int, bool]:
    """Run the command: (exit code, whether every MPI rank ends the same way, so no abort is needed).

    Rank 0 prints every error; another rank keeps (in ``held``) only what happened to it
    alone, prefixed with its rank: an error every rank raises at the same point is rank 0's
    to report."""
    kept: list[str] = [] if held is None else held

    def say(line: str, shared: bool = False) -> None:
        if rank == 0:
            print(line, file=sys.stderr)
        elif not shared:
            kept.append(f"[rank {rank}] {line}")

    try:
        rc = app(args=argv, prog_name="layerkit", standalone_mode=False)
    except LayerkitError as error:
        shared = getattr(error, "everywhere", False)
        text = str(error) or type(error).__name__
        for line in text.splitlines():
            say(f"error: {line}", shared)
        return error.exit_code, shared
    except typer.Exit as done:
        return done.exit_code, done.exit_code == 0 or getattr(done, "everywhere", False)
    except MemoryError:
        # the guards refuse what they can foresee; this is the net under them
        say("error: out of memory; lower --batch-size or the data limits (--train-limit), or free memory")
        return 2, False
    except (KeyboardInterrupt, typer.Abort):
        say("interrupted")
        return 130, False
    except typer.TyperException as exc:
        # usage errors (typer vendors click: its exceptions derive from TyperException)
        show = getattr(exc, "show", None)
        if show is not None and rank == 0:
            show()
        else:
            say(f"error: {exc}")
        return 2, False
    except Exception as exc:
        # a bug in a plugin file the user is writing is their input, not a crash of layerkit
        from layerkit.plugins.files import locate_exception

        problem = locate_exception(exc)
        if problem is None:
            raise
        say(f"error: {problem}")
        return 2, False
    return (rc if isinstance(rc, int) else 0), True


#: seconds another rank waits before reporting a failure while the run starts, and ending the
#: job: when every rank fails alike (a bad flag, a missing file), rank 0's report and abort
#: come first. Once the ranks have agreed on the run, a failure is the rank's own: no wait.
RANK_GRACE_S = 2.0


def _main_rank(argv: list[str] | None) -> int:
    """One MPI rank: any failure that is not every rank's ends the whole job with MPI_Abort,
    since the other ranks would otherwise wait for this one for ever."""
    import os
    import time
    import traceback

    rank = int(os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or 0)
    held: list[str] = []
    try:
        code, shared = _run(argv, rank, held)
    except BaseException:  # a bug: its traceback, then the whole job ends
        text = traceback.format_exc()
        if rank:
            # the message first: it must survive even if the launcher cuts the output at the abort
            lines = text.splitlines()
            held += [f"[rank {rank}] failed: {lines[-1]}"] + [f"[rank {rank}] {line}" for line in lines]
        else:
            print(text, file=sys.stderr, end="")
        code, shared = 1, False
    if code == 0 or shared:
        return code
    from layerkit.parallel.mpi import world

    try:
        comm = world()
    except LayerkitError:  # no mpi4py: there is no job to end; each rank exits on its own
        return code
    if comm.size < 2:
        return code
    from layerkit.training.distributed import agreed

    if rank:
        if not agreed():
            time.sleep(RANK_GRACE_S)  # rank 0 ends the job first if it failed the same way
        for line in held:
            print(line, file=sys.stderr)
    cast(Any, comm).abort(code)  # an MPI world (size > 1) has abort; the group of one does not
    return code


from layerkit.cli import check, generate, info, inspect, train, use, zoo  # noqa: E402,F401  (register the commands)


PLUGIN_HELP = ("Load a layer plugin from a .py file for this run (repeatable; LAYERKIT_PLUGINS holds more, "
               "separated by the path separator).")


def _with_plugin_option(callback):
    """``callback`` with a ``--plugin FILE.py`` option that loads the files before it runs."""
    import functools
    import inspect as pyinspect
    from pathlib import Path
    from typing import List, Optional

    if "plugin" in pyinspect.signature(callback).parameters:
        return callback

    @functools.wraps(callback)
    def wrapper(*args, plugin=None, **kwargs):
        from layerkit.plugins.files import plugin_files, set_cli_plugin_files
        from layerkit.plugins.manager import get_registry
        from layerkit.testing.files import check_file_contract

        set_cli_plugin_files(plugin or [])
        try:
            files = plugin_files()
            if files:
                # a broken file is reported now, with its line, before the command does anything
                get_registry()
                for path in files:
                    check_file_contract(path)
            return callback(*args, **kwargs)
        finally:
            set_cli_plugin_files([])  # main() may run again in this process (tests, notebooks)

    option = pyinspect.Parameter(
        "plugin", pyinspect.Parameter.KEYWORD_ONLY, annotation=Optional[List[Path]],
        default=typer.Option(None, "--plugin", metavar="FILE.py", help=PLUGIN_HELP, show_default=False))
    signature = pyinspect.signature(callback)
    cast(Any, wrapper).__signature__ = signature.replace(parameters=[*signature.parameters.values(), option])
    wrapper.__annotations__ = {**getattr(callback, "__annotations__", {}), "plugin": Optional[List[Path]]}
    return wrapper


def _add_plugin_option(typer_app: typer.Typer) -> None:
    """Every command, in every sub-app, and every group with options of its own (``models``)
    takes ``--plugin`` (the lab workflow, docs/plugins.md); all render their help alike."""
    for command in typer_app.registered_commands:
        command.callback = _with_plugin_option(command.callback)
        if command.cls is None or command.cls is TyperCommand:
            command.cls = LayerkitCommand
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        if sub is None:
            continue
        sub.info.cls = LayerkitGroup
        callback = sub.registered_callback
        if callback is not None and callback.callback is not None and callback.invoke_without_command:
            callback.callback = _with_plugin_option(callback.callback)
        _add_plugin_option(sub)


_add_plugin_option(app)
