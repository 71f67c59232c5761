"""The one training loop every model goes through.

Per step: slice a shuffled mini-batch, forward (``training=True``, the
trainer's generator for dropout), loss, backward, optimizer update. No plugin
hooks run here and the only per-step work that grows with the model is the
optimizer's single loop over tensors. After each epoch the validation split
(if any) and the test split are evaluated, early stopping is consulted, and a
checkpoint is handed to ``save_checkpoint``.

Determinism: the permutation of epoch ``e`` comes from its own generator
seeded ``(seed, e)``, dropout and augmentation draw per sample from streams keyed
by (seed, epoch, sample index) (``layerkit.nn.samplerandom``), the generator of
older random layers travels in checkpoints, and the learning rate is a function
of the position, so the same model file and seed give bit-identical weights and
history, resumed or not, and the same up to float32 rounding on any number of
processes.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from layerkit.data import DataSplits
from layerkit.data.augment import augmenter
from layerkit.errors import CheckpointError, LayerkitError, TrainingError, everywhere
from layerkit.parallel.malloc import tune_malloc
from layerkit.nn.layer import Coupling
from layerkit.nn.network import Network
from layerkit.nn.optimizers import Optimizer
from layerkit.parallel.collectives import SINGLE, Collectives
from layerkit.nn.samplerandom import epoch_key
from layerkit.training import virtual
from layerkit.training.steps import make_step, shards_for, share_dependent_layers
from layerkit.nn.schedules import Schedule
from layerkit.plugins import registry_or_global
from layerkit.modelfile.spec import fill_training_defaults

CHECKPOINT_FORMAT = 1
#: the checkpoint's array of per-batch training losses (absent in checkpoints of older versions)
BATCH_LOSSES = "batches/train_loss"
EVAL_BATCH = 512
LOWER_IS_BETTER = ("val_loss", "test_loss", "train_loss")


class TrainingInterrupted(Exception):
    """Ctrl-C during training; a checkpoint of the last complete batch was saved if ``saved``."""

    def __init__(self, epoch: int, step: int, saved: bool):
        super().__init__(f"interrupted in epoch {epoch + 1} after batch {step}")
        self.epoch, self.step, self.saved = epoch, step, saved


class Callback:
    """Progress observer. Every method is optional; none may change training."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...
    def on_epoch_begin(self, epoch: int, steps: int, start_step: int) -> None: ...
    def on_batch_end(self, epoch: int, step: int, loss: float, accuracy: float, samples: int) -> None: ...
    def on_epoch_end(self, epoch: int, record: dict, seconds: float) -> None: ...
    def on_train_end(self, result: "TrainResult") -> None: ...


@dataclass
class TrainState:
    """The position in training and everything a resumed run must continue from."""

    epoch: int = 0  # the epoch in progress, 0-based
    step: int = 0  # batches of it already done
    loss_sum: float = 0.0  # running training loss * counted terms (Loss.counted) for the epoch in progress
    correct: float = 0.0  # right predictions (fractional: the pixel accuracy of reconstructions)
    seen: int = 0  # counted terms: samples, or the tokens that count of a sequence loss
    history: list[dict] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped_early: bool = False
    epoch_seconds: list[float] = field(default_factory=list)


@dataclass
class TrainResult:
    """What a finished run reports: the per-epoch history, the test split's loss and accuracy, and how
    and when training stopped."""

    history: list[dict]
    test_loss: float | None  # None without a test split
    test_accuracy: float | None
    epochs_run: int
    stopped_early: bool
    best_epoch: int | None
    monitor: str | None
    epoch_seconds: list[float]

    def metrics(self) -> dict:
        out = asdict(self)
        out.pop("history")
        return out


def build_loss(spec, registry=None):
    """The loss object named in the model file's ``loss`` section."""
    registry = registry_or_global(registry)
    config = dict(spec.loss)
    cls = registry.get("loss", config.pop("type"))
    return cls(**config)


def build_callbacks(configs, run_dir=None, registry=None) -> list[Callback]:
    """The callbacks named in ``training.callbacks`` (``{"type": NAME, ...}``), built for ``run_dir``."""
    if not configs:
        return []
    if registry is None:
        from layerkit.plugins.manager import get_registry
        registry = get_registry()
    out = []
    for config in configs:
        config = dict(config)
        cls = registry.get("callback", config.pop("type"))
        out.append(cls(run_dir=run_dir, **config))
    return out


