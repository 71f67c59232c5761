"""Run directories: what one ``layerkit fit`` leaves behind, and resuming it.

A run directory holds:

- ``model.json``: the model file as trained, command-line overrides applied
- ``checkpoint.npz``: weights, optimizer state, RNG state and position, rewritten
  atomically after every epoch (and on Ctrl-C)
- ``history.json`` / ``history.csv``: one record per finished epoch
- ``weights.npz``: the final weights (the best epoch's under early stopping)
- ``metrics.json``: final test loss and accuracy, best epoch, timings, samples per split
- ``preprocessing.json``: how raw inputs become what the first layer saw in training
  (:class:`~layerkit.data.preprocess.Preprocessing`: scaling, standardization statistics,
  input shape and layout, class names)
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from layerkit.modelfile.build import build_model
from layerkit.data import DataSplits, load_data
from layerkit.data.preprocess import FILE_NAME as PREPROCESSING_FILE
from layerkit.errors import CheckFailed, CheckpointError, LayerkitError, ModelFileError, Problem, TrainingError
from layerkit.fileio import save_npz_atomic, write_text_atomic
from layerkit.nn.model import load_npz
from layerkit.modelfile.spec import ModelSpec, read_model_file, spec_from_dict
from layerkit.training.trainer import Callback, Trainer, TrainingInterrupted, TrainResult, build_loss

MODEL_FILE = "model.json"
CHECKPOINT = "checkpoint.npz"
WEIGHTS = "weights.npz"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
METRICS = "metrics.json"
PREPROCESSING = PREPROCESSING_FILE


def describe_counts(counts: dict[str, int]) -> str:
    """``"54,000 training / 6,000 validation / 10,000 test samples"``."""
    parts = [f"{counts['train']:,} training"]
    if counts.get("validation"):
        parts.append(f"{counts['validation']:,} validation")
    parts.append(f"{counts['test']:,} test")
    return " / ".join(parts) + " samples"


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def create(cls, path: str | Path, model: dict) -> "RunDir":
        run = cls(path)
        if (run / CHECKPOINT).exists():
            raise CheckpointError(f"{run.path}: already holds a run; continue it with --resume {run.path} "
                                  f"or choose another --out")
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"{run.path}: cannot create the run directory ({exc.strerror or exc})") from None
        write_text_atomic(run / MODEL_FILE, json.dumps(model, indent=2) + "\n")
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(path)
        if not run.path.is_dir():
            raise CheckpointError(f"{run.path}: no such run directory")
        for name in (MODEL_FILE, CHECKPOINT):
            if not (run / name).is_file():
                raise CheckpointError(f"{run.path}: not a resumable run (no {name})")
        return run

    def model_dict(self) -> dict:
        data, _ = read_model_file(self / MODEL_FILE)
        return data

    def save_checkpoint(self, arrays: dict[str, np.ndarray]) -> None:
        save_npz_atomic(self / CHECKPOINT, arrays, "checkpoint")

    def load_checkpoint(self) -> dict[str, np.ndarray]:
        return load_npz(self / CHECKPOINT)

    def write_history(self, history: Sequence[dict]) -> None:
        write_text_atomic(self / HISTORY_JSON, json.dumps(list(history), indent=1) + "\n")
        columns: list[str] = []
        for record in history:
            columns += [k for k in record if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        write_text_atomic(self / HISTORY_CSV, buf.getvalue())

    def history(self) -> list[dict]:
        try:
            return json.loads((self / HISTORY_JSON).read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: no {HISTORY_JSON} (no epoch has finished yet)") from None
        except ValueError as exc:
            raise CheckpointError(f"{self / HISTORY_JSON}: not valid JSON ({exc})") from None


def default_out(name: str, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{name}-{stamp}"
    n = 2
    while path.exists():
        path = Path(root) / f"{name}-{stamp}-{n}"
        n += 1
    return path


# -- overrides -----------------------------------------------------------------------

def apply_overrides(model: dict, overrides: dict[str, Any]) -> dict:
    """A copy of the model dict with training settings replaced. Keys: ``epochs``,
    ``batch_size``, ``seed``, ``lr``, ``optimizer``, ``dataset``, ``weight_decay``, ``schedule``,
    ``data.*`` keys, and dotted paths under ``training`` from ``--set``."""
    out = copy.deepcopy(model)
    if not isinstance(out, dict):
        return out
    training = out.setdefault("training", {})
    if not isinstance(training, dict):
        return out
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "optimizer":
            old = training.get("optimizer") if isinstance(training.get("optimizer"), dict) else {}
            # another optimizer's parameters (momentum, betas) would not validate; its defaults apply
            training["optimizer"] = dict(old) if old.get("type") == value else {"type": value}
        elif key == "lr":
            opt = training.setdefault("optimizer", {"type": "sgd"})
            if isinstance(opt, dict):
                opt["lr"] = value
        elif key == "schedule":
            training["schedule"] = {"type": value}
        else:
            target, parts = training, key.split(".")
            for part in parts[:-1]:
                if not isinstance(target.get(part), dict):
                    target[part] = {}
                target = target[part]
            target[parts[-1]] = value
    return out


# -- a whole training run --------------------------------------------------------------

def num_outputs(model) -> int | None:
    shape = model.graph.output.output_shape
    return int(shape[0]) if len(shape) == 1 else None


def prepare_data(spec: ModelSpec, model, data_dir: str | Path | None = None, registry=None) -> DataSplits:
    dataset = spec.training.get("dataset")
    if not dataset:
        raise ModelFileError(problems=[Problem("no dataset given: set training.dataset or pass --dataset",
                                               ("training", "dataset"), spec.source)])
    return load_data(dataset, spec.training.get("data"), data_dir=data_dir, seed=int(spec.training.get("seed", 0)),
                     input_shape=spec.input_shape, num_outputs=num_outputs(model), registry=registry)


def check_gradients(trainer: Trainer, console=None, samples: int = 2) -> None:
    """Gradient-check the model on the first real training batch; raise CheckFailed if it fails."""
    from layerkit.gradcheck.report import check_model

    idx = trainer.permutation(0)[:min(trainer.batch_size, samples)]
    report = check_model(trainer.model, trainer.data.x_train[idx], trainer.data.y_train[idx])
    if console is not None:
        report.render(console)
    if not report.ok:
        raise CheckFailed("gradient check failed on the first training batch; not training")


def train(model_source: str | Path | dict | None = None, *, overrides: dict[str, Any] | None = None,
          out: str | Path | None = None, resume: str | Path | None = None, data_dir: str | Path | None = None,
          check_grads: bool = False, callbacks: Sequence[Callback] = (),
          log: Callable[[str], None] = lambda _msg: None, console=None,
          registry=None) -> tuple[RunDir, TrainResult]:
    """Train a model file into a run directory, or continue the run in ``resume``."""
    if resume is not None:
        run = RunDir.open(resume)
        raw, source = run.model_dict(), str(run / MODEL_FILE)
    else:
        if model_source is None:
            raise LayerkitError("give a model file to train, or --resume RUN_DIR")
        if isinstance(model_source, dict):
            raw, source = model_source, "<model>"
        else:
            raw, source = read_model_file(model_source)
        raw = apply_overrides(raw, overrides or {})
        run = None
    spec = spec_from_dict(raw, source=Path(source).name, registry=registry)
    model = build_model(spec, registry=registry)
    loss = build_loss(spec, registry)
    data = prepare_data(spec, model, data_dir, registry)
    if data.notice:
        log(f"note: {data.notice}")
    log(f"data: {describe_counts(data.counts())} from {data.source}")

    if run is None:
        run = RunDir.create(out or default_out(spec.name), raw)
        data.preprocessing.save(run / PREPROCESSING)
    trainer: Trainer | None = None

    def save(arrays: dict[str, np.ndarray]) -> None:
        run.save_checkpoint(arrays)
        run.write_history(trainer.state.history)

    trainer = Trainer(model, loss, data, spec.training, callbacks=callbacks, save_checkpoint=save,
                      registry=registry)
    if resume is not None:
        trainer.restore(run.load_checkpoint(), source=str(run / CHECKPOINT))
        if trainer.finished:
            log(f"{run.path}: the run is already complete")
        else:
            log(f"resuming {run.path} at epoch {trainer.state.epoch + 1}, batch {trainer.state.step + 1}")
    if check_grads:
        check_gradients(trainer, console)
    if trainer.shards > 1 and not trainer.finished:
        log(f"note: each batch is split over {trainer.shards} processes (sample-parallel; "
            f"LAYERKIT_SAMPLE_PARALLEL=0 trains in one)")

    try:
        result = trainer.fit()
    except TrainingError as exc:
        done = len(trainer.state.history)
        kept = (f"the last good checkpoint (after epoch {done}) is kept in {run / CHECKPOINT}" if done
                else "no epoch finished, so there is no checkpoint")
        raise TrainingError(f"{exc}; {kept}") from None
    except TrainingInterrupted as stop:
        if stop.saved:
            log(f"interrupted in epoch {stop.epoch + 1} after batch {stop.step}; checkpoint saved. "
                f"Resume with: layerkit fit --resume {run.path}")
        else:
            log(f"interrupted; the last checkpoint in {run.path} is from the end of epoch "
                f"{len(trainer.state.history)}")
        raise

    run.write_history(result.history)
    model.save_weights(run / WEIGHTS)
    metrics = {"model": spec.name, "dataset": spec.training.get("dataset"), "data_source": data.source,
               "samples": data.counts(),
               **result.metrics(), "weights": "best epoch" if result.best_epoch and result.monitor else "last epoch"}
    write_text_atomic(run / METRICS, json.dumps(metrics, indent=2) + "\n")
    return run, result
