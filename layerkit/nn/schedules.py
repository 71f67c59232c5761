"""Learning-rate schedules.

The rate is a pure function of ``(epoch, step)`` — the position in training —
never of how many times it was asked, so a resumed run gets exactly the rates
an uninterrupted one would have. Decay (step, exponential, cosine) changes
once per epoch; the optional linear warm-up rises every step, from
``base/warmup_steps`` to ``base`` over ``warmup_epochs`` epochs.

Defaults when the model file leaves them out: ``step`` decays by ``gamma=0.1``
every ``step_size = max(1, epochs // 3)`` epochs; ``exponential`` by
``gamma=0.9`` per epoch; ``cosine`` anneals to ``min_lr=0`` at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "step", "exponential", "cosine")

#: what each schedule does, for ``layerkit layers --markdown`` (docs/layers.md)
SCHEDULE_DESCRIPTIONS = {
    "constant": "The base learning rate throughout (after the optional warm-up).",
    "step": "lr * gamma ** (epoch // step_size): decays by gamma (default 0.1) every step_size epochs "
            "(default max(1, epochs // 3)), as PyTorch's StepLR.",
    "exponential": "lr * gamma ** epoch, gamma default 0.9, as PyTorch's ExponentialLR.",
    "cosine": "min_lr + (lr - min_lr) * (1 + cos(pi * epoch / epochs)) / 2: from lr to min_lr (default 0) over "
              "the run, as PyTorch's CosineAnnealingLR with T_max = epochs.",
}


@dataclass(frozen=True)
class Schedule:
    """The learning rate of one training run at each ``(epoch, step)``: a schedule from
    :data:`SCHEDULES` plus an optional linear warm-up, built from the model file's ``training.schedule``."""

    base_lr: float
    epochs: int
    steps_per_epoch: int
    type: str = "constant"
    step_size: int | None = None
    gamma: float | None = None
    min_lr: float = 0.0
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if self.type not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.type!r}")

    @classmethod
    def from_config(cls, config: dict | None, base_lr: float, epochs: int, steps_per_epoch: int) -> "Schedule":
        config = dict(config or {"type": "constant"})
        return cls(base_lr=float(base_lr), epochs=int(epochs), steps_per_epoch=max(int(steps_per_epoch), 1),
                   type=config.get("type", "constant"), step_size=config.get("step_size"),
                   gamma=config.get("gamma"), min_lr=float(config.get("min_lr", 0.0)),
                   warmup_epochs=float(config.get("warmup_epochs", 0.0)))

    def epoch_lr(self, epoch: int) -> float:
        """The decayed rate for a whole epoch, before warm-up."""
        base = self.base_lr
        if self.type == "step":
            size = self.step_size or max(1, self.epochs // 3)
            gamma = 0.1 if self.gamma is None else self.gamma
            return base * gamma ** (epoch // size)
        if self.type == "exponential":
            gamma = 0.9 if self.gamma is None else self.gamma
            return base * gamma ** epoch
        if self.type == "cosine":
            progress = min(epoch / max(self.epochs, 1), 1.0)
            return self.min_lr + (base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return base

    def lr(self, epoch: int, step: int = 0) -> float:
        """Rate for batch ``step`` (0-based) of epoch ``epoch`` (0-based)."""
        rate = self.epoch_lr(epoch)
        warmup_steps = self.warmup_epochs * self.steps_per_epoch
        done = epoch * self.steps_per_epoch + step + 1  # the first step already learns
        if warmup_steps > 0 and done < warmup_steps:
            rate *= done / warmup_steps
        return rate
