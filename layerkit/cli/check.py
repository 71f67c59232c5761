"""layerkit CLI commands: check-grads."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from layerkit.cli import app


@app.command("check-grads")
def check_grads(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="Model file (JSON), or a layer file FILE.py (every layer class it defines, "
                                     "on its examples, through every check of the conformance suite) or "
                                     "FILE.py:CLASS.", show_default=False),
    samples: int = typer.Option(32, "--samples", min=1, help="Coordinates checked per tensor (all of them "
                                                            "when the tensor is no bigger)."),
    seed: int = typer.Option(0, "--seed", help="Seed for inputs, parameters, projections and sampling."),
    batch_size: int = typer.Option(2, "--batch-size", min=1, help="Samples per check."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON only."),
    whole_model: bool = typer.Option(True, "--whole-model/--no-whole-model",
                                     help="Also check the end-to-end loss gradient of every parameter."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", metavar="C,H,W",
                                              help="Layer files: check at this per-sample input shape instead "
                                                   "of the examples ('3,8,8'; several inputs: '3,8,8;3,8,8')."),
    config: Optional[str] = typer.Option(None, "--config", metavar="JSON",
                                         help="Layer files: the layer's parameters for --input-shape, as a JSON "
                                              "object (default {}: the schema's defaults)."),
) -> None:
    """Check every layer's backward pass (and the model's loss gradient) against finite differences.

    A layer file (FILE.py, FILE.py:CLASS) is checked on its own, by the same named checks as the pytest
    plugin: each layer class it defines, on each of its examples, or on --input-shape. Exit status:
    0 all checks pass (warnings allowed), 1 a gradient is wrong or a check fails (the text names the
    check and the method: backward_params, backward_inplace, infer ...), 2 bad input (a model file, or a
    layer file that cannot be loaded or run).
    """
    from layerkit.testing.files import split_target

    started = time.perf_counter()
    path, class_name = split_target(model)
    if path.endswith(".py"):
        from layerkit.testing.files import check_layer_file

        report = check_layer_file(path, class_name, input_shape=_parse_shape(input_shape),
                                  config=_parse_config(config), batch_size=batch_size, samples=samples, seed=seed)
    else:
        from layerkit.api import check_grads as run_check, load

        if input_shape is not None or config is not None:
            raise typer.BadParameter("only for a layer file (FILE.py)", param_hint="--input-shape/--config")
        report = run_check(load(Path(model)), batch_size=batch_size, samples=samples, seed=seed,
                           whole_model=whole_model, verbose=False)
    elapsed = time.perf_counter() - started
    if json_out:
        data = report.to_dict()
        data["seconds"] = round(elapsed, 3)
        typer.echo(json.dumps(data, indent=2))
    else:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:  # piped or captured: 80 columns would wrap the table
            console = Console(width=140)
        report.render(console)
        console.print(f"[dim]{elapsed:.1f} s[/]")
    if not report.ok:
        raise typer.Exit(1)


def _parse_shape(text: Optional[str]):
    if text is None:
        return None
    try:
        shapes = [tuple(int(d) for d in part.replace("x", ",").split(",") if d.strip())
                  for part in text.split(";")]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a shape such as 3,8,8", param_hint="--input-shape") from None
    if not shapes or any(not s or min(s) < 1 for s in shapes):
        raise typer.BadParameter(f"{text!r} is not a shape such as 3,8,8", param_hint="--input-shape")
    return [list(s) for s in shapes] if len(shapes) > 1 else shapes[0]


def _parse_config(text: Optional[str]):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--config") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object such as '{\"shared\": true}'", param_hint="--config")
    return value
