"""Capabilities: what a layer may promise so that the planner's graph passes can rewrite around it.

:class:`~layerkit.nn.layer.Layer` holds what every layer needs. The members here serve
particular pairs of layers (relu before a max pool, batch norm after a convolution, a gradient
nobody else holds, a frozen layer whose weight gradient nobody needs): a layer opts in by
inheriting the mixin, before ``Layer``::

    class MyRelu(CommutesWithMax, InplaceBackward, FreshGradient, Layer):
        ...

Each mixin names one member and states its promise. The passes of :mod:`layerkit.nn.passes`
read the member, never the mixin: a layer that sets the member itself (``fresh_dx = True`` on a
plain ``Layer`` subclass, as layers written for 0.1 do) declares the same capability. Ask with
:func:`declares`. The conformance suite (``layerkit.testing``) checks every promise made, bit
for bit where training relies on it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np

# as in layerkit.nn.layer, which imports this module (for ``overrides``), so not from there
Params = Mapping[str, np.ndarray]


class InplaceBackward:
    """Provides :meth:`backward_inplace`: :meth:`~layerkit.nn.layer.Layer.backward`, allowed to overwrite ``dy``.

    The planner's ``choose_backward_calls`` pass calls it only with a ``dy`` nobody else holds
    (made by a layer with :class:`FreshGradient`, or a sum of several gradients). Worth it when
    writing into ``dy`` saves a new array (relu, batch norm). Promise: the result equals
    ``backward``'s on a copy of ``dy``, bit for bit, and ``dx`` is ``dy`` itself or a new array.
    """

    def backward_inplace(self, params: Params, cache: Any, dy: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
        """:meth:`backward`, but allowed to overwrite ``dy`` (and return it as ``dx``)."""
        return self.backward(params, cache, dy)  # type: ignore[attr-defined]


class InputGradientOnly:
    """Provides :meth:`backward_input`: only the input gradient of :meth:`~layerkit.nn.layer.Layer.backward`.

    The planner's ``choose_backward_calls`` pass calls it for a frozen layer (``"trainable": false``)
    below which a parameter still learns: the input gradient is needed, the parameter gradients are
    not. Worth it where the parameter gradients cost real work (dense, convolution: the GEMM for
    ``dW``). Promise: the result equals ``backward(params, cache, dy)[0]`` bit for bit (the same
    code path computes it), and ``dy`` is left alone.
    """

    def backward_input(self, params: Params, cache: Any, dy: np.ndarray) -> Any:
        """The input gradient of :meth:`backward` alone (an array, or a list for several inputs)."""
        return self.backward(params, cache, dy)[0]  # type: ignore[attr-defined]


class FreshGradient:
    """Declares ``fresh_dx = True``: every input gradient ``backward`` returns is a new array.

    Promise: it shares no memory with ``dy``, the input, the parameters or the cache (and
    ``backward_inplace`` returns such an array or the ``dy`` it was given). The planner may then
    hand that gradient to the next layer down for its :class:`InplaceBackward` path.
    """

    fresh_dx: ClassVar[bool] = True


class InplaceInfer:
    """Provides :meth:`infer_inplace`: :meth:`~layerkit.nn.layer.Layer.infer`, allowed to overwrite ``x``.

    The ``inplace_inference`` pass calls it only for a single-input layer that is the last reader
    of an ``x`` nobody else holds (made by a layer with :class:`FreshInferOutput`, or by another
    ``infer_inplace``). Promise: the result equals ``infer``'s bit for bit, and is ``x`` itself or
    a new array sharing no memory with ``x`` or a parameter.
    """

    def infer_inplace(self, params: Params, x: np.ndarray, state: dict[str, np.ndarray] | None = None) -> Any:
        """:meth:`infer`, but allowed to overwrite ``x`` (and return it)."""
        return self.infer(params, x, state)  # type: ignore[attr-defined]


class FreshInferOutput:
    """Declares ``infer_fresh = True``: :meth:`infer` returns a new array.

    Promise: it shares no memory with the input or the parameters, so the next layer may run its
    :class:`InplaceInfer` path on it.
    """

    infer_fresh: ClassVar[bool] = True


class CommutesWithMax:
    """Declares ``commutes_with_max = True``: this element-wise layer commutes with a max pool, exactly.

    Promise, for a single-input, element-wise layer that draws no random numbers: a
    :class:`MaxPooling` layer over its output gives, bit for bit, the output and input gradient of
    the same pool over its input followed by this layer (relu: the maximum of relu(x) is relu of
    the maximum of x, and where that maximum is not positive both give a zero gradient). The
    ``pool_first`` pass then runs the pool first and this layer on the pooled output, a quarter of
    the elements after a 2x2 pool, where the pool is its output's only reader.
    """

    commutes_with_max: ClassVar[bool] = True


class MaxPooling:
    """Declares ``pools_max = True``: the output is, per sample and channel, the maximum over windows.

    Promise: ``backward`` sends each output's gradient to entries of its window that equal that
    maximum (max pooling). Together with :class:`CommutesWithMax` it enables ``pool_first``.
    """

    pools_max: ClassVar[bool] = True


class AffineInference:
    """Provides :meth:`inference_affine`: the inference output is ``x * scale + shift`` per channel.

    The ``fold_batch_norm`` pass folds such a layer (batch norm) into the :class:`AbsorbsAffine`
    layer before it. Promise: the returned per-channel (axis 1 of the batch) ``(scale, shift)``
    give the inference output to float32 rounding; None means "not affine now".
    """

    def inference_affine(self, params: Params, state: Mapping[str, np.ndarray] | None = None
                         ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(scale, shift)`` per channel (axis 1) when the inference output is ``x * scale + shift``, else None."""
        return None


