"""No layer method changes the layer: after construction a layer object is only read.

The graph passes and the planner rely on it (a fold reads shapes from the graph, not from state a
layer stashed on itself), and so does running one layer object in several threads.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from layerkit.gradcheck.layers import initial_state, random_input, random_params
from layerkit.nn.layer import Example, Layer, overrides
from layerkit.plugins.manager import get_registry
from layerkit.modelfile.spec import fill_defaults

REGISTRY = get_registry()
CASES = [(name, i) for name in REGISTRY.names("layer") for i in range(len(REGISTRY.layer(name).examples))]


def exercise(layer: Layer, input_shape: Any) -> None:
    """Every method a layer offers, in training and inference, on float32 values."""
    multi = layer.arity != 1
    rng = np.random.default_rng(0)
    layer.output_shape(input_shape)
    pspecs, sspecs = layer.param_specs(input_shape), layer.state_specs(input_shape)
    layer.flops(input_shape)
    layer.workspace_bytes(input_shape, 4)
    params = {k: v.astype(np.float32) for k, v in random_params(pspecs, rng).items()}
    x = random_input(input_shape, 4, rng, multi, layer)  # token ids stay int64
    x = [a if a.dtype.kind == "i" else a.astype(np.float32) for a in x] if multi else (
        x if x.dtype.kind == "i" else x.astype(np.float32))
    for training in (True, False):
        state = {k: v.astype(np.float32) for k, v in initial_state(sspecs).items()}
        y, cache = layer.forward(params, x, training, np.random.default_rng(1), state)
        dy = np.random.default_rng(2).standard_normal(np.shape(y)).astype(np.float32)
        layer.backward(params, cache, dy)
        layer.backward_params(params, cache, dy)
        if overrides(layer, "backward_inplace"):
            layer.backward_inplace(params, cache, dy.copy())
        layer.infer(params, x, state)
        if overrides(layer, "infer_inplace"):
            layer.infer_inplace(params, np.copy(x), state)
    if overrides(layer, "inference_affine"):
        layer.inference_affine(params, state)
    if overrides(layer, "fold_affine"):
        channels = np.shape(y)[1]
        layer.fold_affine(params, np.ones(channels, np.float32), np.zeros(channels, np.float32))


def assert_unchanged(layer: Layer, input_shape: Any) -> None:
    before = copy.deepcopy(vars(layer))
    exercise(layer, input_shape)
    after = vars(layer)
    changed = sorted(k for k in before.keys() | after.keys() if k not in before or k not in after
                     or not _same(before[k], after[k]))
    if changed:
        raise AssertionError(f"layer {layer.type!r} changed its attribute(s) {changed}")


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.all(a == b)) and type(a) is type(b)
    except ValueError:
        return repr(a) == repr(b)


@pytest.mark.parametrize("layer_type, index", CASES, ids=[f"{n}[{i}]" for n, i in CASES])
def test_methods_leave_the_layer_unchanged(layer_type, index):
    cls = REGISTRY.layer(layer_type)
    example = cls.examples[index]
    assert_unchanged(cls(**fill_defaults(cls.params_schema, example.config)), example.input_shape)


class Stashes(Layer):
    """Remembers the input rank in output_shape, as Dense once did for its fold."""

    type = "stashes_rank"
    examples = (Example({}, (3,)),)

    def output_shape(self, input_shape: Any) -> tuple[int, ...]:
        self.flat = len(input_shape) == 1
        return tuple(input_shape)

    def forward(self, params, x, training=False, rng=None, state=None):
        return x.copy(), None

    def backward(self, params, cache, dy):
        return dy.copy(), {}


class CountsCalls(Stashes):
    """Changes an attribute set in __init__ on every forward."""

    type = "counts_calls"

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.calls = 0

    def output_shape(self, input_shape: Any) -> tuple[int, ...]:
        return tuple(input_shape)

    def forward(self, params, x, training=False, rng=None, state=None):
        self.calls += 1
        return x.copy(), None


@pytest.mark.parametrize("cls, attribute", [(Stashes, "flat"), (CountsCalls, "calls")])
def test_the_check_catches_a_layer_that_changes_itself(cls, attribute):
    with pytest.raises(AssertionError, match=attribute):
        assert_unchanged(cls(), (3,))
