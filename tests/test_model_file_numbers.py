"""Whole numbers too large for any count are a validation error at their JSON path, never an
OverflowError traceback (issue 19, item 14), and one misspelt key is one error (item 16)."""

from __future__ import annotations

import copy
from typing import Any, Iterator

import pytest

from conftest import tiny_model
from layerkit.cli import main
from layerkit.modelfile.schema import MODEL_SCHEMA
from layerkit.plugins.manager import get_registry


def _integer_fields(schema: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, a value template) for every integer-typed key of ``schema``; ``None`` in the template
    marks where the huge number goes (arrays of integers get it as their last item)."""
    if not isinstance(schema, dict):
        return
    types = schema.get("type")
    kinds = types if isinstance(types, list) else [types]
    if "integer" in kinds or any(isinstance(alt, dict) and alt.get("type") == "integer"
                                 for alt in schema.get("oneOf", [])):
        yield path, None
        return
    if "array" in kinds and isinstance(schema.get("items"), dict) and schema["items"].get("type") == "integer":
        yield path, [1] * (max(schema.get("minItems", 1), 1) - 1) + [None]
        return
    for key, sub in schema.get("properties", {}).items():
        if key != "type":
            yield from _integer_fields(sub, path + (key,))


def _put(model: dict, path: tuple, value: Any) -> None:
    where = model
    for key in path[:-1]:
        where = where.setdefault(key, {})
    where[path[-1]] = value


def _cases() -> Iterator[Any]:
    registry = get_registry()
    for path, template in _integer_fields(MODEL_SCHEMA):
        if path[0] not in ("layers", "loss"):
            yield pytest.param((), path, template, id=".".join(path))
    for kind, section in (("layer", ("layers", 0)), ("loss", ("loss",)), ("optimizer", ("training", "optimizer")),
                          ("callback", ("training", "callbacks", 0))):
        for name, entry in sorted(registry.entries[kind].items()):
            for path, template in _integer_fields(entry.obj.params_schema):
                yield pytest.param((kind, name), section + path, template, id=f"{kind}:{name}.{'.'.join(path)}")


def _model(kind_name: tuple, path: tuple, template: Any, huge: Any) -> dict:
    model = copy.deepcopy(tiny_model())
    value = huge if template is None else [huge if v is None else v for v in template]
    if not kind_name:
        _put(model, path, value)
        return model
    kind, name = kind_name
    if kind == "layer":
        cls = get_registry().get("layer", name)
        example = cls.examples[0] if cls.examples else None
        model["input"] = {"shape": list(example.input_shape) if example else [4]}
        model["layers"] = [{"type": name, **(example.config if example else {}), path[-1]: value}]
    elif kind == "callback":
        model["training"]["callbacks"] = [{"type": name, path[-1]: value}]
    else:
        section = model
        for key in path[:-1]:
            section = section[key]
        section.clear()
        section.update({"type": name, path[-1]: value})
    return model


@pytest.mark.parametrize("huge", [1e30, -(2**63)], ids=["1e30", "-2**63"])
@pytest.mark.parametrize("kind_name, path, template", list(_cases()))
def test_a_huge_whole_number_is_a_validation_error(kind_name, path, template, huge, write_model, capsys):
    model_path = write_model(_model(kind_name, path, template, huge))
    assert main(["validate", str(model_path)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    assert f"{model_path}: {where}" in captured.err, captured.err


def test_there_are_integer_fields_to_check():
    # the walk above finds the fields it claims to: the classic overflow and a layer's kernel
    ids = [c.id for c in _cases()]
    assert "training.data.classes" in ids and "layer:conv2d.kernel_size" in ids and "input.shape" in ids


def test_the_reported_overflow_is_an_error_at_its_path(write_model, capsys):
    model = tiny_model()
    model["training"]["data"] = {"classes": [1, 1e30]}
    path = write_model(model)
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == (f"error: {path}: training.data.classes[1]: 1e+30 is too large: a whole "
                                       f"number here is at most 2**53 = 9,007,199,254,740,992\n")
    model["training"]["data"] = {"classes": [1, 2**53]}  # the limit itself is allowed
    assert main(["validate", str(write_model(model))]) == 0


def test_a_misspelt_required_key_is_one_error_with_the_right_name(write_model, capsys):
    model = tiny_model()
    model["layers"][0] = {"name": "conv1", "type": "conv2d", "filters": 2, "kernal_size": 3}
    path = write_model(model)
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == (f"error: {path}: layers[0].kernal_size: unknown key 'kernal_size', "
                                       f"did you mean 'kernel_size'?\n")


def test_a_missing_required_key_without_a_near_miss_is_still_reported(write_model, capsys):
    model = tiny_model()
    model["layers"][0] = {"name": "conv1", "type": "conv2d", "filters": 2, "window": 3}
    path = write_model(model)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "layers[0]: 'kernel_size' is a required property" in err and "unknown key 'window'" in err
