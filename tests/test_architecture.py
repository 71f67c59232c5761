"""The folder tree is the architecture: import-linter's contracts (pyproject.toml) hold."""

import ast
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10 (import-linter brings tomli there)
    import tomli as tomllib

import pytest

from layerkit.default_plugins import DEFAULT_PLUGINS

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("module", [m for m in DEFAULT_PLUGINS if m.startswith("layerkit.layers.")])
def test_layer_modules_stay_light(module):
    # a layer is importable without the model-file, training or schema machinery
    code = (f"import sys, {module}; heavy = [m for m in ('jsonschema', 'layerkit.modelfile.spec', "
            "'layerkit.nn.network', 'layerkit.training.trainer') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def _tiers() -> list[str]:
    """The layers contract's packages, top first."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return layers


def _height(module: str, tiers: list[str]) -> int | None:
    """How high ``module``'s tier stands (the bottom tier is 1), or None outside every tier (the root)."""
    for i, tier in enumerate(tiers):
        if module == tier or module.startswith(tier + "."):
            return len(tiers) - i
    return None


# a whole string that is a layerkit module path, maybe with an entry point's ":attr"
_MODULE_NAME = re.compile(r"^(layerkit(?:\.\w+)+)(?::[\w.]+)?$")


def upward_names(source: str, module: str, tiers: list[str]) -> list[str]:
    """The string constants in ``source`` (the code of ``module``) that name a module of a higher tier.

    What ``importlib.import_module``, ``__import__``, pluggy or entry-point strings would load
    behind import-linter's back: it only sees import statements.
    """
    own = _height(module, tiers)
    if own is None:
        return []
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _MODULE_NAME.match(node.value)
            if match and (_height(match.group(1), tiers) or 0) > own:
                found.append(f"{module}:{node.lineno}: {node.value!r}")
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_tier_names_a_higher_tier_by_string():
    tiers = _tiers()
    found = [hit for p in sorted((ROOT / "layerkit").rglob("*.py"))
             for hit in upward_names(p.read_text(encoding="utf-8"), _module_name(p), tiers)]
    assert not found, "\n".join(found)


def test_string_check_catches_an_upward_name():
    tiers = _tiers()
    wrong = ('import importlib\n'
             'importlib.import_module("layerkit.training.tensorboard")\n'
             '__import__("layerkit.data.builtin")\n'
             'ENTRY = "layerkit.cli:main"\n')
    assert len(upward_names(wrong, "layerkit.plugins.manager", tiers)) == 3
    # naming a lower tier, or prose that mentions a module, is fine
    fine = 'import importlib\nimportlib.import_module("layerkit.layers.dense")\nDOC = "see layerkit.cli for more"\n'
    assert upward_names(fine, "layerkit.plugins.manager", tiers) == []
    # the top tier may name anything
    assert upward_names(wrong, "layerkit.cli.train", tiers) == []


def test_default_plugin_list_is_only_data():
    # it names every tier, so it must not import any: it is read, never run into
    tree = ast.parse((ROOT / "layerkit" / "default_plugins.py").read_text(encoding="utf-8"))
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
    assert imports == []


def _private_imports(path: Path) -> list[str]:
    import re

    text = path.read_text(encoding="utf-8")
    found = []
    # "from layerkit.x import a, _b" and the parenthesised multi-line form; text, not ast: parsing
    # every file would dominate the test's time
    for module, names in re.findall(r"^\s*from (layerkit[\w.]*) import (\([^)]*\)|[^\n]*)", text, flags=re.M):
        names = re.sub(r"\s+as\s+\w+", "", re.sub(r"#[^\n]*", "", names))  # "x as _y" imports x
        for name in re.split(r"[\s,()]+", names):
            if name.startswith("_") and not name.startswith("__"):
                found.append(f"{path.relative_to(ROOT)}: {module}.{name}")
    return found


def test_no_private_name_is_imported_across_modules():
    # a name with a leading underscore is its module's business; what others need gets a public name
    files = [p for folder in ("layerkit", "tests", "tools", "bench") for p in (ROOT / folder).rglob("*.py")]
    found = [hit for p in files for hit in _private_imports(p)]
    assert not found, "\n".join(found)


def _doc_modules() -> tuple[set[str], set[str]]:
    """(modules in docs/architecture.md's tables, modules in its tier diagram), as paths."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    tables = set(re.findall(r"^\| `(layerkit/[\w/]+\.py)` \|", text, flags=re.M))
    diagram = set()
    block = text.split("```")[1]  # the first code block: one line per tier
    for line in block.splitlines():
        if line.startswith("layerkit"):
            tier, *names = line.split()
            folder = "layerkit" if tier == "layerkit" else tier
            diagram |= {f"{folder}/{name}" for name in names if name.endswith(".py")}
    return tables, diagram


def test_architecture_doc_lists_every_module():
    # the page is the map of the tree: a module added, moved or removed must show there
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "layerkit").rglob("*.py")}
    tables, diagram = _doc_modules()
    assert tables == modules, f"tables miss {sorted(modules - tables)}, list absent {sorted(tables - modules)}"
    assert diagram == modules, f"diagram misses {sorted(modules - diagram)}, lists absent {sorted(diagram - modules)}"
