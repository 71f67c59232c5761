"""Learning-rate schedules as functions of (epoch, step)."""

from __future__ import annotations

import itertools
import math

import pytest

from layerkit.nn.schedules import Schedule


def sched(**config):
    return Schedule.from_config(config, base_lr=0.1, epochs=10, steps_per_epoch=5)


def test_constant():
    s = sched(type="constant")
    assert s.lr(0, 0) == s.lr(9, 4) == 0.1


def test_step_decay():
    s = sched(type="step", step_size=3, gamma=0.5)
    assert [round(s.lr(e), 10) for e in (0, 2, 3, 5, 6, 9)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125]


def test_step_defaults():
    s = sched(type="step")  # every epochs // 3 = 3 epochs, by 0.1
    assert math.isclose(s.lr(3), 0.01) and math.isclose(s.lr(2), 0.1)


def test_exponential():
    s = sched(type="exponential", gamma=0.8)
    assert math.isclose(s.lr(4), 0.1 * 0.8 ** 4)


def test_cosine_from_base_towards_min():
    s = sched(type="cosine", min_lr=0.001)
    assert s.lr(0) == pytest.approx(0.1)
    assert s.lr(5) == pytest.approx(0.001 + 0.099 * 0.5)
    values = [s.lr(e) for e in range(10)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[-1] > 0.001


def test_warmup_is_linear_per_step_then_hands_over():
    s = sched(type="cosine", warmup_epochs=2)
    # 10 warm-up steps: step k of training gets (k + 1) / 10 of the epoch's rate
    assert s.lr(0, 0) == pytest.approx(0.1 * 1 / 10)
    assert s.lr(1, 2) == pytest.approx(s.epoch_lr(1) * 8 / 10)
    assert s.lr(2, 0) == pytest.approx(s.epoch_lr(2))


def test_same_position_same_rate():
    a, b = sched(type="step", step_size=2, warmup_epochs=1.5), sched(type="step", step_size=2, warmup_epochs=1.5)
    for e in range(10):
        for k in range(5):
            assert a.lr(e, k) == b.lr(e, k)


def test_unknown_type():
    with pytest.raises(ValueError):
        Schedule(0.1, 10, 5, type="linear")