def build_optimizer(model, config: dict, weight_decay: float = 0.0, registry=None,
                    clipping: dict | None = None) -> Optimizer:
    """The optimizer named in ``training.optimizer`` over every parameter of ``model``, clipping
    the gradients as ``training.gradient_clipping`` says."""
    registry = registry_or_global(registry)
    config = dict(config or {"type": "sgd"})
    cls = registry.get("optimizer", config.pop("type"))
    names, tensors, decay = [], [], []
    for name, tname in model.trainable_keys():  # a frozen layer's tensors: no update, no decay, no state
        names.append(f"{name}/{tname}")
        tensors.append(model.params[name][tname])
        decay.append(bool(model.graph.node(name).param_specs[tname].decay))
    optimizer = cls(tensors, names=names, decay=decay, weight_decay=weight_decay, **config)
    if clipping:
        optimizer.set_clipping(clipping.get("max_norm"), clipping.get("value"))
    return optimizer


def class_targets(loss, output_shape: Sequence[int]) -> tuple[tuple[int, ...], int]:
    """The per-sample shape of the class-id targets ``loss`` takes for outputs of ``output_shape``
    (no batch axis), and the number of classes: ``((), K)`` for one class id per sample of a (K,)
    output; ``((T,), K)`` for one per position, where the loss predicts along the last axis of a
    (T, K) output (``sequence_cross_entropy``)."""
    shape = tuple(int(d) for d in output_shape)
    if len(shape) >= 2:
        # asked of the loss itself: a per-position loss predicts the largest score on the last axis
        probe = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        try:
            pred = np.asarray(loss.predict(probe))
        except Exception:  # noqa: BLE001 - a loss that cannot predict takes no class ids
            pred = None
        if pred is not None and pred.shape == probe.shape[:-1] and np.array_equal(pred, probe.argmax(axis=-1)):
            return shape[:-1], shape[-1]
    return (), math.prod(shape)


