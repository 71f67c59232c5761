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
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from layerkit.modelfile.build import build_model
from layerkit.data import DataSplits, load_data
from layerkit.data.preprocess import FILE_NAME as PREPROCESSING_FILE, Preprocessing
from layerkit.data.record import FILE_NAME as DATA_RECORD, DataRecord
from layerkit.errors import (CheckFailed, CheckpointError, DataError, LayerkitError, ModelFileError, Problem,
                             TrainingError, everywhere)
from layerkit.fileio import save_npz_atomic, why, write_text_atomic
from layerkit.nn.network import load_npz
from layerkit.modelfile.spec import ModelSpec, read_model_file, spec_from_dict
from layerkit.parallel.collectives import Collectives
from layerkit.training.distributed import Launch, follow
from layerkit.training.trainer import (Callback, Trainer, TrainingInterrupted, TrainResult, build_callbacks,
                                      build_loss)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no run locks
    fcntl = None

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
    """One run directory. While a ``fit`` writes to it, it holds an advisory lock on the folder
    (``flock``; nothing is written for it), so a second ``fit`` with the same ``--out`` or
    ``--resume`` is refused instead of interleaving its files with the first's."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def create(cls, path: str | Path, model: dict) -> "RunDir":
        run = cls(path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"{run.path}: cannot create the run directory ({why(exc)})") from None
        if not os.access(run.path, os.W_OK | os.X_OK):
            raise CheckpointError(f"{run.path}: the run directory is not writable; choose another --out "
                                  f"or make it writable (chmod u+w)")
        run.lock()
        try:
            if (run / CHECKPOINT).exists():
                raise CheckpointError(f"{run.path}: already holds a run; continue it with --resume {run.path} "
                                      f"or choose another --out")
            write_text_atomic(run / MODEL_FILE, json.dumps(model, indent=2) + "\n", "model file")
        except BaseException:
            run.unlock()
            raise
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

    def lock(self) -> None:
        """Take the run's lock, or raise :class:`CheckpointError` if another process holds it."""
        if self._lock_fd is not None or fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot open the run directory ({why(exc)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CheckpointError(f"{self.path}: another layerkit fit is writing this run right now; wait for it "
                                  f"to finish, or choose another --out") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the last descriptor releases the flock
            self._lock_fd = None

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
        elif key == "callbacks":
            old = training.get("callbacks") if isinstance(training.get("callbacks"), list) else []
            have = {c.get("type") for c in old if isinstance(c, dict)}
            training["callbacks"] = old + [{"type": name} for name in value if name not in have]
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


def prepare_data(spec: ModelSpec, model, data_dir: str | Path | None = None, registry=None, *,
                 embedded: bool = False, preprocessing: Preprocessing | None = None) -> DataSplits:
    dataset = spec.training.get("dataset")
    if not dataset:
        raise ModelFileError(problems=[Problem("no dataset given: set training.dataset or pass --dataset",
                                               ("training", "dataset"), spec.source)])
    return load_data(dataset, spec.training.get("data"), data_dir=data_dir, seed=int(spec.training["seed"]),
                     input_shape=spec.input_shape, num_outputs=num_outputs(model), registry=registry,
                     embedded=embedded, preprocessing=preprocessing)


def record_of(spec: ModelSpec, data: DataSplits) -> DataRecord:
    return DataRecord.of(spec.training["dataset"], data, spec.training.get("data"), int(spec.training["seed"]))


def load_run_data(run: RunDir, spec: ModelSpec, model, *, data_dir: str | Path | None = None,
                  allow_other_data: bool = False, registry=None,
                  log: Callable[[str], None] = lambda _msg: None) -> DataSplits:
    """The data ``run`` was trained on, read from where its ``data.json`` says, with its saved
    preprocessing. Anything that differs from the record (another ``data_dir`` or dataset, a file
    changed since, other limits) is a :class:`DataError` naming it, unless ``allow_other_data``."""
    if not (run / DATA_RECORD).exists():
        log(f"note: {run.path} has no {DATA_RECORD} (made by an older layerkit), so its data cannot be checked; "
            f"it is looked for as for a new run")
        return prepare_data(spec, model, data_dir, registry)
    record = DataRecord.load(run / DATA_RECORD)
    pre = Preprocessing.load(run / PREPROCESSING) if (run / PREPROCESSING).exists() else None
    if data_dir is not None or spec.training.get("dataset") != record.dataset:
        data = prepare_data(spec, model, data_dir, registry, preprocessing=pre)
    else:
        data = prepare_data(spec, model, record.location, registry, embedded=record.embedded, preprocessing=pre)
    differences = record.differences(record_of(spec, data))
    if differences and not allow_other_data:
        raise DataError(f"{run / DATA_RECORD}: not the data this run was trained on: {'; '.join(differences)}. "
                        f"Leave out --data-dir/--dataset to use the recorded data, restore the files, or pass "
                        f"--allow-other-data to go ahead anyway")
    if differences:
        log(f"note: other data than the run was trained on (--allow-other-data): {'; '.join(differences)}")
    return data


def check_gradients(trainer: Trainer, console=None, samples: int = 2) -> None:
    """Gradient-check the model on the first real training batch; raise CheckFailed if it fails."""
    from layerkit.gradcheck.report import check_model

    idx = trainer.permutation(0)[:min(trainer.batch_size, samples)]
    report = check_model(trainer.model, trainer.data.x_train[idx], trainer.data.y_train[idx])
    if console is not None:
        report.render(console)
    if not report.ok:
        raise everywhere(CheckFailed("gradient check failed on the first training batch; not training"))


def train(model_source: str | Path | dict | None = None, *, overrides: dict[str, Any] | None = None,
          out: str | Path | None = None, resume: str | Path | None = None, data_dir: str | Path | None = None,
          allow_other_data: bool = False, check_grads: bool = False, callbacks: Sequence[Callback] = (),
          log: Callable[[str], None] = lambda _msg: None, console=None,
          registry=None, collectives: Collectives | None = None) -> tuple[RunDir, TrainResult]:
    """Train a model file into a run directory, or continue the run in ``resume`` on the data
    recorded in it (``data_dir`` there must name the same data unless ``allow_other_data``).

    Under ``mpiexec -n K`` (or with ``collectives`` of several ranks) every rank calls this;
    rank 0 writes the run directory and the others return ``(None, result)``, see
    ``layerkit.training.distributed``."""
    if collectives is None:
        from layerkit.parallel.mpi import world
        collectives = world()
    if resume is None and model_source is None:
        raise everywhere(LayerkitError("give a model file to train, or --resume RUN_DIR"))
    launch = Launch(collectives)
    flags = {"model": None if isinstance(model_source, dict) else model_source, "overrides": overrides, "out": out,
             "resume": resume, "data_dir": data_dir, "allow_other_data": allow_other_data, "check_grads": check_grads}
    if collectives.rank > 0:
        raw = None
        if resume is None:
            raw, _ = (model_source, None) if isinstance(model_source, dict) else read_model_file(model_source)
            raw = apply_overrides(raw, overrides or {})
        return follow(launch, raw, flags, resuming=resume is not None,
                      check_grads=check_gradients if check_grads else None,
                      callbacks=callbacks, registry=registry)
    run = None
    try:
        if resume is not None:
            run = RunDir.open(resume)
            run.lock()
            raw, source = run.model_dict(), str(run / MODEL_FILE)
            raw = launch.start(raw, flags, compare_model=False)
        else:
            if isinstance(model_source, dict):
                raw, source = model_source, "<model>"
            else:
                raw, source = read_model_file(model_source)
            raw = launch.start(apply_overrides(raw, overrides or {}), flags)
        return _train(raw, source, run, out=out, data_dir=data_dir, allow_other_data=allow_other_data,
                      check_grads=check_grads, callbacks=callbacks, log=log, console=console, registry=registry,
                      launch=launch)
    finally:
        if run is not None:
            run.unlock()


def _train(raw: dict, source: str, run: RunDir | None, *, out, data_dir, allow_other_data, check_grads,
           callbacks, log, console, registry, launch: Launch) -> tuple[RunDir, TrainResult]:
    resuming = run is not None
    spec = spec_from_dict(raw, source=Path(source).name, registry=registry)
    model = build_model(spec, registry=registry)
    loss = build_loss(spec, registry)
    run_path = run.path if run is not None else Path(out or default_out(spec.name))
    # loggers from training.callbacks; built before anything is written, so a missing extra costs nothing
    callbacks = [*callbacks, *build_callbacks(spec.training.get("callbacks"), run_path, registry)]
    if resuming:
        data = load_run_data(run, spec, model, data_dir=data_dir, allow_other_data=allow_other_data,
                             registry=registry, log=log)
    else:
        data = prepare_data(spec, model, data_dir, registry)
    data = launch.share_data(data)
    if data.notice:
        log(f"note: {data.notice}")
    log(f"data: {describe_counts(data.counts())} from {data.source}")

    new_run = run is None
    if new_run:
        run = RunDir.create(run_path, raw)
    try:
        return _fit(run, spec, model, loss, data, resuming, check_grads=check_grads, callbacks=callbacks,
                    log=log, console=console, registry=registry, launch=launch)
    finally:
        if new_run:
            run.unlock()


def _fit(run: RunDir, spec: ModelSpec, model, loss, data: DataSplits, resuming: bool, *, check_grads, callbacks,
         log, console, registry, launch: Launch) -> tuple[RunDir, TrainResult]:
    trainer: Trainer | None = None

    def save(arrays: dict[str, np.ndarray]) -> None:
        run.save_checkpoint(arrays)
        run.write_history(trainer.state.history)

    trainer = Trainer(model, loss, data, spec.training, callbacks=callbacks, save_checkpoint=save,
                      registry=registry, collectives=launch.comm)
    if resuming:
        trainer.restore(launch.share_arrays(run.load_checkpoint()), source=str(run / CHECKPOINT))
        if launch.share(trainer.finished and (run / WEIGHTS).is_file() and (run / METRICS).is_file()):
            # nothing to do, and nothing to write: the run's files stay exactly as they are
            log(f"{run.path}: the run is already complete")
            return run, trainer.result()
        log(f"resuming {run.path} at epoch {trainer.state.epoch + 1}, batch {trainer.state.step + 1}")
    # written before any epoch, so that an interrupted run resumes on the same data
    if not (run / PREPROCESSING).exists():
        data.preprocessing.save(run / PREPROCESSING)
    if not (run / DATA_RECORD).exists():
        record_of(spec, data).save(run / DATA_RECORD)
    if check_grads:
        check_gradients(trainer, console)
    if launch.distributed:
        log(f"note: each batch is split over {launch.comm.size} MPI ranks"
            + (f", and each rank's share over {trainer.shards} processes" if trainer.shards > 1 else ""))
    elif trainer.shards > 1:
        log(f"note: each batch is split over {trainer.shards} processes (sample-parallel; "
            f"LAYERKIT_PROCESSES sets the count, LAYERKIT_SAMPLE_PARALLEL=0 trains in one)")
    if resuming and trainer.saved_shares not in (None, trainer.shares):
        log(f"note: the run was split over {trainer.saved_shares} processes before and now over {trainer.shares}: "
            f"it continues the same training up to float32 rounding (random layers draw other numbers), "
            f"not bit for bit as with {trainer.saved_shares}")

    try:
        result = trainer.fit()
    except TrainingError as exc:
        done = len(trainer.state.history)
        kept = (f"the last good checkpoint (after epoch {done}) is kept in {run / CHECKPOINT}" if done
                else "no epoch finished, so there is no checkpoint")
        raise TrainingError(f"{exc}; {kept}") from None
    except CheckpointError as exc:
        # a full disk while saving: the previous checkpoint is intact (writes are atomic)
        kept = (f"the previous checkpoint is intact; continue with: layerkit fit --resume {run.path}"
                if (run / CHECKPOINT).is_file() else "no checkpoint was saved yet")
        raise CheckpointError(f"{exc}; {kept}") from None
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
    write_text_atomic(run / METRICS, json.dumps(metrics, indent=2) + "\n", "metrics")
    return run, result
