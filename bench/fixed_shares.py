"""CPU time of a training step in one process, without and with fixed shares (``training.virtual_shares``).

    python bench/fixed_shares.py [--nets lenet_style,alexnet_mnist] [--shares 2,4] [--steps 40]

One process, one BLAS thread and ``LAYERKIT_NUM_THREADS=1`` (as ``bench/speed.py --threads 1``).
The settings take turns step by step (default, S = 2, S = 4, default, ...) over the same batches,
so a machine whose speed drifts under other jobs moves every column alike, which whole runs one
after the other (``bench/speed.py --set virtual_shares=S``) cannot promise. The figure is the
median CPU time of a step (``time.process_time``: every thread of the process) after two warm-up
steps per setting, and its ratio to the default.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("LAYERKIT_NUM_THREADS", "1")
os.environ.setdefault("LAYERKIT_SAMPLE_PARALLEL", "0")

import argparse  # noqa: E402 (the thread settings come before numpy is loaded)
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NETS = {"lenet_style": HERE / "nets" / "lenet_style.json", "alexnet_mnist": REPO / "models" / "alexnet_mnist.json"}
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist"


def load(path: Path, images: int, data_dir: str | None):
    from layerkit.cli.overrides import apply_overrides
    from layerkit.modelfile.build import build_model
    from layerkit.modelfile.spec import read_model_file, spec_from_dict
    from layerkit.training.runs import prepare_data
    from layerkit.training.trainer import build_loss

    raw, source = read_model_file(path)
    raw = apply_overrides(raw, {"epochs": 1, "data.train_limit": images, "data.test_limit": 64})
    spec = spec_from_dict(raw, source=path.name)
    model = build_model(spec)
    data = prepare_data(spec, model, data_dir)
    return spec, model, build_loss(spec), data


def measure(net: str, shares: list[int], steps: int, data_dir: str | None) -> dict[int, float]:
    from layerkit.training.steps import make_step

    spec, model, loss, data = load(NETS[net], 4096, data_dir)
    batch = int(spec.training["batch_size"])
    keys = model.trainable_keys()
    settings = [0, *shares]
    times: dict[int, list[float]] = {s: [] for s in settings}
    order = np.random.default_rng(0).permutation(len(data.x_train))
    with ExitStack() as stack:
        stepper = {s: stack.enter_context(make_step(model, loss, data.x_train, data.y_train, None, keys, 1,
                                                    virtual_shares=s)) for s in settings}
        for i in range(steps + 2):
            lo = (i * batch) % (len(order) - batch)
            idx = order[lo:lo + batch]
            for s in settings:
                rng = np.random.default_rng(i)
                started = time.process_time()
                stepper[s](idx, rng, False, 0)
                if i >= 2:
                    times[s].append(time.process_time() - started)
    return {s: statistics.median(t) for s, t in times.items()}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="lenet_style,alexnet_mnist", help=f"comma-separated: {', '.join(NETS)}")
    parser.add_argument("--shares", default="2,4", help="the virtual_shares settings to compare with the default")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per setting (default 40)")
    parser.add_argument("--data-dir", help=f"MNIST IDX files (default {DEFAULT_DATA}; embedded sample if absent)")
    args = parser.parse_args()
    shares = [int(s) for s in args.shares.split(",")]
    data_dir = args.data_dir or (str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None)
    load_avg = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print("`python bench/fixed_shares.py" + "".join(f" {a}" for a in sys.argv[1:]) + "`")
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit()}, {os.cpu_count()} cores, "
          f"load average before the run {load_avg}; CPU ms per step, median of {args.steps}\n")
    print("| net | default | " + " | ".join(f"virtual_shares {s}" for s in shares) + " |")
    print("|---|---:|" + "---:|" * len(shares))
    for net in args.nets.split(","):
        med = measure(net, shares, args.steps, data_dir)
        cells = [f"{med[s] * 1e3:.1f} ({med[s] / med[0]:.2f}x)" for s in shares]
        print(f"| {net} | {med[0] * 1e3:.1f} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
