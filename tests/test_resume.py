"""Run directories: interrupted-and-resumed runs end bit-identical; checkpoints are atomic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layerkit.cli.train import FIT_TERMS
from layerkit.errors import CheckpointError, LayerkitError
from layerkit.nn.network import load_npz
from layerkit.plugins.manager import reset_registry
from layerkit.training.runs import (CHECKPOINT, HISTORY_CSV, HISTORY_JSON, METRICS, MODEL_FILE, WEIGHTS, RunDir,
                                    RunRequest, train)
from layerkit.training.trainer import TrainingInterrupted

from train_support import InterruptAt, builtin_registry, hermetic, mlp_model  # noqa: F401 (hermetic is a fixture)

MODEL = mlp_model(epochs=2, optimizer={"type": "adam", "lr": 0.003},
                  schedule={"type": "cosine", "min_lr": 0.0001, "warmup_epochs": 0.5})


pytestmark = pytest.mark.usefixtures("hermetic")


def final(run_dir):
    return load_npz(run_dir / WEIGHTS), json.loads((run_dir / HISTORY_JSON).read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(out.parent / "cache"))
        mp.delenv("LAYERKIT_DATA_DIR", raising=False)
        reset_registry(builtin_registry())
        train(MODEL, out=out)
    return out


def test_run_directory_contents(straight):
    for name in (MODEL_FILE, CHECKPOINT, HISTORY_JSON, HISTORY_CSV, WEIGHTS, METRICS):
        assert (straight / name).is_file(), name
    metrics = json.loads((straight / METRICS).read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["epochs_run"] == 2
    assert json.loads((straight / MODEL_FILE).read_text())["training"] == MODEL["training"]
    lines = (straight / HISTORY_CSV).read_text().splitlines()
    assert lines[0].startswith("epoch,lr,train_loss") and len(lines) == 3
    with np.load(straight / CHECKPOINT, allow_pickle=False) as ckpt:  # no pickles anywhere
        meta = json.loads(str(ckpt["meta"]))
        assert meta["state"]["epoch"] == 2 and "state" in meta["rng"]


@pytest.mark.parametrize("stop_at", [(0, 19), (1, 6)], ids=["epoch-boundary", "mid-epoch"])
def test_interrupted_and_resumed_is_bit_identical(straight, tmp_path, stop_at, capsys):
    out = tmp_path / "run"
    logs = []
    with pytest.raises(TrainingInterrupted) as info:
        train(MODEL, out=out, callbacks=[InterruptAt(*stop_at)], log=logs.append)
    assert info.value.saved
    # a Python caller is told how to ask for the resumed run (the CLI names its --resume flag)
    assert any(f"train(RunRequest(resume={str(out)!r}))" in line for line in logs)
    assert not (out / WEIGHTS).exists()
    train(resume=out, log=logs.append)
    (w1, h1), (w2, h2) = final(straight), final(out)
    assert h1 == h2
    assert w1.keys() == w2.keys()
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)


def test_resuming_a_finished_run_changes_nothing(straight, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(straight, copy)
    logs = []
    train(resume=copy, log=logs.append)
    assert any("already complete" in line for line in logs)
    (w1, h1), (w2, h2) = final(straight), final(copy)
    assert h1 == h2 and all(np.array_equal(w1[k], w2[k]) for k in w1)


def test_out_directory_with_a_run_is_refused(straight):
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(MODEL, out=straight)


def test_messages_name_the_request_or_the_command_line(straight):
    # training speaks of RunRequest's fields; layerkit fit hands it its flags to name instead
    with pytest.raises(CheckpointError, match=r"continue it with resume='.*' or choose another out directory"):
        train(RunRequest(model=MODEL, out=straight))
    with pytest.raises(CheckpointError, match=r"continue it with --resume \S+ or choose another --out$"):
        train(RunRequest(model=MODEL, out=straight, terms=FIT_TERMS))


def test_a_request_needs_a_model_or_a_run():
    with pytest.raises(LayerkitError, match="give a model to train, or resume=RUN_DIR"):
        train(RunRequest())


def test_resume_needs_a_run_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such run directory"):
        train(resume=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a resumable run"):
        train(resume=tmp_path / "empty")


def test_failed_checkpoint_write_leaves_the_old_file(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "run", {"format": 1})
    run.save_checkpoint({"a": np.arange(3)})
    before = (run / CHECKPOINT).read_bytes()

    def explode(file, **arrays):
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(CheckpointError, match="checkpoint.npz: cannot write the checkpoint .disk full"):
        run.save_checkpoint({"a": np.arange(5)})
    assert (run / CHECKPOINT).read_bytes() == before
    assert sorted(p.name for p in run.path.iterdir()) == [CHECKPOINT, MODEL_FILE]


def test_corrupt_checkpoint_is_a_clear_error(straight, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(straight, copy)
    (copy / CHECKPOINT).write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="checkpoint.npz"):
        train(resume=copy)


def test_run_records_its_preprocessing_and_sample_counts(straight):
    from layerkit.data.preprocess import Preprocessing

    pre = Preprocessing.load(straight)
    assert (pre.normalize, pre.input_shape, pre.class_names) == ("unit", (1, 28, 28), [str(i) for i in range(10)])
    assert json.loads((straight / METRICS).read_text())["samples"] == {"train": 1000, "validation": 0, "test": 300}
