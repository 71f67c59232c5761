"""The example layer shown in the README is the one docs/plugins.md explains, and it passes the suite."""

from __future__ import annotations

import re
from pathlib import Path

from layerkit.testing import check_layer_metadata, run_layer_test

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def test_readme_example_layer_is_the_plugins_doc_one_and_conforms():
    readme = next(b for b in python_blocks(ROOT / "README.md") if "class Swish(Layer)" in b)
    doc = next(b for b in python_blocks(ROOT / "docs" / "plugins.md") if "class Swish(Layer)" in b)
    assert readme.split("\n", 1)[1] == doc  # the README's block adds only its "# my_layers/__init__.py" line
    namespace: dict = {}
    exec(compile(doc, "docs/plugins.md", "exec"), namespace)
    swish = namespace["Swish"]
    check_layer_metadata(swish)
    for example in swish.examples:
        run_layer_test(swish, example.config, example.input_shape)
