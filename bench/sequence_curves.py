"""Train a shipped sequence model with layerkit and with PyTorch, side by side, and compare the losses.

    python bench/sequence_curves.py char_lstm [--epochs 2] [--train-limit 4000] [--png curves.png]

Both frameworks train the same model file: the same data windows (layerkit's own loader), the same
starting weights (PyTorch's twin copies the built layerkit network, bench/torch_sequence.py), the same
order of samples (the trainer's permutation of each epoch), the same Adam settings, schedule and
gradient clipping. layerkit trains through ``layerkit.training.runs.train``, the code ``layerkit fit``
runs. The script prints the per-epoch train and test loss of both (and bits per character for a
text model: loss / ln 2) and draws the per-batch and per-epoch curves into a PNG.

Needs PyTorch (``pip install torch==2.13.0``) and matplotlib (``pip install -e .[plot]``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _one_thread() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "LAYERKIT_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def compare(name: str, epochs: int | None, train_limit: int | None, threads: int) -> dict:
    """Train ``name`` with both frameworks; both histories and per-batch losses."""
    from layerkit.cli.overrides import apply_overrides
    from layerkit.modelfile import zoo
    from layerkit.modelfile.build import build_model
    from layerkit.modelfile.spec import read_model_file, spec_from_dict
    from layerkit.training.runs import prepare_data, train

    sys.path.insert(0, str(HERE))
    import torch_sequence

    raw, source = read_model_file(zoo.resolve(name))
    overrides: dict = {}
    if epochs:
        overrides["epochs"] = epochs
    if train_limit:
        overrides["data.train_limit"] = train_limit
    raw = apply_overrides(raw, overrides)
    spec = spec_from_dict(raw, source=Path(source).name)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run, _ = train(raw, out=Path(tmp) / "run")
        lk_seconds = time.perf_counter() - start
        lk_history = json.loads((run.path / "history.json").read_text())
        lk_batches = json.loads((run.path / "batches.json").read_text())["train_loss"]
    network = build_model(spec)  # the weights the trainer started from (the model file's seed)
    data = prepare_data(spec, network)
    start = time.perf_counter()
    th = torch_sequence.fit(network, spec.training, data.x_train, data.y_train, data.x_test, data.y_test, threads)
    th_seconds = time.perf_counter() - start
    return {"name": name, "dataset": spec.training["dataset"], "train_windows": len(data.x_train),
            "test_windows": len(data.x_test),
            "layerkit": {"history": [{"epoch": h["epoch"], "loss": h["train_loss"], "test_loss": h["test_loss"]}
                                     for h in lk_history], "batches": lk_batches, "seconds": lk_seconds},
            "torch": {**th, "seconds": th_seconds}}


def table(result: dict) -> str:
    text = result["dataset"] == "text"
    head = ("| epoch | layerkit train loss | PyTorch train loss | layerkit test loss | PyTorch test loss |"
            + (" layerkit test bpc | PyTorch test bpc |" if text else ""))
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]
    for lk, th in zip(result["layerkit"]["history"], result["torch"]["history"], strict=True):
        row = (f"| {lk['epoch']} | {lk['loss']:.4f} | {th['loss']:.4f} | {lk['test_loss']:.4f} | "
               f"{th['test_loss']:.4f} |")
        if text:
            row += f" {lk['test_loss'] / math.log(2):.3f} | {th['test_loss'] / math.log(2):.3f} |"
        lines.append(row)
    lk_b, th_b = result["layerkit"]["batches"], result["torch"]["batches"]
    lines.append(f"\n{result['name']}: {result['train_windows']:,} training / {result['test_windows']:,} test "
                 f"windows; first batch loss layerkit {lk_b[0]:.6f}, PyTorch {th_b[0]:.6f}; wall time layerkit "
                 f"{result['layerkit']['seconds']:.0f} s (with its test evaluation and checkpoints), PyTorch "
                 f"{result['torch']['seconds']:.0f} s")
    return "\n".join(lines)


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.6 * len(results)), squeeze=False)
    for row, result in zip(axes, results, strict=True):
        for framework, style in (("layerkit", "-"), ("torch", "--")):
            label = "PyTorch" if framework == "torch" else "layerkit"
            batches = result[framework]["batches"]
            row[0].plot(range(1, len(batches) + 1), batches, style, lw=0.8, label=label)
            hist = result[framework]["history"]
            epochs = [h["epoch"] for h in hist]
            row[1].plot(epochs, [h["loss"] for h in hist], style + "o", label=f"{label} train")
            row[1].plot(epochs, [h["test_loss"] for h in hist], style + "s", label=f"{label} test")
        row[0].set(title=f"{result['name']}: loss of every batch", xlabel="batch", ylabel="loss (nats per token)")
        row[1].set(title=f"{result['name']}: per epoch", xlabel="epoch", ylabel="loss (nats per token)")
        row[1].xaxis.get_major_locator().set_params(integer=True)
        for ax in row:
            ax.legend()
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description="layerkit and PyTorch training the same sequence model file.")
    parser.add_argument("models", nargs="*", default=["char_lstm", "tiny_transformer"],
                        help="shipped model names or model files (default: char_lstm tiny_transformer)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the model file's)")
    parser.add_argument("--train-limit", type=int, help="training samples (windows) to use (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (default 1)")
    parser.add_argument("--png", default="sequence_curves.png", help="where to draw the curves")
    parser.add_argument("--json", help="also write every number to this JSON file")
    args = parser.parse_args()
    _one_thread()
    results = []
    for name in args.models:
        result = compare(name, args.epochs, args.train_limit, args.threads)
        results.append(result)
        print(f"\n{table(result)}\n", flush=True)
    plot(results, Path(args.png))
    print(f"curves: {args.png}")
    if args.json:
        Path(args.json).write_text(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
