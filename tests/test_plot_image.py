"""``layerkit plot``'s curves.png reads well, for one epoch as for several: whole-number epoch
ticks, accuracy in percent, anchored axes and the training loss of every batch, which ``fit``
records in the run (``batches.json``) and a resumed run records bit-identically."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from layerkit.cli import main
from layerkit.errors import CheckpointError
from layerkit.plugins.manager import reset_registry
from layerkit.training.plot import plot_curves
from layerkit.training.runs import BATCHES_JSON, CHECKPOINT, RunDir, train
from layerkit.training.trainer import BATCH_LOSSES, TrainingInterrupted

from train_support import InterruptAt, builtin_registry, hermetic, mlp_model  # noqa: F401 (hermetic is a fixture)

matplotlib = pytest.importorskip("matplotlib", reason="plots need the plot extra")

pytestmark = pytest.mark.usefixtures("hermetic")

TRAIN_LIMIT, BATCH = 300, 50  # 6 batches per epoch


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib Figure saved, with its path: the plot's Axes can be read, not only its pixels."""
    from matplotlib.figure import Figure

    saved: dict[str, Figure] = {}
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        saved[str(fname).rsplit("/", 1)[-1]] = self
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-epoch and a 3-epoch run of a small MLP, trained by ``layerkit fit`` on the embedded sample."""
    folder = tmp_path_factory.mktemp("runs")
    model = folder / "small.json"
    model.write_text(json.dumps(mlp_model(hidden=16, batch_size=BATCH)))
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        mp.delenv("LAYERKIT_DATA_DIR", raising=False)
        reset_registry(builtin_registry())
        for epochs in (1, 3):
            out[epochs] = folder / f"run{epochs}"
            assert main(["fit", str(model), "--out", str(out[epochs]), "--epochs", str(epochs),
                         "--train-limit", str(TRAIN_LIMIT), "--test-limit", "100", "--quiet"]) == 0
        reset_registry(None)
    return out


def curves(run, path, saved_figures):
    """curves.png of ``run``, written as ``layerkit plot`` writes it; its Figure."""
    plot_curves(RunDir(run).history(), path, "small", RunDir(run).batches())
    return saved_figures[path.name]


def check_image(path, width=1100, height=420):
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (height, width)
    rgb = image[..., :3]
    drawn = np.any(rgb < 0.9, axis=-1)  # not white
    assert 0.02 < drawn.mean() < 0.5, "a blank or a filled image"
    assert len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 20  # lines, text, colours


def whole_ticks(ax) -> list[float]:
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo - 1e-9 <= t <= hi + 1e-9]


def check_axes(figure, epochs: int, per_batch: bool = True) -> None:
    loss_ax, acc_ax = figure.axes
    for ax in (loss_ax, acc_ax):
        ticks = whole_ticks(ax)
        assert ticks and all(t == int(t) for t in ticks), ticks  # no epoch 1.25
        assert all(label.get_text().lstrip("−-").isdigit() for label in ax.get_xticklabels() if label.get_text())
        assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] >= epochs
    assert "%" in acc_ax.get_ylabel() and acc_ax.get_ylim()[1] == 100
    accuracy = [y for line in acc_ax.get_lines() for y in line.get_ydata()]
    assert max(accuracy) > 1.5  # percent, not a fraction
    assert loss_ax.get_ylim()[0] == 0
    batch_lines = [line for line in loss_ax.get_lines() if "per batch" in str(line.get_label())]
    if per_batch:
        assert len(batch_lines) == 1 and len(batch_lines[0].get_xdata()) == epochs * TRAIN_LIMIT // BATCH
        assert max(batch_lines[0].get_ydata()) <= loss_ax.get_ylim()[1] * 1.5  # the curve is on the axes
    else:
        assert not batch_lines
    epoch_lines = [line for line in loss_ax.get_lines() if line not in batch_lines]
    assert epoch_lines and all(line.get_marker() not in (None, "", "None") for line in epoch_lines)


@pytest.mark.parametrize("epochs", [1, 3])
def test_curves_png_reads_well(runs, tmp_path, saved_figures, epochs):
    figure = curves(runs[epochs], tmp_path / "curves.png", saved_figures)
    check_image(tmp_path / "curves.png")
    check_axes(figure, epochs)


def test_layerkit_plot_draws_the_recorded_batches(runs, tmp_path, saved_figures, capsys):
    assert main(["plot", str(runs[3]), "--out", str(tmp_path / "png")]) == 0
    check_axes(saved_figures["curves.png"], 3)
    check_image(tmp_path / "png" / "curves.png")


def test_a_run_from_before_batches_json_still_plots(runs, tmp_path, saved_figures):
    old = tmp_path / "old"
    shutil.copytree(runs[3], old)
    (old / BATCHES_JSON).unlink()
    figure = curves(old, tmp_path / "curves.png", saved_figures)
    check_image(tmp_path / "curves.png")
    check_axes(figure, 3, per_batch=False)
    assert whole_ticks(figure.axes[0]) == [0, 1, 2, 3]


def test_fit_records_every_batch_loss(runs):
    record = json.loads((runs[3] / BATCHES_JSON).read_text())
    history = json.loads((runs[3] / "history.json").read_text())
    steps = TRAIN_LIMIT // BATCH
    assert record["batches_per_epoch"] == steps and len(record["train_loss"]) == 3 * steps
    for epoch, row in enumerate(history):  # the epoch's running loss is the mean of its batches (equal sizes)
        assert np.mean(record["train_loss"][epoch * steps:(epoch + 1) * steps]) == pytest.approx(row["train_loss"])


MODEL = mlp_model(epochs=2, data={"train_limit": 400, "test_limit": 50})  # 8 batches of 50 per epoch


def test_resumed_run_records_the_same_batches(tmp_path):
    straight = tmp_path / "straight"
    train(MODEL, out=straight)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(MODEL, out=out, callbacks=[InterruptAt(1, 2)])
    partial = json.loads((out / BATCHES_JSON).read_text())
    assert len(partial["train_loss"]) == 8 + 3  # written with the checkpoint, mid-epoch
    train(resume=out)
    assert (out / BATCHES_JSON).read_bytes() == (straight / BATCHES_JSON).read_bytes()


def resume_with_checkpoint(tmp_path, change):
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(MODEL, out=out, callbacks=[InterruptAt(0, 4)])
    with np.load(out / CHECKPOINT, allow_pickle=False) as saved:
        arrays = dict(saved)
    change(arrays)
    np.savez(out / CHECKPOINT, **arrays)
    train(resume=out)
    return out


def test_a_checkpoint_from_before_batch_losses_resumes(tmp_path, saved_figures):
    out = resume_with_checkpoint(tmp_path, lambda arrays: arrays.pop(BATCH_LOSSES))
    losses = json.loads((out / BATCHES_JSON).read_text())["train_loss"]
    assert losses[:5] == [None] * 5 and len(losses) == 16 and all(math.isfinite(v) for v in losses[5:])
    figure = curves(out, tmp_path / "curves.png", saved_figures)
    assert len(figure.axes[0].get_lines()[0].get_xdata()) == 16  # the unknown batches are gaps


def test_a_damaged_batch_record_in_a_checkpoint_is_named(tmp_path):
    def damage(arrays):
        arrays[BATCH_LOSSES] = arrays[BATCH_LOSSES][:2]

    with pytest.raises(CheckpointError, match=r"batches/train_loss: float64 \(2,\) instead of the losses of 5 "
                                              r"batches; the checkpoint is damaged"):
        resume_with_checkpoint(tmp_path, damage)


def test_a_broken_batches_json_is_named(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    shutil.copy(run / "history.json", run / BATCHES_JSON)  # valid JSON, wrong shape
    assert main(["plot", str(run), "--out", str(tmp_path / "png")]) == 2
    assert f"{run / BATCHES_JSON}: expected" in capsys.readouterr().err
