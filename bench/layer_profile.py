"""Where one training step's time goes: forward and backward per layer, loss and optimizer.

    python bench/layer_profile.py models/alexnet_mnist.json --batch 128 --steps 20
    python bench/layer_profile.py models/alexnet_mnist.json --batch 256 --infer

Drives a chain-shaped model exactly as the trainer does (same Model, loss and optimizer
objects) but times every node separately with perf_counter; the figures are
medians over the steps after a warm-up, in milliseconds per batch. ``--infer`` times
``Model.infer`` (what ``predict`` runs) node by node instead: batch norms folded into
the layer before them show as 0, layers that overwrite their input are marked in place.
``bench/torch_profile.py`` gives PyTorch's table for the same net.
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
        for i, node in enumerate(nodes):
            if model.pool_first[i]:  # runs after the pool (Model.forward), timed there
                values.append(values[-1])
                caches.append(None)
                continue
            t0 = time.perf_counter()
            y, cache = node.layer.forward(model.params[node.name], values[-1], True, rng, model.state[node.name])
            fwd[node.name].append(time.perf_counter() - t0)
            if i and model.pool_first[i - 1]:
                act = nodes[i - 1]
                t0 = time.perf_counter()
                y, act_cache = act.layer.forward(model.params[act.name], y, True, rng, model.state[act.name])
                fwd[act.name].append(time.perf_counter() - t0)
                cache = (cache, act_cache)
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
            if model.pool_first[i]:  # its backward ran in the pool's node
                grads[node.name] = {}
                continue
            if i and model.pool_first[i - 1] and call != "skip":
                act = nodes[i - 1]
                pool_cache, act_cache = caches[i]
                dy, _ = getattr(act.layer, model.backward_plan[i - 1])(model.params[act.name], act_cache, dy)
                bwd[act.name].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                dy, grads[node.name] = node.layer.backward(model.params[node.name], pool_cache, dy)
            elif call == "skip":
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
    rows = [(f"{n.name} ({n.layer.type}{', after the pool' if moved else ''})", _median_ms(fwd[n.name]),
             _median_ms(bwd[n.name]) if bwd[n.name] else 0.0) for n, moved in zip(nodes, model.pool_first, strict=True)]
    rows += [(name, _median_ms(times), 0.0) for name, times in extra.items()]
    return rows


def _median_ms(seconds: list[float]) -> float:
    """The median in milliseconds, leaving out the three warm-up steps."""
    return 1e3 * float(np.median(seconds[3:]))


def profile_infer(model_file: str, batch: int, steps: int, data_dir: str | None) -> list[tuple[str, float, float]]:
    """``Model.infer`` node by node, following its inference plan; ms per batch."""
    from layerkit.modelfile.build import build_model
    from layerkit.parallel.malloc import tune_malloc
    from layerkit.training.runs import prepare_data
    from layerkit.modelfile.spec import read_model_file, spec_from_dict

    tune_malloc()
    raw, source = read_model_file(model_file)
    raw.setdefault("training", {}).setdefault("data", {})["train_limit"] = batch * (steps + 3)
    spec = spec_from_dict(raw, source=Path(source).name)
    model = build_model(spec)
    data = prepare_data(spec, model, data_dir)
    plan = model.inference_plan()
    times = {n.name: [] for n in model.nodes}
    for step in range(steps + 3):
        plan = model.inference_plan()
        values = [data.x_train[step * batch:(step + 1) * batch]]
        for i, (node, (alias, params, inplace)) in enumerate(zip(model.nodes, plan, strict=True)):
            t0 = time.perf_counter()
            if alias >= 0:
                y = values[alias]
            elif inplace:
                y = node.layer.infer_inplace(params, values[-1], model.state[node.name])
            else:
                y = node.layer.infer(params, values[-1], model.state[node.name])
            if not model.pool_first[i]:
                times[node.name].append(time.perf_counter() - t0)
            if i and model.pool_first[i - 1]:  # as Model.infer: the activation on the pooled output
                act = model.nodes[i - 1]
                t0 = time.perf_counter()
                run = act.layer.infer_inplace if node.layer.infer_fresh else act.layer.infer
                y = run(model.params[act.name], y, model.state[act.name])
                times[act.name].append(time.perf_counter() - t0)
            values.append(y)

    def how(alias, inplace, moved):
        return " after the pool" if moved else " folded" if alias >= 0 else " in place" if inplace else ""

    return [(f"{n.name} ({n.layer.type}){how(alias, inplace, moved)}", _median_ms(times[n.name]), 0.0)
            for n, (alias, _, inplace), moved in zip(model.nodes, plan, model.pool_first, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-dir", default=os.environ.get("LAYERKIT_BENCH_DATA"))
    parser.add_argument("--infer", action="store_true", help="time Model.infer (predict) instead of a training step")
    args = parser.parse_args()
    rows = (profile_infer if args.infer else profile)(args.model, args.batch, args.steps, args.data_dir)
    total = sum(f + b for _, f, b in rows)
    print("| layer | forward ms | backward ms | share |\n|---|---:|---:|---:|")
    for name, f, b in rows:
        print(f"| {name} | {f:.2f} | {b:.2f} | {100 * (f + b) / total:.0f}% |")
    print(f"| **total** | | | {total:.1f} ms/batch = {args.batch / total * 1e3:,.0f} img/s |")


if __name__ == "__main__":
    main()
