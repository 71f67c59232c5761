"""Run directories: what one ``layerkit fit`` leaves behind, and resuming it.

A run directory holds:

- ``model.json``: the model file as trained, command-line overrides applied
- ``checkpoint.npz``: weights, optimizer state, RNG state and position, rewritten
  atomically after every epoch (and on Ctrl-C)
- ``history.json`` / ``history.csv``: one record per finished epoch
- ``batches.json``: the training loss of every batch (``{"batches_per_epoch": N, "train_loss": [...]}``;
  ``null`` for batches an older layerkit did not record), rewritten with every checkpoint
- ``weights.npz``: the final weights (the best epoch's under early stopping)
- ``metrics.json``: final test loss and accuracy, best epoch, timings, samples per split
- ``preprocessing.json``: how raw inputs become what the first layer saw in training
  (:class:`~layerkit.data.preprocess.Preprocessing`: scaling, standardization statistics,
  input shape and layout, class names)
- ``init.json``: for a run started from another's weights (``training.init_from``), where they came
  from (the path and the SHA-256 of the weights file) and which tensors were loaded, skipped or new
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from layerkit.modelfile.build import build_model
from layerkit.data import DataSplits, load_data
from layerkit.data.preprocess import FILE_NAME as PREPROCESSING_FILE, Preprocessing
from layerkit.data.record import FILE_NAME as DATA_RECORD, OPTION_DEFAULTS, DataRecord, filled
from layerkit.data.sequences import check_fits
from layerkit.errors import (CheckFailed, CheckpointError, DataError, LayerkitError, ModelFileError, Problem,
                             TrainingError, everywhere)
from layerkit.fileio import save_npz_atomic, why, write_text_atomic
from layerkit.nn.network import load_npz
from layerkit.modelfile.spec import ModelSpec, read_model_file, spec_from_dict
from layerkit.parallel.collectives import Collectives
from layerkit.training.distributed import Launch, follow
from layerkit.training.weights import init_from
from layerkit.training.trainer import (Callback, Trainer, TrainingInterrupted, TrainResult, build_callbacks,
                                      build_loss, class_targets)

if TYPE_CHECKING:
    from layerkit.plugins.registry import Registry

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no run locks
    fcntl = None  # type: ignore[assignment]

MODEL_FILE = "model.json"
CHECKPOINT = "checkpoint.npz"
WEIGHTS = "weights.npz"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
BATCHES_JSON = "batches.json"
METRICS = "metrics.json"
PREPROCESSING = PREPROCESSING_FILE
INIT_RECORD = "init.json"


@dataclass(frozen=True)
class Terms:
    """How a run's messages name what the caller can change. The defaults name :class:`RunRequest`'s
    fields, for Python callers; ``layerkit fit`` passes its command-line flags instead
    (``layerkit.cli.train.FIT_TERMS``). ``{path}`` stands for a run directory."""

    out: str = "out directory"
    resume: str = "resume={path!r}"
    resume_command: str = "train(RunRequest(resume={path!r}))"
    data_dir: str = "data_dir"
    dataset: str = "dataset"
    set_dataset: str = "set training.dataset"
    allow_other_data: str = "allow_other_data=True"
    model_or_resume: str = "give a model to train, or resume=RUN_DIR"

    def resuming(self, path: str | Path) -> str:
        """How to continue the run in ``path``, as an option."""
        return self.resume.format(path=str(path))

    def command(self, path: str | Path) -> str:
        """How to continue the run in ``path``, as a whole command."""
        return self.resume_command.format(path=str(path))


PYTHON_TERMS = Terms()


def _quiet(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class RunRequest:
    """What one training run is asked to do: train ``model`` into the run directory ``out``, or
    continue the run in ``resume`` on the data recorded in it. Built by ``layerkit fit`` and by
    Python callers, and taken whole by :func:`train`.

    ``model`` is a model file (path or shipped name) or a model dict, training settings already
    in it (``layerkit fit`` applies its options to the dict before it asks); ``source`` names it in
    messages (default: the file's path, or ``<model>``). ``data_dir`` must name the recorded data
    when resuming unless ``allow_other_data``. ``check_grads``: gradient-check the first batch and
    stop if it fails. ``callbacks`` are added to the model file's; ``log`` gets the notes a run
    prints, ``console`` the gradient check's report. ``collectives``: the MPI ranks training
    together (default: those of ``mpiexec``, or this process alone). ``terms``: how messages name
    the options (see :class:`Terms`).
    """

    model: str | Path | dict | None = None
    source: str | None = None
    out: str | Path | None = None
    resume: str | Path | None = None
    data_dir: str | Path | None = None
    allow_other_data: bool = False
    check_grads: bool = False
    callbacks: Sequence[Callback] = ()
    log: Callable[[str], None] = _quiet
    console: Any = None
    registry: Registry | None = None
    collectives: Collectives | None = None
    terms: Terms = PYTHON_TERMS

    def flags(self) -> dict[str, Any]:
        """What every MPI rank must have been asked alike (besides the model itself)."""
        return {"model": self.source or (None if isinstance(self.model, dict) else self.model), "out": self.out,
                "resume": self.resume, "data_dir": self.data_dir, "allow_other_data": self.allow_other_data,
                "check_grads": self.check_grads}


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
    def create(cls, path: str | Path, model: dict, terms: Terms = PYTHON_TERMS) -> "RunDir":
        """A new run directory holding ``model`` (locked); refused where a run already is."""
        run = cls(path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"{run.path}: cannot create the run directory ({why(exc)})") from None
        if not os.access(run.path, os.W_OK | os.X_OK):
            raise CheckpointError(f"{run.path}: the run directory is not writable; choose another {terms.out} "
                                  f"or make it writable (chmod u+w)")
        run.lock(terms)
        try:
            if (run / CHECKPOINT).exists():
                raise CheckpointError(f"{run.path}: already holds a run; continue it with {terms.resuming(run.path)} "
                                      f"or choose another {terms.out}")
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

    def lock(self, terms: Terms = PYTHON_TERMS) -> None:
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
                                  f"to finish, or choose another {terms.out}") from None
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

    def write_batches(self, losses: Sequence[float], batches_per_epoch: int) -> None:
        """The training loss of every batch so far (``None`` in JSON where it is not known)."""
        record = {"batches_per_epoch": batches_per_epoch,
                  "train_loss": [v if math.isfinite(v) else None for v in losses]}
        write_text_atomic(self / BATCHES_JSON, json.dumps(record) + "\n")

    def batches(self) -> dict | None:
        """``batches.json`` (see :meth:`write_batches`), or None for a run made before it was written."""
        try:
            record = json.loads((self / BATCHES_JSON).read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise CheckpointError(f"{self / BATCHES_JSON}: not valid JSON ({exc})") from None
        if not (isinstance(record, dict) and isinstance(record.get("batches_per_epoch"), int)
                and record["batches_per_epoch"] > 0 and isinstance(record.get("train_loss"), list)):
            raise CheckpointError(f"{self / BATCHES_JSON}: expected "
                                  f"{{\"batches_per_epoch\": N, \"train_loss\": [...]}}")
        return record

    def history(self) -> list[dict]:
        try:
            return json.loads((self / HISTORY_JSON).read_text())
        except FileNotFoundError:
            if (self / CHECKPOINT).is_file() or not (self / WEIGHTS).is_file():
                raise CheckpointError(f"{self.path}: no {HISTORY_JSON} (no epoch has finished yet)") from None
            raise CheckpointError(f"{self.path}: no {HISTORY_JSON}: saved without its training history "
                                  f"(by an older layerkit)") from None
        except ValueError as exc:
            raise CheckpointError(f"{self / HISTORY_JSON}: not valid JSON ({exc})") from None


def require_epochs(path: str | Path) -> None:
    """Raise :class:`LayerkitError` when the run or saved model in ``path`` records a history of no
    epochs (a model saved before any ``fit``): there are no curves to draw."""
    run = RunDir(path)
    if not (run / MODEL_FILE).is_file() or not (run / HISTORY_JSON).is_file():
        return  # plotting says what is missing
    if run.history() == []:
        raise LayerkitError(f"{run.path}: trained for 0 epochs, so there are no curves to plot; train it "
                            f"first (model.fit(x, y) in Python, or layerkit fit)")


def default_out(name: str, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{name}-{stamp}"
    n = 2
    while path.exists():
        path = Path(root) / f"{name}-{stamp}-{n}"
        n += 1
    return path


# -- a whole training run --------------------------------------------------------------

def num_outputs(model, loss=None) -> int | None:
    """Classes of ``model``'s output: its width, or with ``loss`` a per-position loss's last axis
    (None: an output that holds no class scores)."""
    shape = model.graph.output.output_shape
    if loss is not None and class_targets(loss, shape)[0]:
        return class_targets(loss, shape)[1]
    return int(shape[0]) if len(shape) == 1 else None


def label_options(spec: ModelSpec, model, registry=None) -> dict:
    """What the data preparation needs to check a sequence model's targets: their per-sample shape
    (``label_shape``, ``()`` for one class id per sample) and the id that marks padding."""
    loss = build_loss(spec, registry)
    shape, _ = class_targets(loss, model.graph.output.output_shape)
    return {"label_shape": shape, "ignore_index": getattr(loss, "ignore_index", None) if shape else None}


def prepare_data(spec: ModelSpec, model, data_dir: str | Path | None = None, registry=None, *,
                 embedded: bool = False, preprocessing: Preprocessing | None = None,
                 terms: Terms = PYTHON_TERMS) -> DataSplits:
    """The data ``spec.training`` names, prepared for ``model``."""
    dataset = spec.training.get("dataset")
    if not dataset:
        raise ModelFileError(problems=[Problem(f"no dataset given: {terms.set_dataset}",
                                               ("training", "dataset"), spec.source)])
    return load_data(dataset, spec.training.get("data"), data_dir=data_dir, seed=int(spec.training["seed"]),
                     input_shape=spec.input_shape, num_outputs=num_outputs(model, build_loss(spec, registry)),
                     registry=registry, embedded=embedded, preprocessing=preprocessing,
                     tokens=spec.input_dtype == "int64", **label_options(spec, model, registry))


def record_of(spec: ModelSpec, data: DataSplits) -> DataRecord:
    return DataRecord.of(spec.training["dataset"], data, spec.training.get("data"), int(spec.training["seed"]))


def refuse_arrays_run(run: RunDir, *, explicit: bool, terms: Terms = PYTHON_TERMS) -> None:
    """Raise :class:`~layerkit.data.record.TrainedOnArrays` when ``run`` (a run directory or a folder
    written by ``Model.save``) was trained on in-memory arrays and the caller named no data
    (``explicit``: a dataset or data directory was given): its model file's dataset would be a guess."""
    if explicit or not (run / DATA_RECORD).is_file():
        return
    DataRecord.load(run / DATA_RECORD).refuse_arrays(
        run.path, explicit=f"{terms.dataset} NAME or {terms.data_dir} DIR")


def load_run_data(run: RunDir, spec: ModelSpec, model, *, data_dir: str | Path | None = None,
                  allow_other_data: bool = False, registry=None,
                  log: Callable[[str], None] = _quiet, terms: Terms = PYTHON_TERMS,
                  evaluating: bool = False, dataset_given: bool = False) -> DataSplits:
    """The data ``run`` was trained on, read from where its ``data.json`` says, with its saved
    preprocessing. Anything that differs from the record (another ``data_dir`` or dataset, a file
    changed since, other limits) is a :class:`DataError` naming it, unless ``allow_other_data``.

    ``evaluating``: only the test split matters. The ``training.data`` options that ``spec`` leaves
    out are taken from the record (a model file scored with a run's weights is scored on the run's
    test split), and options that only shape the training set (``train_limit``, ``validation_split``)
    are not compared. ``dataset_given``: the caller's dataset was asked for explicitly
    (``terms.dataset``), so the message may tell to leave it out."""
    if not (run / DATA_RECORD).exists():
        log(f"note: {run.path} has no {DATA_RECORD} (made by an older layerkit), so its data cannot be checked; "
            f"it is looked for as for a new run")
        return prepare_data(spec, model, data_dir, registry, terms=terms)
    record = DataRecord.load(run / DATA_RECORD)
    pre = Preprocessing.load(run / PREPROCESSING) if (run / PREPROCESSING).exists() else None
    outputs = num_outputs(model, build_loss(spec, registry))
    if pre is not None and pre.class_names and outputs is not None and len(pre.class_names) != outputs \
            and (spec.training.get("data") or {}).get("target") != "input":
        raise DataError(f"{run / PREPROCESSING}: class_names: {len(pre.class_names)} names for a model with "
                        f"{outputs} outputs (model {spec.name!r}); give one name per output")
    if record.from_arrays:  # nothing to read again: the data the caller names, with the saved preprocessing
        data = prepare_data(spec, model, data_dir, registry, preprocessing=pre, terms=terms)
        log(f"note: {run.path} was trained on in-memory arrays; scoring it on {data.source}")
        return data
    if evaluating:
        spec = _with_recorded_options(spec, record)
    if data_dir is not None or spec.training.get("dataset") != record.dataset:
        data = prepare_data(spec, model, data_dir, registry, preprocessing=pre, terms=terms)
    else:
        data = prepare_data(spec, model, record.location, registry, embedded=record.embedded, preprocessing=pre,
                            terms=terms)
    now = record_of(spec, data)
    differences = record.differences(now, evaluating=evaluating)
    if differences and not allow_other_data:
        raise DataError(f"{run / DATA_RECORD}: not the data this run was trained on: {'; '.join(differences)}. "
                        f"{_data_hint(record, now, spec, data_dir, dataset_given, terms)}")
    if differences:
        log(f"note: other data than the run was trained on ({terms.allow_other_data}): {'; '.join(differences)}")
    return data


def _with_recorded_options(spec: ModelSpec, record: DataRecord) -> ModelSpec:
    """``spec`` with the record's ``training.data`` options where ``spec`` leaves them at their default."""
    options = dict(spec.training.get("data") or {})
    for key, value in record.options.items():
        if options.get(key) in (None, OPTION_DEFAULTS.get(key)):
            options[key] = value
    return dataclasses.replace(spec, training={**spec.training, "data": options})


def _data_hint(record: DataRecord, now: DataRecord, spec: ModelSpec, data_dir: str | Path | None,
               dataset_given: bool, terms: Terms) -> str:
    """What to do about the differences, naming only what the caller did."""
    hints = []
    if now.dataset != record.dataset:
        hints.append(f"leave out {terms.dataset}" if dataset_given
                     else f"set training.dataset to {record.dataset!r} in {spec.source}")
    if data_dir is not None:
        hints.append(f"leave out {terms.data_dir} to use the recorded data")
    elif now.dataset == record.dataset and [f["sha256"] for f in now.files] != [f["sha256"] for f in record.files]:
        hints.append("restore the files")
    if filled(now.options) != filled(record.options) and not hints:
        hints.append(f"use the training.data settings the run was trained with (its {MODEL_FILE})")
    hints.append(f"pass {terms.allow_other_data} to go ahead anyway")
    text = ", ".join(hints[:-1]) + f", or {hints[-1]}" if len(hints) > 1 else hints[0]
    return text[0].upper() + text[1:]


def check_gradients(trainer: Trainer, console=None, samples: int = 2) -> None:
    """Gradient-check the model on the first real training batch; raise CheckFailed if it fails."""
    from layerkit.gradcheck.report import check_model

    idx = trainer.permutation(0)[:min(trainer.batch_size, samples)]
    report = check_model(trainer.model, trainer.data.x_train[idx], trainer.data.y_train[idx])
    if console is not None:
        report.render(console)
    if not report.ok:
        raise everywhere(CheckFailed("gradient check failed on the first training batch; not training"))


def train(request: RunRequest | str | Path | dict | None = None, /, **fields: Any) -> tuple[RunDir, TrainResult]:
    """Carry out one :class:`RunRequest`: train a model into a run directory, or continue the run in
    ``request.resume``. Returns the run directory and the result. ``train(model, out=...)`` is short
    for ``train(RunRequest(model=model, out=...))``.

    Under ``mpiexec -n K`` (or with ``collectives`` of several ranks) every rank calls this;
    rank 0 writes the run directory and the others return ``(None, result)``, see
    ``layerkit.training.distributed``."""
    if not isinstance(request, RunRequest):
        request = RunRequest(model=request, **fields)
    elif fields:
        request = dataclasses.replace(request, **fields)
    collectives = request.collectives
    if collectives is None:
        from layerkit.parallel.mpi import world
        collectives = world()
    if request.resume is None and request.model is None:
        raise everywhere(LayerkitError(request.terms.model_or_resume))
    launch = Launch(collectives)
    flags = request.flags()
    if collectives.rank > 0:
        raw = None if request.resume is not None else _model_dict(request)[0]
        return follow(launch, raw, flags, resuming=request.resume is not None,
                      check_grads=check_gradients if request.check_grads else None,
                      callbacks=request.callbacks, registry=request.registry)
    run = None
    try:
        if request.resume is not None:
            run = RunDir.open(request.resume)
            run.lock(request.terms)
            raw, source = run.model_dict(), str(run / MODEL_FILE)
            raw = launch.start(raw, flags, compare_model=False)
        else:
            raw, source = _model_dict(request)
            raw = launch.start(raw, flags)
        return _train(raw, source, run, request, launch)
    finally:
        if run is not None:
            run.unlock()


def _model_dict(request: RunRequest) -> tuple[Any, str]:
    """The requested model as a dict, and its name for messages."""
    if isinstance(request.model, dict):
        return request.model, request.source or "<model>"
    if request.model is None:
        raise everywhere(LayerkitError(request.terms.model_or_resume))
    raw, source = read_model_file(request.model)
    return raw, request.source or source


def _train(raw: Any, source: str, resumed: RunDir | None, request: RunRequest,
           launch: Launch) -> tuple[RunDir, TrainResult]:
    """Build the model, load the data and train: a new run, or the run ``resumed`` (locked by the caller)."""
    resuming = resumed is not None
    registry, log = request.registry, request.log
    spec = spec_from_dict(raw, source=Path(source).name, registry=registry)
    model = build_model(spec, registry=registry)
    loss = build_loss(spec, registry)
    # a resumed run continues from its own checkpoint: what it started from is in its init.json
    started = None if resuming else init_from(spec, model)
    if started is not None:
        for line in started.lines():
            log(line)
    run_path = resumed.path if resumed is not None else Path(request.out or default_out(spec.name))
    # loggers from training.callbacks; built before anything is written, so a missing extra costs nothing
    callbacks = [*request.callbacks, *build_callbacks(spec.training.get("callbacks"), run_path, registry)]
    if resumed is not None:
        data = load_run_data(resumed, spec, model, data_dir=request.data_dir, allow_other_data=request.allow_other_data,
                             registry=registry, log=log, terms=request.terms)
    else:
        data = prepare_data(spec, model, request.data_dir, registry, terms=request.terms)
    check_fits(data, model.graph)  # token ids beyond the model's vocabulary: refused before training
    data = launch.share_data(data)
    if data.notice:
        log(f"note: {data.notice}")
    log(f"data: {describe_counts(data.counts())} from {data.source}")

    run = resumed if resumed is not None else RunDir.create(run_path, raw, request.terms)
    try:
        if started is not None:
            write_text_atomic(run / INIT_RECORD, json.dumps(started.record(), indent=2) + "\n")
        return _fit(run, spec, model, loss, data, resuming, dataclasses.replace(request, callbacks=callbacks),
                    launch)
    finally:
        if resumed is None:
            run.unlock()


def _fit(run: RunDir, spec: ModelSpec, model, loss, data: DataSplits, resuming: bool, request: RunRequest,
         launch: Launch) -> tuple[RunDir, TrainResult]:
    trainer: Trainer | None = None
    log, terms = request.log, request.terms

    def save(arrays: dict[str, np.ndarray]) -> None:
        run.save_checkpoint(arrays)
        if trainer is not None:  # always: the trainer calls it
            run.write_batches(trainer.batch_losses, trainer.steps_per_epoch)
            run.write_history(trainer.state.history)

    trainer = Trainer(model, loss, data, spec.training, callbacks=request.callbacks, save_checkpoint=save,
                      registry=request.registry, collectives=launch.comm)
    if resuming:
        trainer.restore(launch.share_arrays(run.load_checkpoint()), source=str(run / CHECKPOINT))
        if launch.share(trainer.finished and (run / WEIGHTS).is_file() and (run / METRICS).is_file()):
            # nothing to do, and nothing to write: the run's files stay exactly as they are
            log(f"{run.path}: the run is already complete")
            return run, trainer.result()
        log(f"resuming {run.path} at epoch {trainer.state.epoch + 1}, batch {trainer.state.step + 1}")
    # written before any epoch, so that an interrupted run resumes on the same data
    if data.preprocessing is not None and not (run / PREPROCESSING).exists():
        data.preprocessing.save(run / PREPROCESSING)
    if not (run / DATA_RECORD).exists():
        record_of(spec, data).save(run / DATA_RECORD)
    if request.check_grads:
        check_gradients(trainer, request.console)
    if launch.distributed:
        log(f"note: each batch is split over {launch.comm.size} MPI ranks"
            + (f", and each rank's share over {trainer.shards} processes" if trainer.shards > 1 else ""))
    elif trainer.shards > 1:
        log(f"note: each batch is split over {trainer.shards} processes (sample-parallel; "
            f"LAYERKIT_PROCESSES sets the count, LAYERKIT_SAMPLE_PARALLEL=0 trains in one)")
    if trainer.virtual_shares and trainer.shards < trainer.shards_wanted:
        log(f"note: {trainer.shards} process{'es' if trainer.shards > 1 else ''} per rank instead of "
            f"{trainer.shards_wanted}: the process count must divide training.virtual_shares "
            f"({trainer.virtual_shares} shares over {launch.comm.size} rank{'s' if launch.comm.size > 1 else ''})")
    if resuming and trainer.saved_shares not in (None, trainer.shares) and trainer.share_dependent:
        # random layers drawing per sample make every split the same training up to rounding; only
        # layers drawing per share (written for 0.1 or 0.2) make the count matter
        log(f"note: the run was split over {trainer.saved_shares} processes before and now over {trainer.shares}: "
            f"layers {', '.join(trainer.share_dependent)} draw per share, so they now draw other numbers")

    try:
        result = trainer.fit()
    except TrainingError as exc:
        done = len(trainer.state.history)
        kept = (f"the last good checkpoint (after epoch {done}) is kept in {run / CHECKPOINT}" if done
                else "no epoch finished, so there is no checkpoint")
        raise TrainingError(f"{exc}; {kept}") from None
    except CheckpointError as exc:
        # a full disk while saving: the previous checkpoint is intact (writes are atomic)
        kept = (f"the previous checkpoint is intact; continue with: {terms.command(run.path)}"
                if (run / CHECKPOINT).is_file() else "no checkpoint was saved yet")
        raise CheckpointError(f"{exc}; {kept}") from None
    except TrainingInterrupted as stop:
        if stop.saved:
            log(f"interrupted in epoch {stop.epoch + 1} after batch {stop.step}; checkpoint saved. "
                f"Resume with: {terms.command(run.path)}")
        else:
            log(f"interrupted; the last checkpoint in {run.path} is from the end of epoch "
                f"{len(trainer.state.history)}")
        raise

    run.write_history(result.history)
    model.save_weights(run / WEIGHTS)
    metrics = {"model": spec.name, "dataset": spec.training.get("dataset"), "data_source": data.source,
               "samples": data.counts(),
               **result.metrics(), "weights": "best epoch" if result.best_epoch and result.monitor else "last epoch"}
    if (run / INIT_RECORD).is_file():
        started = json.loads((run / INIT_RECORD).read_text())
        metrics["init_from"] = {"path": started.get("path"), "sha256": started.get("sha256")}
    write_text_atomic(run / METRICS, json.dumps(metrics, indent=2) + "\n", "metrics")
    return run, result
