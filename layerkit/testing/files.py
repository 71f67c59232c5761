"""``layerkit check-grads mylayer.py``: check the layers of one plugin file, with errors in the file's terms.

Each selected layer class runs on each of its ``examples`` (or on one ``--input-shape``): the contract
first (config, construction, ``output_shape``, ``param_specs``, what ``forward`` and ``backward``
return and its shapes), then the float64 gradient check of
:func:`layerkit.gradcheck.layers.check_layer`. A contract problem is the file's fault and raises
:class:`~layerkit.plugins.files.PluginFileError` naming the file, the line and the member (exit 2); a
wrong gradient is a failed check in the returned report (exit 1).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import jsonschema
import numpy as np

from layerkit.errors import Problem
from layerkit.gradcheck.layers import check_layer, initial_state, random_input, random_params
from layerkit.gradcheck.report import GradCheckReport
from layerkit.nn.layer import Layer, ParamSpec
from layerkit.plugins.files import SIGNATURES, FileContext, PluginFileError, plugin_object

__all__ = ["check_layer_file", "check_file_contract", "split_target"]


def split_target(target: str) -> tuple[str, str | None]:
    """``file.py:ClassName`` -> (``file.py``, ``ClassName``); a Windows drive colon is left alone."""
    path, sep, name = target.rpartition(":")
    if sep and path.endswith(".py") and name and "/" not in name and "\\" not in name:
        return path, name
    return target, None


_contract_ok: set[tuple] = set()


def check_file_contract(path: str) -> None:
    """Run every layer of a plugin file once on each of its examples, forward and backward, without the
    gradient check: what ``--plugin`` does before a command, so that a layer returning the wrong
    things fails there, with its line, rather than deep inside training. Once per version of a file."""
    from layerkit.plugins.files import load_plugin_file

    module, _ = load_plugin_file(path)
    key = (module.__name__, id(module))
    if key not in _contract_ok:
        check_layer_file(path, gradients=False)
        _contract_ok.add(key)


def check_layer_file(path: str, class_name: str | None = None, *, input_shape: Sequence[Any] | None = None,
                     config: Mapping[str, Any] | None = None, batch_size: int = 2, samples: int = 32,
                     seed: int = 0, gradients: bool = True) -> GradCheckReport:
    """Gradient-check the layers defined (or registered) in a plugin file.

    ``class_name`` picks one class (by class name or ``type``); ``input_shape`` (per sample) and
    ``config`` replace its examples with one case. Raises PluginFileError for anything wrong with
    the file; a wrong gradient is a failing row of the report.
    """
    _, ctx, defined = plugin_object(path)
    classes = _registered_classes(path) or defined
    if not classes:
        if not gradients:
            return GradCheckReport(model=str(path), rows=[])
        raise PluginFileError(problems=[ctx.problem(
            "registers no layer, so there is nothing to check (its losses, optimizers and datasets "
            "are used with --plugin)")])
    if class_name is not None:
        chosen = [c for c in classes if class_name in (c.__name__, getattr(c, "type", None))]
        if not chosen:
            names = ", ".join(c.__name__ for c in classes) or "none"
            raise PluginFileError(problems=[ctx.problem(f"no layer class {class_name!r} in the file "
                                                        f"(layer classes: {names})")])
        classes = chosen
    elif input_shape is not None or config is not None:
        if len(classes) != 1:
            names = ", ".join(c.__name__ for c in classes)
            raise PluginFileError(problems=[ctx.problem(
                f"--input-shape/--config need one class: name it as {path}:CLASS (layer classes: {names})")])

    rows = []
    problems: list[Problem] = []
    for cls in classes:
        if input_shape is not None or config is not None:
            cases = [(None, dict(config or {}), input_shape)]
        else:
            cases = [(i, dict(ex.config), ex.input_shape) for i, ex in enumerate(cls.examples)]
            if not cases:
                if not gradients:
                    continue
                problems.append(ctx.at(cls, f"class {cls.__name__}: `examples` is empty; declare one, e.g. "
                                            f"examples = (Example({{}}, (3, 8, 8)),), or check it at a shape "
                                            f"with {path}:{cls.__name__} --input-shape 3,8,8"))
                continue
        for index, cfg, shape in cases:
            label = cls.__name__ if index is None else f"{cls.__name__}[{index}]"
            try:
                rows += _check_case(ctx, cls, label, index, cfg, shape, batch_size=batch_size,
                                    samples=samples, seed=seed, gradients=gradients)
            except PluginFileError as exc:
                problems += exc.problems
    if problems:
        raise PluginFileError(problems=problems)
    settings = {"batch_size": batch_size, "samples": samples, "seed": seed, "inputs": "random"}
    return GradCheckReport(model=str(path), rows=rows, settings=settings)


def _registered_classes(path: str) -> list[type]:
    """The layer classes the file registers through its own hook, if it has one."""
    from layerkit.plugins.manager import load_registry

    registry = load_registry(default_plugins=(), entry_points=False, plugin_files=[path])
    if registry.problems:
        raise PluginFileError(problems=[Problem(p.message, source=str(path)) for p in registry.problems])
    return [entry.obj for entry in registry.entries["layer"].values()]


def _case_text(index: int | None, config: Mapping[str, Any], shape: Any) -> str:
    where = f"examples[{index}]" if index is not None else "--config/--input-shape"
    return f"{where} (config {dict(config)}, input shape {_shape_text(shape)})"


def _shape_text(shape: Any) -> str:
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return "[" + ", ".join("x".join(map(str, s)) for s in shape) + "]"
    return "x".join(map(str, shape)) if isinstance(shape, (list, tuple)) else repr(shape)


def _check_case(ctx: FileContext, cls: type[Layer], label: str, index: int | None, config: dict,
                shape: Any, *, batch_size: int, samples: int, seed: int, gradients: bool = True) -> list:
    from layerkit.testing import fill_defaults

    case = _case_text(index, config, shape)
    name = cls.__name__

    def fail(member_obj: Any, message: str) -> PluginFileError:
        return PluginFileError(problems=[ctx.at(member_obj, f"{message} [{case}]")])

    try:
        filled = fill_defaults(cls, config)
    except AssertionError as exc:
        raise fail(cls, f"class {name}: {exc}") from None
    except jsonschema.SchemaError as exc:
        raise fail(cls, f"class {name}: params_schema: {exc.message}") from None
    layer = ctx.call(f"{name}.__init__", lambda: cls(**copy.deepcopy(filled)), fallback=cls)
    multi = layer.arity != 1
    if multi:
        if not (isinstance(shape, (list, tuple)) and all(isinstance(s, (list, tuple)) for s in shape)):
            raise fail(cls, f"class {name}: takes several inputs (arity {layer.arity}), so its input shape "
                            f"must be a list of shapes")
        in_shape: Any = [tuple(int(d) for d in s) for s in shape]
    else:
        in_shape = tuple(int(d) for d in shape)

    out_shape = ctx.call(f"{name}.output_shape", layer.output_shape, in_shape, fallback=cls.output_shape)
    try:
        declared = tuple(int(d) for d in out_shape)
    except (TypeError, ValueError):
        raise fail(cls.output_shape, f"{name}.output_shape: must return a tuple of ints, "
                                     f"returned {out_shape!r}") from None
    specs = {}
    for member in ("param_specs", "state_specs"):
        got = ctx.call(f"{name}.{member}", getattr(layer, member), in_shape, fallback=getattr(cls, member))
        if not isinstance(got, Mapping) or not all(isinstance(v, ParamSpec) for v in got.values()):
            raise fail(getattr(cls, member), f"{name}.{member}: must return {{name: ParamSpec(shape, ...)}}, "
                                             f"returned {got!r}")
        specs[member] = got

    rng = np.random.default_rng([seed, 11])
    params = random_params(specs["param_specs"], rng)
    state = initial_state(specs["state_specs"])
    x = random_input(in_shape, batch_size, rng, multi)
    out = ctx.call(f"{name}.forward", layer.forward, params, x, True, np.random.default_rng(seed),
                   {k: v.copy() for k, v in state.items()}, fallback=cls.forward)
    if not isinstance(out, tuple) or len(out) != 2:
        got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
        raise fail(cls.forward, f"{name}.forward: must return (output, cache), returned {got}; "
                                f"the contract is {SIGNATURES['forward']}")
    y, cache = out
    if np.shape(y) != (batch_size, *declared):
        hint = ("" if cls.output_shape is not Layer.output_shape else
                "; the inherited output_shape() returns the input shape: define output_shape(self, input_shape)")
        raise fail(cls.forward, f"{name}.forward: returned an output of shape {_shape_text(np.shape(y))} for a "
                                f"batch of {batch_size}; output_shape() says "
                                f"{_shape_text(declared)} per sample, i.e. "
                                f"{_shape_text((batch_size, *declared))}{hint}")
    dy = np.random.default_rng(seed + 1).standard_normal(np.shape(y))
    back = ctx.call(f"{name}.backward", layer.backward, params, cache, dy, fallback=cls.backward)
    if not isinstance(back, tuple) or len(back) != 2:
        got = f"a tuple of {len(back)}" if isinstance(back, tuple) else type(back).__name__
        raise fail(cls.backward, f"{name}.backward: must return (input gradient, {{parameter: gradient}}), "
                                 f"returned {got}; the contract is {SIGNATURES['backward']}")
    dx, grads = back
    if grads is not None and not isinstance(grads, Mapping):
        raise fail(cls.backward, f"{name}.backward: the second thing returned must be a dict "
                                 f"{{parameter name: gradient}} (empty for no parameters), got "
                                 f"{type(grads).__name__}")
    dxs = list(dx) if multi and isinstance(dx, (list, tuple)) else [dx]
    xs = x if multi else [x]
    if len(dxs) != len(xs):
        raise fail(cls.backward, f"{name}.backward: returned {len(dxs)} input gradients for {len(xs)} inputs")
    for i, (g, xi) in enumerate(zip(dxs, xs)):
        tensor = f"input[{i}]" if multi else "input"
        if g is None or np.shape(g) != xi.shape:
            raise fail(cls.backward, f"{name}.backward: the {tensor} gradient has shape "
                                     f"{None if g is None else _shape_text(np.shape(g))}, the input "
                                     f"{_shape_text(xi.shape)}")
    grads = dict(grads or {})
    missing = [k for k in specs["param_specs"] if k not in grads]
    extra = [k for k in grads if k not in specs["param_specs"]]
    if missing or extra:
        what = []
        if missing:
            what.append(f"no gradient for {', '.join(map(repr, missing))}")
        if extra:
            what.append(f"gradients for {', '.join(map(repr, extra))}, which param_specs does not declare")
        raise fail(cls.backward, f"{name}.backward: returned {' and '.join(what)}")
    for key, spec in specs["param_specs"].items():
        if np.shape(grads[key]) != tuple(spec.shape):
            raise fail(cls.backward, f"{name}.backward: the gradient of {key!r} has shape "
                                     f"{_shape_text(np.shape(grads[key]))}, the parameter "
                                     f"{_shape_text(tuple(spec.shape))}")

    if not gradients:
        return []
    rows = check_layer(layer, params, x, state=state, samples=samples, seed=seed, name=label)
    for row in rows:
        if row.status == "fail" and row.message.startswith(("forward raised", "backward raised")):
            # raised only on a perturbed input: still the file's code, not a wrong gradient
            member = row.message.split()[0]
            raise fail(getattr(cls, member), f"{name}.{member}: {row.message} (tensor {row.tensor})")
    return rows
