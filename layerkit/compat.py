"""The first release's import paths, kept working with a DeprecationWarning that names the new spelling.

layerkit 0.1.0 had one flat package (``layerkit.layer``, ``layerkit.builder``, ``layerkit.trainer``,
...); 0.2.0 groups the modules by tier. Every module and name the first release had keeps working
through 0.2.x, resolved to the very same objects, and goes in 0.3.0 at the earliest
(docs/stability.md, CHANGELOG.md). One table drives it all:

* an old module that no longer exists (``layerkit.layer``) is made on import by a finder at the end of
  ``sys.meta_path``: the import warns once, and the module holds the old names, bound to the new objects;
* an old module whose name a new package now has (``layerkit.gradcheck``, ``layerkit.export``,
  ``layerkit.parallel``, ``layerkit.plugins``) keeps its old names as attributes of that package: its
  ``__init__`` sets ``__getattr__ = moved_attributes(__name__)``, which warns on each use.

Nothing here imports another layerkit module until an old name is asked for, so ``import layerkit``
stays as light as it was. This module is internal: only the old paths it serves are public.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Sequence

#: the release that may remove every name in :data:`MOVED` (each has warned through 0.2.x)
REMOVED_IN = "0.3.0"


@dataclass(frozen=True)
class Moved:
    """Where one first-release module's names live now.

    ``modules``: the modules that hold them, searched in order. ``names``: the first release's
    public names, space-separated; ``old=new`` binds an old name to another name (a dotted path
    from one of ``modules``: ``loss_and_gradients=Model.loss_and_gradients``). ``use``: the new
    spelling the warning recommends.
    """

    modules: tuple[str, ...]
    names: str
    use: str

    def bindings(self) -> dict[str, str]:
        """``{old name: new name}`` for every name of the old module."""
        pairs = (entry.partition("=") for entry in self.names.split())
        return {old: new or old for old, _, new in pairs}

    def locate(self, name: str) -> tuple[Any, str]:
        """``(object, its new spelling)`` for the old ``name``; AttributeError when the old module had no such name."""
        path = self.bindings()[name].split(".")
        for module_name in self.modules:
            module = importlib.import_module(module_name)
            if hasattr(module, path[0]):
                value = getattr(module, path[0])
                for part in path[1:]:
                    value = getattr(value, part)
                home = getattr(value, "__module__", None)  # a class or function: name its own module
                if not (isinstance(home, str) and getattr(sys.modules.get(home), path[0], None) is value):
                    home = module_name
                return value, f"`from {home} import {path[0]}`" + (f" ({'.'.join(path)})" if path[1:] else "")
        raise AttributeError(f"{name!r} is in none of {', '.join(self.modules)} (layerkit.compat.MOVED is stale)")

    def resolve(self, name: str) -> Any:
        """The object the old ``name`` now is."""
        return self.locate(name)[0]


def _moved(modules: str | Sequence[str], names: str, use: str | None = None) -> Moved:
    modules = (modules,) if isinstance(modules, str) else tuple(modules)
    return Moved(modules, names, use or modules[0])


#: first-release module -> where its names are now. The name lists are the public names each module
#: of layerkit 0.1.0 defined; tests/test_public_api.py resolves every one of them.
MOVED: dict[str, Moved] = {
    "layerkit.layer": _moved("layerkit.nn.layer", "Shape Params ParamSpec Example Layer require_rank",
                             "`from layerkit import Layer, Example, ParamSpec`"),
    "layerkit.hookspecs": _moved(("layerkit.plugins.hookspecs", "layerkit"),
                                 "hookspec hookimpl layerkit_register_layers layerkit_register_losses "
                                 "layerkit_register_optimizers layerkit_register_datasets",
                                 "`from layerkit import hookimpl` (the specifications: layerkit.plugins.hookspecs)"),
    "layerkit.registry": _moved("layerkit.plugins.registry", "KINDS Entry LoadProblem PluginInfo Registry"),
    "layerkit.schema": _moved("layerkit.modelfile.schema",
                              "FORMAT_VERSION SCHEMA_ID NAME_PATTERN LAYER_COMMON_KEYS SCHEDULE_SCHEMA DATA_SCHEMA "
                              "TRAINING_SCHEMA MODEL_SCHEMA params_schema_of typed_schema composed_schema"),
    "layerkit.spec": _moved("layerkit.modelfile.spec",
                            "DEFAULT_LOSS LayerSpec ModelSpec parse_json read_model_file load_spec spec_from_dict"),
    "layerkit.graph": _moved("layerkit.modelfile.shapes", "FLOAT32_BYTES Node Graph build_graph"),
    "layerkit.builder": _moved("layerkit.modelfile.build", "SizeLimits batch_size_of check_size parse_bytes "
                               "format_bytes build_graph_from build_model"),
    "layerkit.model": _moved("layerkit.nn.network",
                             "Model=Network save_npz_atomic load_npz loss_and_gradients=Network.loss_and_gradients"),
    "layerkit.initializers": _moved("layerkit.nn.initializers", "initialize INITIALIZERS"),
    "layerkit.losses": _moved(("layerkit.nn.losses", "layerkit.nn.elementwise_losses"),
                              "Loss SoftmaxCrossEntropy MeanSquaredError layerkit_register_losses",
                              "layerkit.nn.losses (MeanSquaredError: layerkit.nn.elementwise_losses)"),
    "layerkit.optimizers": _moved(("layerkit.nn.optimizers", "layerkit.training.trainer"),
                                  "LR_SCHEMA Optimizer SGD Adam RMSprop build_optimizer layerkit_register_optimizers",
                                  "layerkit.nn.optimizers (build_optimizer: layerkit.training.trainer)"),
    "layerkit.schedules": _moved("layerkit.nn.schedules", "SCHEDULES Schedule"),
    "layerkit.gradcheck_model": _moved("layerkit.gradcheck.model", "LOSS_ROW DELTA_L STEP_TOL NUDGE check_end_to_end"),
    "layerkit.gradcheck_render": _moved("layerkit.gradcheck.render", "STYLE describe render_report"),
    "layerkit.sample_parallel": _moved(("layerkit.training.sample_parallel", "layerkit.parallel.processes",
                                        "layerkit.parallel.collectives"),
                                       "MIN_FLOPS_PER_PARAM MIN_BATCH_FLOPS MIN_SHARD_SAMPLES MAX_REDUCE "
                                       "BARRIER_TIMEOUT_S splitting batch_sum available eligible "
                                       "plan_shards=shard_count SampleParallel",
                                       "`from layerkit.parallel.collectives import batch_sum` (in a layer) "
                                       "and layerkit.training.sample_parallel"),
    "layerkit.blas": _moved("layerkit.parallel.blas", "functions axpy axpby"),
    "layerkit.malloc_tuning": _moved("layerkit.parallel.malloc",
                                     "M_TRIM_THRESHOLD M_MMAP_THRESHOLD MMAP_THRESHOLD TRIM_THRESHOLD tune_malloc"),
    "layerkit.trainer": _moved("layerkit.training.trainer", "CHECKPOINT_FORMAT EVAL_BATCH LOWER_IS_BETTER "
                               "TrainingInterrupted Callback TrainState TrainResult build_loss evaluate Trainer"),
    "layerkit.runs": _moved(("layerkit.training.runs", "layerkit.cli.overrides"),
                            "MODEL_FILE CHECKPOINT WEIGHTS HISTORY_JSON HISTORY_CSV METRICS write_text_atomic RunDir "
                            "default_out apply_overrides num_outputs prepare_data "
                            "check_gradients train"),
    "layerkit.plot": _moved("layerkit.training.plot",
                            "MAX_IMAGES PlotUnavailable plot_curves weight_images plot_weights plot_run"),
    "layerkit.wiring": _moved("layerkit.modelfile.topology",
                              "RESERVED_INPUT Wired arity_problem wiring_problems ancestors topological_order"),
    # first-release modules whose names are packages now: the old names are attributes of the package
    "layerkit.gradcheck": _moved(("layerkit.gradcheck.report", "layerkit.gradcheck.layers",
                                  "layerkit.gradcheck.numerics"),
                                 "PASS_TOL WARN_TOL KINK_TOL ABS_FLOOR NOISE_ULPS FLOOR_FACTOR SWEEP_STEPS KINK_BUDGET "
                                 "EPS STATUS_ORDER Worst TensorResult relative_error status_of check_layer "
                                 "random_params initial_state random_input check_layer_config GradCheckReport "
                                 "check_model GradCheckError"),
    "layerkit.export": _moved("layerkit.modelfile.diagram", "FORMATS to_dot to_mermaid export"),
    "layerkit.parallel": _moved("layerkit.parallel.threads", "REDUCE_PARTS MIN_PARALLEL_BYTES num_threads "
                                "set_num_threads spans worth_it serial run blocks split"),
    "layerkit.plugins": _moved("layerkit.plugins.manager", "ENTRY_POINT_GROUP DISABLE_ENV TYPE_NAME DEFAULT_PLUGINS "
                               "HOOKS disabled_plugins load_registry contract_violation get_registry reset_registry"),
}

#: the old modules whose names are packages now (their ``__init__`` uses :func:`moved_attributes`)
PACKAGES = ("layerkit.gradcheck", "layerkit.export", "layerkit.parallel", "layerkit.plugins")


def _warn(old: str, use: str, stacklevel: int) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in layerkit {REMOVED_IN}; use {use}",
                  DeprecationWarning, stacklevel=stacklevel + 1)


class OldModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes the first release's modules on import; asked only for names no real module has."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED or fullname in PACKAGES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default: an empty module

    def exec_module(self, module: ModuleType) -> None:
        moved = MOVED[module.__name__]
        # stacklevel 1 is this frame; the import machinery's own frames are skipped, so 2 is the import line
        _warn(module.__name__, moved.use, stacklevel=2)
        names = moved.bindings()
        module.__dict__.update({name: moved.resolve(name) for name in names}, __all__=list(names))
        module.__doc__ = f"Deprecated alias of the first release's {module.__name__}: use {moved.use}."


FINDER = OldModuleFinder()


def install() -> None:
    """Put the finder at the end of ``sys.meta_path`` (once): real modules are always found first."""
    if FINDER not in sys.meta_path:
        sys.meta_path.append(FINDER)


def moved_attributes(package: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that serves the old module's names with a DeprecationWarning."""
    moved = MOVED[package]
    names = moved.bindings()

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value, use = moved.locate(name)
        _warn(f"{package}.{name}", use, stacklevel=2)
        return value

    return __getattr__
