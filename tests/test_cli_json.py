"""--json on every command that reports something: stdout is one JSON document with the documented keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layerkit.cli import main
from train_support import hermetic, mlp_model  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("hermetic")


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 0) -> Any:
    assert main(argv) == code
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One tiny run, made through 'fit --json' (its record is what the fit test checks)."""
    import contextlib
    import io

    from layerkit.plugins.manager import reset_registry
    from train_support import builtin_registry

    folder = tmp_path_factory.mktemp("json_run")
    model = folder / "model.json"
    model.write_text(json.dumps(mlp_model(hidden=8, epochs=1, data={"train_limit": 200, "test_limit": 50})))
    out, err = io.StringIO(), io.StringIO()
    reset_registry(builtin_registry())
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert main(["fit", str(model), "--out", str(folder / "run"), "--json"]) == 0
    finally:
        reset_registry(None)
    return folder / "run", json.loads(out.getvalue())


def test_fit_json_is_the_only_stdout(trained: tuple[Path, dict]) -> None:
    run_dir, record = trained
    assert record["run_dir"] == str(run_dir) and record["epochs"] == 1
    assert set(record["final"]) >= {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"}
    assert 0 <= record["test_accuracy"] <= 1 and record["test_loss"] == record["final"]["test_loss"]
    assert {"stopped_early", "best_epoch", "monitor", "epoch_seconds"} <= set(record)


def test_validate_json(write_model: Any, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_model(mlp_model(), "good.json")
    bad = write_model({**mlp_model(), "layers": [{"type": "dense", "units": 0}]}, "bad.json")
    report = run_json(["validate", str(good), str(bad), "--json"], capsys, code=2)
    assert report[0] == {"model": str(good), "ok": True, "layers": 5, "parameters": 784 * 32 + 32 + 33 * 10,
                         "output_shape": [10]}
    assert report[1]["ok"] is False and any("units" in line for line in report[1]["errors"])


def test_summary_json(capsys: pytest.CaptureFixture[str]) -> None:
    info = run_json(["summary", "lenet5", "--json"], capsys)
    assert info["model"] == "lenet5" and info["input_shape"] == [1, 28, 28]
    assert info["parameters"] == sum(layer["parameters"] for layer in info["layers"]) == 61706
    assert info["layers"][0]["type"] == "conv2d" and info["layers"][-1]["output_shape"] == [10]
    assert info["activation_bytes"] > 0 and info["flops"] > 0


def test_evaluate_json(trained: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, record = trained
    info = run_json(["evaluate", str(run_dir), "--json"], capsys)
    assert info["samples"] == 50 and abs(info["accuracy"] - record["test_accuracy"]) < 1e-6
    assert len(info["confusion_matrix"]) == len(info["classes"]) == len(info["per_class_accuracy"])


def test_predict_json(trained: tuple[Path, dict], tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = trained
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 28, 28), dtype=np.uint8))
    out = run_json(["predict", str(run_dir), str(tmp_path / "x.npy"), "--top", "2", "--json"], capsys)
    assert len(out) == 2 and set(out[0]) == {"input", "class", "name", "probability", "top"}
    assert len(out[0]["top"]) == 2 and out[0]["top"][0]["class"] == out[0]["class"]


def test_check_grads_json(write_model: Any, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_model(mlp_model(hidden=4))
    report = run_json(["check-grads", str(model), "--samples", "4", "--json"], capsys)
    assert report["ok"] is True and report["seconds"] >= 0


@pytest.mark.parametrize("argv", [["models", "--json"], ["models", "list", "--json"]])
def test_models_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rows = run_json(argv, capsys)
    assert {"name", "task", "parameters", "test_accuracy", "description", "path"} <= set(rows[0])
    assert "lenet5" in [r["name"] for r in rows]
