"""The inspect commands: output, exit codes (0 ok, 2 bad input), never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _core_layers import core_registry, flat_model
from conftest import shipped_model_files

from layerkit.cli import main
from layerkit.plugins.manager import reset_registry


@pytest.fixture
def core(monkeypatch):
    reset_registry(core_registry())
    yield
    reset_registry()


def test_validate_ok_and_bad_files(core, write_model, capsys):
    good = write_model(flat_model({"type": "dense", "units": 3}), "good.json")
    bad = write_model(flat_model({"type": "dense", "units": 0}, {"type": "scale", "inputs": "nope"}), "bad.json")
    assert main(["validate", str(good), str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == f"OK {good}: 1 layers, 21 parameters, output shape (3,)\n"
    assert err.splitlines() == [
        f"error: {bad}: layers[0].units: 0 is less than the minimum of 1",
        f"error: {bad}: layers[1].inputs: 'scale_1' (scale) reads unknown layer 'nope'",
    ]
    assert main(["validate", str(good)]) == 0


def test_validate_size_flags(core, write_model, capsys):
    path = write_model(flat_model({"type": "dense", "units": 100}))
    assert main(["validate", str(path), "--max-params", "100"]) == 2
    assert "over the limit of 100 (raise it with --max-params)" in capsys.readouterr().err
    assert main(["validate", str(path), "--max-memory", "1KiB", "--batch-size", "1"]) == 0
    assert main(["validate", str(path), "--max-memory", "1KiB"]) == 2
    assert "--max-memory" in capsys.readouterr().err
    assert main(["validate", str(path), "--max-memory", "lots"]) == 2
    assert "'lots' is not a size" in capsys.readouterr().err


def test_summary_table_and_totals(core, write_model, capsys):
    path = write_model(flat_model({"name": "fc", "type": "dense", "units": 4}, {"name": "s", "type": "scale"},
                                  training={"batch_size": 10}))
    assert main(["summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"model m ({path})\n")
    assert "│ 0 │ fc    │ dense │ input  │ (4,)         │     28 │    48 │" in out
    assert "│ total │" in out and "│     32 │" in out
    assert "parameters: 32\n" in out
    assert "FLOPs per sample (forward): 52\n" in out
    assert "activation memory at batch size 10 (training, float32): 1.0 KiB" in out


def test_summary_of_a_bad_file_is_one_line_per_problem(core, write_model, capsys):
    path = write_model(flat_model({"type": "crop", "size": 99}))
    assert main(["summary", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {path}: layers[0]: 'crop_0' (crop) with input shape (6,): cannot keep 99 of 6 features",
                   f"error: {path}: layers[0]: shapes so far: input (6,)"]


def test_graph_formats_carry_shapes(core, write_model, capsys):
    path = write_model(flat_model({"name": "h", "type": "dense", "units": 4},
                                  {"name": "a", "type": "scale", "inputs": "h"},
                                  {"name": "out", "type": "sum", "inputs": ["a", "h"]}))
    assert main(["graph", str(path)]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "m" {')
    assert '  n0 -> n1 [label="6"];' in dot and '  n1 -> n3 [label="4"];' in dot
    assert '  n3 [label="out\\nsum"];' in dot
    assert main(["graph", str(path), "--format", "mermaid"]) == 0
    mermaid = capsys.readouterr().out.splitlines()
    assert mermaid[0] == "flowchart TD"
    assert '  n1 -->|"4"| n2' in mermaid and '  n3 -->|"4"| out' in mermaid
    assert main(["graph", str(path), "--format", "png"]) == 2


def test_layers_json_and_table(core, capsys):
    assert main(["layers", "--json"]) == 0
    layers = {layer["type"]: layer for layer in json.loads(capsys.readouterr().out)}
    assert layers["scale"]["plugin"] == "core_layers" and layers["sum"]["inputs"] == "2+"
    assert layers["scale"]["parameters"][1] == {"name": "factor", "type": "number", "required": False,
                                                "default": 1.0, "bounds": {"minimum": 0},
                                                "description": "fixed extra multiplier"}
    assert layers["dense"]["parameters"][0]["required"] is True
    assert main(["layers"]) == 0
    assert "factor: number (>=0) = 1.0" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    assert main(["validate"]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["summary", "a.json", "--bogus"]) == 2
    assert main(["validate", "does-not-exist.json"]) == 2
    assert "error: does-not-exist.json: no such file" in capsys.readouterr().err


def test_shipped_models_validate(models_dir, capsys):
    paths = [str(p) for p in shipped_model_files()]
    assert main(["validate", *paths]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(paths)


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "layerkit", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def test_end_to_end_bad_json_has_no_traceback(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"format": 1,\n  "layers": [}\n')
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert result.stderr == f"error: {bad}: invalid JSON at line 2, column 14: Expecting value\n"
    assert "Traceback" not in result.stderr


def test_end_to_end_summary_of_a_shipped_model(models_dir):
    result = run_cli("summary", str(models_dir / "lenet5.json"))
    assert result.returncode == 0, result.stderr
    assert "parameters: 61,706" in result.stdout
    result = run_cli("summary", "--max-params", "1000", str(models_dir / "lenet5.json"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
