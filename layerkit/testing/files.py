"""``layerkit check-grads mylayer.py``: the check engine on the layers of one plugin file, errors in the file's terms.

Each selected layer class gets the engine's class checks, then, on each of its ``examples`` (or on one
``--input-shape``), every check that applies to it: exactly the checks the pytest plugin runs
(:mod:`layerkit.testing.engine`), the gradient check among them. A broken load-time claim (the config,
construction, ``output_shape``, ``param_specs``, what ``forward`` and ``backward`` return and its
shapes) or the layer's code raising is the file's fault and raises
:class:`~layerkit.plugins.files.PluginFileError` naming the file, the line and the member (exit 2); any
other failed check (a wrong gradient, a speed path that differs from ``backward``, a false
``sample_coupling`` ...) is a failed check in the returned report (exit 1), naming the check and the method.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from layerkit.errors import ContractError, Problem
from layerkit.gradcheck.report import CheckResult, GradCheckReport
from layerkit.plugins.files import FileContext, PluginFileError, plugin_object
from layerkit.testing.engine import Check, Subject, yield_checks

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
    """Run the check engine on the layers defined (or registered) in a plugin file: the checks pytest runs.

    ``class_name`` picks one class (by class name or ``type``); ``input_shape`` (per sample) and
    ``config`` replace its examples with one case. Raises PluginFileError for anything wrong with
    the file (see the module docstring); a wrong gradient is a failing row of the report, any other
    failed check a failing entry of ``report.checks``. ``gradients=False`` runs only the load-time
    checks (what ``--plugin`` runs before a command).
    """
    _, ctx, defined = plugin_object(path)
    classes: list[Any] = _registered_classes(path) or defined
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

    rows: list = []
    results: list[CheckResult] = []
    problems: list[Problem] = []
    for cls in classes:
        if gradients:
            problem = _run_checks(ctx, cls, Subject(cls, label=cls.__name__), list(yield_checks(cls)), "", rows,
                                  results)
            if problem is not None:
                problems.append(problem)
        cases: list[tuple[int | None, dict[str, Any], Any]]
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
            subject = Subject(cls, cfg, shape, index=index, label=label, batch_size=batch_size, seed=seed,
                              samples=samples)
            checks = [c for c in yield_checks(cls, subject) if gradients or c.at_load]
            problem = _run_checks(ctx, cls, subject, checks, _case_text(index, cfg, shape), rows, results)
            if problem is not None:
                problems.append(problem)
    if problems:
        raise PluginFileError(problems=problems)
    settings = {"batch_size": batch_size, "samples": samples, "seed": seed, "inputs": "random"}
    return GradCheckReport(model=str(path), rows=rows, settings=settings, checks=results)


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


def _file_problem(ctx: FileContext, cls: type, check: Check, exc: ContractError, case: str) -> Problem | None:
    """The file's fault, at its line: the layer's code raised, or a load-time claim broke. None for a
    failed check of the report."""
    name = cls.__name__
    member = exc.member.split("/")[0]
    obj = getattr(cls, member, None)
    obj = obj if callable(obj) else cls
    cause = exc.__cause__
    if cause is not None and isinstance(cause, Exception):
        return ctx.raised(cause, f"{name}.{member}", fallback=obj)
    if not check.at_load:
        return None
    if check.scope == "layer":
        return ctx.at(obj, exc.detail)
    return ctx.at(obj, f"{name}.{member}: {exc.detail} [{case}]")


def _run_checks(ctx: FileContext, cls: type, subject: Subject, checks: list[Check], case: str,
                rows: list, results: list[CheckResult]) -> Problem | None:
    """Run ``checks`` on ``subject``; record gradient rows and results; the first file problem stops the case."""
    for check in checks:
        try:
            got = check.run(subject)
        except ContractError as exc:
            problem = _file_problem(ctx, cls, check, exc, case)
            if problem is not None:
                return problem
            results.append(CheckResult(subject.label, subject.example, check.name, exc.member, "fail",
                                       exc.detail, exc.numbers))
            got = exc.results
        else:
            results.append(CheckResult(subject.label, subject.example, check.name, check.member, "pass"))
        if check.name == "gradients_match_finite_differences":
            rows += got or []
            for row in got or []:
                if row.status == "fail" and row.message.startswith(("forward raised", "backward raised")):
                    # raised only on a perturbed input: still the file's code, not a wrong gradient
                    member = row.message.split()[0]
                    return ctx.at(getattr(cls, member), f"{cls.__name__}.{member}: {row.message} (tensor "
                                                        f"{row.tensor}) [{case}]")
    return None
