"""layerkit CLI commands that look at models and plugins without training:
validate, summary, graph, layers, plugins, schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer

from layerkit.modelfile.build import SizeLimits, batch_size_of, build_graph_from, format_bytes, parse_bytes
from layerkit.errors import LayerkitError
from layerkit.modelfile.diagram import FORMATS, export
from layerkit.plugins.manager import disabled_plugins, get_registry
from layerkit.plugins.registry import KINDS
from layerkit.modelfile.schema import MODEL_SCHEMA, builtin_schema, composed_schema, params_schema_of
from layerkit.cli import app
from layerkit.cli.catalog import describe_param

if TYPE_CHECKING:
    from rich.console import Console

_DEFAULTS = SizeLimits()

MAX_PARAMS = typer.Option(_DEFAULTS.max_params, "--max-params", min=1,
                          help="Refuse models with more parameters than this.")
MAX_MEMORY = typer.Option(None, "--max-memory", metavar="SIZE",
                          help="Refuse models whose training activations need more than this "
                               f"(e.g. 512MiB, 8GB; default {format_bytes(_DEFAULTS.max_activation_bytes)}).")
BATCH_SIZE = typer.Option(None, "--batch-size", min=1,
                          help="Batch size for the memory estimate (default: the file's training.batch_size).")


def _limits(max_params: int, max_memory: Optional[str], batch_size: Optional[int]) -> SizeLimits:
    try:
        memory = parse_bytes(max_memory) if max_memory is not None else _DEFAULTS.max_activation_bytes
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-memory") from None
    return SizeLimits(max_params=max_params, max_activation_bytes=memory, batch_size=batch_size)


def _console() -> Console:
    from rich.console import Console
    # a pipe or a test capture has no width; rich would otherwise squeeze tables to 80 columns
    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


@app.command()
def validate(models: List[Path] = typer.Argument(..., metavar="MODEL...",
                                                 help="Model files (or shipped model names) to check."),
             max_params: int = MAX_PARAMS, max_memory: Optional[str] = MAX_MEMORY,
             batch_size: Optional[int] = BATCH_SIZE,
             as_json: bool = typer.Option(False, "--json",
                                          help="Print a JSON list, one object per file: model, ok, and "
                                               "layers, parameters, output_shape or errors.")) -> None:
    """Check model files: schema, layer parameters, graph, shapes and size limits."""
    limits = _limits(max_params, max_memory, batch_size)
    bad = 0
    report: list[dict[str, Any]] = []
    for path in models:
        try:
            graph = build_graph_from(path, limits=limits)
        except LayerkitError as error:
            bad += 1
            lines = (str(error) or type(error).__name__).splitlines()
            report.append({"model": str(path), "ok": False, "errors": lines})
            if not as_json:
                for line in lines:
                    typer.echo(f"error: {line}", err=True)
            continue
        report.append({"model": str(path), "ok": True, "layers": len(graph.nodes),
                       "parameters": graph.param_count, "output_shape": list(graph.output.output_shape)})
        if not as_json:
            typer.echo(f"OK {path}: {len(graph.nodes)} layers, {graph.param_count:,} parameters, "
                       f"output shape {graph.output.output_shape}")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    # a model that validates today may need a layer from a plugin that is broken: say so once
    from layerkit.plugins.manager import get_registry
    for problem in get_registry().problems:
        typer.echo(f"warning: {problem} (see 'layerkit plugins')", err=True)
    if bad:
        raise typer.Exit(2)


@app.command()
def summary(model: Path = typer.Argument(..., metavar="MODEL", help="A model file or a shipped model name."),
            max_params: int = MAX_PARAMS, max_memory: Optional[str] = MAX_MEMORY,
            batch_size: Optional[int] = BATCH_SIZE,
            as_json: bool = typer.Option(False, "--json",
                                         help="Print one JSON object: model, layers (name, type, output_shape, "
                                              "parameters, trainable, flops), parameters, trainable_parameters, "
                                              "frozen_parameters, flops, activation_bytes.")
            ) -> None:
    """Table of layers with output shapes, parameters and FLOPs, and the totals."""
    from layerkit.api.model import layer_table

    limits = _limits(max_params, max_memory, batch_size)
    graph = build_graph_from(model, limits=limits)
    batch = batch_size_of(graph, limits)
    state = sum(n.state_count for n in graph.nodes)
    frozen = sum(n.param_count for n in graph.nodes if not n.spec.trainable)
    if as_json:
        typer.echo(json.dumps({
            "model": graph.spec.name, "file": str(model), "input_shape": list(graph.input_shape),
            "layers": [{"index": node.spec.index, "name": node.name, "type": node.spec.type,
                        "inputs": list(node.inputs), "output_shape": list(node.output_shape),
                        "parameters": node.param_count, "trainable": node.spec.trainable, "flops": node.flops}
                       for node in graph.nodes],
            "parameters": graph.param_count, "trainable_parameters": graph.param_count - frozen,
            "frozen_parameters": frozen, "running_statistics": state, "flops": graph.flops,
            "batch_size": batch, "activation_bytes": graph.activation_bytes(batch)}, indent=2))
        return
    table = layer_table(graph)
    console = _console()
    console.print(f"model {graph.spec.name} ({model})")
    console.print(table)
    console.print(f"parameters: {graph.param_count:,}"
                  + (f" ({graph.param_count - frozen:,} trainable, {frozen:,} frozen)" if frozen else "")
                  + (f" (+ {state:,} running statistics)" if state else ""))
    console.print(f"FLOPs per sample (forward): {graph.flops:,}")
    console.print(f"activation memory at batch size {batch} (training, float32): "
                  f"{format_bytes(graph.activation_bytes(batch))}")


@app.command()
def graph(model: Path = typer.Argument(..., metavar="MODEL", help="A model file or a shipped model name."),
          fmt: str = typer.Option("dot", "--format", "-f", help=f"One of: {', '.join(FORMATS)}.")) -> None:
    """Print the layer graph as Graphviz DOT or Mermaid, shapes on every edge."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="--format")
    typer.echo(export(build_graph_from(model), fmt), nl=False)


