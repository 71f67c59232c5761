"""Capabilities a layer may declare, the public spelling of :mod:`layerkit.nn.capabilities`.

A capability is a small mixin a layer class adds to its bases to opt into an optimisation the
planner's graph passes make (an in-place backward, only the input gradient for a frozen layer,
pooling before the activation, batch norm folded into the layer before it); the conformance suite
checks every capability a layer declares::

    from layerkit import Layer
    from layerkit.capabilities import CommutesWithMax, InplaceBackward

    class MyRelu(CommutesWithMax, InplaceBackward, Layer):
        ...

What each one promises is in docs/plugins.md. This module is public and stable (docs/stability.md).
"""

from layerkit.nn.capabilities import (AbsorbsAffine, AffineInference, CommutesWithMax, FreshGradient,
                                      FreshInferOutput, InplaceBackward, InplaceInfer, InputGradientOnly,
                                      MaxPooling)

__all__ = ["InplaceBackward", "InputGradientOnly", "FreshGradient", "InplaceInfer", "FreshInferOutput",
           "CommutesWithMax", "MaxPooling", "AffineInference", "AbsorbsAffine"]
