"""The same nets in PyTorch, built from the same layerkit model files, so the
benchmark compares like with like. Only the sequential layer types the
benchmarked models use are translated. Needs ``pip install torch==2.13.0``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def torch_sequential(model_file: str | Path) -> nn.Sequential:
    spec = json.loads(Path(model_file).read_text())
    shape = list(spec["input"]["shape"])
    modules = []
    for layer in spec["layers"]:
        kind = layer["type"]
        if kind == "conv2d":
            k = _pair(layer["kernel_size"])
            pad = layer.get("padding", 0)
            padding = "same" if pad == "same" else (0 if pad == "valid" else _pair(pad))
            conv = nn.Conv2d(shape[0], layer["filters"], k, stride=_pair(layer.get("stride", 1)),
                             padding=padding, bias=layer.get("use_bias", True))
            modules.append(conv)
            if padding == "same":
                shape = [layer["filters"], shape[1], shape[2]]
            else:
                p = padding if isinstance(padding, tuple) else (padding, padding)
                s = _pair(layer.get("stride", 1))
                shape = [layer["filters"], (shape[1] + 2 * p[0] - k[0]) // s[0] + 1,
                         (shape[2] + 2 * p[1] - k[1]) // s[1] + 1]
        elif kind == "batch_norm":
            cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
            modules.append(cls(shape[0], eps=layer.get("epsilon", 1e-5), momentum=1 - layer.get("momentum", 0.9)))
        elif kind == "relu":
            modules.append(nn.ReLU())
        elif kind == "max_pool2d":
            p = layer["pool_size"]
            modules.append(nn.MaxPool2d(p, stride=layer.get("stride", p)))
            shape = [shape[0], shape[1] // p, shape[2] // p]
        elif kind == "flatten":
            modules.append(nn.Flatten())
            shape = [math.prod(shape)]
        elif kind == "dense":
            modules.append(nn.Linear(shape[0], layer["units"], bias=layer.get("use_bias", True)))
            shape = [layer["units"]]
        elif kind == "dropout":
            modules.append(nn.Dropout(layer.get("rate", 0.5)))
        else:
            raise ValueError(f"no PyTorch translation for layer type {kind!r}")
    return nn.Sequential(*modules)


def train_epoch(model_file, x, y, batch_size: int, threads: int, lr: float = 0.01, with_cpu: bool = False):
    """Train one epoch over (x, y); returns seconds spent in the training loop (and, ``with_cpu``,
    the process's CPU seconds in it)."""
    import time

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_sequential(model_file)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y.astype("int64"))
    net.train()
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(xt), batch_size):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt[i:i + batch_size]), yt[i:i + batch_size])
        loss.backward()
        opt.step()
    wall = time.perf_counter() - start
    return (wall, time.process_time() - cpu) if with_cpu else wall


def infer_seconds(model_file, x, batch_size: int, threads: int, with_cpu: bool = False):
    """Seconds for one inference pass over ``x`` (``eval()`` mode, ``no_grad``), batch by batch
    (and, ``with_cpu``, the process's CPU seconds in it)."""
    import time

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_sequential(model_file)
    net.eval()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(xt), batch_size):
            net(xt[i:i + batch_size])
        wall = time.perf_counter() - start
        return (wall, time.process_time() - cpu) if with_cpu else wall
