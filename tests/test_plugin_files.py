"""The lab workflow: a layer in one .py file, checked and used without a package (docs/plugins.md).

Every mistake a student makes in the file must come back as one `error:` line naming the file, the
line and the contract member, with exit 2; a wrong gradient is exit 1.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from layerkit.cli import main
from layerkit.plugins.manager import get_registry

ROOT = Path(__file__).resolve().parent.parent
PRELU = ROOT / "examples" / "prelu.py"

HEAD = """\
import numpy as np
from layerkit.nn.layer import Example, Layer


class Square(Layer):
    type = "square"
    description = "x squared"
    examples = (Example({}, (4,)),)

    def forward(self, params, x, training=False, rng=None, state=None):
        return x * x, x
"""
BACKWARD = """
    def backward(self, params, cache, dy):
        return {body}
"""


def square_file(tmp_path, body: str | None = "2 * cache * dy, {}", head: str = HEAD) -> Path:
    path = tmp_path / "square.py"
    path.write_text(head + (BACKWARD.format(body=body) if body is not None else ""))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_prelu_example_passes(capsys):
    rc, out, _ = run(capsys, "check-grads", PRELU)
    assert rc == 0, out
    assert "PReLU[0]" in out and "PReLU[1]" in out and "PASS" in out


def test_prelu_example_passes_the_conformance_suite():
    from layerkit.plugins.files import load_plugin_file
    from layerkit.testing import check_layer_metadata, run_layer_test

    cls = load_plugin_file(PRELU)[0].PReLU
    check_layer_metadata(cls)
    for example in cls.examples:
        run_layer_test(cls, example.config, example.input_shape)


def test_docs_show_the_example_file():
    """docs/plugins.md's first section prints examples/prelu.py; the test above runs that file."""
    doc = (ROOT / "docs" / "plugins.md").read_text()
    block = doc.split("```python\n", 1)[1].split("```", 1)[0]
    code = PRELU.read_text().split('"""', 2)[2]
    assert block.strip() == code.strip()


def test_one_class_at_a_shape(capsys):
    rc, out, _ = run(capsys, "check-grads", f"{PRELU}:PReLU", "--input-shape", "4,5,5",
                     "--config", '{"shared": true}', "--json")
    assert rc == 0
    rows = json.loads(out)["layers"]
    assert {r["tensor"]: r["shape"] for r in rows} == {"input": [2, 4, 5, 5], "a": [1]}


def test_unknown_class_is_named(capsys, tmp_path):
    rc, _, err = run(capsys, "check-grads", f"{square_file(tmp_path)}:Cube")
    assert rc == 2 and "no layer class 'Cube'" in one_error(err) and "Square" in err


def test_wrong_backward_fails_the_check(capsys, tmp_path):
    rc, out, _ = run(capsys, "check-grads", square_file(tmp_path, "cache * dy, {}"))
    assert rc == 1
    assert "FAIL" in out and "Square[0].input" in out


@pytest.mark.parametrize("name, head, body, where, says", [
    ("syntax", HEAD.replace("return x * x, x", "return x * x, x)"), "2 * cache * dy, {}", ":11:",
     "syntax error"),
    ("import", "import torchh\n" + HEAD, "2 * cache * dy, {}", ":1:", "import failed: No module named 'torchh'"),
    ("missing method", HEAD, None, ":5:", "missing method `backward`"),
    ("wrong return shape", HEAD.replace("return x * x, x", "return (x * x)[:, :2], x"), "2 * cache * dy, {}",
     ":10:", "Square.forward: returned an output of shape 2x2"),
    ("backward returns three things", HEAD, "2 * cache * dy, {}, None", ":13:",
     "Square.backward: must return (input gradient, {parameter: gradient}), returned a tuple of 3"),
    ("backward returns one thing", HEAD, "2 * cache * dy", ":13:", "Square.backward: must return"),
    ("raises", HEAD, "2 * cach * dy, {}", ":14:", "Square.backward raised NameError"),
    ("no type", HEAD.replace('type = "square"', ""), "2 * cache * dy, {}", ":5:", "set the class attribute `type`"),
    ("bad signature", HEAD.replace("def forward(self, params, x,", "def forward(self, x,"), "2 * cache * dy, {}",
     ":10:", "Square.forward: cannot be called as forward(self, params, x"),
])
def test_bad_file_is_one_line_with_file_and_line(capsys, tmp_path, name, head, body, where, says):
    path = square_file(tmp_path, body, head)
    rc, _, err = run(capsys, "check-grads", path)
    line = one_error(err)
    assert rc == 2
    assert f"{path}{where}" in line and says in line, line


