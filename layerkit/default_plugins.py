"""The plugins layerkit ships, as pytest lists its ``default_plugins``: every registry loads them first.

This is the one place that names modules of every tier, so it sits above all of them, at
the root of the package, and holds nothing but their names: it imports nothing, and the
plugin manager (``layerkit.plugins.manager``) reads the names as data, exactly as it reads
the modules that installed packages declare under the ``layerkit`` entry-point group. So
a registry built anywhere (by the CLI, the Python API, the pytest plugin, a training run,
a gradient check) holds the same built-in layers, losses, optimizers, datasets and
callbacks, while no tier's code names a tier above it (``tests/test_architecture.py``
checks both).
"""

from __future__ import annotations

DEFAULT_PLUGINS: tuple[str, ...] = (
    # layerkit.layers: the built-in layers
    "layerkit.layers.dense",
    "layerkit.layers.activations",
    "layerkit.layers.conv",
    "layerkit.layers.conv_transpose",
    "layerkit.layers.pooling",
    "layerkit.layers.normalization",
    "layerkit.layers.dropout",
    "layerkit.layers.reshaping",
    "layerkit.layers.merging",
    "layerkit.layers.attention",
    "layerkit.layers.positional",
    "layerkit.layers.embedding",
    "layerkit.layers.recurrent",
    # layerkit.nn: losses and optimizers
    "layerkit.nn.losses",
    "layerkit.nn.elementwise_losses",
    "layerkit.nn.optimizers",
    # layerkit.data: MNIST, Fashion-MNIST, CSV, image folders; text; synthetic sequence tasks
    "layerkit.data.builtin",
    "layerkit.data.text",
    "layerkit.data.sequence_tasks",
    # layerkit.training: the TensorBoard logger
    "layerkit.training.tensorboard",
)
