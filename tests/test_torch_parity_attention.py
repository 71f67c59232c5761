"""multi_head_attention against PyTorch's nn.MultiheadAttention (batch_first, self-attention) with the
same weights, in float64: forward, input and parameter gradients, with and without the causal and
key padding masks. Skipped without torch."""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.plugins.manager import get_registry

torch = pytest.importorskip("torch")

TOL = 1e-10
PAD = 0
N, T, D, H = 3, 7, 8, 2


def _layer(**config):
    cls = get_registry().layer("multi_head_attention")
    filled = {k: v["default"] for k, v in cls.params_schema["properties"].items() if "default" in v}
    return cls(**{**filled, **config})


def _torch_run(params, x, dy, causal, ids, use_bias):
    mha = torch.nn.MultiheadAttention(D, H, bias=use_bias, batch_first=True, dtype=torch.float64)
    state = {name: torch.from_numpy(value) for name, value in params.items()}
    mha.load_state_dict(state)  # strict: the tensor names and shapes are PyTorch's own
    xt = torch.from_numpy(x).requires_grad_(True)
    # boolean masks both (True: may not attend), as PyTorch wants them of one kind
    mask = torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None
    padding = torch.from_numpy(ids == PAD) if ids is not None else None
    y, _ = mha(xt, xt, xt, need_weights=False, attn_mask=mask, key_padding_mask=padding, is_causal=False)
    y.backward(torch.from_numpy(dy))
    grads = {name: p.grad.numpy() for name, p in mha.named_parameters()}
    return y.detach().numpy(), xt.grad.numpy(), grads


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "key-padding"])
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "no-bias"])
def test_forward_and_gradients_match_pytorch(causal, padded, use_bias):
    config = {"num_heads": H, "causal": causal, "use_bias": use_bias}
    if padded:
        config |= {"padding_idx": PAD, "vocab_size": 10}
    layer = _layer(**config)
    rng = np.random.default_rng(0)
    shapes = [(T, D), (T,)] if padded else (T, D)
    params = {name: rng.standard_normal(spec.shape) * 0.5 for name, spec in layer.param_specs(shapes).items()}
    x = rng.standard_normal((N, T, D))
    ids = rng.integers(1, 10, (N, T))
    ids[0, 5:] = PAD  # right padding, and one padded key in the middle: the mask is per key
    ids[1, 2] = PAD
    dy = rng.standard_normal((N, T, D))

    y, cache = layer.forward(params, [x, ids] if padded else x)
    dx, grads = layer.backward(params, cache, dy)
    if padded:
        dx, dids = dx
        assert dids is None
    ty, tdx, tgrads = _torch_run(params, x, dy, causal, ids if padded else None, use_bias)

    np.testing.assert_allclose(y, ty, rtol=0, atol=TOL)
    np.testing.assert_allclose(dx, tdx, rtol=0, atol=TOL)
    assert set(grads) == set(tgrads)
    for name, g in grads.items():
        np.testing.assert_allclose(g, tgrads[name], rtol=0, atol=TOL, err_msg=name)


def test_the_comparison_can_fail():
    # the wrong head split (heads interleaved rather than in blocks) is caught
    layer = _layer(num_heads=H)
    rng = np.random.default_rng(1)
    params = {name: rng.standard_normal(spec.shape) for name, spec in layer.param_specs((T, D)).items()}
    x, dy = rng.standard_normal((N, T, D)), rng.standard_normal((N, T, D))
    perm = np.arange(3 * D).reshape(3, H, D // H).transpose(0, 2, 1).reshape(-1)
    shuffled = {**params, "in_proj_weight": params["in_proj_weight"][perm],
                "in_proj_bias": params["in_proj_bias"][perm]}
    y, _ = layer.forward(shuffled, x)
    ty, _, _ = _torch_run(params, x, dy, False, None, True)
    assert not np.allclose(y, ty, rtol=0, atol=TOL)
