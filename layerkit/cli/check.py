"""layerkit CLI commands: check-grads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from layerkit.cli import app


@app.command("check-grads")
def check_grads(
    model: Path = typer.Argument(..., metavar="MODEL", help="Model file (JSON).", show_default=False),
    samples: int = typer.Option(32, "--samples", min=1, help="Coordinates checked per tensor (all of them "
                                                            "when the tensor is no bigger)."),
    seed: int = typer.Option(0, "--seed", help="Seed for inputs, parameters, projections and sampling."),
    batch_size: int = typer.Option(2, "--batch-size", min=1, help="Samples per check."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON only."),
    whole_model: bool = typer.Option(True, "--whole-model/--no-whole-model",
                                     help="Also check the end-to-end loss gradient of every parameter."),
) -> None:
    """Check every layer's backward pass (and the model's loss gradient) against finite differences.

    Exit status: 0 all checks pass (warnings allowed), 1 a gradient is wrong, 2 bad input.
    """
    import numpy as np

    from layerkit.modelfile.build import build_model
    from layerkit.gradcheck.report import check_model

    started = time.perf_counter()
    built = build_model(model).astype(np.float64)
    report = check_model(built, batch_size=batch_size, samples=samples, seed=seed, whole_model=whole_model)
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