class AbsorbsAffine:
    """Provides :meth:`fold_affine`: parameters that make ``infer`` apply a per-channel affine map too.

    Promise: with the returned parameters ``infer(params, x)`` gives ``infer(x) * scale + shift``
    per output channel, to float32 rounding, without modifying ``params``; None when the layer
    cannot absorb that. The channel axis is the per-sample output axis :attr:`affine_axis` (0:
    channels first, a convolution; -1: the last axis, dense). The ``fold_batch_norm`` pass folds
    only where that axis is the batch norm's channel axis (axis 1 of the batch), which it reads
    from the graph's shapes. The result may add tensors ``params`` lacks (a bias where
    ``use_bias`` is false); only ``infer`` ever sees them.
    """

    #: the per-sample output axis that ``fold_affine``'s scale and shift run along
    affine_axis: ClassVar[int] = 0

    def fold_affine(self, params: Params, scale: np.ndarray, shift: np.ndarray) -> dict[str, np.ndarray] | None:
        """Parameters with which ``infer`` returns ``infer(params, x) * scale + shift``, or None."""
        return None


#: every capability, with the member it declares
CAPABILITIES: dict[type, str] = {
    InplaceBackward: "backward_inplace", InputGradientOnly: "backward_input", FreshGradient: "fresh_dx",
    InplaceInfer: "infer_inplace",
    FreshInferOutput: "infer_fresh", CommutesWithMax: "commutes_with_max", MaxPooling: "pools_max",
    AffineInference: "inference_affine", AbsorbsAffine: "fold_affine",
}

#: the mixins' own defaults: inheriting one without overriding its method provides nothing new
DEFAULTS: dict[str, Any] = {member: cap.__dict__[member] for cap, member in CAPABILITIES.items()
                            if callable(cap.__dict__[member])}


def declares(layer: Any, capability: type) -> bool:
    """Whether ``layer`` (a layer or its class) makes ``capability``'s promise.

    A flag capability counts when its member is true (set by the mixin or on the class itself);
    a method capability when the class implements the method (not the mixin's fallback).
    """
    member = CAPABILITIES[capability]
    cls = layer if isinstance(layer, type) else type(layer)
    value = getattr(cls, member, None)
    if member in DEFAULTS:
        return callable(value) and value is not DEFAULTS[member]
    return bool(getattr(layer, member, False))
