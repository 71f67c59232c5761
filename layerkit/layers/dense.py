"""Fully connected layer."""

from __future__ import annotations

from layerkit import hookimpl
from layerkit.nn.layer import Coupling, Example, Layer, ParamSpec, require_rank


class Dense(Layer):
    type = "dense"
    sample_coupling = Coupling.NONE
    description = "Fully connected layer: y = x W + b, on a flat (features,) input."
    params_schema = {
        "type": "object",
        "properties": {
            "units": {"type": "integer", "minimum": 1, "description": "number of outputs"},
            "use_bias": {"type": "boolean", "default": True},
            "init": {"enum": ["he_normal", "he_uniform", "glorot_uniform", "glorot_normal", "lecun_normal"],
                     "default": "glorot_uniform", "description": "weight initializer"},
        },
        "required": ["units"],
        "additionalProperties": False,
    }
    examples = (
        Example({"units": 3}, (5,)),
        Example({"units": 4, "use_bias": False, "init": "he_normal"}, (6,)),
    )

    def output_shape(self, input_shape):
        require_rank(input_shape, 1, "flatten it first")
        return (self.units,)

    def param_specs(self, input_shape):
        (d,) = input_shape
        specs = {"W": ParamSpec((d, self.units), self.init, fan_in=d, fan_out=self.units, decay=True)}
        if self.use_bias:
            specs["b"] = ParamSpec((self.units,), "zeros")
        return specs

    def flops(self, input_shape):
        return 2 * input_shape[0] * self.units

    def forward(self, params, x, training=False, rng=None, state=None):
        y = x @ params["W"]
        if self.use_bias:
            y += params["b"]
        return y, x

    def infer(self, params, x, state=None):
        # the bias may come from a folded batch norm even when use_bias is false
        y = x @ params["W"]
        if "b" in params:
            y += params["b"]
        return y

    def fold_affine(self, params, scale, shift):
        w = params["W"] * scale
        b = shift + params["b"] * scale if "b" in params else shift.copy()
        return {"W": w.astype(params["W"].dtype, copy=False), "b": b.astype(params["W"].dtype, copy=False)}

    def backward(self, params, cache, dy):
        return dy @ params["W"].T, self.backward_params(params, cache, dy)

    def backward_params(self, params, cache, dy):
        """Only the parameter gradients: the model calls this when the input is the data."""
        x = cache
        grads = {"W": x.T @ dy}
        if self.use_bias:
            grads["b"] = dy.sum(axis=0)
        return grads


@hookimpl
def layerkit_register_layers(register):
    register(Dense)
