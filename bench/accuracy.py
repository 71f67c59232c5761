"""Reproduce the model-zoo accuracy table (docs/results.md).

For every shipped model (or the ones named on the command line) run

    layerkit fit MODEL --data-dir DIR --quiet --out runs/results/NAME

in a subprocess, read the run's metrics.json and print a markdown table:
model, dataset, epochs, wall time, test accuracy, target, PASS/FAIL.

    python bench/accuracy.py                        # every model, in table order
    python bench/accuracy.py cnn1 lenet5            # just these
    python bench/accuracy.py --no-train             # re-print from runs/results/*
    python bench/accuracy.py --data-dir ~/mnist --fashion-dir ~/fashion-mnist
    python bench/accuracy.py --labs --kaggle-dir runs/kaggle   # the lab nets (models/labs/)

The lab nets (``--labs``, or by name) read their files from models/labs/. The AlexNet-style one
trains on the Kaggle digit-recognizer CSV (--kaggle-dir; ``python tools/make_kaggle_csv.py DIR``
writes it from MNIST); the CIFAR-10 ones need --cifar-dir and are reported as "no data" without it.

Trainings run one at a time with OPENBLAS_NUM_THREADS / OMP_NUM_THREADS /
LAYERKIT_NUM_THREADS set to --threads (default 1, the table in docs/results.md)
unless they are already set in the environment. With --threads 2 the nets that
qualify train sample-parallel on two processes (docs/training.md), which sums
gradients in another order and gives dropout other masks: other runs, equally
valid, and the same targets.
An existing runs/results/NAME is replaced. Exit status 1 if a model misses its
target or a training fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Entry:
    name: str            # model file stem, and the run directory name
    target: float | None  # minimum final test accuracy (fraction); None: report only
    data: str = "mnist"   # which --*-dir the training reads: mnist, fashion, kaggle, cifar


# Cheap ones first, alexnet_mnist (the slowest) last.
ZOO = [
    Entry("softmax_regression", 0.92),
    Entry("mlp_784_15_10", 0.93),
    Entry("cnn1", 0.97),
    Entry("cnn2_3class", 0.997),
    Entry("lenet5", 0.990),
    Entry("cnn2", 0.96),
    Entry("mlp", 0.980),
    Entry("lenet5_fashion", 0.90, data="fashion"),
    Entry("resnet_mini", None),
    Entry("alexnet_mnist", 0.993),
]
# The lab reports' nets (models/labs/); the target is the report's figure where it is recorded
# (docs/results.md), cheap ones first.
LABS = [
    Entry("lab_conv8_pool_softmax", None),
    Entry("lab_mlp_784_15_10_sigmoid", 0.919),
    Entry("lab_cnn2_3class", 0.9929),
    Entry("lab_cnn2", 0.95),
    Entry("lab_cifar10_softmax", None, data="cifar"),
    Entry("lab_cifar10_mlp", None, data="cifar"),
    Entry("lab_alexnet_kaggle", 0.9005, data="kaggle"),
]
BY_NAME = {e.name: e for e in ZOO + LABS + [Entry("cifar10_cnn", None, data="cifar")]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help=f"model names (default: all). Known: {', '.join(BY_NAME)}")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".." / "shared" / "data" / "mnist",
                   help="MNIST directory (default: ../shared/data/mnist relative to the repo)")
    p.add_argument("--fashion-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                   help="Fashion-MNIST directory (default: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--kaggle-dir", type=Path, default=ROOT / "runs" / "kaggle",
                   help="Kaggle digit-recognizer train.csv folder (default: runs/kaggle, where "
                        "`python tools/make_kaggle_csv.py runs/kaggle` writes it)")
    p.add_argument("--cifar-dir", type=Path, default=None,
                   help="CIFAR-10 python batches folder; without it the CIFAR-10 nets are not trained")
    p.add_argument("--labs", action="store_true", help="the lab nets (models/labs/) instead of the zoo")
    p.add_argument("--out-root", type=Path, default=ROOT / "runs" / "results",
                   help="where the run directories go (default: runs/results)")
    p.add_argument("--threads", type=int, default=1,
                   help="OPENBLAS/OMP/LAYERKIT threads for the trainings unless already set (default 1)")
    p.add_argument("--no-train", action="store_true",
                   help="do not train; print the table from existing run directories")
    p.add_argument("--layerkit", default=None,
                   help="layerkit executable (default: `layerkit` on PATH, else "
                        "`python -m layerkit` with this interpreter)")
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in BY_NAME]
    if unknown:
        p.error(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return args


def rel(path: Path) -> str:
    """PATH relative to the repository root when it lies inside it (shorter commands)."""
    try:
        return os.path.relpath(Path(path).resolve(), ROOT) if Path(path).resolve().is_relative_to(
            ROOT.resolve()) else os.path.normpath(str(path))
    except ValueError:
        return str(path)


def layerkit_cmd(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    if shutil.which("layerkit"):
        return ["layerkit"]
    return [sys.executable, "-m", "layerkit"]


def model_file(name: str) -> Path:
    """models/NAME.json, or models/labs/NAME.json: relative to the repository root."""
    found = sorted((ROOT / "models").rglob(f"{name}.json"))
    if not found:
        raise SystemExit(f"error: no model file {name}.json under models/")
    return Path("models") / found[0].relative_to(ROOT / "models")


def data_dir(entry: Entry, args) -> Path | None:
    return {"mnist": args.data_dir, "fashion": args.fashion_dir, "kaggle": args.kaggle_dir,
            "cifar": args.cifar_dir}[entry.data]


def train(entry: Entry, args) -> tuple[int, float, str]:
    """Run one training; returns (exit code, wall seconds, last output lines)."""
    model = model_file(entry.name)
    out = args.out_root / entry.name
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data_dir_ = data_dir(entry, args)
    cmd = layerkit_cmd(args.layerkit) + ["fit", str(model), "--data-dir", rel(data_dir_),
                                         "--quiet", "--out", rel(out)]
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "LAYERKIT_NUM_THREADS"):
        env.setdefault(var, str(args.threads))
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    lines = []
    # the per-epoch lines go to stderr as they come, the table alone to stdout
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            print("  " + lines[-1], file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    tail = "\n".join(lines[-3:])
    if out.is_dir():
        (out / "bench.json").write_text(json.dumps(
            {"command": " ".join(cmd), "wall_seconds": wall, "returncode": proc.returncode,
             "threads": env["OPENBLAS_NUM_THREADS"], "layerkit_threads": env["LAYERKIT_NUM_THREADS"]},
            indent=2) + "\n")
    return proc.returncode, wall, tail


def row(entry: Entry, args) -> tuple[list[str], bool]:
    out = args.out_root / entry.name
    metrics_path = out / "metrics.json"
    bench_path = out / "bench.json"
    target = "—" if entry.target is None else f"≥ {entry.target * 100:g}%"
    if data_dir(entry, args) is None:
        return [entry.name, entry.data, "—", "—", "no data (not trained)", target, "—"], True
    if not metrics_path.exists():
        return [entry.name, "?", "?", "?", "no result", target, "FAIL"], False
    m = json.loads(metrics_path.read_text())
    wall = None
    if bench_path.exists():
        wall = json.loads(bench_path.read_text()).get("wall_seconds")
    if wall is None:
        wall = sum(m.get("epoch_seconds", []))
    acc = m["test_accuracy"]
    epochs = str(m["epochs_run"]) + (f" (best {m['best_epoch']})" if m.get("best_epoch") else "")
    if entry.target is None:
        verdict, ok = "—", True
    else:
        ok = acc >= entry.target - 1e-12
        verdict = "PASS" if ok else "FAIL"
    return [entry.name, m.get("dataset", "?"), epochs, fmt_time(wall), f"{acc * 100:.2f}%",
            target, verdict], ok


def fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def main(argv=None) -> int:
    args = parse_args(argv)
    entries = [BY_NAME[m] for m in args.models] if args.models else (LABS if args.labs else ZOO)
    failed = False
    if not args.no_train:
        for entry in entries:
            if data_dir(entry, args) is None:
                print(f"note: {entry.name}: no --{entry.data}-dir, not trained", file=sys.stderr)
                continue
            rc, _, _ = train(entry, args)
            if rc != 0:
                print(f"error: {entry.name}: layerkit fit exited {rc}", file=sys.stderr)
                failed = True
    header = ["model", "dataset", "epochs", "wall time", "test accuracy", "target", "result"]
    rows = []
    for entry in entries:
        cells, ok = row(entry, args)
        rows.append(cells)
        failed |= not ok
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
