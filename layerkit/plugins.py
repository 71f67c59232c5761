"""Loading plugins: the built-in modules and the ``layerkit`` entry-point group.

Built-ins go through exactly the same hooks as third-party packages. A plugin
that fails to import or whose hook raises is recorded with its name and left
out; every other plugin keeps working. ``LAYERKIT_DISABLE_PLUGINS`` (comma
separated plugin names) switches plugins off.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import threading
from typing import Iterable

import pluggy

from . import hookspecs
from .registry import KINDS, LoadProblem, PluginInfo, Registry

ENTRY_POINT_GROUP = "layerkit"
DISABLE_ENV = "LAYERKIT_DISABLE_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "layerkit.layers.dense",
    "layerkit.layers.activations",
    "layerkit.layers.conv",
    "layerkit.layers.pooling",
    "layerkit.layers.normalization",
    "layerkit.layers.dropout",
    "layerkit.layers.reshaping",
    "layerkit.layers.merging",
    "layerkit.losses",
    "layerkit.optimizers",
    "layerkit.data.builtin",
)

HOOKS = {
    "layer": "layerkit_register_layers",
    "loss": "layerkit_register_losses",
    "optimizer": "layerkit_register_optimizers",
    "dataset": "layerkit_register_datasets",
}

_lock = threading.Lock()
_registry: Registry | None = None


def disabled_plugins(value: str | None = None) -> set[str]:
    value = os.environ.get(DISABLE_ENV, "") if value is None else value
    return {name.strip() for name in value.split(",") if name.strip()}


def _distribution_of(ep: md.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def load_registry(extra_plugins: Iterable[object] = (), *,
                  default_plugins: Iterable[str] = DEFAULT_PLUGINS,
                  entry_points: bool = True,
                  disabled: set[str] | None = None) -> Registry:
    """Build a fresh registry. ``extra_plugins`` are plugin objects (modules,
    instances) registered after the built-ins; tests use it."""
    disabled = disabled_plugins() if disabled is None else disabled
    registry = Registry()
    pm = pluggy.PluginManager("layerkit")
    pm.add_hookspecs(hookspecs)

    def add(name: str, load, dist: str | None = None, version: str | None = None) -> None:
        info = PluginInfo(name=name, distribution=dist, version=version)
        registry.plugins[name] = info
        if name in disabled:
            info.disabled = True
            return
        try:
            plugin = load()
            pm.register(plugin, name=name)
        except Exception as exc:  # a broken plugin must not take the others down
            message = f"failed to load: {type(exc).__name__}: {exc}"
            info.errors.append(message)
            registry.problems.append(LoadProblem(name, message))

    import layerkit

    for module in default_plugins:
        add(module, lambda module=module: importlib.import_module(module),
            "layerkit", layerkit.__version__)
    for i, plugin in enumerate(extra_plugins):
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
        add(name, lambda plugin=plugin: plugin)
    if entry_points:
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in registry.plugins:
                continue
            dist, version = _distribution_of(ep)
            add(ep.name, ep.load, dist, version)

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        # a misspelled hook name: say which plugin, drop it, keep the rest
        name = pm.get_name(exc.plugin) or str(exc.plugin)
        registry.problems.append(LoadProblem(name, f"unknown hook: {exc}"))
        registry.plugins[name].errors.append(f"unknown hook: {exc}")
        pm.unregister(exc.plugin)

    for kind in KINDS:
        caller = getattr(pm.hook, HOOKS[kind])
        # call each implementation on its own so one raising does not hide the rest
        for impl in reversed(caller.get_hookimpls()):
            name = impl.plugin_name
            info = registry.plugins.setdefault(name, PluginInfo(name=name))
            info.hooks.append(HOOKS[kind])

            def register(obj, _kind=kind, _name=name):
                key = getattr(obj, "name", None) if _kind == "dataset" else getattr(obj, "type", None)
                registry.add(_kind, key, obj, _name)

            try:
                impl.function(register=register)
            except Exception as exc:
                message = f"{HOOKS[kind]} raised {type(exc).__name__}: {exc}"
                info.errors.append(message)
                registry.problems.append(LoadProblem(name, message))
    return registry


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = load_registry()
        return _registry


def reset_registry(registry: Registry | None = None) -> None:
    """Drop (or replace) the cached registry; for tests and long-lived tools."""
    global _registry
    with _lock:
        _registry = registry
