"""Step schedules: the learning-rate multiplier and the KD weight alpha, as pure functions.

Conventions shared by every schedule: ``step`` is the 0-based index of the optimizer step about
to be taken, ``total_steps`` the run's number of steps, so the last step is ``total_steps - 1``.
Steps past the end return the final value. Phases are measured in whole steps:

- warm-up of W steps covers steps [0, W);
- a decay of D steps covers [total - D, total) and reaches its end value exactly at the last step;
- the stable phase is what lies between.

LR (``lr_multiplier``, multiplies the peak LR):

- constant: linear warm-up (step + 1) / W, then 1.
- cosine: warm-up, then min_ratio + (1 - min_ratio) * (1 + cos(pi * x)) / 2, x going 0 -> 1 from
  the first step after warm-up to the last step.
- wsd: warm-up, stable at 1, then decay from 1 to min_ratio over the last decay_frac of the steps,
  ``decay_shape`` "linear" (default) or "cosine" (half cosine).

The LR warm-up starts at 1/W (a zero LR would waste a step) and reaches 1 at step W - 1.

alpha (``alpha_at``, the KD weight of L = (1 - alpha) L_lm + alpha L_kd), with alpha the high
and alpha_min the low value:

- constant: alpha.
- linear_inc: alpha_min -> alpha linearly over the run (first step alpha_min, last step alpha).
- linear_dec: alpha -> alpha_min.
- period: a wave of ``period_steps`` steps between alpha and alpha_min, starting high (KD first).
  period_shape "square" (default): alpha for the first half of each period, alpha_min for the
  second; "triangle": alpha -> alpha_min at mid-period -> alpha, linearly.
- wsd_alpha: the WSD shape on alpha: warm-up alpha_min -> alpha over the first warmup_frac of the
  steps (alpha_min at step 0, alpha at step W), stable at alpha, linear decay to alpha_min at the
  last step over the last decay_frac.
- wsd_beta: the same WSD shape on beta = 1 - alpha, between beta_min = 1 - alpha and
  beta_max = 1 - alpha_min, so alpha itself goes alpha -> alpha_min (warm-up), stays at
  alpha_min, and comes back to alpha during the decay. Example, alpha = 0.9, alpha_min = 0,
  warmup_frac = decay_frac = 0.1, 100 steps (warm-up steps 0-9, decay steps 90-99): wsd_alpha
  gives alpha 0 at step 0, 0.45 at step 5, 0.9 from step 10 to step 90, 0.4 at step 95, 0 at
  step 99; wsd_beta gives beta 0.1 -> 1.0 -> 0.1, i.e. alpha 0.9 at step 0, 0.45 at step 5, 0 from
  step 10 to step 90, 0.5 at step 95, 0.9 at step 99.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LR_KINDS = ("constant", "cosine", "wsd")
ALPHA_KINDS = ("constant", "linear_inc", "linear_dec", "period", "wsd_alpha", "wsd_beta")
DECAY_SHAPES = ("linear", "cosine")
PERIOD_SHAPES = ("square", "triangle")


def _check_frac(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_step(step: int, total_steps: int) -> None:
    if not (isinstance(total_steps, int) and total_steps >= 1):
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def _progress(step: int, start: int, end: int) -> float:
    """0 at ``start``, 1 at ``end`` (inclusive), clipped; 1 when the span is empty."""
    if end <= start:
        return 1.0
    return min(1.0, max(0.0, (step - start) / (end - start)))


def _decay_value(x: float, shape: str) -> float:
    """1 -> 0 as x goes 0 -> 1."""
    if shape == "linear":
        return 1.0 - x
    return 0.5 * (1.0 + math.cos(math.pi * x))


def _wsd_phases(
    total_steps: int, warmup_steps: int, stable_frac: float | None, decay_frac: float | None
) -> int:
    """First step of the decay phase, from either decay_frac or stable_frac (not both)."""
    if stable_frac is not None and decay_frac is not None:
        raise ValueError(
            f"give either stable_frac ({stable_frac}) or decay_frac ({decay_frac}), not both: "
            "the stable phase is what warm-up and decay leave"
        )
    if stable_frac is not None:
        decay_start = warmup_steps + round(stable_frac * total_steps)
    else:
        decay_start = total_steps - round((0.1 if decay_frac is None else decay_frac) * total_steps)
    if decay_start < warmup_steps or decay_start > total_steps:
        raise ValueError(
            f"warm-up ({warmup_steps} steps) and decay do not fit in {total_steps} steps "
            f"(decay would start at step {decay_start})"
        )
    return decay_start


def lr_multiplier(
    step: int,
    total_steps: int,
    *,
    kind: str = "cosine",
    warmup_steps: int = 0,
    warmup_frac: float | None = None,
    stable_frac: float | None = None,
    decay_frac: float | None = None,
    min_ratio: float = 0.1,
    decay_shape: str = "linear",
) -> float:
    """LR multiplier in (0, 1] at ``step`` of ``total_steps`` (module docstring for the shapes).

    warmup_steps, or warmup_frac (a fraction of total_steps, rounded): the linear warm-up.
    wsd: decay over the last decay_frac of the steps (default 0.1), or, given stable_frac instead,
    a stable phase of stable_frac * total_steps after warm-up and the decay over the rest.
    min_ratio: the final multiplier of cosine and wsd. decay_shape: wsd's decay, linear | cosine.
    """
    _check_step(step, total_steps)
    if kind not in LR_KINDS:
        raise ValueError(f"kind must be one of {', '.join(LR_KINDS)}; got {kind!r}")
    _check_lr_params(warmup_steps, warmup_frac, stable_frac, decay_frac, min_ratio, decay_shape)
    warmup = round(warmup_frac * total_steps) if warmup_frac is not None else warmup_steps
    if total_steps == 1:
        warmup = 0  # a one-step run has nothing to warm up
    if warmup >= total_steps:
        raise ValueError(f"warm-up ({warmup} steps) must be shorter than the run ({total_steps} steps)")
    if kind == "wsd":  # checked before any early return, so a bad schedule fails at step 0
        decay_start = _wsd_phases(total_steps, warmup, stable_frac, decay_frac)
    if step < warmup:
        return (step + 1) / warmup
    last = total_steps - 1
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        x = _progress(step, warmup, last)
        return min_ratio + (1.0 - min_ratio) * _decay_value(x, "cosine")
    if step < decay_start:
        return 1.0
    x = _progress(step, decay_start, last)
    return min_ratio + (1.0 - min_ratio) * _decay_value(x, decay_shape)


def _check_lr_params(warmup_steps, warmup_frac, stable_frac, decay_frac, min_ratio, decay_shape) -> None:
    if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if warmup_frac is not None and warmup_steps:
        raise ValueError(f"give either warmup_steps ({warmup_steps}) or warmup_frac ({warmup_frac}), not both")
    _check_frac("warmup_frac", warmup_frac)
    _check_frac("stable_frac", stable_frac)
    _check_frac("decay_frac", decay_frac)
    _check_frac("min_ratio", min_ratio, allow_none=False)
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"decay_shape must be one of {', '.join(DECAY_SHAPES)}; got {decay_shape!r}")


def alpha_at(
    step: int,
    total_steps: int,
    *,
    kind: str = "constant",
    alpha: float = 1.0,
    alpha_min: float = 0.0,
    period_steps: int | None = None,
    period_shape: str = "square",
    warmup_frac: float = 0.1,
    stable_frac: float | None = None,
    decay_frac: float | None = None,
) -> float:
    """KD weight alpha in [0, 1] at ``step`` of ``total_steps`` (module docstring for the shapes).

    alpha: the high value (constant's value); alpha_min: the low value (0 <= alpha_min <= alpha).
    period: period_steps (>= 2) and period_shape (square | triangle).
    wsd_alpha / wsd_beta: warm-up over warmup_frac of the steps; decay over the last decay_frac
    (default 0.1), or, given stable_frac instead, a stable phase of stable_frac of the steps.
    """
    _check_step(step, total_steps)
    _check_alpha_params(kind, alpha, alpha_min, period_steps, period_shape, warmup_frac, stable_frac, decay_frac)
    last = total_steps - 1
    if kind == "constant":
        return float(alpha)
    if kind == "linear_inc":
        return alpha_min + (alpha - alpha_min) * _progress(step, 0, last)
    if kind == "linear_dec":
        return alpha - (alpha - alpha_min) * _progress(step, 0, last)
    if kind == "period":
        phase = (step % period_steps) / period_steps
        if period_shape == "square":
            return float(alpha) if phase < 0.5 else float(alpha_min)
        return alpha - (alpha - alpha_min) * (1.0 - abs(2.0 * phase - 1.0))
    # wsd_alpha / wsd_beta: a shape f in [0, 1]: 0 -> 1 (warm-up), 1, 1 -> 0 (decay).
    warmup = round(warmup_frac * total_steps)
    decay_start = _wsd_phases(total_steps, warmup, stable_frac, decay_frac)
    if step < warmup:
        f = step / warmup
    elif step < decay_start:
        f = 1.0
    else:
        f = _decay_value(_progress(step, decay_start, last), "linear")
    if kind == "wsd_alpha":
        return alpha_min + (alpha - alpha_min) * f
    beta_min, beta_max = 1.0 - alpha, 1.0 - alpha_min
    return 1.0 - (beta_min + (beta_max - beta_min) * f)


def _check_alpha_params(kind, alpha, alpha_min, period_steps, period_shape, warmup_frac, stable_frac, decay_frac) -> None:
    if kind not in ALPHA_KINDS:
        raise ValueError(f"kind must be one of {', '.join(ALPHA_KINDS)}; got {kind!r}")
    _check_frac("alpha", alpha, allow_none=False)
    _check_frac("alpha_min", alpha_min, allow_none=False)
    if kind != "constant" and alpha_min > alpha:
        raise ValueError(f"alpha_min ({alpha_min}) must be <= alpha ({alpha})")
    if kind == "period":
        if not (isinstance(period_steps, int) and period_steps >= 2):
            raise ValueError(f"period_steps must be an int >= 2 for kind 'period', got {period_steps!r}")
    elif period_steps is not None:
        raise ValueError(f"period_steps is only used by kind 'period', got kind {kind!r}")
    if period_shape not in PERIOD_SHAPES:
        raise ValueError(f"period_shape must be one of {', '.join(PERIOD_SHAPES)}; got {period_shape!r}")
    _check_frac("warmup_frac", warmup_frac, allow_none=False)
    _check_frac("stable_frac", stable_frac)
    _check_frac("decay_frac", decay_frac)
    if stable_frac is not None and decay_frac is not None:
        raise ValueError(f"give either stable_frac ({stable_frac}) or decay_frac ({decay_frac}), not both")


@dataclass(frozen=True)
class LRScheduleConfig:
    """LR schedule; ``.at(step, total_steps)`` is the multiplier of the peak LR (lr_multiplier)."""

    kind: str = "cosine"
    """constant | cosine | wsd."""
    warmup_steps: int = 0
    """Linear warm-up length in steps (or use warmup_frac)."""
    warmup_frac: float | None = None
    """Linear warm-up length as a fraction of the run's steps (instead of warmup_steps)."""
    stable_frac: float | None = None
    """wsd: stable phase as a fraction of the steps (instead of decay_frac)."""
    decay_frac: float | None = None
    """wsd: decay phase as a fraction of the steps; default 0.1."""
    min_ratio: float = 0.1
    """Final multiplier of cosine and wsd."""
    decay_shape: str = "linear"
    """wsd decay: linear | cosine."""

    def __post_init__(self) -> None:
        if self.kind not in LR_KINDS:
            raise ValueError(f"kind must be one of {', '.join(LR_KINDS)}; got {self.kind!r}")
        _check_lr_params(
            self.warmup_steps, self.warmup_frac, self.stable_frac, self.decay_frac, self.min_ratio,
            self.decay_shape,
        )

    def at(self, step: int, total_steps: int) -> float:
        return lr_multiplier(
            step, total_steps, kind=self.kind, warmup_steps=self.warmup_steps,
            warmup_frac=self.warmup_frac, stable_frac=self.stable_frac, decay_frac=self.decay_frac,
            min_ratio=self.min_ratio, decay_shape=self.decay_shape,
        )


@dataclass(frozen=True)
class AlphaScheduleConfig:
    """KD-weight schedule; ``.at(step, total_steps)`` is alpha (alpha_at)."""

    kind: str = "constant"
    """constant | linear_inc | linear_dec | period | wsd_alpha | wsd_beta."""
    alpha: float = 1.0
    """The high value (constant's value)."""
    alpha_min: float = 0.0
    """The low value of the non-constant kinds."""
    period_steps: int | None = None
    """period: steps per period (>= 2)."""
    period_shape: str = "square"
    """period: square (alpha then alpha_min, half a period each) | triangle."""
    warmup_frac: float = 0.1
    """wsd_alpha / wsd_beta: warm-up fraction of the steps."""
    stable_frac: float | None = None
    """wsd_alpha / wsd_beta: stable fraction (instead of decay_frac)."""
    decay_frac: float | None = None
    """wsd_alpha / wsd_beta: decay fraction; default 0.1."""

    def __post_init__(self) -> None:
        _check_alpha_params(
            self.kind, self.alpha, self.alpha_min, self.period_steps, self.period_shape,
            self.warmup_frac, self.stable_frac, self.decay_frac,
        )

    def at(self, step: int, total_steps: int) -> float:
        return alpha_at(
            step, total_steps, kind=self.kind, alpha=self.alpha, alpha_min=self.alpha_min,
            period_steps=self.period_steps, period_shape=self.period_shape,
            warmup_frac=self.warmup_frac, stable_frac=self.stable_frac, decay_frac=self.decay_frac,
        )
