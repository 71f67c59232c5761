"""The same sequence models in PyTorch, built from the same layerkit model files and started from the
same weights: embedding, rnn / lstm / gru, multi_head_attention, positional_encoding, layer_norm, dense,
relu and add, wired by name as the model file wires them. Needs ``pip install torch==2.13.0``.

``TorchGraph(network)`` copies a built layerkit network's tensors (``layerkit.modelfile.build.build_model``),
so both frameworks start from the same numbers; ``train_epoch`` and ``fit`` train it with the model
file's optimizer, cosine / constant schedule and gradient clipping, visiting the samples in layerkit's
order (the trainer's permutation of epoch ``e`` is ``default_rng([seed, 2, e])``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from layerkit.layers.positional import sinusoids

RECURRENT = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class _Positional(nn.Module):
    def __init__(self, table: np.ndarray, learned: bool):
        super().__init__()
        tensor = torch.tensor(table, dtype=torch.float32)
        if learned:
            self.weight = nn.Parameter(tensor)
        else:
            self.register_buffer("weight", tensor)

    def forward(self, x):
        return x + self.weight[:x.shape[1]]


class _Recurrent(nn.Module):
    def __init__(self, module: nn.Module, return_sequences: bool):
        super().__init__()
        self.rnn, self.return_sequences = module, return_sequences

    def forward(self, x):
        y, _ = self.rnn(x)
        return y if self.return_sequences else y[:, -1]


class _SelfAttention(nn.Module):
    def __init__(self, module: nn.MultiheadAttention, causal: bool):
        super().__init__()
        self.attention, self.causal = module, causal

    def forward(self, x):
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool).triu(1) if self.causal else None
        return self.attention(x, x, x, attn_mask=mask, need_weights=False)[0]


def _module(layer: Any, params: dict[str, np.ndarray], input_shape: Any) -> nn.Module:
    """The PyTorch module of one layerkit layer, holding a copy of its tensors ``params``."""
    kind = layer.type
    p = {k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
    if kind == "embedding":
        module: nn.Module = nn.Embedding(*p["weight"].shape, padding_idx=layer.padding_idx)
        module.weight.data.copy_(p["weight"])
        return module
    if kind in RECURRENT:
        if getattr(layer, "padding_idx", None) is not None:
            raise ValueError("padded (masked) recurrent layers are not translated")
        extra = {"nonlinearity": layer.nonlinearity} if kind == "rnn" else {}
        rnn = RECURRENT[kind](p["weight_ih"].shape[1], layer.units, batch_first=True, **extra)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(rnn, f"{name}_l0").data.copy_(p[name])
        return _Recurrent(rnn, layer.return_sequences)
    if kind == "multi_head_attention":
        if layer.padding_idx is not None:
            raise ValueError("attention with a key padding mask is not translated")
        d = p["out_proj.weight"].shape[0]
        mha = nn.MultiheadAttention(d, layer.num_heads, dropout=layer.dropout, bias=layer.use_bias, batch_first=True)
        mha.in_proj_weight.data.copy_(p["in_proj_weight"])
        mha.out_proj.weight.data.copy_(p["out_proj.weight"])
        if layer.use_bias:
            mha.in_proj_bias.data.copy_(p["in_proj_bias"])
            mha.out_proj.bias.data.copy_(p["out_proj.bias"])
        return _SelfAttention(mha, layer.causal)
    if kind == "positional_encoding":
        if layer.kind == "learned":
            return _Positional(params["weight"], learned=True)
        return _Positional(sinusoids(layer.max_len, input_shape[-1]), learned=False)
    if kind == "layer_norm":
        norm = nn.LayerNorm(tuple(p["gamma"].shape), eps=layer.epsilon)
        norm.weight.data.copy_(p["gamma"])
        norm.bias.data.copy_(p["beta"])
        return norm
    if kind == "dense":
        linear = nn.Linear(*p["W"].shape, bias="b" in p)
        linear.weight.data.copy_(p["W"].T)
        if "b" in p:
            linear.bias.data.copy_(p["b"])
        return linear
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"no PyTorch translation for layer type {kind!r}")


class TorchGraph(nn.Module):
    """A built layerkit network as a PyTorch module: the same layers, wiring and starting weights."""

    def __init__(self, network: Any):
        super().__init__()
        self.order: list[tuple[str, list[str], str]] = []
        self.layers = nn.ModuleDict()
        for node in network.graph.nodes:
            kind = node.layer.type
            if kind != "add":
                module = _module(node.layer, network.params[node.name], node.input_shape)
                self.layers[node.name.replace(".", "_")] = module
            self.order.append((node.name, list(node.inputs), kind))

    def forward(self, x):
        values = {"input": x}
        last = "input"
        for name, inputs, kind in self.order:
            args = [values[i] for i in inputs]
            values[name] = sum(args[1:], args[0]) if kind == "add" else self.layers[name.replace(".", "_")](args[0])
            last = name
        return values[last]


def _lr(training: dict, epoch: int) -> float:
    lr = float((training.get("optimizer") or {}).get("lr", 0.001))
    schedule = training.get("schedule") or {"type": "constant"}
    if schedule["type"] == "constant":
        return lr
    if schedule["type"] == "cosine":
        low = float(schedule.get("min_lr", 0.0))
        return low + (lr - low) * (1 + math.cos(math.pi * epoch / int(training["epochs"]))) / 2
    raise ValueError(f"schedule {schedule['type']!r} is not translated")


def optimizer(training: dict, params) -> torch.optim.Optimizer:
    config = training.get("optimizer") or {"type": "adam"}
    if config["type"] != "adam" or training.get("weight_decay"):
        raise ValueError("only adam without weight decay is translated for the sequence models")
    return torch.optim.Adam(params, lr=_lr(training, 0), betas=(config.get("beta1", 0.9), config.get("beta2", 0.999)),
                            eps=config.get("eps", 1e-8))


def _loss(net, xt, yt, k):
    out = net(xt)
    return nn.functional.cross_entropy(out.reshape(-1, k), yt.reshape(-1), ignore_index=-100)


def _counted_mean(net, x, y, k, batch: int) -> float:
    """Mean loss over every counted token of (x, y) (targets -100 do not count)."""
    total, count = 0.0, 0
    net.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xt, yt = torch.from_numpy(np.array(x[i:i + batch])), torch.from_numpy(y[i:i + batch].astype(np.int64))
            out = net(xt)
            total += float(nn.functional.cross_entropy(out.reshape(-1, k), yt.reshape(-1), ignore_index=-100,
                                                       reduction="sum"))
            count += int((yt != -100).sum())
    net.train()
    return total / max(count, 1)


def fit(network: Any, training: dict, x, y, x_test, y_test, threads: int = 1) -> dict:
    """Train the network's PyTorch twin as the layerkit trainer trains it; per-epoch train loss (the
    batches' mean, weighted by counted tokens), test loss, the loss of every batch, and seconds."""
    torch.set_num_threads(threads)
    torch.manual_seed(int(training.get("seed", 0)))
    net = TorchGraph(network)
    opt = optimizer(training, net.parameters())
    clip = (training.get("gradient_clipping") or {}).get("max_norm")
    k = int(network.graph.output.output_shape[-1])
    batch, seed = int(training["batch_size"]), int(training.get("seed", 0))
    history, batches = [], []
    for epoch in range(int(training["epochs"])):
        for group in opt.param_groups:
            group["lr"] = _lr(training, epoch)
        perm = np.random.default_rng([seed, 2, epoch]).permutation(len(x))
        total, count, start = 0.0, 0, time.perf_counter()
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xt, yt = torch.from_numpy(x[idx]), torch.from_numpy(y[idx].astype(np.int64))
            opt.zero_grad(set_to_none=True)
            loss = _loss(net, xt, yt, k)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(net.parameters(), float(clip))
            opt.step()
            counted = int((yt != -100).sum())
            total, count = total + loss.item() * counted, count + counted
            batches.append(loss.item())
        seconds = time.perf_counter() - start
        test_loss = _counted_mean(net, x_test, y_test, k, 256)
        history.append({"epoch": epoch + 1, "loss": total / count, "test_loss": test_loss, "seconds": seconds})
    return {"history": history, "batches": batches}


def train_epoch(network: Any, training: dict, x, y, threads: int, with_cpu: bool = False):
    """Seconds for one training epoch over (x, y) in the data's order (and, ``with_cpu``, the process's
    CPU seconds), for bench/speed.py."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = TorchGraph(network)
    opt = optimizer(training, net.parameters())
    clip = (training.get("gradient_clipping") or {}).get("max_norm")
    k = int(network.graph.output.output_shape[-1])
    batch = int(training["batch_size"])
    xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(y.astype(np.int64))
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(xt), batch):
        opt.zero_grad(set_to_none=True)
        loss = _loss(net, xt[i:i + batch], yt[i:i + batch], k)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(net.parameters(), float(clip))
        opt.step()
    wall = time.perf_counter() - start
    return (wall, time.process_time() - cpu) if with_cpu else wall
