"""Numerics shared by the gradient checks: thresholds, relative error, kinks, results."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from layerkit.errors import LayerkitError, SizeLimitError

PASS_TOL = 1e-6
WARN_TOL = 1e-4
#: one-sided differences further apart than this (relative) mean a kink in the stencil
KINK_TOL = 1e-3
#: analytic and numeric both below this: agreement
ABS_FLOOR = 1e-10
#: round-off estimate of a numeric derivative: this many ulps of the output's scale over the step
NOISE_ULPS = 2
#: a difference as large as the round-off estimate scores at most PASS_TOL / 10
FLOOR_FACTOR = 10 / PASS_TOL
SWEEP_STEPS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
#: at most this many times ``samples`` candidates are tried when kinks are skipped
KINK_BUDGET = 8
EPS = float(np.finfo(np.float64).eps)

STATUS_ORDER = {"pass": 0, "skipped": 1, "warn": 2, "fail": 3}


# -- results ----------------------------------------------------------------------

@dataclass
class Worst:
    """The coordinate (or direction) with the largest error, and how the error moves with the step."""

    index: tuple[int, ...] | str
    analytic: float
    numeric: float
    rel_error: float
    sweep: list[tuple[float, float, float]] = field(default_factory=list)  # (step, numeric, rel_error)
    diagnosis: str = ""


@dataclass
class TensorResult:
    """The gradient check of one tensor of one layer, in isolation or through the whole model's loss:
    how many entries were compared, the largest relative error, and the verdict."""

    layer: str
    tensor: str
    shape: tuple[int, ...]
    checked: int
    total: int
    strategy: str
    max_rel_error: float | None
    status: str  # pass | warn | fail | skipped
    kinks: int = 0
    worst: Worst | None = None
    message: str = ""
    scope: str = "layer"  # "layer": in isolation; "model": end-to-end loss gradient
    layer_type: str = ""
    #: the Layer method whose gradient was checked: the one training calls for this layer
    #: (``backward``, ``backward_params`` or ``backward_inplace``; see ``Network.plan``)
    via: str = "backward"

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    @property
    def label(self) -> str:
        return f"{self.layer}.{self.tensor}"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


def jsonable(value: Any) -> Any:
    """Tuples to lists, and non-finite floats to strings: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def relative_error(analytic: float, numeric: float, noise: float = 0.0) -> float:
    """|a - n| / (|a| + |n|), the denominator floored at ``FLOOR_FACTOR * noise`` so that a
    difference within round-off always stays below ``PASS_TOL / 10``; when both values are
    below ``ABS_FLOOR`` they agree."""
    if not (math.isfinite(analytic) and math.isfinite(numeric)):
        return math.inf  # NaN must never compare as "not worse"
    if abs(analytic) < ABS_FLOOR and abs(numeric) < ABS_FLOOR:
        return 0.0
    floor = max(FLOOR_FACTOR * noise, ABS_FLOOR)
    return abs(analytic - numeric) / max(abs(analytic) + abs(numeric), floor)


def status_of(error: float) -> str:
    if error < PASS_TOL:
        return "pass"
    if error < WARN_TOL:
        return "warn"
    return "fail"


def is_kink(forward: float, backward: float, atol: float) -> bool:
    """A kink inside [x - h, x + h] shows as one-sided slopes that disagree by far more
    than curvature (h * f'') or round-off can explain."""
    return abs(forward - backward) > KINK_TOL * (abs(forward) + abs(backward)) + 4 * atol + ABS_FLOOR


def diagnose(analytic: float, sweep: list[tuple[float, float, float]], method: str = "backward") -> str:
    """What the error-vs-step sweep says; ``method`` is the layer method that gave the gradient."""
    errors = [e for _, _, e in sweep]
    best_step, _, best = min(sweep, key=lambda s: s[2])
    if best < PASS_TOL:
        return (f"agrees at step {best_step:g} (error {best:.1e}): numerical trouble at the default step "
                f"(truncation at large steps, round-off at small ones), not a wrong gradient")
    spread = max(errors) / max(min(errors), 1e-300)
    numerics = [n for _, n, _ in sweep]
    if spread < 10:
        middle = numerics[len(numerics) // 2]
        ratio = f"; analytic/numeric = {analytic / middle:.4g}" if middle != 0 else ""
        return f"wrong at every step size: a bug in {method}{ratio}"
    return "error changes with the step size: an undeclared kink or badly conditioned input"


# -- per-layer check --------------------------------------------------------------

def as_f64(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [np.array(v, dtype=np.float64, copy=True) for v in value]
    return np.array(value, dtype=np.float64, copy=True)


class GradCheckError(LayerkitError):
    """The gradient check could not run (e.g. no target fits the model's loss)."""


def out_of_memory() -> LayerkitError:
    """Running out of memory is not a wrong gradient: exit 2 with what to do, not a failed check."""
    return SizeLimitError("not enough memory to run the gradient check; lower --batch-size, or check a "
                          "smaller model (layerkit summary shows each layer's size)")
