"""The same nets in PyTorch, built from the same layerkit model files, so the
benchmark compares like with like: every built-in layer of a sequential net
(``torch_sequential``), every built-in loss (``torch_loss``) and optimizer
(``torch_optimizer``). Needs ``pip install torch==2.13.0``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


class _LastAxisSoftmax(nn.Module):
    """Softmax / log-softmax over a per-sample axis given as layerkit counts it (0 = dim 1)."""

    def __init__(self, axis: int, rank: int, log: bool):
        super().__init__()
        self.dim, self.log = axis % rank + 1, log

    def forward(self, x):
        return torch.log_softmax(x, self.dim) if self.log else torch.softmax(x, self.dim)


def _module(layer: dict, shape: list[int]) -> nn.Module:
    """The PyTorch module for one sequential layerkit layer on a per-sample ``shape``."""
    kind = layer["type"]
    if kind == "conv2d":
        pad = layer.get("padding", 0)
        padding = "same" if pad == "same" else (0 if pad == "valid" else _pair(pad))
        return nn.Conv2d(shape[0], layer["filters"], _pair(layer["kernel_size"]), stride=_pair(layer.get("stride", 1)),
                         padding=padding, dilation=_pair(layer.get("dilation", 1)), groups=layer.get("groups", 1),
                         bias=layer.get("use_bias", True))
    if kind == "conv2d_transpose":
        return nn.ConvTranspose2d(shape[0], layer["filters"], _pair(layer["kernel_size"]),
                                  stride=_pair(layer.get("stride", 1)), padding=_pair(layer.get("padding", 0)),
                                  output_padding=_pair(layer.get("output_padding", 0)),
                                  dilation=_pair(layer.get("dilation", 1)), bias=layer.get("use_bias", True))
    if kind == "batch_norm":
        cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return cls(shape[0], eps=layer.get("epsilon", 1e-5), momentum=1 - layer.get("momentum", 0.9),
                   affine=layer.get("affine", True))
    if kind == "layer_norm":
        dims = layer.get("normalized_dims") or len(shape)
        return nn.LayerNorm(shape[len(shape) - dims:], eps=layer.get("epsilon", 1e-5),
                            elementwise_affine=layer.get("elementwise_affine", True))
    if kind == "local_response_norm":  # PyTorch divides alpha by size
        size = layer.get("size", 5)
        return nn.LocalResponseNorm(size, alpha=layer.get("alpha", 1e-4) * size, beta=layer.get("beta", 0.75),
                                    k=layer.get("k", 2.0))
    simple = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "flatten": nn.Flatten}
    if kind in simple:
        return simple[kind]()
    if kind == "leaky_relu":
        return nn.LeakyReLU(layer.get("alpha", 0.01))
    if kind == "prelu":
        return nn.PReLU(shape[0] if layer.get("per_channel") else 1, init=layer.get("init", 0.25))
    if kind in ("softmax", "log_softmax"):
        return _LastAxisSoftmax(layer.get("axis", 0), len(shape), kind == "log_softmax")
    if kind in ("max_pool2d", "avg_pool2d"):
        k = _pair(layer["pool_size"])
        stride = _pair(layer.get("stride") or layer["pool_size"])
        common = dict(stride=stride, padding=_pair(layer.get("padding", 0)), ceil_mode=layer.get("ceil_mode", False))
        if kind == "max_pool2d":
            return nn.MaxPool2d(k, **common)
        return nn.AvgPool2d(k, count_include_pad=layer.get("count_include_pad", False), **common)
    if kind == "global_avg_pool2d":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if kind == "global_max_pool2d":
        return nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
    if kind == "dense":  # nn.Linear acts on the last axis, as dense does
        return nn.Linear(shape[-1], layer["units"], bias=layer.get("use_bias", True))
    if kind == "dropout":
        return nn.Dropout(layer.get("rate", 0.5))
    if kind == "dropout2d":
        return nn.Dropout2d(layer.get("rate", 0.5))
    if kind == "reshape":
        return nn.Unflatten(1, tuple(layer["shape"])) if len(shape) == 1 else nn.Sequential(
            nn.Flatten(), nn.Unflatten(1, tuple(layer["shape"])))
    raise ValueError(f"no PyTorch translation for layer type {kind!r}")


def torch_sequential(model_file: str | Path) -> nn.Sequential:
    """The model file's sequential net as an ``nn.Sequential`` (PyTorch's default initialisation)."""
    spec = json.loads(Path(model_file).read_text())
    shape = list(spec["input"]["shape"])
    modules = []
    for layer in spec["layers"]:
        if layer.get("inputs") and len(layer["inputs"]) > 1:
            raise ValueError(f"{layer.get('name', layer['type'])}: only sequential nets are translated")
        module = _module(layer, shape)
        modules.append(module)
        with torch.no_grad():  # each next shape from a dry run of one sample
            module.eval()
            shape = list(module(torch.zeros(1, *shape)).shape[1:])
            module.train()
    return nn.Sequential(*modules)


def torch_loss(spec: dict) -> nn.Module:
    """The model file's loss as a PyTorch loss module (mse keeps layerkit's batchmean default)."""
    config = dict(spec.get("loss") or {"type": "softmax_cross_entropy"})
    kind = config.pop("type")
    reduction = config.get("reduction", "batchmean" if kind == "mse" else "mean")
    weight = torch.tensor(config["class_weights"]) if config.get("class_weights") else None
    if kind == "softmax_cross_entropy":
        return nn.CrossEntropyLoss(weight=weight, ignore_index=config.get("ignore_index") or -100,
                                   label_smoothing=config.get("label_smoothing", 0.0), reduction=reduction)
    if kind == "nll":
        return nn.NLLLoss(weight=weight, ignore_index=config.get("ignore_index") or -100, reduction=reduction)
    if kind == "multiclass_hinge":
        return nn.MultiMarginLoss(p=config.get("p", 1), margin=config.get("margin", 1.0), weight=weight,
                                  reduction=reduction)
    if kind == "binary_cross_entropy_with_logits":
        pos = torch.tensor(config["pos_weight"]) if config.get("pos_weight") else None
        return nn.BCEWithLogitsLoss(pos_weight=pos, reduction=reduction)
    elementwise = {"mse": nn.MSELoss, "l1": nn.L1Loss, "binary_cross_entropy": nn.BCELoss}
    if kind in elementwise:
        if reduction == "batchmean":
            inner = elementwise[kind](reduction="sum")
            return _PerSample(inner)
        return elementwise[kind](reduction=reduction)
    if kind == "huber":
        return nn.HuberLoss(delta=config.get("delta", 1.0), reduction=reduction)
    if kind == "smooth_l1":
        return nn.SmoothL1Loss(beta=config.get("beta", 1.0), reduction=reduction)
    raise ValueError(f"no PyTorch translation for loss type {kind!r}")


class _PerSample(nn.Module):
    """A summed loss divided by the batch size (layerkit's ``batchmean``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, out, target):
        return self.inner(out, target) / out.shape[0]


def torch_optimizer(training: dict, params) -> torch.optim.Optimizer:
    """The model file's optimizer (``training.weight_decay`` as PyTorch's, on every tensor)."""
    config = dict(training.get("optimizer") or {"type": "sgd"})
    kind = config.pop("type")
    wd = float(training.get("weight_decay", 0) or 0)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=config.get("lr", 0.01), momentum=config.get("momentum", 0.0),
                               dampening=config.get("dampening", 0.0), nesterov=config.get("nesterov", False),
                               weight_decay=wd)
    if kind in ("adam", "adamw"):
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        return cls(params, lr=config.get("lr", 0.001), betas=(config.get("beta1", 0.9), config.get("beta2", 0.999)),
                   eps=config.get("eps", 1e-8), weight_decay=wd)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.get("lr", 0.001), alpha=config.get("rho", 0.9),
                                   eps=config.get("eps", 1e-8), momentum=config.get("momentum", 0.0),
                                   weight_decay=wd)
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=config.get("lr", 0.01), lr_decay=config.get("lr_decay", 0.0),
                                   initial_accumulator_value=config.get("initial_accumulator_value", 0.0),
                                   eps=config.get("eps", 1e-10), weight_decay=wd)
    raise ValueError(f"no PyTorch translation for optimizer type {kind!r}")


def train_epoch(model_file, x, y, batch_size: int, threads: int, with_cpu: bool = False):
    """Train one epoch over (x, y) with the model file's optimizer and weight decay, as layerkit
    does; returns seconds spent in the training loop (and, ``with_cpu``, the process's CPU
    seconds in it)."""
    import time

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_sequential(model_file)
    training = json.loads(Path(model_file).read_text()).get("training", {})
    opt = torch_optimizer(training, net.parameters())
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