def test_file_without_layers(capsys, tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("from layerkit.layers.activations import ReLU  # imported, not defined: not registered\n")
    rc, _, err = run(capsys, "check-grads", path)
    assert rc == 2 and "defines no layer" in one_error(err)


def test_missing_file(capsys, tmp_path):
    rc, _, err = run(capsys, "validate", ROOT / "models" / "cnn1.json", "--plugin", tmp_path / "nope.py")
    assert rc == 2 and "nope.py: no such plugin file" in one_error(err)


def test_hook_file_registers_what_the_hook_gives(capsys, tmp_path):
    path = square_file(tmp_path, head=HEAD.replace("class Square", "class _Square"))
    path.write_text(path.read_text().replace("_Square", "Square") + textwrap.dedent("""
        import layerkit

        class Unused(Square):
            type = "unused"

        @layerkit.hookimpl
        def layerkit_register_layers(register):
            register(Square)
    """))
    rc, out, _ = run(capsys, "check-grads", path)
    assert rc == 0 and "Square[0]" in out and "Unused" not in out


def test_file_with_only_a_loss_hook(capsys, tmp_path, write_model):
    path = tmp_path / "myloss.py"
    path.write_text(textwrap.dedent("""
        import layerkit
        from layerkit.nn.losses import NLLLoss

        class Squared(NLLLoss):
            type = "my_squared"

        @layerkit.hookimpl
        def layerkit_register_losses(register):
            register(Squared)
    """))
    rc, _, err = run(capsys, "check-grads", path)
    assert rc == 2 and "registers no layer" in one_error(err)
    from conftest import tiny_model
    rc, out, _ = run(capsys, "validate", write_model(tiny_model(loss={"type": "my_squared"})), "--plugin", path)
    assert rc == 0, out


def test_unmarked_hook_is_an_error(capsys, tmp_path):
    path = square_file(tmp_path)
    path.write_text(path.read_text() + "\n\ndef layerkit_register_layers(register):\n    register(Square)\n")
    rc, _, err = run(capsys, "check-grads", path)
    assert rc == 2 and "put @layerkit.hookimpl above it" in one_error(err)


def prelu_model(write_model) -> Path:
    from conftest import tiny_model

    model = tiny_model(input={"shape": [1, 28, 28]})
    model["layers"][0]["stride"] = 4  # small and fast: 2x7x7 features
    model["layers"][1] = {"type": "my_prelu"}
    model["layers"][3]["units"] = 10
    return write_model(model)


def test_plugin_option_makes_the_layer_usable(capsys, write_model, tmp_path):
    model = prelu_model(write_model)
    rc, _, err = run(capsys, "validate", model)
    assert rc == 2 and "my_prelu" in err
    rc, out, _ = run(capsys, "validate", model, "--plugin", PRELU)
    assert rc == 0 and "OK" in out
    rc, out, _ = run(capsys, "check-grads", model, "--plugin", PRELU, "--samples", "4")
    assert rc == 0 and "my_prelu" in out
    rc, out, _ = run(capsys, "fit", model, "--plugin", PRELU, "--train-limit", "64", "--test-limit", "32",
                     "--out", tmp_path / "run")
    assert rc == 0 and (tmp_path / "run" / "weights.npz").exists()
    # the option lasts one command: the registry afterwards is the installed one
    assert "my_prelu" not in get_registry().names("layer")


def test_env_var_loads_files(capsys, write_model, monkeypatch, tmp_path):
    model = prelu_model(write_model)
    other = square_file(tmp_path)
    monkeypatch.setenv("LAYERKIT_PLUGINS", f"{PRELU}{__import__('os').pathsep}{other}")
    rc, out, _ = run(capsys, "validate", model)
    assert rc == 0
    assert {"my_prelu", "square"} <= set(get_registry().names("layer"))


def test_contract_checked_before_the_command(capsys, write_model, tmp_path):
    """A model that does not even use the broken layer still gets the file's problem, with its line."""
    path = square_file(tmp_path, "2 * cache * dy, {}, None")
    rc, _, err = run(capsys, "validate", write_model(__import__("conftest").tiny_model()), "--plugin", path)
    assert rc == 2 and f"{path}:13: Square.backward: must return" in one_error(err)


def test_error_during_training_names_the_line(capsys, write_model, tmp_path):
    path = tmp_path / "flaky.py"
    path.write_text(PRELU.read_text().replace('type = "my_prelu"', 'type = "my_prelu"\n    calls = []').replace(
        "        a = self._slope(params[\"a\"], x.ndim)\n",
        "        a = self._slope(params[\"a\"], x.ndim)\n        if x.shape[0] > 2:\n"
        "            raise RuntimeError(\"only small batches\")\n"))
    rc, _, err = run(capsys, "fit", prelu_model(write_model), "--plugin", path, "--train-limit", "64",
                     "--test-limit", "32", "--out", tmp_path / "run")
    assert rc == 2
    assert f"{path}:" in err and "PReLU.forward raised RuntimeError: only small batches" in err
    assert "Traceback" not in err
