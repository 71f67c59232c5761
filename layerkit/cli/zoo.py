"""layerkit CLI commands for the shipped model zoo: models, models copy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from layerkit.cli import app
from layerkit.errors import LayerkitError
from layerkit.modelfile import zoo

models_app = typer.Typer(help="The shipped models: list them, copy one to edit it.")
app.add_typer(models_app, name="models")


def _task(raw: dict) -> str:
    training = raw.get("training") or {}
    dataset = training.get("dataset", "?")
    classes = (training.get("data") or {}).get("classes")
    if classes:
        return f"{dataset}, classes {', '.join(map(str, classes))}"
    return dataset


JSON_LIST = typer.Option(False, "--json", help="Print a JSON list: name, task, parameters, test_accuracy, "
                                                "test_bpc (a language model's bits per character), "
                                                "description, path of each model.")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, as_json: bool = JSON_LIST) -> None:
    """One line per shipped model: task, parameters, test accuracy or a language model's bits per
    character (docs/results.md). Any command
    that takes a model file also takes one of these names. 'layerkit models list' is the same."""
    if ctx.invoked_subcommand is not None:
        return
    _list_models(as_json)


@models_app.command("list")
def list_models(as_json: bool = JSON_LIST) -> None:
    """One line per shipped model: task, parameters, test accuracy or bpc (as 'layerkit models')."""
    _list_models(as_json)


def _list_models(as_json: bool) -> None:
    from layerkit.modelfile.build import build_graph_from

    rows = []
    for name, path in sorted(zoo.files().items()):
        raw = json.loads(path.read_text(encoding="utf-8"))
        graph = build_graph_from(path)
        rows.append({"name": name, "task": _task(raw), "parameters": graph.param_count,
                     "test_accuracy": zoo.RESULTS.get(name), "test_bpc": zoo.BITS_PER_CHARACTER.get(name),
                     "description": raw.get("description", ""), "path": str(path)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    task_width = max(len(r["task"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['name']:<{width}}  {r['task']:<{task_width}}  {r['parameters']:>9,} params  "
                   f"{zoo.listed_result(r['name']) or '-':>8}  {r['description']}")


@models_app.command("copy")
def copy(name: str = typer.Argument(..., metavar="NAME", help="A shipped model (see 'layerkit models')."),
         dest: Path = typer.Argument(Path("."), metavar="[DIR]", help="Folder to write NAME.json into."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing file.")) -> None:
    """Write an editable copy of a shipped model; its $schema points at the installed schema."""
    source = zoo.shipped(name)
    if source is None:
        raise LayerkitError(f"{name}: no shipped model of that name (shipped: {', '.join(zoo.names())})")
    if dest.exists() and not dest.is_dir():
        raise LayerkitError(f"{dest}: not a directory")
    target = dest / source.name
    if target.exists() and not force:
        raise LayerkitError(f"{target}: already exists (pass --force to overwrite it)")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        raw = json.loads(source.read_text(encoding="utf-8"))
        try:
            schema = os.path.relpath(zoo.SCHEMA_FILE, dest.resolve())
        except ValueError:  # another drive on Windows
            schema = zoo.SCHEMA_FILE.as_uri()
        raw = {"$schema": schema.replace(os.sep, "/"), **{k: v for k, v in raw.items() if k != "$schema"}}
        target.write_text(_dump(raw), encoding="utf-8")
    except OSError as exc:
        raise LayerkitError(f"{target}: cannot write ({exc.strerror or exc})") from None
    typer.echo(f"wrote {target}; train it with: layerkit fit {target}")


def _dump(raw: dict) -> str:
    # the zoo's layout: one layer per line, so a copy stays as readable as the original
    lines = ["{"]
    items = list(raw.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if key == "layers":
            lines.append('  "layers": [')
            lines += [f"    {json.dumps(layer)}{',' if j < len(value) - 1 else ''}" for j, layer in enumerate(value)]
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"
