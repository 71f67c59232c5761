"""layerkit: neural-network layers as plugins, models as JSON, gradients you can trust.

A plugin author needs this one import (docs/plugins.md; what is public and stable: docs/stability.md)::

    from layerkit import Coupling, Example, Layer, ParamSpec, hookimpl
"""

__version__ = "0.2.0"

import pluggy  # noqa: E402

#: marks a plugin's hook functions (``@layerkit.hookimpl``); the specifications are in layerkit.plugins.hookspecs
hookimpl = pluggy.HookimplMarker("layerkit")

import typing  # noqa: E402

from layerkit.compat import install as _install_old_paths  # noqa: E402
from layerkit.errors import ContractError, LayerkitError, ShapeError  # noqa: E402

if typing.TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports them
    from layerkit.api import History, Model, check_grads, load, load_dataset
    from layerkit.nn.layer import Coupling, Example, Layer, ParamSpec

# the first release's module paths (layerkit.layer, layerkit.builder, ...) keep working, with a warning
_install_old_paths()

#: names imported on first use, so that ``import layerkit`` (which every layer plugin does, for
#: ``hookimpl``) loads neither numpy nor the Python API (layerkit.api) and the trainer behind it
_LAZY = {
    **dict.fromkeys(("Layer", "Example", "ParamSpec", "Coupling"), "layerkit.nn.layer"),
    **dict.fromkeys(("load", "load_dataset", "Model", "History", "check_grads"), "layerkit.api"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        # by name, not an import statement: the root package must not depend on the top tier
        # (import-linter would see every layer plugin, which imports layerkit, reach the trainer)
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'layerkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    # writing a layer plugin
    "Layer", "Example", "ParamSpec", "Coupling", "hookimpl",
    # the errors a layer raises
    "LayerkitError", "ShapeError", "ContractError",
    # the Python API
    "load", "load_dataset", "Model", "History", "check_grads",
]
