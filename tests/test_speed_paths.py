"""The speed paths keep the numbers: float32 end to end; malloc tuning takes effect."""

from __future__ import annotations

import numpy as np
import pytest

from layerkit.modelfile.build import build_model
from layerkit.nn.losses import SoftmaxCrossEntropy
from layerkit.training.trainer import build_optimizer

ALEXNET_LIKE = {
    "format": 1, "name": "alexnet_like", "input": {"shape": [1, 12, 12]},
    "layers": [
        {"name": "conv1", "type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "same", "use_bias": False},
        {"name": "bn1", "type": "batch_norm"},
        {"type": "relu"},
        {"name": "conv2", "type": "conv2d", "filters": 6, "kernel_size": 3, "padding": "same"},
        {"name": "bn2", "type": "batch_norm"},
        {"type": "relu"},
        {"name": "pool1", "type": "max_pool2d", "pool_size": 2},
        {"name": "conv3", "type": "conv2d", "filters": 4, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "flatten"},
        {"name": "fc1", "type": "dense", "units": 8, "use_bias": False},
        {"name": "bn3", "type": "batch_norm"},
        {"type": "relu"},
        {"type": "dropout", "rate": 0.5},
        {"name": "logits", "type": "dense", "units": 3},
    ],
    "loss": {"type": "softmax_cross_entropy"},
    "training": {"optimizer": {"type": "adam"}, "weight_decay": 1e-4},
}


def test_float32_through_an_alexnet_like_training_step():
    model = build_model(ALEXNET_LIKE)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    out, caches = model.forward(x, training=True, rng=rng)
    assert out.dtype == np.float32
    loss = SoftmaxCrossEntropy()
    _, lcache = loss.forward(out, y)
    grads = model.backward(caches, loss.backward(lcache))
    assert all(g.dtype == np.float32 for tensors in grads.values() for g in tensors.values())
    opt = build_optimizer(model, ALEXNET_LIKE["training"]["optimizer"], 1e-4)
    opt.step([grads[node.name][t] for node in model.nodes for t in model.params[node.name]])
    assert all(v.dtype == np.float32 for _, _, v in model.parameters())
    assert all(v.dtype == np.float32 for tensors in model.state.values() for v in tensors.values())


MLP = {"format": 1, "name": "mlp", "input": {"shape": [1, 4, 4]},
       "layers": [{"type": "flatten"}, {"name": "fc1", "type": "dense", "units": 5}, {"type": "relu"},
                  {"name": "fc2", "type": "dense", "units": 3}],
       "loss": {"type": "softmax_cross_entropy"}}




MALLOC_PROBE = r'''
import ctypes, sys
from layerkit.parallel.malloc import tune_malloc
libc = ctypes.CDLL("libc.so.6")
fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in fields]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def mmapped(nbytes):
    block = libc.malloc(nbytes)
    held = libc.mallinfo2().hblks  # blocks glibc served with their own mmap
    libc.free(block)
    return held - libc.mallinfo2().hblks
print(mmapped(64 << 20), tune_malloc(), mmapped(64 << 20), tune_malloc())
'''


def test_tune_malloc_keeps_big_blocks_in_the_heap():
    # in a child: the setting is process-wide and cannot be undone
    import ctypes
    import subprocess
    import sys

    try:
        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018 - the lookup is the probe
    except (OSError, AttributeError):
        pytest.skip("needs glibc 2.33+ (mallinfo2)")
    out = subprocess.run([sys.executable, "-c", MALLOC_PROBE], capture_output=True, text=True, check=True).stdout
    before, applied, after, again = out.split()
    # 64 MiB is above glibc's mmap threshold until tune_malloc raises it; then it comes from the heap
    assert (int(before), applied, int(after), again) == (1, "True", 0, "True"), out