def evaluate_split(model: Network, loss, x: np.ndarray, y: np.ndarray, comm: Collectives = SINGLE,
                   batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """Mean loss and accuracy over ``x``, the ``batch_size`` chunks shared out over ``comm``'s ranks
    (contiguous runs of chunks: each chunk is the one a single process evaluates)."""
    if comm.size == 1:
        return evaluate(model, loss, x, y, batch_size)[:2]
    chunks = -(-len(x) // batch_size)
    lo, hi = (comm.rank * chunks // comm.size * batch_size, (comm.rank + 1) * chunks // comm.size * batch_size)
    part_loss, part_acc, _ = evaluate(model, loss, x[lo:hi], y[lo:hi], batch_size)
    part = loss.counted(y[lo:hi])  # each rank's means weigh by the terms they average over
    totals = comm.allreduce_sum(np.array([part_loss * part, part_acc * part], dtype=np.float64))
    n = max(loss.counted(y), 1)
    return float(totals[0]) / n, float(totals[1]) / n if len(x) else 0.0


def evaluate(model: Network, loss, x: np.ndarray, y: np.ndarray, batch_size: int = EVAL_BATCH
             ) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and predicted classes over ``x`` in inference mode (no predicted
    classes, -1, where the targets are not class ids: a reconstruction's).

    Both means are over the terms the loss counts (``Loss.counted``): per sample, or for a
    sequence loss per token that counts (targets not ``ignore_index``), so the accuracy of a
    sequence model is its token accuracy and ``preds`` is shaped like ``y``."""
    y = np.asarray(y)
    classes = np.issubdtype(y.dtype, np.integer)
    total, correct, terms = 0.0, 0.0, 0
    preds = np.full(y.shape if classes else len(x), -1, dtype=np.int64)
    # the batches' forward passes run over the thread pool; the loss is cheap and runs here
    for i, out in zip(range(0, len(x), batch_size), model.infer_batches(x, batch_size), strict=False):
        yb = y[i:i + batch_size]
        value, _ = loss.forward(out, yb)
        counted = loss.counted(yb)
        total += float(value) * counted
        terms += counted
        correct += loss.correct(out, yb)
        if classes:
            preds[i:i + len(yb)] = loss.predict(out)
    n = max(terms, 1)
    return total / n, correct / n if len(x) else 0.0, preds


class Trainer:
    """Runs one training run of a built network: the epoch and batch loop, the optimizer and its
    schedule, evaluation, early stopping and callbacks; :meth:`checkpoint_arrays` and :meth:`restore`
    let a run stop and resume where it was. A batch may be shared out over MPI ranks and forked processes."""

    def __init__(self, model: Network, loss, data: DataSplits, training: dict, *,
                 optimizer: Optimizer | None = None, callbacks: Sequence[Callback] = (),
                 save_checkpoint: Callable[[dict[str, np.ndarray]], None] | None = None,
                 registry=None, collectives: Collectives = SINGLE, shuffle: bool = True) -> None:
        self.model, self.loss, self.data = model, loss, data
        #: False: every epoch visits the training samples in their given order (``Model.fit(shuffle=False)``)
        self.shuffle = shuffle
        #: the processes training together (MPI ranks), see ``layerkit.parallel.collectives``
        self.comm = collectives
        self.training = fill_training_defaults(training)
        self.epochs = int(self.training["epochs"])
        self.batch_size = int(self.training["batch_size"])
        self.seed = int(self.training["seed"])
        self.callbacks = list(callbacks)
        self.save_checkpoint = save_checkpoint
        self.optimizer = optimizer or build_optimizer(model, self.training.get("optimizer"),
                                                      float(self.training["weight_decay"]), registry,
                                                      self.training.get("gradient_clipping"))
        n = len(data.x_train)
        self.steps_per_epoch = math.ceil(n / self.batch_size)
        # Batch statistics (batch norm) are undefined for one sample and the layer refuses it in
        # training, as PyTorch does. A last batch of exactly one sample is dropped for such
        # models (a different sample each epoch, as the order is reshuffled); any other model
        # trains on it.
        if n % self.batch_size == 1 and any(node.layer.sample_coupling == Coupling.BATCH_SUMS for node in model.nodes):
            if n == 1:
                raise TrainingError("batch norm needs at least 2 training samples per batch; the training "
                                    "split has 1")
            self.steps_per_epoch -= 1
        self.schedule = Schedule.from_config(self.training.get("schedule"), self.optimizer.lr,
                                             self.epochs, self.steps_per_epoch)
        self.early = self._early_stopping_config()
        self.rng = np.random.default_rng([self.seed, 1])
        self.state = TrainState()
        #: the training loss of every batch so far, in order (NaN for batches of a run resumed from a
        #: checkpoint that did not record them); ``epoch * steps_per_epoch + step`` long
        self.batch_losses: list[float] = []
        self.best_weights: dict[str, np.ndarray] | None = None
        self._keys = model.trainable_keys()
        self.augment = augmenter((self.training.get("data") or {}).get("augment"))
        if self.augment is not None and (self.training.get("data") or {}).get("target") == "input":
            raise LayerkitError("training.data.augment moves the input images but not the targets they are "
                                "with training.data.target 'input'; drop one of them")
        #: ``training.virtual_shares``: every batch cut into this many fixed shares whatever the
        #: process count (0: the shares follow the processes), see ``layerkit.training.virtual``
        self.virtual_shares = virtual.setting(self.training)
        #: each rank's share of a batch split over this many forked processes (1: not split),
        #: see ``layerkit.parallel.processes``; ``shards_wanted``: how many the machine would use
        #: without fixed shares (their count must divide the shares)
        self.shards: int
        self.shards_wanted: int
        if self.virtual_shares:
            self.shards, self.shards_wanted = virtual.forked_processes(model, loss, self.batch_size,
                                                                       self.virtual_shares, self.comm)
        else:
            self.shards = self.shards_wanted = shards_for(model, loss, self.batch_size, self.comm)
        #: shares one batch is split over: the processes (MPI ranks times forked processes), or
        #: the fixed shares
        self.shares = self.virtual_shares or self.comm.size * self.shards
        #: random layers that draw per share, not per sample (``uses_rng`` without ``sample_rng``):
        #: with any, the run depends on ``shares`` (with fixed shares they draw per fixed share)
        self.share_dependent = share_dependent_layers(model)
        if self.share_dependent and self.shares > 1 and not self.virtual_shares:
            warnings.warn(f"layers {', '.join(self.share_dependent)} draw their random numbers per share of the "
                          f"batch (uses_rng without sample_rng), so this run depends on the number of processes "
                          f"({self.shares}); declare sample_rng = True to draw per sample", UserWarning, stacklevel=2)
        #: ``shares`` of the run a checkpoint was saved by (None: before that was recorded)
        self.saved_shares: int | None = None
        self._step = None
        self._stop_requested = False
        self._agreed_stop = False  # stopping after a batch every rank agreed on (not a second Ctrl-C)
        self._busy = False

    def _early_stopping_config(self) -> dict | None:
        config = self.training.get("early_stopping")
        if not config:
            return None
        if config["monitor"].startswith("val_") and self.data.x_val is None:
            raise LayerkitError(f"early_stopping monitors {config['monitor']} but there is no validation split "
                                f"(set training.data.validation_split, or monitor test_loss/train_loss)")
        return config

    # -- the loop --------------------------------------------------------------
    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.data.x_train))
        return np.random.default_rng([self.seed, 2, epoch]).permutation(len(self.data.x_train))

    def fit(self) -> TrainResult:
        tune_malloc()
        for cb in self.callbacks:
            cb.on_train_begin(self)
        with self._sigint_deferred():
            try:
                # a diverging run overflows before its loss turns nan: the loss check reports that
                # once, clearly, instead of a stream of RuntimeWarnings
                with np.errstate(over="ignore", invalid="ignore"), \
                        make_step(self.model, self.loss, self.data.x_train, self.data.y_train, self.augment,
                                  self._keys, self.shards, self.comm, self.virtual_shares) as self._step:
                    while self.state.epoch < self.epochs and not self.state.stopped_early:
                        self._run_epoch()
            except KeyboardInterrupt:
                saved = False
                if not self._busy and self.save_checkpoint is not None:
                    self.save_checkpoint(self.checkpoint_arrays())
                    saved = True
                interrupted = TrainingInterrupted(self.state.epoch, self.state.step, saved)
                if self._agreed_stop:
                    everywhere(interrupted)
                raise interrupted from None
        result = self._finish()
        for cb in self.callbacks:
            cb.on_train_end(result)
        return result

    def _run_epoch(self) -> None:
        st, opt, bs = self.state, self.optimizer, self.batch_size
        epoch, spe = st.epoch, self.steps_per_epoch
        perm = self.permutation(epoch)
        started = time.perf_counter()
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, spe, st.step)
        single = self.comm.size == 1
        key = epoch_key(self.seed, epoch)  # random layers draw per (seed, epoch, sample)
        for step in range(st.step, spe):
            idx = perm[step * bs:(step + 1) * bs]
            value, hits, grad_list, stop, terms = self._step(idx, self.rng, self._stop_requested, key)
            if not math.isfinite(value):
                raise everywhere(TrainingError(f"the loss became {value} in epoch {epoch + 1}, batch {step + 1}; "
                                               f"training stopped (try a lower learning rate)"))
            self._busy = True  # a second Ctrl-C in here must not checkpoint half-updated weights
            opt.step(grad_list, self.schedule.lr(epoch, step))
            self._busy = False
            st.step, st.loss_sum, st.correct, st.seen = step + 1, st.loss_sum + value * terms, \
                st.correct + hits, st.seen + terms
            self.batch_losses.append(float(value))
            # every rank stops after the same batch: the ranks agreed on ``stop`` in the step
            if stop or (single and self._stop_requested):
                self._agreed_stop = True
                raise KeyboardInterrupt
            for cb in self.callbacks:
                cb.on_batch_end(epoch, step, value, hits / max(terms, 1), len(idx))
        if not single and not self.comm.same_everywhere(self.model.weights_dict().values()):
            raise TrainingError(f"the MPI ranks' weights differ after epoch {epoch + 1}: the MPI library's "
                                f"all-reduce gave the ranks different sums; use another MPI implementation")
        record = self._epoch_record(epoch)
        self._busy = True
        st.history.append(record)
        self._update_early_stopping(record)
        st.epoch_seconds.append(time.perf_counter() - started)
        st.epoch, st.step, st.loss_sum, st.correct, st.seen = epoch + 1, 0, 0.0, 0, 0
        self._busy = False
        if self.save_checkpoint is not None:
            self.save_checkpoint(self.checkpoint_arrays())
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, record, st.epoch_seconds[-1])

    def _epoch_record(self, epoch: int) -> dict:
        st = self.state
        record = {"epoch": epoch + 1, "lr": self.schedule.lr(epoch, self.steps_per_epoch - 1),
                  "train_loss": st.loss_sum / max(st.seen, 1), "train_accuracy": st.correct / max(st.seen, 1)}
        if self.data.x_val is not None:
            record["val_loss"], record["val_accuracy"] = evaluate_split(self.model, self.loss, self.data.x_val,
                                                                        self.data.y_val, self.comm)
        if len(self.data.x_test):  # the Python API's fit may train without a test split (same on every rank)
            record["test_loss"], record["test_accuracy"] = evaluate_split(self.model, self.loss, self.data.x_test,
                                                                          self.data.y_test, self.comm)
        return record

    def _update_early_stopping(self, record: dict) -> None:
        if self.early is None:
            return
        st, monitor, delta = self.state, self.early["monitor"], float(self.early["min_delta"])
        value = record[monitor]
        if monitor in LOWER_IS_BETTER:
            better = st.best_value is None or value < st.best_value - delta
        else:
            better = st.best_value is None or value > st.best_value + delta
        if better:
            st.best_value, st.best_epoch, st.wait = value, record["epoch"], 0
            self.best_weights = {k: v.copy() for k, v in self.model.weights_dict().items()}
        else:
            st.wait += 1
            if st.wait >= int(self.early["patience"]):
                st.stopped_early = True

    def _finish(self) -> TrainResult:
        st = self.state
        if self.early is not None and self.best_weights is not None:
            # early stopping keeps the weights of the best epoch, not the last
            self.model.set_weights(self.best_weights, source="best weights")
        test_loss = test_acc = None
        if len(self.data.x_test):
            test_loss, test_acc = evaluate_split(self.model, self.loss, self.data.x_test, self.data.y_test,
                                                 self.comm)
        return TrainResult(history=list(st.history), test_loss=test_loss, test_accuracy=test_acc,
                           epochs_run=len(st.history), stopped_early=st.stopped_early,
                           best_epoch=st.best_epoch, monitor=self.early["monitor"] if self.early else None,
                           epoch_seconds=list(st.epoch_seconds))

    def result(self) -> TrainResult:
        """The result of a finished run (restored from its checkpoint) without training further."""
        return self._finish()

    @property
    def finished(self) -> bool:
        return self.state.epoch >= self.epochs or self.state.stopped_early

    # -- Ctrl-C ------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the batch in progress, saving a checkpoint (what Ctrl-C does)."""
        self._stop_requested = True

    @contextmanager
    def _sigint_deferred(self):
        """Turn the first Ctrl-C into a stop after the current batch, so the checkpoint never
        holds half-updated weights; a second Ctrl-C interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self._stop_requested:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self._stop_requested = True

        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not allowed here (embedded interpreter)
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # -- checkpoints ---------------------------------------------------------------
    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to continue bit-identically, as plain arrays (no pickles)."""
        arrays = {f"model/{k}": v for k, v in self.model.weights_dict().items()}
        arrays.update({f"optim/{k}": v for k, v in self.optimizer.state_dict().items()})
        if self.best_weights is not None:
            arrays.update({f"best/{k}": v for k, v in self.best_weights.items()})
        arrays[BATCH_LOSSES] = np.asarray(self.batch_losses, dtype=np.float64)
        meta = {"format": CHECKPOINT_FORMAT, "model": self.model.graph.spec.name,
                "optimizer": self.optimizer.type, "state": asdict(self.state),
                "rng": self.rng.bit_generator.state, "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epochs, "seed": self.seed, "shares": self.shares}
        arrays["meta"] = np.array(json.dumps(meta))
        return arrays

    def restore(self, arrays: dict[str, np.ndarray], source: str = "checkpoint") -> None:
        if "meta" not in arrays:
            raise CheckpointError(f"{source}: not a layerkit checkpoint (no meta record)")
        try:
            meta = json.loads(str(arrays["meta"]))
        except ValueError as exc:
            raise CheckpointError(f"{source}: unreadable meta record ({exc})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{source}: the meta record is not a JSON object; the checkpoint is damaged")
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source}: checkpoint format {meta.get('format')} is not supported")
        _check_meta(meta, source)
        if meta.get("optimizer") != self.optimizer.type:
            raise CheckpointError(f"{source}: saved with optimizer {meta.get('optimizer')!r}, "
                                  f"the model file now says {self.optimizer.type!r}")
        if meta.get("steps_per_epoch") != self.steps_per_epoch:
            raise CheckpointError(f"{source}: saved with {meta.get('steps_per_epoch')} batches per epoch, the "
                                  f"data and batch size now give {self.steps_per_epoch}: not the same data")

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        self.model.set_weights(part("model/"), source=source)
        self.optimizer.load_state_dict(part("optim/"), source=source)
        best = part("best/")
        self.best_weights = best or None
        try:
            self.rng.bit_generator.state = meta["rng"]
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{source}: meta.rng: not a {type(self.rng.bit_generator).__name__} state "
                                  f"({exc}); the checkpoint is damaged") from None
        self.state = TrainState(**meta["state"])
        self.saved_shares = meta.get("shares")
        done = self.state.epoch * self.steps_per_epoch + self.state.step
        losses = arrays.get(BATCH_LOSSES)
        if losses is None:  # a checkpoint from before per-batch losses were kept: those batches are unknown
            self.batch_losses = [math.nan] * done
        elif losses.shape != (done,) or losses.dtype != np.float64:
            raise CheckpointError(f"{source}: {BATCH_LOSSES}: {losses.dtype} {losses.shape} instead of the losses "
                                  f"of {done} batches; the checkpoint is damaged (resume from a copy, or start the "
                                  f"run again)")
        else:
            self.batch_losses = losses.tolist()


_INT, _NUM = (int,), (int, float)
#: the checkpoint's meta record: key -> accepted types (None allowed where listed)
META_FIELDS = {"format": _INT, "model": (str,), "optimizer": (str,), "state": (dict,), "rng": (dict,),
               "steps_per_epoch": _INT, "epochs": _INT, "seed": _INT, "shares": _INT}
#: fields a checkpoint from an older layerkit may lack
OPTIONAL_META = {"shares"}
STATE_FIELDS = {"epoch": _INT, "step": _INT, "loss_sum": _NUM, "correct": _NUM, "seen": _INT, "history": (list,),
                "best_value": _NUM + (type(None),), "best_epoch": _INT + (type(None),), "wait": _INT,
                "stopped_early": (bool,), "epoch_seconds": (list,)}


def _check_meta(meta: dict, source: str) -> None:
    """Refuse a meta record with a field missing, unknown or of the wrong type, naming it: a
    tampered or damaged checkpoint must not surface as a TypeError deep in the trainer."""
    def damaged(path: str, why: str) -> CheckpointError:
        return CheckpointError(f"{source}: meta.{path}: {why}; the checkpoint is damaged (resume from a copy, "
                               f"or start the run again)")

    def check(record: dict, fields: dict, prefix: str) -> None:
        for key in sorted(set(record) - set(fields)):
            raise damaged(prefix + key, "unknown field")
        for key in sorted(set(fields) - set(record) - OPTIONAL_META):
            raise damaged(prefix + key, "missing")
        for key, types in fields.items():
            if key not in record:
                continue
            value = record[key]
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                raise damaged(prefix + key, f"{type(value).__name__} {value!r:.40} is not a "
                                            f"{' or '.join(t.__name__ for t in types)}")

    check(meta, META_FIELDS, "")
    state = meta["state"]
    check(state, STATE_FIELDS, "state.")
    for key in ("epoch", "step", "correct", "seen", "wait", "steps_per_epoch", "epochs", "seed"):
        value = state.get(key, meta.get(key))
        if value < 0:
            raise damaged(key if key in meta else f"state.{key}", f"{value} is negative")
    if not all(isinstance(r, dict) for r in state["history"]):
        raise damaged("state.history", "expected a list of per-epoch records")
    if len(state["history"]) != state["epoch"] or state["epoch"] > meta["epochs"] \
            or state["step"] > meta["steps_per_epoch"]:
        raise damaged("state", f"epoch {state['epoch']}, batch {state['step']} and {len(state['history'])} "
                               f"history records do not agree with {meta['epochs']} epochs of "
                               f"{meta['steps_per_epoch']} batches")
