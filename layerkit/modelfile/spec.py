"""Reading and validating model files.

:func:`load_spec` turns a JSON file into a :class:`ModelSpec` or raises
:class:`ModelFileError` listing *every* problem at once, each as
``FILE: json.path: message``: the static schema, every layer's, loss's and
optimizer's parameters (against the schema their plugin declared, defaults
filled in), layer names, and the wiring of the graph (unknown inputs, cycles,
unused branches, input counts). Shapes are inferred later, by
:func:`layerkit.modelfile.shapes.build_graph`.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import jsonschema
from jsonschema.exceptions import best_match

from layerkit.errors import GraphError, ModelFileError, Problem
from layerkit.plugins import registry_or_global
from layerkit.plugins.registry import Registry
from layerkit.modelfile.schema import FORMAT_VERSION, LAYER_COMMON_KEYS, MODEL_SCHEMA, typed_schema
from layerkit.modelfile import zoo
from layerkit.modelfile.topology import RESERVED_INPUT, arity_problem, config_arity, wiring_problems

__all__ = ["RESERVED_INPUT", "LayerSpec", "ModelSpec", "load_spec", "spec_from_dict", "read_model_file",
           "parse_json"]

DEFAULT_LOSS = "softmax_cross_entropy"


@dataclass
class LayerSpec:
    """One entry of a model file's ``layers``, validated: position, name, type, the names it reads
    and its hyper-parameters with the defaults filled in."""

    index: int
    name: str
    type: str
    inputs: list[str]
    config: dict[str, Any]  # hyper-parameters only, defaults filled
    #: false: training leaves the layer's tensors as they are (``"trainable": false`` in the model file)
    trainable: bool = True

    @property
    def label(self) -> str:
        """``'conv1' (conv2d)``: how messages name the layer."""
        return f"{self.name!r} ({self.type})"


@dataclass
class ModelSpec:
    """A model file, validated against the schema and the installed plugins: the layers, the output,
    the loss and the training section with its defaults filled in (``raw`` keeps the file as read)."""

    name: str
    input_shape: tuple[int, ...]
    layers: list[LayerSpec]
    output: str
    loss: dict[str, Any]
    training: dict[str, Any]
    source: str = "<model>"
    raw: dict[str, Any] = field(default_factory=dict)
    #: ``"float32"`` (real values) or ``"int64"`` (token ids): the model file's ``input.dtype``
    input_dtype: str = "float32"

    def layer(self, name: str) -> LayerSpec:
        """The layer called ``name`` (KeyError if none)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


# -- reading -------------------------------------------------------------------

_NON_FINITE = re.compile(r"-?\b(NaN|Infinity)\b")


