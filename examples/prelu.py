"""A learnable PReLU written the way a lab exercise asks for it: one file, no package.

    layerkit check-grads examples/prelu.py                       # every example below
    layerkit check-grads examples/prelu.py:PReLU --input-shape 4,6,6
    layerkit fit my_model.json --plugin examples/prelu.py        # use it in a model file

Its type is ``my_prelu`` because layerkit's own ``prelu`` may be installed too, and two
plugins claiming one name make it unusable.
"""

import numpy as np

from layerkit import Coupling, Example, Layer, ParamSpec


class PReLU(Layer):
    type = "my_prelu"                 # the name model files use (layerkit's own is `prelu`)
    description = ("Parametric ReLU: x where x > 0, a * x elsewhere, with a learnable slope a per "
                   "channel (the first per-sample axis), or one slope for everything if shared; "
                   "a starts at 0.25.")
    sample_coupling = Coupling.NONE   # each sample's output depends on that sample only
    has_kinks = True                  # not differentiable at x = 0
    params_schema = {
        "type": "object",
        "properties": {"shared": {"type": "boolean", "default": False}},
        "additionalProperties": False,
    }
    examples = (Example({}, (3, 8, 8)), Example({"shared": True}, (5,)))

    def param_specs(self, input_shape):
        n = 1 if self.shared else input_shape[0]
        return {"a": ParamSpec((n,), init=0.25)}   # PyTorch's initial slope

    def _slope(self, a, ndim):
        # (1, C, 1, 1) for a (N, C, H, W) batch: one slope per channel
        return a.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, params, x, training=False, rng=None, state=None):
        a = self._slope(params["a"], x.ndim)
        return np.where(x > 0, x, a * x), (x, a)

    def backward(self, params, cache, dy):
        x, a = cache
        positive = x > 0
        dx = np.where(positive, dy, a * dy)
        per_element = np.where(positive, 0, dy * x)
        if self.shared:
            da = per_element.sum().reshape(1)
        else:
            axes = (0,) + tuple(range(2, x.ndim))
            da = per_element.sum(axis=axes)
        return dx, {"a": da}
