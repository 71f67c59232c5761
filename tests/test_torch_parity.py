"""Cross-checks against PyTorch in float64, where PyTorch is installed (it is never a dependency:
`pip install torch` next to layerkit to run these). Each layer/loss/optimizer also has a plain-numpy
reference test that runs everywhere."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional cross-check)")
F = torch.nn.functional

from layerkit.nn.elementwise_losses import (L1, BinaryCrossEntropy,  # noqa: E402
                                            BinaryCrossEntropyWithLogits, Huber, MeanSquaredError, SmoothL1)
from layerkit.nn.losses import MulticlassHinge, NLLLoss, SoftmaxCrossEntropy  # noqa: E402


def torch_loss_and_grad(fn, out, *args):
    z = torch.tensor(out, dtype=torch.float64, requires_grad=True)
    value = fn(z, *args)
    value.backward()
    return float(value.detach()), z.grad.numpy()


def assert_same(ours, theirs):
    (v1, g1), (v2, g2) = ours, theirs
    assert v1 == pytest.approx(v2, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(g1, g2, rtol=1e-11, atol=1e-15)


def run(loss, out, target):
    value, cache = loss.forward(out, target)
    return value, loss.backward(cache)


RNG = np.random.default_rng(0)
OUT = RNG.standard_normal((7, 4)) * 2
IDS = np.array([0, 3, 1, 1, 2, 0, 3])
W = [0.5, 2.0, 1.0, 3.0]


@pytest.mark.parametrize("config", [{}, {"class_weights": W, "label_smoothing": 0.2}, {"ignore_index": 1},
                                    {"class_weights": W, "ignore_index": 3, "reduction": "sum",
                                     "label_smoothing": 0.1}])
def test_cross_entropy(config):
    kwargs = {"weight": torch.tensor(config["class_weights"], dtype=torch.float64)
              if "class_weights" in config else None,
              "ignore_index": config.get("ignore_index", -100), "reduction": config.get("reduction", "mean"),
              "label_smoothing": config.get("label_smoothing", 0.0)}
    assert_same(run(SoftmaxCrossEntropy(**config), OUT, IDS),
                torch_loss_and_grad(lambda z: F.cross_entropy(z, torch.tensor(IDS), **kwargs), OUT))
    logp = OUT - np.log(np.exp(OUT).sum(axis=1, keepdims=True))
    nll_config = {k: v for k, v in config.items() if k != "label_smoothing"}
    kwargs.pop("label_smoothing")
    assert_same(run(NLLLoss(**nll_config), logp, IDS),
                torch_loss_and_grad(lambda z: F.nll_loss(z, torch.tensor(IDS), **kwargs), logp))


def test_cross_entropy_probability_rows_with_weights():
    rows = RNG.dirichlet(np.ones(4), size=7)
    assert_same(run(SoftmaxCrossEntropy(class_weights=W, label_smoothing=0.1), OUT, rows),
                torch_loss_and_grad(lambda z: F.cross_entropy(z, torch.tensor(rows),
                                                              weight=torch.tensor(W, dtype=torch.float64),
                                                              label_smoothing=0.1), OUT))


@pytest.mark.parametrize("config", [{}, {"p": 2, "margin": 0.7, "class_weights": W}, {"reduction": "sum"}])
def test_multi_margin(config):
    kwargs = {"p": config.get("p", 1), "margin": config.get("margin", 1.0),
              "weight": (torch.tensor(config["class_weights"], dtype=torch.float64)
                         if "class_weights" in config else None),
              "reduction": config.get("reduction", "mean")}
    assert_same(run(MulticlassHinge(**config), OUT, IDS),
                torch_loss_and_grad(lambda z: F.multi_margin_loss(z, torch.tensor(IDS), **kwargs), OUT))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_elementwise(reduction):
    target = RNG.uniform(0, 1, OUT.shape)
    t = torch.tensor(target)
    prob = 1 / (1 + np.exp(-OUT))
    cases = [
        (MeanSquaredError(reduction=reduction), OUT, lambda z: F.mse_loss(z, t, reduction=reduction)),
        (L1(reduction=reduction), OUT, lambda z: F.l1_loss(z, t, reduction=reduction)),
        (Huber(delta=0.8, reduction=reduction), OUT, lambda z: F.huber_loss(z, t, delta=0.8, reduction=reduction)),
        (SmoothL1(beta=0.5, reduction=reduction), OUT,
         lambda z: F.smooth_l1_loss(z, t, beta=0.5, reduction=reduction)),
        (BinaryCrossEntropy(weight=W, reduction=reduction), prob,
         lambda z: F.binary_cross_entropy(z, t, weight=torch.tensor(W, dtype=torch.float64), reduction=reduction)),
        (BinaryCrossEntropyWithLogits(weight=W, pos_weight=[2.0, 0.5, 1.0, 3.0], reduction=reduction), OUT,
         lambda z: F.binary_cross_entropy_with_logits(z, t, weight=torch.tensor(W, dtype=torch.float64),
                                                      pos_weight=torch.tensor([2.0, 0.5, 1.0, 3.0],
                                                                              dtype=torch.float64),
                                                      reduction=reduction)),
    ]
    for loss, out, fn in cases:
        assert_same(run(loss, out, target), torch_loss_and_grad(fn, out))


# -- optimizers ---------------------------------------------------------------------------------------

from layerkit.nn.optimizers import SGD, Adagrad, AdamW  # noqa: E402


@pytest.mark.parametrize("name, ours, theirs", [
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.3), dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("sgd-nesterov", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adamw", dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1)),
    ("adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.2),
     dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.2)),
])
@pytest.mark.parametrize("clip", [None, {"max_norm": 0.5}, {"value": 0.2}])
def test_optimizer_steps(name, ours, theirs, clip):
    cls = {"sgd": SGD, "sgd-nesterov": SGD, "adamw": AdamW, "adagrad": Adagrad}[name]
    tcls = {"sgd": torch.optim.SGD, "sgd-nesterov": torch.optim.SGD, "adamw": torch.optim.AdamW,
            "adagrad": torch.optim.Adagrad}[name]
    rng = np.random.default_rng(5)
    w0 = [rng.standard_normal((3, 2)), rng.standard_normal(2)]
    grads = [[rng.standard_normal(w.shape) for w in w0] for _ in range(5)]
    ws = [w.copy() for w in w0]
    opt = cls(ws, decay=[True, True], **ours)
    if clip:
        opt.set_clipping(clip.get("max_norm"), clip.get("value"))
    tw = [torch.tensor(w, requires_grad=True) for w in w0]
    topt = tcls(tw, **theirs)
    for gs in grads:
        opt.step([g.copy() for g in gs])
        for t, g in zip(tw, gs, strict=True):
            t.grad = torch.tensor(g)
        if clip and "value" in clip:
            torch.nn.utils.clip_grad_value_(tw, clip["value"])
        if clip and "max_norm" in clip:
            torch.nn.utils.clip_grad_norm_(tw, clip["max_norm"])
        topt.step()
    for w, t in zip(ws, tw, strict=True):
        np.testing.assert_allclose(w, t.detach().numpy(), rtol=1e-12, atol=1e-14)


# -- layers -------------------------------------------------------------------------------------------

from layerkit.layers.activations import LogSoftmax, PReLU, Sigmoid, Softmax  # noqa: E402
from layerkit.layers.conv_transpose import Conv2DTranspose  # noqa: E402
from layerkit.layers.normalization import BatchNorm, LayerNorm  # noqa: E402
from layerkit.layers.pooling import AvgPool2D, GlobalMaxPool2D, MaxPool2D  # noqa: E402
from layerkit.modelfile.spec import fill_defaults  # noqa: E402


def make(cls, **config):
    return cls(**fill_defaults(cls.params_schema, config))


def compare_layer(layer, params, x, torch_fn, torch_params=None, training=False, state=None):
    """Forward and backward of the layer against torch_fn(x_t, *param tensors) in float64."""
    y, cache = layer.forward(params, x, training=training, state=state)
    xt = torch.tensor(x, requires_grad=True)
    pts = {k: torch.tensor(v, requires_grad=True) for k, v in (torch_params or params).items()}
    yt = torch_fn(xt, pts)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dx, grads = layer.backward(params, cache, dy)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    return grads, pts


def test_prelu_and_softmax_axes():
    x = RNG.standard_normal((2, 3, 4, 5))
    alpha = RNG.uniform(0.1, 0.4, 3)
    grads, pts = compare_layer(make(PReLU, per_channel=True), {"alpha": alpha}, x,
                               lambda xt, p: F.prelu(xt, p["alpha"]))
    np.testing.assert_allclose(grads["alpha"], pts["alpha"].grad.numpy(), rtol=1e-11)
    for axis, dim in ((0, 1), (-1, 3), (1, 2)):
        compare_layer(make(Softmax, axis=axis), {}, x, lambda xt, p, dim=dim: F.softmax(xt, dim=dim))
        compare_layer(make(LogSoftmax, axis=axis), {}, x, lambda xt, p, dim=dim: F.log_softmax(xt, dim=dim))


def test_sigmoid_float32_tail():
    x = np.linspace(-87, 20, 500).astype(np.float32)
    ours = Sigmoid().forward({}, x)[0]
    theirs = torch.sigmoid(torch.tensor(x)).numpy()
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    # at least as accurate, relatively, as PyTorch's float32 sigmoid
    assert np.max(np.abs(ours - exact) / exact) <= max(2 * np.max(np.abs(theirs - exact) / exact), 2e-7)


@pytest.mark.parametrize("dims, shape", [(None, (3, 2, 4, 5)), (1, (3, 4, 5)), (2, (2, 3, 4, 5))])
def test_layer_norm(dims, shape):
    x = RNG.standard_normal(shape) * 3 + 2
    norm_shape = shape[1:] if dims is None else shape[len(shape) - dims:]
    params = {"gamma": RNG.standard_normal(norm_shape), "beta": RNG.standard_normal(norm_shape)}
    grads, pts = compare_layer(make(LayerNorm, normalized_dims=dims), params, x,
                               lambda xt, p: F.layer_norm(xt, norm_shape, p["gamma"], p["beta"], eps=1e-5))
    for k in params:
        np.testing.assert_allclose(grads[k], pts[k].grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_affine(affine):
    x = RNG.standard_normal((5, 3, 2, 2))
    params = {"gamma": RNG.standard_normal(3), "beta": RNG.standard_normal(3)} if affine else {}
    state = {"running_mean": np.zeros(3), "running_var": np.ones(3)}
    grads, pts = compare_layer(
        make(BatchNorm, affine=affine), params, x, training=True, state=state,
        torch_fn=lambda xt, p: F.batch_norm(xt, None, None, p.get("gamma"), p.get("beta"), training=True))
    for k in params:
        np.testing.assert_allclose(grads[k], pts[k].grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("config", [
    {"filters": 3, "kernel_size": 3},
    {"filters": 2, "kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1},
    {"filters": 2, "kernel_size": [3, 2], "stride": [2, 3], "padding": [1, 0], "output_padding": [0, 2],
     "dilation": [1, 2]},
])
def test_conv2d_transpose(config):
    x = RNG.standard_normal((2, 3, 4, 5))
    layer = make(Conv2DTranspose, **config)
    params = {k: RNG.standard_normal(s.shape) for k, s in layer.param_specs((3, 4, 5)).items()}
    grads, pts = compare_layer(layer, params, x, lambda xt, p: F.conv_transpose2d(
        xt, p["W"], p["b"], stride=layer.stride, padding=layer.padding, output_padding=layer.output_padding,
        dilation=layer.dilation))
    for k in params:
        np.testing.assert_allclose(grads[k], pts[k].grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), ([3, 2], [2, 3], [1, 0]), (2, 3, 0)])
@pytest.mark.parametrize("ceil", [False, True])
def test_pooling(k, s, p, ceil):
    x = RNG.standard_normal((2, 2, 7, 6))
    compare_layer(make(MaxPool2D, pool_size=k, stride=s, padding=p, ceil_mode=ceil), {}, x,
                  lambda xt, _: F.max_pool2d(xt, k, s, p, ceil_mode=ceil))
    for include in (False, True):
        compare_layer(make(AvgPool2D, pool_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=include),
                      {}, x,
                      lambda xt, _, include=include: F.avg_pool2d(xt, k, s, p, ceil_mode=ceil,
                                                                  count_include_pad=include))
    compare_layer(make(GlobalMaxPool2D), {}, x, lambda xt, _: F.adaptive_max_pool2d(xt, 1).flatten(1))


# -- bench/torch_reference.py builds the same nets ------------------------------------------------------

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_torch_reference_translates_the_new_layers(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from torch_reference import torch_loss, torch_optimizer, torch_sequential
    finally:
        sys.path.remove(str(BENCH))
    from layerkit.modelfile.build import build_model
    from layerkit.modelfile.spec import spec_from_dict

    net = {"format": 1, "name": "every_layer", "input": {"shape": [3, 12, 12]},
           "layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": 1},
                      {"type": "batch_norm", "affine": False}, {"type": "prelu", "per_channel": True},
                      {"type": "dropout2d", "rate": 0.1},
                      {"type": "max_pool2d", "pool_size": 3, "stride": 2, "ceil_mode": True},
                      {"type": "conv2d_transpose", "filters": 3, "kernel_size": 3, "stride": 2, "padding": 1,
                       "output_padding": 1},
                      {"type": "avg_pool2d", "pool_size": 3, "stride": 2, "padding": 1, "count_include_pad": True},
                      {"type": "layer_norm"}, {"type": "dense", "units": 5}, {"type": "log_softmax", "axis": -1},
                      {"type": "global_max_pool2d"}, {"type": "dense", "units": 4}],
           "loss": {"type": "multiclass_hinge", "p": 2},
           "training": {"optimizer": {"type": "adamw", "lr": 0.01}, "weight_decay": 0.1}}
    path = tmp_path / "net.json"
    path.write_text(json.dumps(net))
    ours = build_model(spec_from_dict(net))
    theirs = torch_sequential(path)
    assert tuple(theirs(torch.zeros(2, 3, 12, 12)).shape[1:]) == ours.graph.nodes[-1].output_shape
    assert isinstance(torch_loss(net), torch.nn.MultiMarginLoss)
    assert isinstance(torch_optimizer(net["training"], theirs.parameters()), torch.optim.AdamW)

    # the shipped autoencoder with the same weights gives the same output
    from layerkit.modelfile import zoo
    ae_file = zoo.files()["mnist_autoencoder"]
    ae = build_model(spec_from_dict(json.loads(ae_file.read_text())))
    tnet = torch_sequential(ae_file).double()
    convs = [m for m in tnet if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    for module, node in zip(convs, [n for n in ae.nodes if n.param_specs], strict=True):
        module.weight.data = torch.tensor(ae.params[node.name]["W"].astype(np.float64))
        module.bias.data = torch.tensor(ae.params[node.name]["b"].astype(np.float64))
    x = RNG.uniform(0, 1, (2, 1, 28, 28))
    ours_out = ae.astype(np.float64).forward(x)[0]
    np.testing.assert_allclose(ours_out, tnet(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
