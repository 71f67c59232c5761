"""Command-line options that change a model file's training settings (``layerkit fit``, ``evaluate``).

``--epochs``, ``--lr``, ``--optimizer``, ``--dataset``, the ``data.*`` options and ``--set KEY=JSON``
become a dict of overrides (:func:`parse_sets` reads the ``--set`` items), which
:func:`apply_overrides` writes into a copy of the model dict before anything else sees it: the
run directory's ``model.json`` is the model as trained.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Iterable

import typer


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=JSON`` items as overrides: the value parsed as JSON, else kept as a string
    (a bare word); a leading ``training.`` in the key is optional."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        try:
            out[key.removeprefix("training.")] = json.loads(value)
        except ValueError:
            out[key.removeprefix("training.")] = value  # a bare word: a string
    return out


def apply_overrides(model: Any, overrides: dict[str, Any]) -> Any:
    """A copy of the model dict with training settings replaced. Keys: ``epochs``,
    ``batch_size``, ``seed``, ``lr``, ``optimizer``, ``dataset``, ``weight_decay``, ``schedule``,
    ``callbacks``, ``data.*`` keys, and dotted paths under ``training`` from ``--set``. ``None``
    values are left out; what is not a dict is returned as it is, for validation to report."""
    out = copy.deepcopy(model)
    if not isinstance(out, dict):
        return out
    training = out.setdefault("training", {})
    if not isinstance(training, dict):
        return out
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "optimizer":
            previous = training.get("optimizer")
            old: dict[str, Any] = previous if isinstance(previous, dict) else {}
            # another optimizer's parameters (momentum, betas) would not validate; its defaults apply
            training["optimizer"] = dict(old) if old.get("type") == value else {"type": value}
        elif key == "lr":
            opt = training.setdefault("optimizer", {"type": "sgd"})
            if isinstance(opt, dict):
                opt["lr"] = value
        elif key == "schedule":
            training["schedule"] = {"type": value}
        elif key == "callbacks":
            given = training.get("callbacks")
            listed: list[Any] = given if isinstance(given, list) else []
            have = {c.get("type") for c in listed if isinstance(c, dict)}
            training["callbacks"] = listed + [{"type": name} for name in value if name not in have]
        else:
            target, parts = training, key.split(".")
            for part in parts[:-1]:
                if not isinstance(target.get(part), dict):
                    target[part] = {}
                target = target[part]
            target[parts[-1]] = value
    return out
