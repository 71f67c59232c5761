"""The img/s of 'fit' is the warm training speed: the first batch (workers starting, plans being
built) and the epoch's evaluation are not in it (issue #19, item 16)."""

from __future__ import annotations

from rich.console import Console

from layerkit.training.progress import ProgressDisplay

RECORD = {"train_loss": 0.5, "train_accuracy": 0.9, "test_loss": 0.4, "test_accuracy": 0.9, "lr": 0.1}


class _Trainer:
    epochs = 1


def _epoch(ends: list[float], seconds: float, samples: int = 100) -> str:
    console = Console(record=True, width=200)
    ticks = iter(ends)
    display = ProgressDisplay(console, quiet=True, clock=lambda: next(ticks))
    display.on_train_begin(_Trainer())
    display.on_epoch_begin(0, steps=len(ends), start_step=0)
    for step in range(len(ends)):
        display.on_batch_end(0, step, loss=0.5, accuracy=0.9, samples=samples)
    display.on_epoch_end(0, RECORD, seconds=seconds)
    return console.export_text()


def test_first_epoch_speed_leaves_out_the_warm_up() -> None:
    # the first batch takes 5 s (process pool, plans); then 4 batches of 100 in 2 s: 200 img/s,
    # where images over the epoch's 7.5 s (evaluation included) would say 67
    line = _epoch([5.0, 5.5, 6.0, 6.5, 7.0], seconds=7.5)
    assert "7.5s (200 img/s)" in line


def test_an_epoch_of_one_batch_uses_its_seconds() -> None:
    assert "(50 img/s)" in _epoch([1.0], seconds=2.0)
