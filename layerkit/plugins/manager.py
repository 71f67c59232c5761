"""Loading plugins: the built-in modules and the ``layerkit`` entry-point group.

Built-ins go through exactly the same hooks as third-party packages. Which modules are
built in is not this tier's to say: :data:`layerkit.default_plugins.DEFAULT_PLUGINS`, at the
root of the package, lists them (modules of tiers above this one among them), and they are
loaded by name like the entry points of installed packages. A plugin
that fails to import or whose hook raises is recorded with its name and left
out; every other plugin keeps working. ``LAYERKIT_DISABLE_PLUGINS`` (comma
separated plugin names) switches plugins off. Plugin *files* (``--plugin FILE.py``,
``LAYERKIT_PLUGINS``; :mod:`layerkit.plugins.files`) are loaded after the installed
plugins; a broken one fails the run instead, since the run asked for it.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import threading
from typing import Iterable

import jsonschema
import pluggy

from layerkit.default_plugins import DEFAULT_PLUGINS
from layerkit.plugins import hookspecs
from layerkit.plugins.layer_checks import TYPE_NAME
from layerkit.plugins.registry import KINDS, LoadProblem, PluginInfo, Registry

ENTRY_POINT_GROUP = "layerkit"
DISABLE_ENV = "LAYERKIT_DISABLE_PLUGINS"

HOOKS = {
    "layer": "layerkit_register_layers",
    "loss": "layerkit_register_losses",
    "optimizer": "layerkit_register_optimizers",
    "dataset": "layerkit_register_datasets",
    "callback": "layerkit_register_callbacks",
}

_lock = threading.Lock()
_registry: Registry | None = None
_registry_files: tuple[str, ...] | None = None  # the plugin files the cached registry was built with


def disabled_plugins(value: str | None = None) -> set[str]:
    value = os.environ.get(DISABLE_ENV, "") if value is None else value
    return {name.strip() for name in value.split(",") if name.strip()}


def _distribution_of(ep: md.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def load_registry(extra_plugins: Iterable[object] = (), *,
                  default_plugins: Iterable[str] | None = None,
                  entry_points: bool = True,
                  disabled: set[str] | None = None,
                  plugin_files: Iterable[str] | None = None) -> Registry:
    """Build a fresh registry. ``extra_plugins`` are plugin objects (modules,
    instances) registered after the built-ins; tests use it. ``plugin_files`` are
    ``.py`` files loaded last (default: ``LAYERKIT_PLUGINS`` and ``--plugin``); a
    problem in one raises :class:`~layerkit.plugins.files.PluginFileError`. ``default_plugins``:
    the modules loaded first (default: :data:`layerkit.default_plugins.DEFAULT_PLUGINS`)."""
    from layerkit.plugins import files

    disabled = disabled_plugins() if disabled is None else disabled
    # files first: a broken one stops here, before any other plugin is imported
    loaded_files = [(str(path), files.plugin_object(path)[0])
                    for path in (files.plugin_files() if plugin_files is None else plugin_files)]
    registry = Registry()
    pm = pluggy.PluginManager("layerkit")
    pm.add_hookspecs(hookspecs)

    def add(name: str, load, dist: str | None = None, version: str | None = None) -> None:
        if name in registry.plugins:
            message = f"a second plugin is named {name!r}; it is ignored"
            registry.plugins[name].errors.append(message)
            registry.problems.append(LoadProblem(name, message))
            return
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

    for module in DEFAULT_PLUGINS if default_plugins is None else default_plugins:
        add(module, lambda module=module: importlib.import_module(module),
            "layerkit", layerkit.__version__)
    for i, plugin in enumerate(extra_plugins):
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
        add(name, lambda plugin=plugin: plugin)
    if entry_points:
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist, version = _distribution_of(ep)
            add(ep.name, ep.load, dist, version)
    for name, plugin in loaded_files:
        add(name, lambda plugin=plugin: plugin)

    _drop_invalid_hooks(pm, registry)
    for kind in KINDS:
        _call_hooks(pm, kind, registry)
    return registry


def _drop_invalid_hooks(pm: pluggy.PluginManager, registry: Registry) -> None:
    """A misspelled hook name would otherwise be silently ignored; name the plugin and drop it.
    ``check_pending`` stops at the first offender, hence the loop."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or str(exc.plugin)
            message = f"unknown hook: {exc} (known hooks: {', '.join(HOOKS.values())})"
            registry.problems.append(LoadProblem(name, message))
            registry.plugins.setdefault(name, PluginInfo(name=name)).errors.append(message)
            pm.unregister(exc.plugin)


def _call_hooks(pm: pluggy.PluginManager, kind: str, registry: Registry) -> None:
    hook = HOOKS[kind]
    # each implementation on its own, so that one raising does not hide the rest;
    # get_hookimpls lists them in registration order (built-ins, extras, entry points)
    for impl in getattr(pm.hook, hook).get_hookimpls():
        name = impl.plugin_name
        info = registry.plugins.setdefault(name, PluginInfo(name=name))
        info.hooks.append(hook)
        offered: list[object] = []
        try:
            impl.function(register=offered.append)
        except Exception as exc:
            # all or nothing: a half-registered plugin would fail in confusing ways later
            message = f"{hook} raised {type(exc).__name__}: {exc}"
            info.errors.append(message)
            registry.problems.append(LoadProblem(name, message))
            continue
        for obj in offered:
            reason = contract_violation(kind, obj)
            if reason:
                message = f"{kind} {_describe(obj)} rejected: {reason}"
                info.errors.append(message)
                registry.problems.append(LoadProblem(name, message))
                continue
            registry.add(kind, getattr(obj, "name" if kind == "dataset" else "type"), obj, name)


def _describe(obj: object) -> str:
    return getattr(obj, "__qualname__", None) or repr(obj)


def contract_violation(kind: str, obj: object) -> str | None:
    """Why a registered class cannot be used, checked once here instead of failing
    later in the middle of validating a model file."""
    key = "name" if kind == "dataset" else "type"
    value = getattr(obj, key, None)
    if not isinstance(value, str) or not TYPE_NAME.match(value):
        return f"its {key} {value!r} is not a snake_case name"
    if kind == "layer":
        from layerkit.nn.layer import Layer
        if not (isinstance(obj, type) and issubclass(obj, Layer)):
            return "not a subclass of layerkit.nn.layer.Layer"
        arity = obj.arity
        if arity is not None and (not isinstance(arity, int) or arity < 1):
            return f"arity must be a positive int or None, got {arity!r}"
    schema = getattr(obj, "params_schema", None)
    if schema is not None:
        if not isinstance(schema, dict):
            return "params_schema is not a JSON Schema object"
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            return f"params_schema is not a valid JSON Schema: {exc.message}"
    return None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use (and again when the plugin files change)."""
    global _registry, _registry_files
    from layerkit.plugins.files import plugin_files

    with _lock:
        wanted = plugin_files()
        if _registry is None or (_registry_files is not None and _registry_files != wanted):
            _registry = None
            _registry = load_registry(plugin_files=wanted)
            _registry_files = wanted
        return _registry


def reset_registry(registry: Registry | None = None) -> None:
    """Drop (or replace) the cached registry; for tests and long-lived tools. A registry
    passed in is kept whatever plugin files are named later."""
    global _registry, _registry_files
    with _lock:
        _registry = registry
        _registry_files = None
