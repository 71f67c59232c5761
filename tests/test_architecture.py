"""The folder tree is the architecture: import-linter's contracts (pyproject.toml) hold."""

import subprocess
import sys
from pathlib import Path

import pytest

from layerkit.plugins.manager import DEFAULT_PLUGINS

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


def _private_imports(path: Path) -> list[str]:
    import re

    text = path.read_text(encoding="utf-8")
    found = []
    # "from layerkit.x import a, _b" and the parenthesised multi-line form; text, not ast: 10x faster
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
