"""``layerkit fit / evaluate / plot / data list``: output, run directories, exit codes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from layerkit.cli import main
from layerkit.plugins.manager import reset_registry

from train_support import builtin_registry, hermetic, mlp_model  # noqa: F401 (hermetic is a fixture)


pytestmark = pytest.mark.usefixtures("hermetic")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One quiet 2-epoch fit shared by the read-only tests."""
    root = tmp_path_factory.mktemp("cli")
    model = root / "mlp.json"
    model.write_text(json.dumps(mlp_model(epochs=1)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        mp.delenv("LAYERKIT_DATA_DIR", raising=False)
        reset_registry(builtin_registry())
        rc = main(["fit", str(model), "--epochs", "2", "--lr", "0.002", "--quiet", "--out", str(root / "run")])
    assert rc == 0
    return model, root / "run"


def test_fit_writes_the_run_with_overrides_applied(trained):
    _, run = trained
    used = json.loads((run / "model.json").read_text())
    assert used["training"]["epochs"] == 2 and used["training"]["optimizer"]["lr"] == 0.002
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] > 0.5


def test_fit_prints_one_summary_line_per_epoch(tmp_path, write_model, capsys):
    model = write_model(mlp_model(epochs=2, data={"train_limit": 200, "test_limit": 50}))
    assert main(["fit", str(model), "--quiet", "--out", str(tmp_path / "r"), "--set", "batch_size=40"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and "test loss" in lines[0] and "img/s" in lines[0]
    assert "test accuracy" in out and "embedded MNIST sample" in err
    assert json.loads((tmp_path / "r" / "model.json").read_text())["training"]["batch_size"] == 40


@pytest.mark.parametrize("args,message", [
    (["--optimizer", "adamx"], "unknown optimizer type 'adamx'"),
    (["--classes", "0,1,x"], "--classes"),
    (["--epochs", "0"], "--epochs"),
    (["--set", "epochs=-1"], "training.epochs"),
    (["--augment-shift", "9"], "training.data.augment.shift: 9 is greater than the maximum of 8"),
    (["--dataset", "npz", "--data-dir", "/nonexistent-dir"], "no npz files here"),
    (["--resume", "/nonexistent-run"], "--resume continues a run exactly"),
])
def test_user_mistakes_exit_2_without_traceback(trained, args, message, capsys):
    model, _ = trained
    extra = ["--epochs", "1"] if "--resume" in args else []
    assert main(["fit", str(model), "--quiet", *args, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_labels_that_do_not_fit_the_model(tmp_path, write_model, capsys):
    model = write_model(mlp_model(classes=3))
    assert main(["fit", str(model), "--quiet", "--out", str(tmp_path / "r")]) == 2
    assert "labels go up to 9 but the model has 3 output units" in capsys.readouterr().err
    assert main(["fit", str(model), "--quiet", "--out", str(tmp_path / "r2"), "--classes", "3,4,5",
                 "--epochs", "1"]) == 0


def test_missing_model_file(capsys):
    assert main(["fit", "does-not-exist.json"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_nan_loss_exits_1(tmp_path, write_model, capsys):
    model = write_model(mlp_model(epochs=1, optimizer={"type": "sgd", "lr": 1e30}))
    assert main(["fit", str(model), "--quiet", "--out", str(tmp_path / "r")]) == 1
    assert "the loss became" in capsys.readouterr().err


def test_check_grads_runs_before_training(tmp_path, write_model, capsys, monkeypatch):
    model = write_model(mlp_model(epochs=1, dropout=0.0, data={"train_limit": 100, "test_limit": 20}))
    assert main(["fit", str(model), "--quiet", "--check-grads", "--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "weights.npz").exists()

    import layerkit.gradcheck.report

    class Failing:
        ok = False

        def render(self, console):
            console.print("FAKE REPORT")

    seen = {}

    def fake_check(model, x=None, y=None, **kwargs):
        seen["shapes"] = (x.shape, y.shape)
        return Failing()

    monkeypatch.setattr(layerkit.gradcheck.report, "check_model", fake_check)
    assert main(["fit", str(model), "--quiet", "--check-grads", "--out", str(tmp_path / "bad")]) == 1
    out, err = capsys.readouterr()
    assert "FAKE REPORT" in out and "gradient check failed" in err
    assert seen["shapes"][0][1:] == (1, 28, 28)
    assert not (tmp_path / "bad" / "checkpoint.npz").exists()


def test_resume_via_cli_completes_the_run(trained, tmp_path, capsys):
    import shutil
    _, run = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["fit", "--resume", str(copy), "--quiet"]) == 0
    assert "already complete" in capsys.readouterr().err


def test_evaluate_json(trained, capsys):
    model, run = trained
    assert main(["evaluate", str(model), "--weights", str(run / "weights.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == report["samples"] == 300
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert main(["evaluate", str(model), "--weights", str(run / "checkpoint.npz")]) == 0
    assert "confusion matrix" in capsys.readouterr().out


def test_evaluate_with_weights_of_another_model(trained, tmp_path, write_model, capsys):
    _, run = trained
    other = write_model(mlp_model(hidden=8), "other.json")
    assert main(["evaluate", str(other), "--weights", str(run / "weights.npz")]) == 2
    assert "does not fit model" in capsys.readouterr().err


def test_plot_writes_pngs(trained, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    _, run = trained
    assert main(["plot", str(run), "--out", str(tmp_path / "png")]) == 0
    for name in ("curves.png", "weights.png"):
        assert (tmp_path / "png" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(trained, monkeypatch, capsys):
    _, run = trained
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(run)]) == 2
    from layerkit.errors import install_hint
    assert f"needs matplotlib: {install_hint('plot')}" in capsys.readouterr().err


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("mnist", "fashion_mnist", "mnist_npz", "mnist_pkl", "kaggle_digits", "cifar10", "npz"):
        assert name in out


def test_resumed_epoch_speed_counts_only_the_images_trained_now():
    from rich.console import Console

    from layerkit.cli.train import ProgressDisplay

    class Trainer:
        epochs = 2

    console = Console(record=True, width=200)
    ticks = iter([0.5, 1.0, 1.5])  # the ends of batches 8, 9, 10: 20 images in 1 s after the first
    display = ProgressDisplay(console, quiet=True, clock=lambda: next(ticks))
    display.on_train_begin(Trainer())
    display.on_epoch_begin(0, steps=10, start_step=7)  # resumed after batch 7 of 10
    for step in (7, 8, 9):
        display.on_batch_end(0, step, loss=0.5, accuracy=0.9, samples=10)
    display.on_epoch_end(0, {"train_loss": 0.5, "train_accuracy": 0.9, "test_loss": 0.4,
                             "test_accuracy": 0.9, "lr": 0.1}, seconds=2.0)
    assert "(20 img/s)" in console.export_text()
