"""Training progress for people: a progress bar per epoch and one summary line per epoch.

Used by ``layerkit fit`` and by :meth:`layerkit.Model.fit` (``verbose=1``). The bar is drawn
on a terminal and in Jupyter; a redirected log gets the summary lines only. The speed is in
images per second (``img/s``), or for a model reading token ids in sequences per second (``seq/s``).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from layerkit.training.trainer import Callback


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals; ``-`` where there is none."""
    return "-" if x is None else f"{100 * x:.2f}%"


#: the unit of the speed shown for a model of float inputs, and for one reading token ids
IMAGES, SEQUENCES = "img", "seq"


def speed_unit(model) -> str:
    """What one training sample of ``model`` (a built network) is called in the speed shown:
    ``"seq"`` for token-id inputs (one sample is one sequence), else ``"img"``."""
    return SEQUENCES if getattr(model, "input_dtype", None) == np.int64 else IMAGES


def summary_line(epoch: int, epochs: int, record: dict, seconds: float, samples: int,
                 rate: float | None = None, unit: str = IMAGES) -> str:
    """One epoch in one line; ``rate``: the samples per second to show (default samples / seconds),
    shown as ``unit``/s (``img``, or ``seq`` for a model reading token ids)."""
    parts = [f"epoch {epoch + 1}/{epochs}",
             f"train loss {record['train_loss']:.4f} acc {pct(record['train_accuracy'])}"]
    if "val_loss" in record:
        parts.append(f"val loss {record['val_loss']:.4f} acc {pct(record['val_accuracy'])}")
    if "test_loss" in record:
        parts.append(f"test loss {record['test_loss']:.4f} acc {pct(record['test_accuracy'])}")
    parts.append(f"lr {record['lr']:.3g}")
    if rate is None:
        rate = samples / max(seconds, 1e-9)
    parts.append(f"{seconds:.1f}s ({rate:,.0f} {unit}/s)")
    return "  ".join(parts)


class ProgressDisplay(Callback):
    """A rich progress bar per epoch (unless quiet) and one summary line per epoch.

    Its img/s (seq/s for a model reading token ids: whole sequences, whatever their padding) is
    the training speed once warm: the samples of the second to the last batch over the time from
    the end of the first batch to the end of the last. The first batch of a run starts the worker
    processes and builds the plans, and the epoch's time also holds its evaluation; an epoch of
    one batch falls back to samples over the epoch's seconds."""

    REFRESH_S = 0.1

    def __init__(self, console, quiet: bool = False, clock: Callable[[], float] = time.perf_counter) -> None:
        self.console, self.quiet, self.clock = console, quiet, clock
        self.progress = None
        self.unit = IMAGES

    def on_train_begin(self, trainer) -> None:
        self.epochs = trainer.epochs
        self.unit = speed_unit(getattr(trainer, "model", None))

    def on_epoch_begin(self, epoch, steps, start_step) -> None:
        self.loss_sum = self.hits = self.seen = 0.0
        self.first_end: float | None = None  # when the first batch of this epoch ended
        self.first_seen = 0.0
        self.last_end = 0.0
        self.last_draw = 0.0
        self.steps = steps
        # a redirected log gets the summary lines only: a live bar there is just blank lines
        if self.quiet or not (self.console.is_terminal or self.console.is_jupyter):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[speed]} " + self.unit + "/s"),
            TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, completed=start_step,
                                           loss="-", acc="-", speed="-")

    def on_batch_end(self, epoch, step, loss, accuracy, samples) -> None:
        self.loss_sum += loss * samples
        self.hits += accuracy * samples
        self.seen += samples
        now = self.clock()
        if self.first_end is None:
            self.first_end, self.first_seen = now, self.seen
        self.last_end = now
        if self.progress is None:
            return
        if now - self.last_draw < self.REFRESH_S and step + 1 < self.steps:
            self.progress.update(self.task, completed=step + 1)
            return
        self.last_draw = now
        self.progress.update(self.task, completed=step + 1, loss=f"{self.loss_sum / self.seen:.4f}",
                             acc=pct(self.hits / self.seen),
                             speed=self._speed_text())

    def warm_rate(self) -> float | None:
        """Samples (images or sequences) per second from the end of the first batch to the last
        (None before two batches)."""
        if self.first_end is None or self.last_end <= self.first_end or self.seen <= self.first_seen:
            return None
        return (self.seen - self.first_seen) / (self.last_end - self.first_end)

    def _speed_text(self) -> str:
        rate = self.warm_rate()
        return "-" if rate is None else f"{rate:,.0f}"

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_epoch_end(self, epoch, record, seconds) -> None:
        self._stop()
        # the samples this process trained: a resumed epoch's first part was trained before
        self.console.print(summary_line(epoch, self.epochs, record, seconds, int(self.seen), self.warm_rate(),
                                        self.unit),
                           markup=False, soft_wrap=True)

    def on_train_end(self, result) -> None:
        self._stop()
