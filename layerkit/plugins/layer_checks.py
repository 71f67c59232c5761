"""The static checks of a layer class: what it declares, checked without running it.

They are the class-level checks of the check engine (:mod:`layerkit.testing.engine`, which
yields each as a named check); they live in this tier so that loading a plugin file
(:mod:`layerkit.plugins.files`) runs the very same functions before it registers anything.

Each check takes the class and returns its findings: ``(obj, message)`` pairs, ``obj`` being the
class or the member whose source line is the place to look. An empty list: the claim holds.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable

import jsonschema
import numpy as np

from layerkit.nn.layer import Coupling, Example, Layer

Finding = tuple[Any, str]

#: what a layer type, loss type or dataset name must look like: the snake_case name files write
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

#: the signatures a layer's methods are called with (self excluded), for the messages
SIGNATURES = {
    "forward": "forward(self, params, x, training=False, rng=None, state=None) -> (output, cache)",
    "backward": "backward(self, params, cache, dy) -> (input gradient, {parameter name: gradient})",
    "output_shape": "output_shape(self, input_shape) -> per-sample output shape",
    "param_specs": "param_specs(self, input_shape) -> {name: ParamSpec}",
    "state_specs": "state_specs(self, input_shape) -> {name: ParamSpec}",
}
_CALLS = {  # positional arguments the framework passes (self excluded)
    "forward": 5, "backward": 3, "output_shape": 1, "param_specs": 1, "state_specs": 1, "flops": 1,
}
#: declarations that must be True or False; the capability flags are read with getattr, since a
#: layer declares them only when it opts in (layerkit.nn.capabilities)
FLAGS = ("has_kinks", "uses_rng", "sample_rng", "fresh_dx", "infer_fresh", "commutes_with_max", "pools_max")


def snake(name: str) -> str:
    """``MyLayer`` -> ``my_layer``: the type name a message suggests."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def accepts(fn: Callable, positional: int) -> bool:
    """Whether ``fn`` (a method, unbound) can be called with self and ``positional`` arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(None, *([None] * positional))  # self + the arguments
        return True
    except TypeError:
        return False


def signature_text(fn: Callable) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def type_name(cls: type) -> list[Finding]:
    """``type`` is set, a snake_case name (what model files write)."""
    name, value = cls.__name__, getattr(cls, "type", "")
    if not value:
        return [(cls, f"class {name}: set the class attribute `type`, the name model files use "
                      f"(e.g. type = {snake(name)!r})")]
    if not isinstance(value, str) or not TYPE_NAME.match(value):
        return [(cls, f"class {name}: `type` {value!r} must be a snake_case name such as {snake(name)!r}")]
    return []


def method_signatures(cls: type) -> list[Finding]:
    """``forward`` and ``backward`` are defined and callable as the framework calls them; the size
    methods take ``(self, input_shape)``."""
    out: list[Finding] = []
    name = cls.__name__
    for member in ("forward", "backward"):
        fn = getattr(cls, member, None)
        if fn is None or fn is getattr(Layer, member):
            out.append((cls, f"class {name}: missing method `{member}`; the contract is {SIGNATURES[member]}"))
        elif not callable(fn):
            out.append((cls, f"class {name}: `{member}` is not a method; the contract is {SIGNATURES[member]}"))
        elif not accepts(fn, _CALLS[member]):
            out.append((fn, f"{name}.{member}: cannot be called as {SIGNATURES[member]}; "
                            f"it is defined as {member}{signature_text(fn)}"))
    for member in ("output_shape", "param_specs", "state_specs", "flops"):
        fn = getattr(cls, member, None)
        if fn is not None and fn is not getattr(Layer, member) and callable(fn) and not accepts(fn, 1):
            out.append((fn, f"{name}.{member}: must take (self, input_shape); it is defined as "
                            f"{member}{signature_text(fn)}"))
    return out


def params_schema_valid(cls: type) -> list[Finding]:
    """``params_schema`` is a valid JSON Schema (a dict)."""
    name, schema = cls.__name__, getattr(cls, "params_schema", None)
    if not isinstance(schema, dict):
        return [(cls, f"class {name}: `params_schema` must be a JSON Schema object (a dict)")]
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return [(cls, f"class {name}: `params_schema` is not a valid JSON Schema: {exc.message}")]
    return []


def declarations(cls: type) -> list[Finding]:
    """``arity`` a positive int or None, ``examples`` a tuple of Example, ``sample_coupling`` a
    Coupling, and every flag True or False."""
    out: list[Finding] = []
    name = cls.__name__
    arity = getattr(cls, "arity", 1)
    if arity is not None and (not isinstance(arity, int) or isinstance(arity, bool) or arity < 1):
        out.append((cls, f"class {name}: `arity` must be a positive int or None, got {arity!r}"))
    examples = getattr(cls, "examples", ())
    if not isinstance(examples, (list, tuple)) or not all(isinstance(e, Example) for e in examples):
        out.append((cls, f"class {name}: `examples` must be a tuple of layerkit.Example(config, input_shape)"))
    coupling = getattr(cls, "sample_coupling", Coupling.OTHER)
    if coupling not in tuple(Coupling):
        out.append((cls, f"class {name}: sample_coupling = {coupling!r} is not one of "
                         f"{[c.value for c in Coupling]}"))
    for flag in FLAGS:
        value = getattr(cls, flag, False)
        if not isinstance(value, (bool, np.bool_)) and not isinstance(value, property):
            out.append((cls, f"class {name}: {flag} must be True or False, not {value!r}"))
    return out


def metadata(cls: type) -> list[Finding]:
    """A description, and at least one example for the conformance checks."""
    out: list[Finding] = []
    name = cls.__name__
    if not str(getattr(cls, "description", "") or "").strip():
        out.append((cls, f"class {name}: has no description; set `description` (one line for the catalog)"))
    examples = getattr(cls, "examples", ())
    if not examples:
        out.append((cls, f"class {name}: has no examples for the conformance checks; declare one, e.g. "
                         f"examples = (Example({{}}, (3, 8, 8)),)"))
    return out


def schema_closed_and_defaults(cls: type) -> list[Finding]:
    """``params_schema`` has type object, ``additionalProperties: false`` (a typo must be an
    error), and every default it declares is valid for its own property."""
    name, schema = cls.__name__, getattr(cls, "params_schema", None)
    if not isinstance(schema, dict):
        return []  # params_schema_valid says so
    out: list[Finding] = []
    if schema.get("type") != "object":
        out.append((cls, f"class {name}: params_schema must have type 'object'"))
    if schema.get("additionalProperties") is not False:
        out.append((cls, f"class {name}: params_schema must set additionalProperties: false (typos must be errors)"))
    for key, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, dict) and "default" in sub:
            try:
                jsonschema.Draft202012Validator(sub).validate(sub["default"])
            except jsonschema.ValidationError as exc:
                out.append((cls, f"class {name}: the default of {key!r} in params_schema is invalid: "
                                 f"{exc.message}"))
            except jsonschema.SchemaError:
                pass  # params_schema_valid says so
    return out


#: name -> (function, the contract member it covers, run when a plugin file loads)
STATIC_CHECKS: dict[str, tuple[Callable[[type], list[Finding]], str, bool]] = {
    "type_name": (type_name, "type", True),
    "method_signatures": (method_signatures, "forward/backward", True),
    "params_schema_valid": (params_schema_valid, "params_schema", True),
    "declarations": (declarations, "declarations", True),
    "metadata": (metadata, "description/examples", False),
    "schema_closed_and_defaults": (schema_closed_and_defaults, "params_schema", False),
}


def load_time_findings(cls: type) -> list[Finding]:
    """Every finding of the checks that loading a plugin file runs."""
    return [f for fn, _, at_load in STATIC_CHECKS.values() if at_load for f in fn(cls)]
