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


UNTRAINED_HELP = "Answer from the model's random initial weights (for testing the pipeline)."


def _trained(model, source: Path, untrained: bool, command: str):
    """``model``, unless it was never trained and ``--untrained`` was not given."""
    if model.trained:
        return model
    if not untrained:
        raise LayerkitError(f"{source}: model {model.name!r} is untrained (no weights): its answers would be "
                            f"random; train it with 'layerkit fit {source}' and give the run directory it writes "
                            f"(layerkit {command} runs/{model.name}-...), or pass --untrained")
    model._warned_untrained = True  # --untrained asked for it: no Python warning on top of the note
    typer.echo("note: --untrained: answering from the random initial weights", err=True)
    return model


def refuse_token_model(model, source: Path) -> None:
    """``predict`` answers one class per input, as a classifier does; a model reading token ids answers a
    class per position, so it is refused with one line naming what serves it: ``layerkit generate`` for a
    language model trained on text, ``Model.predict`` for any other."""
    if model.net.input_dtype != np.int64:
        return
    vocab = None if model.preprocessing is None else model.preprocessing.vocabulary
    if vocab is not None and vocab.unit != "token":
        raise LayerkitError(f"{source}: model {model.name!r} is a language model (it reads token ids and predicts "
                            f"the next character at every position); predict is for classifiers: continue a "
                            f"text with 'layerkit generate {source} --prompt TEXT'")
    raise LayerkitError(f"{source}: model {model.name!r} reads token ids and predicts a class per position, not "
                        f"one per input; predict is for classifiers: use layerkit.load({str(source)!r}).predict(ids) "
                        f"from Python, or 'layerkit generate' for a language model trained on text")


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
                                              "probability, top (the --top classes)."),
            untrained: bool = typer.Option(False, "--untrained", help=UNTRAINED_HELP)) -> None:
    """Class, class name and top probabilities for each input, preprocessed exactly as in training.

    For classifiers: a model reading token ids (a sequence model) is refused; a language model is
    continued with 'layerkit generate'.

    Images: luminance for 1-channel models (transparent pixels over white), RGB for 3-channel ones; they
    must be the model's size unless --resize. CSV: a header row is skipped and a 'label' column dropped.
    """
    from layerkit.api import load
    from layerkit.data.inputs import polarity_note, read_inputs

    model = load(run_dir)
    refuse_token_model(model, run_dir)
    model = _trained(model, run_dir, untrained, "predict")
    background = model.input_background
    batches, problems, notes = [], [], []
    for path in inputs:
        try:
            read = read_inputs(path, model.input_shape, invert=invert, resize=resize)
            batches.append((read, model.prepare(read.x, str(path))))
        except DataError as exc:
            problems.append(str(exc))
            continue
        note = polarity_note(read, background, invert)
        if note is not None:
            notes.append(note)
    if problems:
        raise DataError("\n".join(problems))
    for note in notes:
        typer.echo(note, err=True)
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
                                              help="Output file (default: RUN_DIR/model.onnx)."),
           untrained: bool = typer.Option(False, "--untrained", help=UNTRAINED_HELP)) -> None:
    """Export a trained model, with its preprocessing and softmax, for another runtime (ONNX).

    The graph takes the raw input 'predict' takes (N x C x H x W, uint8 when trained on integer images) and
    gives 'logits' and 'probabilities'.
    """
    from layerkit.api import load

    if fmt != "onnx":
        raise typer.BadParameter(f"{fmt!r} is not a supported format (onnx)", param_hint="--format")
    model = _trained(load(run_dir), run_dir, untrained, "export")
    if out is None and not Path(run_dir).is_dir():
        raise LayerkitError(f"{run_dir}: not a folder to write model.onnx into; give --out FILE")
    path = model.export_onnx(out or Path(run_dir) / "model.onnx")
    from layerkit.export.onnx import input_description
    typer.echo(f"wrote {path}: input 'input' {input_description(model.net, model._pre())}; "
               f"outputs 'logits' and 'probabilities' (N x {model.num_outputs})")


__all__ = ["predict", "export", "LayerkitError"]
