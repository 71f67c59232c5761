"""The ``layerkit`` command line.

Commands live in one module per topic (inspect, check, train) and attach
themselves to :data:`app`. :func:`main` is the console-script entry point: it
turns every :class:`~layerkit.errors.LayerkitError` into its one-line-per-problem
message and exit code (2 bad input, 1 failed check), never a traceback.
"""

from __future__ import annotations

import sys

import typer

from layerkit import __version__
from layerkit.errors import LayerkitError

app = typer.Typer(
    name="layerkit",
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
    try:
        rc = app(args=argv, prog_name="layerkit", standalone_mode=False)
    except LayerkitError as error:
        text = str(error) or type(error).__name__
        for line in text.splitlines():
            print(f"error: {line}", file=sys.stderr)
        return error.exit_code
    except typer.Exit as done:
        return done.exit_code
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:
        # usage errors (typer vendors click: its exceptions derive from TyperException)
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0


from layerkit.cli import check, inspect, train, zoo  # noqa: E402,F401  (register the commands)
