"""The live kernel registry: every named kernel, with its reference and compiled implementations."""

from __future__ import annotations

from layerkit.kernels import batchnorm, conv_direct, maxpool, winograd
from layerkit.kernels.kernel import Kernel

#: every kernel by name, in the order the checks and ``layerkit info`` list them
KERNELS: dict[str, Kernel] = {k.name: k for k in (maxpool.KERNEL, conv_direct.KERNEL, winograd.KERNEL,
                                                   batchnorm.KERNEL)}
