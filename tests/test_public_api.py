"""The public surface holds: the root names, the version, and every first-release path (with a warning)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import layerkit
from layerkit import compat
from layerkit.errors import ContractError, LayerkitError, ShapeError
from layerkit.nn.layer import Coupling, Example, Layer, ParamSpec

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(old for old in compat.MOVED if old not in compat.PACKAGES)
OLD_NAMES = [(old, name) for old, moved in sorted(compat.MOVED.items()) for name in moved.bindings()]


def test_plugin_author_names_are_the_layer_api_objects():
    from layerkit import Coupling as C  # noqa: N817
    from layerkit import Example as E  # noqa: N817
    from layerkit import Layer as L  # noqa: N817
    from layerkit import ParamSpec as P  # noqa: N817
    from layerkit import hookimpl

    assert (L, E, P, C) == (Layer, Example, ParamSpec, Coupling)
    assert (layerkit.LayerkitError, layerkit.ShapeError, layerkit.ContractError) == (
        LayerkitError, ShapeError, ContractError)
    assert hookimpl is layerkit.hookimpl


def test_contract_error_is_a_failed_check():
    assert issubclass(ContractError, LayerkitError) and ContractError.exit_code == 1


@pytest.mark.parametrize("name", layerkit.__all__)
def test_every_root_name_is_importable(name):
    assert getattr(layerkit, name) is not None


def test_star_import_gives_every_root_name():
    namespace: dict = {}
    exec("from layerkit import *", namespace)  # noqa: S102
    assert set(layerkit.__all__) <= set(namespace) and namespace["Layer"] is Layer


def test_all_lists_the_root_names():
    public = {n for n in dir(layerkit) if not n.startswith("_") and not isinstance(getattr(layerkit, n), type(re))}
    assert public | {"__version__"} == set(layerkit.__all__)


def test_version_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert layerkit.__version__ == project["version"] == "0.2.0"


def test_changelog_has_the_version():
    assert f"## [{layerkit.__version__}]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


def test_import_layerkit_stays_light_and_quiet():
    # a plugin imports layerkit for hookimpl: that must not load the machinery (Layer and friends load on
    # first use), nor warn
    heavy = ("jsonschema", "rich", "typer", "numpy", "layerkit.nn.layer", "layerkit.api", "layerkit.plugins",
             "layerkit.modelfile", "layerkit.training", "layerkit.layer")
    code = f"import sys, layerkit; print(sorted(m for m in sys.modules if m in {heavy!r}))"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


@pytest.fixture
def fresh(monkeypatch):
    """Forget the shims imported so far, so that importing one warns again (and undo that after)."""
    for old in compat.MOVED:
        if old not in compat.PACKAGES:
            monkeypatch.delitem(sys.modules, old, raising=False)
            monkeypatch.delattr(layerkit, old.rpartition(".")[2], raising=False)


# the paths the first release's README and docs showed, and what each is now
DOCUMENTED = [
    ("layerkit.layer", "Layer", "layerkit", "Layer"),
    ("layerkit.layer", "Example", "layerkit", "Example"),
    ("layerkit.layer", "ParamSpec", "layerkit", "ParamSpec"),
    ("layerkit.builder", "build_model", "layerkit.modelfile.build", "build_model"),
    ("layerkit.gradcheck", "check_model", "layerkit.gradcheck.report", "check_model"),
    ("layerkit.gradcheck", "check_layer", "layerkit.gradcheck.layers", "check_layer"),
    ("layerkit.gradcheck", "check_layer_config", "layerkit.gradcheck.layers", "check_layer_config"),
    ("layerkit.sample_parallel", "batch_sum", "layerkit.parallel.collectives", "batch_sum"),
    ("layerkit.optimizers", "Optimizer", "layerkit.nn.optimizers", "Optimizer"),
    ("layerkit.malloc_tuning", "tune_malloc", "layerkit.parallel.malloc", "tune_malloc"),
    ("layerkit.plugins", "load_registry", "layerkit.plugins.manager", "load_registry"),
    ("layerkit.hookspecs", "hookimpl", "layerkit", "hookimpl"),
    ("layerkit.trainer", "Trainer", "layerkit.training.trainer", "Trainer"),
    ("layerkit.runs", "RunDir", "layerkit.training.runs", "RunDir"),
]


@pytest.mark.parametrize(("old", "name", "new", "new_name"), DOCUMENTED)
def test_documented_path_warns_and_gives_the_new_object(fresh, old, name, new, new_name):
    with pytest.warns(DeprecationWarning, match=re.escape(old)) as caught:
        value = getattr(__import__(old, fromlist=["_"]), name)  # a plain import, as a user's file has it
    assert value is getattr(importlib.import_module(new), new_name)
    message = str(caught[0].message)
    assert "0.3.0" in message and "use " in message
    # the warning points at the line that used the old path, so a script run with -W default shows it
    assert caught[0].filename == __file__


def test_the_first_release_import_line_works(fresh):
    with pytest.warns(DeprecationWarning, match=re.escape("use `from layerkit import Layer, Example, ParamSpec`")):
        from layerkit.layer import Example as OldExample
        from layerkit.layer import Layer as OldLayer
        from layerkit.layer import ParamSpec as OldParamSpec
    assert (OldLayer, OldExample, OldParamSpec) == (Layer, Example, ParamSpec)


@pytest.mark.parametrize("old", MODULES)
def test_every_old_module_warns_naming_its_new_home(fresh, old):
    moved = compat.MOVED[old]
    with pytest.warns(DeprecationWarning) as caught:
        module = importlib.import_module(old)
    assert [str(w.message) for w in caught] == [
        f"{old} is deprecated and will be removed in layerkit {compat.REMOVED_IN}; use {moved.use}"]
    # the text names a real module: every layerkit.x.y it mentions imports
    for named in re.findall(r"layerkit(?:\.\w+)+", moved.use):
        importlib.import_module(named)
    assert sorted(module.__all__) == sorted(moved.bindings())


@pytest.mark.parametrize(("old", "name"), OLD_NAMES)
def test_every_old_name_is_the_object_its_new_spelling_names(old, name):
    # the drift guard: a name moved or renamed since must be updated in layerkit/compat.py
    moved = compat.MOVED[old]
    value, spelling = moved.locate(name)
    new_module, new_name = re.fullmatch(r"`from ([\w.]+) import (\w+)`( \([\w.]+\))?", spelling).group(1, 2)
    expected = getattr(importlib.import_module(new_module), new_name)
    for part in moved.bindings()[name].split(".")[1:]:
        expected = getattr(expected, part)
    assert value is expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert getattr(importlib.import_module(old), name) is value


@pytest.mark.parametrize("old", MODULES)
def test_an_old_module_is_not_shadowed_by_a_real_one(old):
    # a real module of that name would win over the shim (the finder is last in sys.meta_path)
    assert isinstance(importlib.util.find_spec(old).loader, compat.OldModuleFinder)


@pytest.mark.parametrize("package", compat.PACKAGES)
def test_a_package_with_an_old_module_name_serves_its_old_names(package):
    module = importlib.import_module(package)
    names = compat.MOVED[package].bindings()
    submodules = {p.stem for p in Path(module.__file__).parent.glob("*.py")}
    assert not names.keys() & submodules, "an old name would hide a submodule"
    name = next(iter(names))
    with pytest.warns(DeprecationWarning, match=re.escape(f"{package}.{name} is deprecated")) as caught:
        getattr(module, name)
    assert caught[0].filename == __file__
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_a_stale_table_entry_fails():
    stale = compat.Moved(("layerkit.nn.layer",), "Layer Gone Renamed=Layer.no_such_member", "x")
    assert stale.resolve("Layer") is Layer
    with pytest.raises(AttributeError, match="MOVED is stale"):
        stale.resolve("Gone")
    with pytest.raises(AttributeError, match="no_such_member"):
        stale.resolve("Renamed")


def test_only_old_module_names_are_made_up():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("layerkit.no_such_module")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("layerkit.layers._windows")  # private in the first release: no shim


def test_old_module_attribute_access_needs_the_import(fresh):
    # like any submodule: ``layerkit.builder`` is an attribute only once imported
    with pytest.raises(AttributeError):
        layerkit.builder  # noqa: B018


def test_the_stability_page_lists_every_old_module():
    # the page's two tables of first-release paths are the table layerkit/compat.py serves
    text = (ROOT / "docs" / "stability.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `(?:from )?(layerkit\.\w+)", text, flags=re.M))
    assert listed == set(compat.MOVED)


def test_the_first_release_gradcheck_snippet_runs(fresh):
    # 0.1.0's docs/gradcheck.md, "The same from Python", on a small model
    with pytest.warns(DeprecationWarning):
        from layerkit.builder import build_model
        from layerkit.gradcheck import check_layer, check_layer_config, check_model
    report = check_model(build_model(str(ROOT / "models" / "softmax_regression.json")))
    assert report.ok and report.rows and isinstance(report.to_dict(), dict)
    assert callable(check_layer) and callable(check_layer_config)
