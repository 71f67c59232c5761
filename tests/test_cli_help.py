"""Every command's --help: each parameter described, flags shown as flags, plain usage lines.

The checks walk the live command tree, so a command added later is held to them too."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from layerkit.cli import LayerkitCommand, LayerkitGroup, app, main

WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}  # no wrapping inside a '<bool>' cell


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(argv path, click command) of ``command`` and of every command under it."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from commands(sub, (*path, name))


def help_problems(typer_app: typer.Typer) -> list[str]:
    """What is wrong with the help of every command of ``typer_app``, one line per problem."""
    root = typer.main.get_command(typer_app)
    problems = []
    for path, command in commands(root):
        where = " ".join(("layerkit", *path))
        ctx = typer.Context(command, info_name=where)
        for param in command.get_params(ctx):
            label = param.opts[0] if param.param_type_name == "option" else param.display_name_raw
            if not param.hidden and not (getattr(param, "help", None) or "").strip():
                problems.append(f"{where} {label}: no help text")
            if getattr(param, "is_flag", False) and param.display_type_rich(ctx):
                problems.append(f"{where} {label}: a flag shown with a metavar ({param.display_type_rich(ctx)})")
        usage = command.get_usage(ctx)
        if "{" in usage or "[[" in usage:
            problems.append(f"{where}: usage line {usage!r}")
        shown = CliRunner().invoke(typer_app, [*path, "--help"], env=WIDE)
        if shown.exit_code != 0:
            problems.append(f"{where} --help: exit {shown.exit_code}")
        elif "<bool>" in shown.output:
            problems.append(f"{where} --help shows '<bool>'")
    return problems


def _bad_app(tidy: bool) -> typer.Typer:
    bad = typer.Typer(cls=LayerkitGroup) if tidy else typer.Typer()

    @bad.command(cls=LayerkitCommand if tidy else None)
    def go(model: Path = typer.Argument(..., metavar="MODEL"),
           dest: Path = typer.Argument(Path("."), metavar="[DIR]", help="Where."),
           quiet: bool = typer.Option(False, "--quiet")) -> None:
        """A command written carelessly."""

    @bad.command(cls=LayerkitCommand if tidy else None)
    def other() -> None:
        """A second command, so 'go' is a subcommand."""

    return bad


def test_every_command_documents_every_parameter_and_shows_flags_as_flags() -> None:
    assert help_problems(app) == []


def test_the_check_finds_a_careless_command() -> None:
    # plain typer: no help on MODEL and --quiet, '--quiet <bool>', 'go [OPTIONS] {MODEL} [[DIR]]'
    found = help_problems(_bad_app(tidy=False))
    assert any("go MODEL: no help text" in p for p in found)
    assert any("go --quiet: no help text" in p for p in found)
    assert any("--quiet: a flag shown with a metavar" in p for p in found)
    assert any("usage line" in p and "{MODEL}" in p and "[[DIR]]" in p for p in found)
    assert any("shows '<bool>'" in p for p in found)
    # layerkit's command class fixes the rendering; missing help stays the author's to write
    assert sorted(help_problems(_bad_app(tidy=True))) == [
        "layerkit go --quiet: no help text", "layerkit go MODEL: no help text"]


@pytest.mark.parametrize("argv, expected", [
    (["fit"], "layerkit fit [OPTIONS] [MODEL]"), (["summary"], "layerkit summary [OPTIONS] MODEL"),
    (["models", "copy"], "layerkit models copy [OPTIONS] NAME [DIR]"),
    (["predict"], "layerkit predict [OPTIONS] RUN_DIR INPUT...")])
def test_usage_line(argv: list[str], expected: str) -> None:
    command: Any = typer.main.get_command(app)
    for name in argv:
        command = command.commands[name]
    assert command.get_usage(typer.Context(command, info_name=" ".join(["layerkit", *argv]))) == \
        f"Usage: {expected}"


@pytest.mark.parametrize("argv", [["fit"], ["summary"], ["models", "copy"], ["predict"], ["data", "download"]])
def test_usage_lines_read_plainly(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--help"]) == 0
    usage = next(line for line in capsys.readouterr().out.splitlines() if "Usage:" in line)
    assert "{" not in usage and "[[" not in usage


def test_export_help_names_the_onnx_extra(capsys: pytest.CaptureFixture[str]) -> None:
    # rich markup used to take '[onnx]' for a style tag and drop it
    assert main(["export", "--help"]) == 0
    assert "[onnx]" in capsys.readouterr().out


def test_every_command_takes_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    root = typer.main.get_command(app)
    runnable = [(path, command) for path, command in commands(root)
                if path and (not hasattr(command, "commands") or command.invoke_without_command)]
    assert {("models",), ("models", "list"), ("models", "copy"), ("fit",), ("data", "list")} <= \
        {path for path, _ in runnable}
    for path, command in runnable:
        ctx = typer.Context(command, info_name=path[-1])
        assert any("--plugin" in param.opts for param in command.get_params(ctx)), path


@pytest.mark.parametrize("argv", [["models"], ["models", "list"], ["data", "list"], ["layers"]])
def test_plugin_is_loaded_before_the_command_runs(argv: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--plugin", str(tmp_path / "missing.py")]) == 2
    assert "missing.py: no such plugin file" in capsys.readouterr().err


def test_models_list_is_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert main(["models", "list"]) == 0
    assert capsys.readouterr().out == listed and "lenet5" in listed
