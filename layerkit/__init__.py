"""layerkit: neural-network layers as plugins, models as JSON, gradients you can trust."""

__version__ = "0.1.0"

import pluggy  # noqa: E402

#: marks a plugin's hook functions (``@layerkit.hookimpl``); the specifications are in layerkit.plugins.hookspecs
hookimpl = pluggy.HookimplMarker("layerkit")

__all__ = ["__version__", "hookimpl"]