def parse_json(text: str, source: str) -> Any:
    """Strict JSON: no NaN/Infinity, no duplicate keys (both are silent surprises otherwise)."""
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen = {}
        for key, value in items:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    def constant(name: str) -> Any:
        raise ValueError(name)

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise ModelFileError(problems=[Problem(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", (), source)]) from None
    except ValueError as exc:
        match = _NON_FINITE.search(text)
        where = ""
        if match:
            line = text.count("\n", 0, match.start()) + 1
            col = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
            where = f" at line {line}, column {col}"
        raise ModelFileError(problems=[Problem(
            f"invalid JSON{where}: {exc} is not a JSON number", (), source)]) from None
    except RecursionError:
        raise ModelFileError(problems=[Problem("invalid JSON: nested too deeply", (), source)]) from None
    if duplicates:
        raise ModelFileError(problems=[Problem(f"invalid JSON: duplicate key {key!r}", (), source)
                                       for key in dict.fromkeys(duplicates)])
    deep = _too_deep(data)
    if deep is not None:
        raise ModelFileError(problems=[Problem(
            f"nested more than {MAX_DEPTH} levels deep; a model file needs a handful", deep, source)])
    return data


#: model files nest a few levels (training.optimizer.betas); anything far deeper is a mistake or
#: an attack, and would overflow the recursion of every deep copy and validator that follows
MAX_DEPTH = 32
#: model files are a few KiB; a bigger one (or /dev/zero) is refused before it is read whole
MAX_MODEL_FILE_BYTES = 16 << 20


def _too_deep(data: Any) -> tuple | None:
    """The JSON path of the first value nested deeper than MAX_DEPTH, or None (iterative: no recursion)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            return path
        if isinstance(value, dict):
            stack.extend((v, path + (k,)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, path + (i,)) for i, v in enumerate(value))
    return None


def read_model_file(path: str | Path) -> tuple[Any, str]:
    """The parsed file and its name for messages; a shipped model's name (``lenet5``) reads the
    file inside the package when no such path exists."""
    path = zoo.resolve(path)
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MODEL_FILE_BYTES + 1)
        if len(raw) > MAX_MODEL_FILE_BYTES:
            raise ModelFileError(problems=[Problem(
                f"larger than {MAX_MODEL_FILE_BYTES >> 20} MiB, not a model file", (), source)])
        text = raw.decode("utf-8")
    except FileNotFoundError:
        close = zoo.close_matches(source)
        hint = (f"did you mean {' or '.join(close)}?" if close
                else "'layerkit models' lists the shipped ones")
        raise ModelFileError(problems=[Problem(
            f"no such file, nor a shipped model of that name; {hint}", (), source)]) from None
    except IsADirectoryError:
        raise ModelFileError(problems=[Problem("is a directory, not a model file", (), source)]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(problems=[Problem(f"cannot read: {exc}", (), source)]) from None
    return parse_json(text, source), source


def load_spec(path: str | Path, registry: Registry | None = None) -> ModelSpec:
    """Problems name the file as the caller spelled it."""
    data, source = read_model_file(path)
    return spec_from_dict(data, source=source, registry=registry)


# -- schema messages -------------------------------------------------------------

def _short(value: Any, limit: int = 60) -> str:
    """A value the way it appears in the file, cut short: messages stay one readable line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _message(error: jsonschema.ValidationError) -> str:
    kind, inst, expected = error.validator, error.instance, error.validator_value
    if kind == "type":
        types = expected if isinstance(expected, list) else [expected]
        return f"{_short(inst)} is not of type {' or '.join(repr(t) for t in types)}"
    if kind == "const" and list(error.absolute_path) == ["format"]:
        return (f"unsupported format version {_short(inst)}; this layerkit (format {FORMAT_VERSION}) "
                f"reads only \"format\": {FORMAT_VERSION}")
    if kind == "const":
        return f"{_short(inst)} is not {_short(expected)}"
    if kind == "enum":
        return f"{_short(inst)} is not one of {', '.join(_short(v) for v in expected)}"
    if kind == "pattern":
        return f"{_short(inst)} is not a valid name (letters, digits, _ . -; not starting with a digit)"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "required",
                "minItems", "maxItems", "uniqueItems"):
        return error.message
    return _cut(error.message)


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_of(error: jsonschema.ValidationError) -> tuple[tuple, str]:
    """Say what is wrong inside the alternative the value was aiming for."""
    here = list(error.absolute_path)
    deeper = [e for e in error.context if not (e.validator == "type" and list(e.absolute_path) == here)]
    if deeper:
        best = best_match(deeper)
        return tuple(best.absolute_path), _message(best)
    types = [e.validator_value for e in error.context]
    return tuple(here), f"{_short(error.instance)} is not of type {' or '.join(repr(t) for t in types)}"


#: the largest whole number a model file may give anywhere (an integer-typed key): every count,
#: size, seed or class id layerkit uses is far below it, and above it int64 arrays and float
#: arithmetic would overflow or round (``"classes": [1, 1e30]``)
MAX_INTEGER = 2**53


def _bounded_type(validator: Any, types: Any, instance: Any, schema: dict) -> Any:
    """The ``type`` keyword, with integers limited to +-MAX_INTEGER."""
    yield from _TYPE(validator, types, instance, schema)
    kinds = types if isinstance(types, list) else [types]
    if ("integer" in kinds and validator.is_type(instance, "integer") and not isinstance(instance, bool)
            and abs(instance) > MAX_INTEGER):
        yield jsonschema.ValidationError(f"{_short(instance)} is too large: a whole number here is at most "
                                         f"2**53 = {MAX_INTEGER:,}", validator="integer_range")


_TYPE = jsonschema.Draft202012Validator.VALIDATORS["type"]
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"type": _bounded_type})