def describe_layers() -> list[dict[str, Any]]:
    registry = get_registry()
    out = []
    for entry in (registry.entries["layer"][name] for name in registry.names("layer")):
        schema = params_schema_of(entry.obj)
        required = set(schema.get("required", []))
        out.append({
            "type": entry.name,
            "plugin": entry.plugin,
            "description": getattr(entry.obj, "description", ""),
            "inputs": "2+" if entry.obj.arity is None else entry.obj.arity,
            "parameters": [describe_param(name, sub if isinstance(sub, dict) else {}, name in required)
                           for name, sub in schema.get("properties", {}).items()],
        })
    return out


def _param_line(p: dict[str, Any]) -> str:
    text = f"{p['name']}: {p['type']}"
    bounds = p.get("bounds", {})
    marks = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<",
             "minItems": "len>=", "maxItems": "len<="}
    if bounds:
        text += " (" + ", ".join(f"{marks[k]}{v}" for k, v in bounds.items()) + ")"
    if p["required"]:
        text += " required"
    elif "default" in p:
        text += f" = {json.dumps(p['default'])}"
    return text


@app.command()
def layers(as_json: bool = typer.Option(False, "--json",
                                        help="Print a JSON list: type, plugin, description, inputs, parameters."),
           markdown: bool = typer.Option(False, "--markdown",
                                         help="A Markdown page of every layer, loss, optimizer and schedule "
                                              "with its parameters."),
           builtin: bool = typer.Option(False, "--builtin",
                                        help="With --markdown: only the built-ins (the page docs/layers.md).")
           ) -> None:
    """Every registered layer: its plugin, description and parameters."""
    if markdown:
        from layerkit.cli.catalog import builtin_catalog, catalog_markdown

        typer.echo(builtin_catalog() if builtin else catalog_markdown(get_registry()), nl=False)
        return
    info = describe_layers()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    table = Table(show_lines=True)
    for column in ("type", "plugin", "inputs", "description", "parameters"):
        table.add_column(column)
    for layer in info:
        table.add_row(layer["type"], layer["plugin"], str(layer["inputs"]), layer["description"],
                      "\n".join(_param_line(p) for p in layer["parameters"]) or "-")
    _console().print(table)


@app.command()
def plugins() -> None:
    """Loaded plugins as JSON: what each provides, its hooks, load errors, disabled ones."""
    registry = get_registry()
    out = {
        "plugins": [{
            "plugin": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "disabled": info.disabled,
            "hooks": info.hooks,
            "provides": {kind: info.provides[kind] for kind in KINDS if info.provides[kind]},
            "errors": info.errors,
        } for info in registry.plugins.values()],
        "conflicts": {kind: table for kind, table in registry.conflicts.items() if table},
        "problems": [str(p) for p in registry.problems],
        "disabled": sorted(disabled_plugins()),
    }
    typer.echo(json.dumps(out, indent=2))


@app.command()
def schema(builtin: bool = typer.Option(False, "--builtin",
                                        help="Only the built-in layers, losses and optimizers: the file "
                                             "schemas/model.schema.json that shipped models name."),
           static: bool = typer.Option(False, "--static",
                                       help="Only the static skeleton (no layer parameters).")) -> None:
    """The JSON Schema of model files, with every installed plugin's parameters."""
    if static:
        out = MODEL_SCHEMA
    elif builtin:
        out = builtin_schema()
    else:
        out = composed_schema(get_registry())
    typer.echo(json.dumps(out, indent=2))
