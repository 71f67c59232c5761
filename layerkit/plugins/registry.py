"""What the plugins registered: layers, losses, optimizers, datasets, by name.

The registry is filled once from the plugin hooks (:func:`get_registry`) and
then only read. Lookups of unknown names raise :class:`RegistryError` with a
"did you mean" suggestion and the list of what is installed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from layerkit.errors import RegistryError

KINDS = ("layer", "loss", "optimizer", "dataset", "callback")


@dataclass(frozen=True)
class Entry:
    """One registered name: the class (or object) it stands for and the plugin that registered it."""

    name: str
    obj: Any
    plugin: str


@dataclass
class LoadProblem:
    """A plugin that failed to import, whose hook raised, or that clashed with another."""

    plugin: str
    message: str

    def __str__(self) -> str:
        return f"plugin {self.plugin}: {self.message}"


@dataclass
class PluginInfo:
    """What one plugin is and what it brought: its distribution and version, the hooks it implements,
    the names it registered per kind, and why it failed or was disabled (for ``layerkit plugins``)."""

    name: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    provides: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[str] = field(default_factory=list)
    disabled: bool = False


class Registry:
    """Every layer, loss, optimizer, dataset and callback the plugins registered, by kind and name.

    Filled once by the plugin manager and then only read; a name two plugins claim is held back as a
    conflict, and a lookup of an unknown name raises :class:`RegistryError` saying what is installed."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        # name -> plugins that all claimed it; such a name cannot be used
        self.conflicts: dict[str, dict[str, list[str]]] = {kind: {} for kind in KINDS}
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[LoadProblem] = []

    # -- filling -------------------------------------------------------------
    def add(self, kind: str, name: str, obj: Any, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{kind} registered by {plugin} has no name")
        table = self.entries[kind]
        if name in table or name in self.conflicts[kind]:
            # neither wins: which one a model file got would depend on install order
            if name in table:
                self.conflicts[kind][name] = [table.pop(name).plugin]
            claimants = self.conflicts[kind][name]
            claimants.append(plugin)
            message = f"{kind} {name!r} is registered by both {' and '.join(claimants)}"
            self.problems.append(LoadProblem(plugin, message))
            for who in claimants:
                if who in self.plugins:
                    self.plugins[who].errors.append(message)
            return
        table[name] = Entry(name, obj, plugin)
        if plugin in self.plugins:
            self.plugins[plugin].provides[kind].append(name)

    # -- lookups -------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def entry(self, kind: str, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            raise RegistryError(self.unknown_message(kind, name)) from None

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).obj

    def layer(self, name: str):
        return self.get("layer", name)

    def unknown_message(self, kind: str, name: Any) -> str:
        if name in self.conflicts[kind]:
            who = " and ".join(self.conflicts[kind][name])
            return (f"{kind} type {name!r} is registered by both {who}; "
                    f"uninstall or disable one (LAYERKIT_DISABLE_PLUGINS)")
        known = self.names(kind)
        message = f"unknown {kind} type {name!r}"
        close = difflib.get_close_matches(str(name), known, n=1)
        if close:
            message += f", did you mean {close[0]!r}?"
        providers = sorted({e.plugin.split(".")[0] if e.plugin.startswith("layerkit.") else e.plugin
                            for e in self.entries[kind].values()})
        message += f" (installed {kind} plugins: {', '.join(providers) or 'none'})"
        broken = sorted({p.plugin for p in self.problems if self.plugins.get(p.plugin) is None
                         or not any(self.plugins[p.plugin].provides.values())})
        if broken:
            # the type may well live in a plugin that failed: say so rather than only "unknown"
            message += f"; plugins that failed to load: {', '.join(broken)} (see 'layerkit plugins')"
        return message
