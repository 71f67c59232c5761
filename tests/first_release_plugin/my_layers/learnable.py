# my_layers/learnable.py: written, like __init__.py, the way layerkit 0.1.0's docs/plugins.md taught
# (do not modernise it: tests/test_first_release_plugin.py checks that such a plugin keeps working)
import numpy as np
import layerkit
from layerkit.layer import Example, Layer, ParamSpec


def _channels(x):
    # broadcast a per-channel vector over (N, C) or (N, C, H, W)
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


class Scale(Layer):
    type = "channel_scale"
    description = "y = gamma * x + beta, one learnable gamma and beta per channel"
    per_sample = True
    params_schema = {"type": "object", "properties": {}, "additionalProperties": False}
    examples = (Example({}, (5,)), Example({}, (3, 4, 4)))

    def param_specs(self, input_shape):
        return {"gamma": ParamSpec((input_shape[0],), init="ones"),
                "beta": ParamSpec((input_shape[0],), init="zeros")}

    def flops(self, input_shape):
        return 2 * int(np.prod(input_shape))

    def forward(self, params, x, training=False, rng=None, state=None):
        shape = _channels(x)
        return x * params["gamma"].reshape(shape) + params["beta"].reshape(shape), x

    def backward(self, params, cache, dy):
        x = cache
        axes = tuple(i for i in range(dy.ndim) if i != 1)
        grads = {"gamma": (dy * x).sum(axis=axes), "beta": dy.sum(axis=axes)}
        return dy * params["gamma"].reshape(_channels(dy)), grads


class GaussianNoise(Layer):
    type = "gaussian_noise"
    description = "adds N(0, stddev^2) noise in training, identity at inference"
    per_sample = True
    stochastic = True
    params_schema = {"type": "object", "additionalProperties": False,
                     "properties": {"stddev": {"type": "number", "minimum": 0, "default": 0.1}}}
    examples = (Example({}, (6,)), Example({"stddev": 0.5}, (2, 3, 3)))

    def forward(self, params, x, training=False, rng=None, state=None):
        if not training:
            return x, None
        return x + rng.normal(0.0, self.stddev, size=x.shape).astype(x.dtype), None

    def backward(self, params, cache, dy):
        return dy, {}


@layerkit.hookimpl
def layerkit_register_layers(register):
    register(Scale)
    register(GaussianNoise)
