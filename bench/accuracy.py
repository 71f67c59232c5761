"""Reproduce the model-zoo accuracy table (docs/results.md).

For every shipped model (or the ones named on the command line) run

    layerkit fit MODEL --data-dir DIR --quiet --out runs/results/NAME

in a subprocess, read the run's metrics.json and print a markdown table:
model, dataset, epochs, wall time, test accuracy, target, PASS/FAIL.

    python bench/accuracy.py                        # every model, in table order
    python bench/accuracy.py cnn1 lenet5            # just these
    python bench/accuracy.py --no-train             # re-print from runs/results/*
    python bench/accuracy.py --data-dir ~/mnist --fashion-dir ~/fashion-mnist

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
    fashion: bool = False  # trains on Fashion-MNIST (uses --fashion-dir)


# Cheap ones first, alexnet_mnist (the slowest) last.
ZOO = [
    Entry("softmax_regression", 0.92),
    Entry("mlp_784_15_10", 0.93),
    Entry("cnn1", 0.97),
    Entry("cnn2_3class", 0.997),
    Entry("lenet5", 0.990),
    Entry("cnn2", 0.96),
    Entry("mlp", 0.980),
    Entry("lenet5_fashion", 0.90, fashion=True),
    Entry("resnet_mini", None),
    Entry("alexnet_mnist", 0.993),
]
BY_NAME = {e.name: e for e in ZOO}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help=f"model names (default: all). Known: {', '.join(BY_NAME)}")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".." / "shared" / "data" / "mnist",
                   help="MNIST directory (default: ../shared/data/mnist relative to the repo)")
    p.add_argument("--fashion-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                   help="Fashion-MNIST directory (default: /usr/share/datasets/fashion-mnist)")
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


def train(entry: Entry, args) -> tuple[int, float, str]:
    """Run one training; returns (exit code, wall seconds, last output lines)."""
    model = Path("models") / f"{entry.name}.json"
    out = args.out_root / entry.name
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data_dir = args.fashion_dir if entry.fashion else args.data_dir
    cmd = layerkit_cmd(args.layerkit) + ["fit", str(model), "--data-dir", rel(data_dir),
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
    target = "—" if entry.target is None else f"≥ {entry.target * 100:.1f}%"
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
    entries = [BY_NAME[m] for m in args.models] if args.models else ZOO
    failed = False
    if not args.no_train:
        for entry in entries:
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
