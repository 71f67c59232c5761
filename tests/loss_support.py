"""Central differences of a loss, shared by the loss tests (float64 inputs)."""

import numpy as np


def numeric_grad(loss, out, target, eps=1e-6):
    grad = np.zeros_like(out)
    for idx in np.ndindex(out.shape):
        old = out[idx]
        out[idx] = old + eps
        up = loss.forward(out, target)[0]
        out[idx] = old - eps
        down = loss.forward(out, target)[0]
        out[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad
