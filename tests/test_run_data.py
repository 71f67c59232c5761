"""A run records its data: resume and evaluate read the same data, or refuse naming what differs."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from layerkit.cli import main
from layerkit.data.builtin import IDX_FILES
from layerkit.data.idx import write_idx
from layerkit.data.record import DataRecord
from layerkit.errors import CheckpointError, DataError
from layerkit.nn.network import load_npz
from layerkit.cli.train import FIT_TERMS
from layerkit.training.runs import HISTORY_JSON, METRICS, WEIGHTS, RunDir, train
from layerkit.training.trainer import TrainingInterrupted

from train_support import InterruptAt, hermetic, mlp_model  # noqa: F401 (hermetic is a fixture)

pytestmark = pytest.mark.usefixtures("hermetic")

# limits, a validation split and standardize: every option that shapes the data is in play
MODEL = mlp_model(epochs=2, batch_size=40, data={"train_limit": 240, "test_limit": 60, "validation_split": 0.25,
                                                 "normalize": "standardize"})


def write_mnist(directory, seed, n_train=300, n_test=80):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), np.arange(n_test) % 10)
    for stem, array in zip(IDX_FILES, arrays, strict=True):
        write_idx(directory / (stem + ".gz"), array)
    return directory


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist(root / "mine", 1)
    write_mnist(root / "other", 2)
    return root


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(out.parent / "cache"))
        mp.delenv("LAYERKIT_DATA_DIR", raising=False)
        from layerkit.plugins.manager import reset_registry
        from train_support import builtin_registry
        reset_registry(builtin_registry())
        train(MODEL, out=out, data_dir=data_root / "mine")
        reset_registry(None)
    return out


def snapshot(run_dir):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.iterdir())}


def test_the_run_records_its_data(straight, data_root):
    record = DataRecord.load(straight)
    assert record.dataset == "mnist" and record.location == str((data_root / "mine").resolve())
    assert sorted(os.path.basename(f["path"]) for f in record.files) == sorted(s + ".gz" for s in IDX_FILES)
    assert all(f["size"] > 0 and len(f["sha256"]) == 64 for f in record.files)
    # the options in effect, the schema's defaults included
    assert record.options == {"train_limit": 240, "test_limit": 60, "validation_split": 0.25,
                              "normalize": "standardize", "layout": "auto"}
    assert record.samples == {"train": 180, "validation": 60, "test": 60} and record.seed == 3


def test_printed_resume_command_alone_continues_on_the_same_data(straight, data_root, tmp_path, monkeypatch,
                                                                 capsys):
    out = tmp_path / "run"
    logs = []
    monkeypatch.chdir(data_root)  # a relative --data-dir: the record holds the absolute location
    with pytest.raises(TrainingInterrupted):
        train(MODEL, out=out, data_dir="mine", callbacks=[InterruptAt(1, 1)], log=logs.append, terms=FIT_TERMS)
    command = next(line for line in logs if "Resume with: " in line).split("Resume with: ")[1]
    # somewhere else, with other MNIST files where a new run would look first
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAYERKIT_DATA_DIR", str(data_root / "other"))
    assert command.startswith("layerkit ")
    assert main(command.split()[1:] + ["--quiet"]) == 0
    assert json.loads((out / HISTORY_JSON).read_text()) == json.loads((straight / HISTORY_JSON).read_text())
    w1, w2 = load_npz(straight / WEIGHTS), load_npz(out / WEIGHTS)
    assert w1.keys() == w2.keys() and all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert (out / "preprocessing.json").read_bytes() == (straight / "preprocessing.json").read_bytes()


@pytest.fixture
def unfinished(data_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(MODEL, out=out, data_dir=data_root / "mine", callbacks=[InterruptAt(0, 0)])
    return out


def test_another_data_dir_is_refused_naming_both(unfinished, data_root, capsys):
    before = snapshot(unfinished)
    assert main(["fit", "--resume", str(unfinished), "--data-dir", str(data_root / "other")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str((data_root / "other").resolve()) in err and str((data_root / "mine").resolve()) in err
    assert "--allow-other-data" in err
    assert snapshot(unfinished) == before


def test_allow_other_data_goes_ahead(unfinished, data_root, capsys):
    assert main(["fit", "--resume", str(unfinished), "--data-dir", str(data_root / "other"),
                 "--allow-other-data", "--quiet"]) == 0
    assert "other data than the run was trained on" in capsys.readouterr().err


def test_changed_files_are_refused_naming_the_file(unfinished, data_root, tmp_path, capsys):
    moved = tmp_path / "mine"
    shutil.copytree(data_root / "mine", moved)
    record = json.loads((unfinished / "data.json").read_text())
    record["location"] = str(moved.resolve())
    (unfinished / "data.json").write_text(json.dumps(record))
    write_idx(moved / "t10k-labels-idx1-ubyte.gz", (np.arange(80) + 1) % 10)
    assert main(["fit", "--resume", str(unfinished)]) == 2
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte.gz changed" in err and "data.json" in err


def test_same_data_dir_spelled_differently_is_fine(unfinished, data_root, monkeypatch):
    monkeypatch.chdir(data_root)
    assert main(["fit", "--resume", str(unfinished), "--data-dir", "./mine/../mine", "--quiet"]) == 0


def test_resuming_a_finished_run_changes_nothing_on_disk(straight, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(straight, copy)
    shutil.copystat(straight, copy)
    before = snapshot(copy)
    assert main(["fit", "--resume", str(copy)]) == 0
    assert "already complete" in capsys.readouterr().err
    assert snapshot(copy) == before


def test_evaluate_a_run_uses_its_recorded_data(straight, data_root, monkeypatch, capsys):
    monkeypatch.setenv("LAYERKIT_DATA_DIR", str(data_root / "other"))
    assert main(["evaluate", str(straight), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    metrics = json.loads((straight / METRICS).read_text())
    assert report["samples"] == 60 and report["data_location"] == str((data_root / "mine").resolve())
    assert report["accuracy"] == metrics["test_accuracy"]
    # weights inside a run directory mean that run's data too
    assert main(["evaluate", str(straight / "model.json"), "--weights", str(straight / WEIGHTS), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == metrics["test_accuracy"]
    assert main(["evaluate", str(straight), "--data-dir", str(data_root / "other")]) == 2
    assert "--allow-other-data" in capsys.readouterr().err
    assert main(["evaluate", str(straight), "--data-dir", str(data_root / "other"), "--allow-other-data",
                 "--json"]) == 0


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d.pop("files"), "files"),
    (lambda d: d.update(location="relative/dir"), "location"),
    (lambda d: d.update(samples={"train": -1}), "samples"),
])
def test_tampered_data_record_is_refused_naming_the_field(straight, tmp_path, change, field, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(straight, copy)
    data = json.loads((copy / "data.json").read_text())
    change(data)
    (copy / "data.json").write_text(json.dumps(data))
    assert main(["evaluate", str(copy)]) == 2
    assert f"data.json: {field}: " in capsys.readouterr().err


def test_a_second_fit_into_a_run_in_use_is_refused(data_root, tmp_path):
    out = tmp_path / "run"
    holder = RunDir.create(out, MODEL)  # holds the lock, as a running fit does
    try:
        with pytest.raises(CheckpointError, match="another layerkit fit is writing this run"):
            train(MODEL, out=out, data_dir=data_root / "mine")
    finally:
        holder.unlock()


def test_data_record_round_trip(straight):
    record = DataRecord.load(straight)
    assert DataRecord.from_dict(json.loads(record.to_json())) == record
    assert record.differences(record) == []
    with pytest.raises(DataError, match="format"):
        DataRecord.from_dict({**record.to_dict(), "format": 2})
