"""Reading and validating model files.

:func:`load_spec` turns a JSON file into a :class:`ModelSpec` or raises
:class:`ModelFileError` listing *every* problem at once, each as
``FILE: json.path: message``. Layer, loss and optimizer parameters are checked
against the schema their plugin declared, and their defaults are filled in.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from .errors import ModelFileError, Problem
from .registry import Registry
from .schema import LAYER_COMMON_KEYS, MODEL_SCHEMA

RESERVED_INPUT = "input"


@dataclass
class LayerSpec:
    index: int
    name: str
    type: str
    inputs: list[str]
    config: dict[str, Any]  # hyper-parameters only, defaults filled

    @property
    def label(self) -> str:
        return f"{self.name!r} ({self.type})"


@dataclass
class ModelSpec:
    name: str
    input_shape: tuple[int, ...]
    layers: list[LayerSpec]
    output: str
    loss: dict[str, Any]
    training: dict[str, Any]
    source: str = "<model>"
    raw: dict[str, Any] = field(default_factory=dict)

    def layer(self, name: str) -> LayerSpec:
        return next(layer for layer in self.layers if layer.name == name)


def _fill_defaults(schema: dict, config: dict) -> dict:
    out = dict(config)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and isinstance(sub, dict) and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
    return out


def _schema_problems(schema: dict, instance: Any, base: tuple, source: str) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        path = base + tuple(error.absolute_path)
        message = error.message
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = list(error.schema.get("properties", {}))
            extras = [k for k in error.instance if k not in allowed]
            for key in extras:
                hint = difflib.get_close_matches(key, allowed, n=1)
                text = f"unknown key {key!r}"
                text += f", did you mean {hint[0]!r}?" if hint else f" (allowed: {', '.join(sorted(allowed))})"
                problems.append(Problem(text, path + (key,), source))
            continue
        if error.validator in ("oneOf", "anyOf") and error.context:
            message = min(error.context, key=lambda e: len(e.absolute_path)).message
        problems.append(Problem(message, path, source))
    return problems


def _check_typed(section: dict, kind: str, registry: Registry, base: tuple, source: str,
                 extra_keys: dict) -> tuple[dict | None, list[Problem]]:
    """Validate one ``{"type": ..., **params}`` object against its plugin's schema."""
    type_name = section.get("type")
    if not isinstance(type_name, str):
        return None, []  # the static schema already reported it
    if type_name not in registry.entries[kind]:
        return None, [Problem(registry.unknown_message(kind, type_name), base + ("type",), source)]
    cls = registry.get(kind, type_name)
    params_schema = copy.deepcopy(getattr(cls, "params_schema", {"type": "object"}))
    params_schema.setdefault("properties", {})
    params_schema["properties"].update({k: v for k, v in extra_keys.items()})
    config = {k: v for k, v in section.items()}
    problems = _schema_problems(params_schema, config, base, source)
    params = {k: v for k, v in _fill_defaults(params_schema, config).items() if k not in extra_keys}
    return params, problems


def parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(problems=[Problem(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                                               (), source)]) from None


def read_model_file(path: str | Path) -> tuple[Any, str]:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(problems=[Problem("no such file", (), source)]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(problems=[Problem(f"cannot read: {exc}", (), source)]) from None
    return parse_json(text, source), source


def load_spec(path: str | Path, registry: Registry | None = None) -> ModelSpec:
    data, source = read_model_file(path)
    return spec_from_dict(data, source=Path(source).name, registry=registry)


def spec_from_dict(data: Any, source: str = "<model>", registry: Registry | None = None) -> ModelSpec:
    if registry is None:
        from .plugins import get_registry
        registry = get_registry()
    problems = _schema_problems(MODEL_SCHEMA, data, (), source)
    if not isinstance(data, dict):
        raise ModelFileError(problems=problems)

    layers: list[LayerSpec] = []
    seen: dict[str, int] = {}
    raw_layers = data.get("layers") if isinstance(data.get("layers"), list) else []
    for index, raw in enumerate(raw_layers):
        if not isinstance(raw, dict):
            continue
        base = ("layers", index)
        config, found = _check_typed(raw, "layer", registry, base, source, LAYER_COMMON_KEYS)
        problems += found
        type_name = raw.get("type") if isinstance(raw.get("type"), str) else "layer"
        name = raw.get("name") if isinstance(raw.get("name"), str) else f"{type_name}_{index}"
        if name == RESERVED_INPUT:
            problems.append(Problem(f"the name {RESERVED_INPUT!r} is reserved for the model input",
                                    base + ("name",), source))
        elif name in seen:
            problems.append(Problem(f"duplicate layer name {name!r} (also layers[{seen[name]}])",
                                    base + ("name",), source))
        seen.setdefault(name, index)
        inputs = raw.get("inputs")
        if inputs is None:
            inputs = [layers[-1].name if layers else RESERVED_INPUT]
        elif isinstance(inputs, str):
            inputs = [inputs]
        layers.append(LayerSpec(index, name, type_name, list(inputs) if isinstance(inputs, list) else [],
                                config or {}))

    loss: dict[str, Any] = {"type": "softmax_cross_entropy"}
    if isinstance(data.get("loss"), dict):
        params, found = _check_typed(data["loss"], "loss", registry, ("loss",), source, {"type": {}})
        problems += found
        loss = {"type": data["loss"].get("type"), **(params or {})}
    elif "loss" not in data and "softmax_cross_entropy" not in registry.entries["loss"] and registry.entries["loss"]:
        problems.append(Problem("no loss given and the default softmax_cross_entropy is not installed",
                                ("loss",), source))

    training = data.get("training") if isinstance(data.get("training"), dict) else {}
    training = _fill_defaults(MODEL_SCHEMA["properties"]["training"], training)
    if isinstance(training.get("optimizer"), dict):
        params, found = _check_typed(training["optimizer"], "optimizer", registry,
                                     ("training", "optimizer"), source, {"type": {}})
        problems += found
        training["optimizer"] = {"type": training["optimizer"].get("type"), **(params or {})}
    dataset = training.get("dataset")
    if isinstance(dataset, str) and registry.entries["dataset"] and dataset not in registry.entries["dataset"]:
        problems.append(Problem(registry.unknown_message("dataset", dataset), ("training", "dataset"), source))

    if problems:
        raise ModelFileError(problems=_dedupe(problems))

    output = data.get("output") or layers[-1].name
    return ModelSpec(
        name=data.get("name") or Path(source).stem,
        input_shape=tuple(data["input"]["shape"]),
        layers=layers,
        output=output,
        loss=loss,
        training=training,
        source=source,
        raw=data,
    )


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out