def _schema_problems(schema: dict, instance: Any, base: tuple, source: str) -> list[Problem]:
    validator = _Validator(schema)
    problems = []
    errors = list(validator.iter_errors(instance))
    # a misspelt key ("kernal_size") is one mistake: its "did you mean" names the required key, so
    # the "is a required property" error for that key says nothing more and is left out
    meant: set[tuple] = set()
    for error in errors:
        path = base + tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = sorted(error.schema.get("properties", {}))
            for key in error.instance:
                if key in allowed:
                    continue
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                text = f"unknown key {key!r}"
                text += f", did you mean {hint[0]!r}?" if hint else f" (allowed: {', '.join(allowed)})"
                problems.append(Problem(text, path + (key,), source))
                if hint and hint[0] not in error.instance:
                    meant.add(path + (hint[0],))
    for error in errors:
        path = base + tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            continue
        if error.validator == "required" and any(
                path + (key,) in meant and error.message.startswith(f"{key!r} ")
                for key in error.validator_value):
            continue
        if error.validator in ("oneOf", "anyOf") and error.context:
            rel, message = _one_of(error)
            problems.append(Problem(message, base + rel, source))
            continue
        problems.append(Problem(_message(error), path, source))
    return problems


def _non_finite(value: Any, path: tuple, source: str, out: list[Problem]) -> None:
    # spec_from_dict also takes dicts built in Python, where NaN can sneak past the parser
    stack = [(value, path)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            out.append(Problem(f"{value} is not a finite number", path, source))
        elif isinstance(value, dict):
            stack.extend((v, path + (k,)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, path + (i,)) for i, v in enumerate(value))


# -- typed sections ----------------------------------------------------------------

def fill_defaults(schema: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with every missing property that has a ``default`` in ``schema`` filled in, at
    every depth: objects that are present get their own defaults filled the same way (an
    ``early_stopping: {}`` gets its monitor, patience and min_delta). The schema is the one place
    defaults are written; nothing else restates them. ``config`` itself is not modified. The one
    ``fill_defaults``: ``layerkit.testing`` fills a layer's ``params_schema`` defaults with it too."""
    out = dict(config)
    for key, sub in schema.get("properties", {}).items():
        if not isinstance(sub, dict):
            continue
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if isinstance(out.get(key), dict) and "properties" in sub:
            out[key] = fill_defaults(sub, out[key])
    return out


def fill_training_defaults(training: dict) -> dict:
    """A model file's ``training`` section with the schema's defaults filled in (see :func:`fill_defaults`)."""
    return fill_defaults(MODEL_SCHEMA["properties"]["training"], training)


def _check_typed(section: dict, kind: str, registry: Registry, base: tuple, source: str,
                 extra_keys: dict) -> tuple[dict | None, list[Problem]]:
    """Validate one ``{"type": ..., **params}`` object against its plugin's schema."""
    type_name = section.get("type")
    if not isinstance(type_name, str):
        return None, []  # the static schema already reported it
    if type_name not in registry.entries[kind]:
        return None, [Problem(registry.unknown_message(kind, type_name), base + ("type",), source)]
    schema = typed_schema(type_name, registry.get(kind, type_name), extra_keys)
    problems = _schema_problems(schema, section, base, source)
    params = {k: v for k, v in fill_defaults(schema, section).items() if k not in extra_keys and k != "type"}
    return params, problems


# -- the model -------------------------------------------------------------------

def spec_from_dict(data: Any, source: str = "<model>", registry: Registry | None = None) -> ModelSpec:
    registry = registry_or_global(registry)
    problems = _schema_problems(MODEL_SCHEMA, data, (), source)
    if not isinstance(data, dict):
        raise ModelFileError(problems=problems)
    _non_finite(data, (), source, problems)

    graph_problems: list[Problem] = []
    layers, wired = _layers(data, registry, source, problems, graph_problems)
    loss = _loss(data, registry, source, problems)
    training = _training(data, registry, source, problems)

    # the schema requires a layer: with none, a problem was reported and nothing below is built
    named = data.get("output")
    output = named if isinstance(named, str) and named else layers[-1].name if layers else ""
    if layers and wired:
        graph_problems += wiring_problems(layers, output, source)
    if problems or graph_problems:
        cls = ModelFileError if problems else GraphError
        raise cls(problems=_dedupe(problems + graph_problems))

    return ModelSpec(
        name=data.get("name") or Path(source).stem,
        input_shape=tuple(data["input"]["shape"]),
        input_dtype=str(data["input"].get("dtype", "float32")),
        layers=layers,
        output=output,
        loss=loss,
        training=training,
        source=source,
        raw=data,
    )


def _layers(data: dict, registry: Registry, source: str, problems: list[Problem],
            graph_problems: list[Problem]) -> tuple[list[LayerSpec], bool]:
    """The layer specs, and whether every layer's name and inputs were readable
    (only then can the wiring be checked)."""
    given = data.get("layers")
    raw_layers = given if isinstance(given, list) else []
    layers: list[LayerSpec] = []
    seen: dict[str, int] = {}
    wired = bool(raw_layers)
    for index, raw in enumerate(raw_layers):
        if not isinstance(raw, dict):
            wired = False
            continue
        base = ("layers", index)
        config, found = _check_typed(raw, "layer", registry, base, source, LAYER_COMMON_KEYS)
        problems += found
        given_type = raw.get("type")
        type_name = given_type if isinstance(given_type, str) else "layer"
        name = raw.get("name")
        if not isinstance(name, str):
            wired &= name is None
            name = f"{type_name}_{index}"
        if name == RESERVED_INPUT:
            problems.append(Problem(f"the name {RESERVED_INPUT!r} is reserved for the model input",
                                    base + ("name",), source))
        elif name in seen:
            problems.append(Problem(f"duplicate layer name {name!r} (also layers[{seen[name]}])",
                                    base + ("name",), source))
            wired = False
        seen.setdefault(name, index)
        inputs = raw.get("inputs")
        if inputs is None:
            inputs = [layers[-1].name if layers else RESERVED_INPUT]
        elif isinstance(inputs, str):
            inputs = [inputs]
        bad_inputs = any(p.path[:3] == base + ("inputs",) for p in found)
        if bad_inputs or not (isinstance(inputs, list) and inputs and all(isinstance(r, str) for r in inputs)):
            wired = False  # the schema reported it; wiring messages would only repeat it
            inputs = []
        spec = LayerSpec(index, name, type_name, list(inputs), config or {}, raw.get("trainable") is not False)
        if config is not None and inputs:
            found_arity = arity_problem(spec, config_arity(registry.layer(type_name), config), source)
            if found_arity:
                graph_problems.append(found_arity)
        layers.append(spec)
    return layers, wired


def _loss(data: dict, registry: Registry, source: str, problems: list[Problem]) -> dict:
    if isinstance(data.get("loss"), dict):
        params, found = _check_typed(data["loss"], "loss", registry, ("loss",), source, {})
        problems += found
        return {"type": data["loss"].get("type"), **(params or {})}
    if "loss" not in data and registry.entries["loss"] and DEFAULT_LOSS not in registry.entries["loss"]:
        problems.append(Problem(f"no loss given and the default {DEFAULT_LOSS} is not installed",
                                ("loss",), source))
    return {"type": DEFAULT_LOSS}


def _training(data: dict, registry: Registry, source: str, problems: list[Problem]) -> dict:
    given = data.get("training")
    training = fill_training_defaults(given if isinstance(given, dict) else {})
    if isinstance(training.get("optimizer"), dict):
        params, found = _check_typed(training["optimizer"], "optimizer", registry,
                                     ("training", "optimizer"), source, {})
        problems += found
        training["optimizer"] = {"type": training["optimizer"].get("type"), **(params or {})}
    if isinstance(training.get("callbacks"), list):
        callbacks = []
        for i, section in enumerate(training["callbacks"]):
            if isinstance(section, dict):
                params, found = _check_typed(section, "callback", registry, ("training", "callbacks", i), source, {})
                problems += found
                callbacks.append({"type": section.get("type"), **(params or {})})
        training["callbacks"] = callbacks
    dataset = training.get("dataset")
    if isinstance(dataset, str) and registry.entries["dataset"] and dataset not in registry.entries["dataset"]:
        problems.append(Problem(registry.unknown_message("dataset", dataset), ("training", "dataset"), source))
    return training


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return sorted(out, key=_order)


def _order(problem: Problem) -> tuple:
    # file order: root problems first, then by path, numbers compared as numbers
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in problem.path)
