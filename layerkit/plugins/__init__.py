"""Plugin system: hook specifications, the plugin manager, the name -> class registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerkit.compat import moved_attributes

if TYPE_CHECKING:
    from layerkit.plugins.registry import Registry


def registry_or_global(registry: Registry | None = None) -> Registry:
    """``registry`` when one is given, else the process-wide one (plugins loaded on first use).

    The plugin manager (pluggy, entry points, jsonschema) is imported only here, when needed.
    """
    if registry is not None:
        return registry
    from layerkit.plugins.manager import get_registry

    return get_registry()


#: the first release's module of this name: its names still work here, with a DeprecationWarning
__getattr__ = moved_attributes(__name__)
