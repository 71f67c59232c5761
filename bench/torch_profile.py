"""PyTorch's side of ``bench/layer_profile.py``: the ``torch.profiler`` operator table for the
same net built from the same model file, one training step or one inference pass.

    python bench/torch_profile.py models/alexnet_mnist.json --batch 128 --threads 1
    python bench/torch_profile.py models/alexnet_mnist.json --batch 256 --infer

Trains (with the model file's optimizer and weight decay, as ``bench/speed.py``'s reference) or infers (``eval()``,
``no_grad``) on random MNIST-shaped input (a token model, ``"dtype": "int64"``: its bench/torch_sequence.py twin on
random token windows); prints the median step time of ``--steps``
steps after a warm-up, then the profiler's table over those steps, by self CPU time.
Needs ``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_reference import torch_optimizer, torch_sequential  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--infer", action="store_true", help="profile eval-mode no_grad forward passes")
    parser.add_argument("--rows", type=int, default=20, help="operator rows to print")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = json.loads(Path(args.model).read_text())
    if (spec.get("input") or {}).get("dtype") == "int64":  # a sequence model: its twin from torch_sequence
        net, opt, loss_fn, x, y = _sequence_net(args.model, args.batch)
    else:
        net = torch_sequential(args.model)
        opt = torch_optimizer(spec.get("training", {}), net.parameters())
        loss_fn = torch.nn.CrossEntropyLoss()
        x = torch.randn(args.batch, 1, 28, 28)
        y = torch.randint(0, 10, (args.batch,))

    if args.infer:
        net.eval()

        def step():
            with torch.no_grad():
                net(x)
    else:
        net.train()

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()

    for _ in range(5):
        step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    ms = 1e3 * float(np.median(seconds))
    print(f"{'inference pass' if args.infer else 'training step'}: {ms:.2f} ms/batch = "
          f"{args.batch / ms * 1e3:,.0f} img/s (median of {args.steps}, {args.threads} thread(s))")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(f"times below: totals over {args.steps} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


def _sequence_net(model_file: str, batch: int):
    """A token model's PyTorch twin (bench/torch_sequence.py), its Adam, a per-token cross-entropy
    and random token windows."""
    from torch_sequence import TorchGraph, optimizer

    from layerkit.modelfile.build import build_model

    network = build_model(model_file)
    net = TorchGraph(network)
    opt = optimizer(network.graph.spec.training, net.parameters())
    vocab = network.graph.nodes[0].layer.token_range()
    k = int(network.graph.output.output_shape[-1])
    t = network.graph.input_shape[0]

    def loss_fn(out, target):
        return torch.nn.functional.cross_entropy(out.reshape(-1, k), target.reshape(-1))

    return net, opt, loss_fn, torch.randint(0, vocab, (batch, t)), torch.randint(0, k, (batch, t))


if __name__ == "__main__":
    main()
