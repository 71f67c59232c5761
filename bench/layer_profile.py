"""Where one training step's time goes: forward and backward per layer, loss and optimizer.

    python bench/layer_profile.py models/alexnet_mnist.json --batch 128 --steps 20

Drives a chain-shaped model exactly as the trainer does (same Model, loss and optimizer
objects) but times every node separately with perf_counter; the figures are
medians over the steps after a warm-up, in milliseconds per batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def profile(model_file: str, batch: int, steps: int, data_dir: str | None) -> list[tuple[str, float, float]]:
    from layerkit.modelfile.build import build_model
    from layerkit.parallel.malloc import tune_malloc
    from layerkit.training.trainer import build_optimizer
    from layerkit.training.runs import prepare_data
    from layerkit.modelfile.spec import read_model_file, spec_from_dict
    from layerkit.training.trainer import build_loss

    if os.environ.get("LAYERKIT_NO_MALLOC_TUNING") is None:
        tune_malloc()  # as Trainer.fit does
    raw, source = read_model_file(model_file)
    raw.setdefault("training", {}).setdefault("data", {})["train_limit"] = batch * (steps + 3)
    spec = spec_from_dict(raw, source=Path(source).name)
    model = build_model(spec)
    loss = build_loss(spec)
    data = prepare_data(spec, model, data_dir)
    opt = build_optimizer(model, spec.training.get("optimizer"), float(spec.training.get("weight_decay", 0) or 0))
    rng = np.random.default_rng(0)
    nodes = model.nodes
    fwd = {n.name: [] for n in nodes}
    bwd = {n.name: [] for n in nodes}
    extra = {"loss": [], "optimizer": []}
    keys = [(node.name, t) for node in nodes for t in model.params[node.name]]
    for step in range(steps + 3):
        xb = data.x_train[step * batch:(step + 1) * batch]
        yb = data.y_train[step * batch:(step + 1) * batch]
        values, caches = [xb], []
        for node in nodes:
            t0 = time.perf_counter()
            y, cache = node.layer.forward(model.params[node.name], values[-1], True, rng, model.state[node.name])
            fwd[node.name].append(time.perf_counter() - t0)
            values.append(y)
            caches.append(cache)
        t0 = time.perf_counter()
        value, lcache = loss.forward(values[-1], yb)
        dy = loss.backward(lcache)
        extra["loss"].append(time.perf_counter() - t0)
        grads = {}
        for i in range(len(nodes) - 1, -1, -1):
            node, call = nodes[i], model.backward_plan[i]  # the method Model.backward calls
            t0 = time.perf_counter()
            if call == "skip":
                grads[node.name] = {}
            elif call == "backward_params":
                grads[node.name] = node.layer.backward_params(model.params[node.name], caches[i], dy)
            else:
                dy, grads[node.name] = getattr(node.layer, call)(model.params[node.name], caches[i], dy)
            bwd[node.name].append(time.perf_counter() - t0)
            caches[i] = None
        t0 = time.perf_counter()
        opt.step([grads[n][t] for n, t in keys])
        extra["optimizer"].append(time.perf_counter() - t0)
    med = lambda xs: 1e3 * float(np.median(xs[3:]))
    rows = [(f"{n.name} ({n.layer.type})", med(fwd[n.name]), med(bwd[n.name])) for n in nodes]
    rows += [(name, med(times), 0.0) for name, times in extra.items()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-dir", default=os.environ.get("LAYERKIT_BENCH_DATA"))
    args = parser.parse_args()
    rows = profile(args.model, args.batch, args.steps, args.data_dir)
    total = sum(f + b for _, f, b in rows)
    print(f"| layer | forward ms | backward ms | share |\n|---|---:|---:|---:|")
    for name, f, b in rows:
        print(f"| {name} | {f:.2f} | {b:.2f} | {100 * (f + b) / total:.0f}% |")
    print(f"| **total** | | | {total:.1f} ms/batch = {args.batch / total * 1e3:,.0f} img/s |")


if __name__ == "__main__":
    main()
