"""layerkit CLI command that writes text with a trained language model: generate."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from layerkit.cli import app
from layerkit.errors import LayerkitError


@app.command()
def generate(run_dir: Path = typer.Argument(..., metavar="RUN_DIR",
                                            help="A run directory from 'layerkit fit' of a language model trained "
                                                 "on the text dataset (or a folder from Model.save)."),
             prompt: str = typer.Option(..., "--prompt", metavar="TEXT", help="The text to continue."),
             length: int = typer.Option(200, "--length", metavar="N", help="How many characters to write."),
             temperature: float = typer.Option(1.0, "--temperature", metavar="T",
                                               help="Divides the scores before the softmax: above 0; lower is "
                                                    "greedier, 1 samples the model's own probabilities."),
             top_k: Optional[int] = typer.Option(None, "--top-k", metavar="K",
                                                 help="Draw only from the K most likely characters (1 or more)."),
             seed: Optional[int] = typer.Option(None, "--seed", metavar="S",
                                                help="Seed of the draw: the same seed writes the same text.")) -> None:
    """Write text with a language model: the prompt, then LENGTH characters drawn one at a time from the
    model's predictions on the last T characters (its input length)."""
    from layerkit.api import load
    from layerkit.api.generate import check_settings
    from layerkit.api.model import MODEL_FILE, not_a_run

    check_settings(length, temperature, top_k)  # before the model is read: a bad flag is reported at once
    if run_dir.is_file():
        raise LayerkitError(f"{run_dir}: a file, not a run directory; give the folder 'layerkit fit' wrote for a "
                            f"language model (a model file has no trained weights)")
    if not (run_dir / MODEL_FILE).is_file():
        raise LayerkitError(not_a_run(run_dir, "layerkit generate"))
    model = load(run_dir)
    text = model.generate(prompt, length, temperature=temperature, top_k=top_k, seed=seed)
    typer.echo(prompt + text)
