# my_layers/__init__.py
import numpy as np
import layerkit
from layerkit.layer import Example, Layer

class Swish(Layer):
    type = "swish"
    description = "x * sigmoid(beta * x)"
    params_schema = {"type": "object", "additionalProperties": False,
                     "properties": {"beta": {"type": "number", "exclusiveMinimum": 0, "default": 1.0}}}
    examples = (Example({}, (7,)), Example({"beta": 1.7}, (2, 3, 3)))

    def forward(self, params, x, training=False, rng=None, state=None):
        s = 0.5 * (1 + np.tanh(0.5 * self.beta * x))
        return x * s, (x, s)

    def backward(self, params, cache, dy):
        x, s = cache
        return dy * (s + self.beta * x * s * (1 - s)), {}

@layerkit.hookimpl
def layerkit_register_layers(register):
    register(Swish)
