"""TensorBoard scalar logger: a training callback shipped as a built-in plugin.

``layerkit fit MODEL --callback tensorboard`` (or ``{"type": "tensorboard"}``
in ``training.callbacks``) writes, after every epoch, the loss and accuracy
of each split and the learning rate as TensorBoard scalars under
``RUN_DIR/tensorboard`` (``tensorboard --logdir runs`` shows every run side by
side). Writing the event files needs ``tensorboardX`` (``pip install
'layerkit[tensorboard]'``); TensorBoard itself is only needed to look at them.
"""

from __future__ import annotations

from pathlib import Path

from layerkit import hookimpl
from layerkit.errors import LayerkitError, install_hint
from layerkit.training.trainer import Callback

#: history keys written as scalars, grouped the way TensorBoard shows them (loss/..., accuracy/...)
TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/validation", "test_loss": "loss/test",
    "train_accuracy": "accuracy/train", "val_accuracy": "accuracy/validation", "test_accuracy": "accuracy/test",
    "lr": "learning_rate",
}


class TensorBoardLogger(Callback):
    """The ``tensorboard`` callback: after each epoch, the history's losses, accuracies and learning
    rate as TensorBoard scalars."""

    type = "tensorboard"
    description = "Write loss, accuracy and learning rate per epoch as TensorBoard scalars (needs tensorboardX)."
    params_schema = {
        "type": "object",
        "properties": {
            "log_dir": {"type": "string",
                        "description": "folder for the event files (default: RUN_DIR/tensorboard; relative "
                                       "paths are relative to the run directory)"},
        },
        "additionalProperties": False,
    }

    def __init__(self, run_dir: str | Path | None = None, log_dir: str | None = None) -> None:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise LayerkitError(f"the tensorboard callback needs tensorboardX: {install_hint('tensorboard')}") \
                from None
        base = Path(run_dir) if run_dir is not None else Path("runs")
        self.log_dir = base / (log_dir or "tensorboard") if log_dir is None or not Path(log_dir).is_absolute() \
            else Path(log_dir)
        self.writer = None

    def on_train_begin(self, trainer) -> None:
        from tensorboardX import SummaryWriter

        # a resumed run appends to the same folder; epochs already logged are not logged again
        self.writer = SummaryWriter(logdir=str(self.log_dir), flush_secs=10)

    def on_epoch_end(self, epoch, record, seconds) -> None:
        if self.writer is None:
            return
        for key, tag in TAGS.items():
            if key in record:
                self.writer.add_scalar(tag, float(record[key]), global_step=int(record["epoch"]))
        self.writer.add_scalar("seconds_per_epoch", float(seconds), global_step=int(record["epoch"]))
        self.writer.flush()

    def on_train_end(self, result) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@hookimpl
def layerkit_register_callbacks(register):
    register(TensorBoardLogger)
