"""layerkit CLI commands that use a trained model: predict, export."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.markup import escape

from layerkit.cli import app
from layerkit.errors import DataError, LayerkitError, install_hint

RUN_DIR = typer.Argument(..., metavar="RUN_DIR",
                         help="A run directory from 'layerkit fit' (or a folder from Model.save).")


@app.command()
def predict(run_dir: Path = RUN_DIR,
            inputs: List[Path] = typer.Argument(..., metavar="INPUT...",
                                                help="Images (PNG, JPEG...), .npy/.npz arrays or CSV rows."),
            top: int = typer.Option(3, "--top", min=1, help="How many of the most likely classes to show."),
            invert: bool = typer.Option(False, "--invert",
                                        help="Invert images (255 - value): dark digits on white paper become "
                                             "MNIST's white on black."),
            resize: bool = typer.Option(False, "--resize",
                                        help="Stretch images of another size to the model's input size."),
            submission: Optional[Path] = typer.Option(None, "--submission", metavar="FILE",
                                                      help="Write an 'ImageId,Label' CSV (Kaggle digit "
                                                           "recognizer), ImageId counting from 1 over all inputs."),
            as_json: bool = typer.Option(False, "--json",
                                         help="Print a JSON list, one object per input: input, class, name, "
                                              "probability, top (the --top classes).")) -> None:
    """Class, class name and top probabilities for each input, preprocessed exactly as in training.

    Images: luminance for 1-channel models (transparent pixels over white), RGB for 3-channel ones; they
    must be the model's size unless --resize. CSV: a header row is skipped and a 'label' column dropped.
    """
    from layerkit.api import load
    from layerkit.data.inputs import read_inputs

    model = load(run_dir)
    batches, problems = [], []
    for path in inputs:
        try:
            read = read_inputs(path, model.input_shape, invert=invert, resize=resize)
            batches.append((read, model.prepare(read.x, str(path))))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError("\n".join(problems))
    names = model.class_names
    k = min(top, model.num_outputs)
    results = []
    for read, x in batches:
        probs = model.loss.probabilities(model._outputs(x))
        best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        for i, name in enumerate(read.names):
            results.append({"input": name, "class": int(best[i, 0]), "name": names[best[i, 0]],
                            "probability": float(probs[i, best[i, 0]]),
                            "top": [{"class": int(c), "name": names[c], "probability": float(probs[i, c])}
                                    for c in best[i]]})
    if submission is not None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["ImageId", "Label"])
        writer.writerows((i + 1, r["name"]) for i, r in enumerate(results))
        from layerkit.fileio import write_text_atomic
        write_text_atomic(submission, buf.getvalue(), "submission file")
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    if submission is not None:
        typer.echo(f"wrote {submission}: {len(results):,} predictions (ImageId,Label)")
        return
    numbered = names != [str(i) for i in range(len(names))]
    for r in results:
        label = f"{r['class']} ({r['name']})" if numbered else str(r["class"])
        others = ", ".join(f"{t['name']} {100 * t['probability']:.2f}%" for t in r["top"])
        typer.echo(f"{r['input']}: {label} {100 * r['probability']:.2f}%   top {k}: {others}")


@app.command(epilog=escape(f"Needs the onnx extra: {install_hint('onnx')}"))
def export(run_dir: Path = RUN_DIR,
           fmt: str = typer.Option("onnx", "--format", "-f", help="Only onnx for now."),
           out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE",
                                              help="Output file (default: RUN_DIR/model.onnx).")) -> None:
    """Export a trained model, with its preprocessing and softmax, for another runtime (ONNX).

    The graph takes the raw input 'predict' takes (N x C x H x W, uint8 when trained on integer images) and
    gives 'logits' and 'probabilities'.
    """
    from layerkit.api import load

    if fmt != "onnx":
        raise typer.BadParameter(f"{fmt!r} is not a supported format (onnx)", param_hint="--format")
    model = load(run_dir)
    path = model.export_onnx(out or Path(run_dir) / "model.onnx")
    from layerkit.export.onnx import input_description
    typer.echo(f"wrote {path}: input 'input' {input_description(model.net, model._pre())}; "
               f"outputs 'logits' and 'probabilities' (N x {model.num_outputs})")


__all__ = ["predict", "export", "LayerkitError"]
