"""Training progress for people: a progress bar per epoch and one summary line per epoch.

Used by ``layerkit fit`` and by :meth:`layerkit.Model.fit` (``verbose=1``). The bar is drawn
on a terminal and in Jupyter; a redirected log gets the summary lines only.
"""

from __future__ import annotations

import time

from layerkit.training.trainer import Callback


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals; ``-`` where there is none."""
    return "-" if x is None else f"{100 * x:.2f}%"


def summary_line(epoch: int, epochs: int, record: dict, seconds: float, samples: int) -> str:
    parts = [f"epoch {epoch + 1}/{epochs}",
             f"train loss {record['train_loss']:.4f} acc {pct(record['train_accuracy'])}"]
    if "val_loss" in record:
        parts.append(f"val loss {record['val_loss']:.4f} acc {pct(record['val_accuracy'])}")
    if "test_loss" in record:
        parts.append(f"test loss {record['test_loss']:.4f} acc {pct(record['test_accuracy'])}")
    parts.append(f"lr {record['lr']:.3g}")
    parts.append(f"{seconds:.1f}s ({samples / max(seconds, 1e-9):,.0f} img/s)")
    return "  ".join(parts)


class ProgressDisplay(Callback):
    """A rich progress bar per epoch (unless quiet) and one summary line per epoch."""

    REFRESH_S = 0.1

    def __init__(self, console, quiet: bool = False) -> None:
        self.console, self.quiet = console, quiet
        self.progress = None

    def on_train_begin(self, trainer) -> None:
        self.epochs = trainer.epochs

    def on_epoch_begin(self, epoch, steps, start_step) -> None:
        self.loss_sum = self.hits = self.seen = 0.0
        self.started = time.perf_counter()
        self.last_draw = 0.0
        self.steps = steps
        # a redirected log gets the summary lines only: a live bar there is just blank lines
        if self.quiet or not (self.console.is_terminal or self.console.is_jupyter):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[speed]} img/s"),
            TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, completed=start_step,
                                           loss="-", acc="-", speed="-")

    def on_batch_end(self, epoch, step, loss, accuracy, samples) -> None:
        self.loss_sum += loss * samples
        self.hits += accuracy * samples
        self.seen += samples
        if self.progress is None:
            return
        now = time.perf_counter()
        if now - self.last_draw < self.REFRESH_S and step + 1 < self.steps:
            self.progress.update(self.task, completed=step + 1)
            return
        self.last_draw = now
        self.progress.update(self.task, completed=step + 1, loss=f"{self.loss_sum / self.seen:.4f}",
                             acc=pct(self.hits / self.seen),
                             speed=f"{self.seen / max(now - self.started, 1e-9):,.0f}")

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_epoch_end(self, epoch, record, seconds) -> None:
        self._stop()
        # the images this process trained: a resumed epoch's first part was trained before
        self.console.print(summary_line(epoch, self.epochs, record, seconds, int(self.seen)), markup=False,
                           soft_wrap=True)

    def on_train_end(self, result) -> None:
        self._stop()
