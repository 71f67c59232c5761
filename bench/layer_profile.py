"""Where one training step's time goes: forward and backward per layer, loss and optimizer.

    python bench/layer_profile.py models/alexnet_mnist.json --batch 128 --steps 20
    python bench/layer_profile.py models/alexnet_mnist.json --batch 256 --infer

Drives a chain-shaped model exactly as the trainer does (same Network, loss and optimizer
objects) but times every node separately with perf_counter; the figures are
medians over the steps after a warm-up, in milliseconds per batch. ``--infer`` times
``Network.infer`` (what ``predict`` runs) node by node instead: batch norms folded into
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

from layerkit.nn.plan import BackwardCall, InferCall

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
        records = model.plan.nodes  # the planner's records, which Network.forward/backward follow
        for rec in records:
            if rec.runs_after_pool:  # runs after the pool (Network.forward), timed there
                values.append(values[-1])
                caches.append(None)
                continue
            t0 = time.perf_counter()
            y, cache = rec.layer.forward(model.params[rec.name], values[-1], True, rng, model.state[rec.name])
            fwd[rec.name].append(time.perf_counter() - t0)
            if rec.then is not None:
                act = records[rec.then]
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
        for rec in reversed(records):
            i, call = rec.index, rec.backward  # the method Network.backward calls
            t0 = time.perf_counter()
            if rec.runs_after_pool:  # its backward ran in the pool's node
                grads[rec.name] = {}
                continue
            if rec.then is not None and call is not BackwardCall.SKIP:
                act = records[rec.then]
                pool_cache, act_cache = caches[i]
                dy, _ = getattr(act.layer, act.backward.value)(model.params[act.name], act_cache, dy)
                bwd[act.name].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                dy, grads[rec.name] = rec.layer.backward(model.params[rec.name], pool_cache, dy)
            elif call is BackwardCall.SKIP:
                grads[rec.name] = {}
            elif call is BackwardCall.BACKWARD_PARAMS:
                grads[rec.name] = rec.layer.backward_params(model.params[rec.name], caches[i], dy)
            else:
                dy, grads[rec.name] = getattr(rec.layer, call.value)(model.params[rec.name], caches[i], dy)
            bwd[rec.name].append(time.perf_counter() - t0)
            caches[i] = None
        t0 = time.perf_counter()
        opt.step([grads[n][t] for n, t in keys])
        extra["optimizer"].append(time.perf_counter() - t0)
    rows = [(f"{r.name} ({r.layer.type}{', after the pool' if r.runs_after_pool else ''})", _median_ms(fwd[r.name]),
             _median_ms(bwd[r.name]) if bwd[r.name] else 0.0) for r in model.plan.nodes]
    rows += [(name, _median_ms(times), 0.0) for name, times in extra.items()]
    return rows


def _median_ms(seconds: list[float]) -> float:
    """The median in milliseconds, leaving out the three warm-up steps."""
    return 1e3 * float(np.median(seconds[3:]))


def profile_infer(model_file: str, batch: int, steps: int, data_dir: str | None) -> list[tuple[str, float, float]]:
    """``Network.infer`` node by node, following its inference plan; ms per batch."""
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
        for rec in plan.nodes:
            params = model.params[rec.name] if rec.infer_params is None else rec.infer_params
            t0 = time.perf_counter()
            if rec.infer is InferCall.ALIAS:
                y = values[rec.alias]
            elif rec.infer is InferCall.INFER_INPLACE:
                y = rec.layer.infer_inplace(params, values[-1], model.state[rec.name])
            else:
                y = rec.layer.infer(params, values[-1], model.state[rec.name])
            if not rec.runs_after_pool:
                times[rec.name].append(time.perf_counter() - t0)
            if rec.then is not None:  # as Network.infer: the activation on the pooled output
                act = plan.nodes[rec.then]
                t0 = time.perf_counter()
                run = act.layer.infer_inplace if rec.then_infer is InferCall.INFER_INPLACE else act.layer.infer
                y = run(model.params[act.name], y, model.state[act.name])
                times[act.name].append(time.perf_counter() - t0)
            values.append(y)

    def how(rec) -> str:
        if rec.runs_after_pool:
            return " after the pool"
        if rec.infer is InferCall.ALIAS:
            return " folded"
        return " in place" if rec.infer is InferCall.INFER_INPLACE else ""

    return [(f"{r.name} ({r.layer.type}){how(r)}", _median_ms(times[r.name]), 0.0) for r in plan.nodes]


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
