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
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from annotated_types import Ge, Le

from core.settings import ConfigError, check_fields, setting

UnitFloat = Annotated[float, Ge(0), Le(1)]
NonNegInt = Annotated[int, Ge(0)]
LRKind = Literal["cosine", "wsd", "constant"]
AlphaKind = Literal["constant", "linear_inc", "linear_dec", "period", "wsd_alpha", "wsd_beta"]
LR_KINDS: tuple[str, ...] = LRKind.__args__
ALPHA_KINDS: tuple[str, ...] = AlphaKind.__args__

DEFAULT_WARMUP_FRAC = 0.05
"""LR warm-up when neither warmup_frac nor warmup_steps is given."""
DEFAULT_DECAY_FRAC = 0.1
"""WSD decay (LR and α) when neither stable_frac nor decay_frac is given."""


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
        raise ConfigError("", f"set stable_frac ({stable_frac}) or decay_frac ({decay_frac}), not both: "
                              "the stable phase is what warm-up and decay leave")
    if stable_frac is not None:
        decay_start = warmup_steps + round(stable_frac * total_steps)
    else:
        decay_start = total_steps - round((DEFAULT_DECAY_FRAC if decay_frac is None else decay_frac) * total_steps)
    if decay_start < warmup_steps or decay_start > total_steps:
        raise ConfigError("", f"warm-up ({warmup_steps} steps) and decay do not fit in the run's {total_steps} "
                              f"steps (decay would start at step {decay_start})")
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
    # The settings' rules are LRScheduleConfig's (a ConfigError, a ValueError, names the field).
    LRScheduleConfig(kind=kind, warmup_steps=warmup_steps, warmup_frac=warmup_frac, stable_frac=stable_frac,
                     decay_frac=decay_frac, min_ratio=min_ratio, decay_shape=decay_shape)
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


def alpha_at(
    step: int,
    total_steps: int,
    *,
    kind: str,
    alpha: float,
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
    AlphaScheduleConfig(kind=kind, alpha=alpha, alpha_min=alpha_min, period_steps=period_steps,
                        period_shape=period_shape, warmup_frac=warmup_frac, stable_frac=stable_frac,
                        decay_frac=decay_frac)
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


@dataclass(frozen=True)
class LRScheduleConfig:
    """Learning-rate schedule: linear warm-up, then cosine to min_ratio, warm-up-stable-decay, or
    constant; ``.at(step, total_steps)`` is the multiplier of the peak LR (lr_multiplier)."""

    kind: LRKind = setting("cosine", since=1)
    """cosine: decay to min_ratio; wsd: stable at the peak, then decay to min_ratio over the last
    decay_frac; constant: the peak after warm-up."""
    warmup_frac: UnitFloat | None = setting(None, since=1)
    """Warm-up as a fraction of the run's steps; None: 0.05, unless warmup_steps is given."""
    warmup_steps: NonNegInt | None = setting(None, since=1)
    """Warm-up in optimizer steps (instead of warmup_frac)."""
    stable_frac: UnitFloat | None = setting(None, since=1)
    """wsd: fraction of the steps at the peak after warm-up (instead of decay_frac)."""
    decay_frac: UnitFloat | None = setting(None, since=1)
    """wsd: fraction of the steps spent decaying; None: 0.1, unless stable_frac is given."""
    min_ratio: UnitFloat = setting(0.1, since=1)
    """Final LR as a fraction of the peak (cosine and wsd)."""
    decay_shape: Literal["linear", "cosine"] = setting("linear", since=1)
    """wsd: shape of the decay."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.warmup_frac is not None and self.warmup_steps:
            raise ConfigError("", "set warmup_frac or warmup_steps, not both")
        if self.stable_frac is not None and self.decay_frac is not None:
            raise ConfigError("", "set stable_frac or decay_frac, not both (the stable phase is what "
                                  "warm-up and decay leave)")

    def resolved(self) -> "LRScheduleConfig":
        """The defaults that depend on other fields filled in (warm-up, WSD decay)."""
        warmup_steps, warmup_frac = self.warmup_steps, self.warmup_frac
        if warmup_steps is None:
            warmup_steps = 0
            if warmup_frac is None:
                warmup_frac = DEFAULT_WARMUP_FRAC
        decay_frac = self.decay_frac
        if self.stable_frac is None and decay_frac is None:
            decay_frac = DEFAULT_DECAY_FRAC
        return replace(self, warmup_steps=warmup_steps, warmup_frac=warmup_frac, decay_frac=decay_frac)

    def warmup(self, total_steps: int) -> tuple[int, str]:
        """(warm-up steps, the field that set them) in a run of ``total_steps``."""
        r = self.resolved()
        if r.warmup_frac is not None:
            return round(r.warmup_frac * total_steps), "warmup_frac"
        return r.warmup_steps, "warmup_steps"

    def check_fits(self, total_steps: int) -> None:
        """ConfigError unless warm-up (and a WSD decay) fit in a run of ``total_steps``."""
        warmup, field = self.warmup(total_steps)
        if total_steps > 1 and warmup >= total_steps:
            raise ConfigError(field, f"warm-up ({warmup} steps) must be shorter than the run "
                                     f"({total_steps} steps)")
        if self.kind == "wsd":
            _wsd_phases(total_steps, warmup, self.stable_frac, self.decay_frac)

    def at(self, step: int, total_steps: int) -> float:
        r = self.resolved()
        return lr_multiplier(
            step, total_steps, kind=r.kind, warmup_steps=r.warmup_steps,
            warmup_frac=r.warmup_frac, stable_frac=r.stable_frac, decay_frac=r.decay_frac,
            min_ratio=r.min_ratio, decay_shape=r.decay_shape,
        )


@dataclass(frozen=True)
class AlphaScheduleConfig:
    """The KD share α of L = (1-α)·L_lm + α·L_kd over training (the module docstring has the
    exact shapes); α stays within [alpha_min, alpha]. ``.at(step, total_steps)`` is α (alpha_at).
    A plain number in a study (`alpha: 0.9`) means `{kind: constant, alpha: 0.9}`."""

    kind: AlphaKind = setting("constant", since=1)
    """constant: α = alpha; linear_inc: alpha_min -> alpha; linear_dec: alpha -> alpha_min;
    period: a wave of period_steps between alpha and alpha_min (KD first); wsd_alpha: warm-up
    alpha_min -> alpha, stable, decay to alpha_min; wsd_beta: the same shape on β = 1 - α."""
    alpha: UnitFloat = setting(0.9, since=1)
    """The high KD share (the only value of kind constant)."""
    alpha_min: UnitFloat = setting(0.0, since=1)
    """The low value of the non-constant kinds."""
    period_steps: Annotated[int, Ge(2)] | None = setting(None, since=1)
    """period: steps per period (required there, refused elsewhere)."""
    period_shape: Literal["square", "triangle"] = setting("square", since=1)
    """period: square (alpha, then alpha_min, half a period each) or triangle."""
    warmup_frac: UnitFloat = setting(0.1, since=1)
    """wsd_alpha / wsd_beta: warm-up fraction of the steps."""
    stable_frac: UnitFloat | None = setting(None, since=1)
    """wsd_alpha / wsd_beta: stable fraction (instead of decay_frac)."""
    decay_frac: UnitFloat | None = setting(None, since=1)
    """wsd_alpha / wsd_beta: decay fraction; None: 0.1, unless stable_frac is given."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.kind != "constant" and self.alpha_min > self.alpha:
            raise ConfigError("alpha_min", f"must be <= alpha ({self.alpha:g}), got {self.alpha_min:g}")
        if self.kind == "period" and self.period_steps is None:
            raise ConfigError("period_steps", "is required for kind period")
        if self.kind != "period" and self.period_steps is not None:
            raise ConfigError("period_steps", f"is only used by kind period (got kind {self.kind})")
        if self.stable_frac is not None and self.decay_frac is not None:
            raise ConfigError("", "set stable_frac or decay_frac, not both")

    @property
    def is_zero(self) -> bool:
        """α = 0 at every step: an LM-only run."""
        return self.alpha == 0 and (self.kind == "constant" or self.alpha_min == 0)

    def resolved(self) -> "AlphaScheduleConfig":
        if self.stable_frac is None and self.decay_frac is None:
            return replace(self, decay_frac=DEFAULT_DECAY_FRAC)
        return self

    def check_fits(self, total_steps: int) -> None:
        """ConfigError unless a WSD shape's warm-up and decay fit in ``total_steps``."""
        if self.kind in ("wsd_alpha", "wsd_beta"):
            _wsd_phases(total_steps, round(self.warmup_frac * total_steps), self.stable_frac, self.decay_frac)

    def at(self, step: int, total_steps: int) -> float:
        return alpha_at(
            step, total_steps, kind=self.kind, alpha=self.alpha, alpha_min=self.alpha_min,
            period_steps=self.period_steps, period_shape=self.period_shape,
            warmup_frac=self.warmup_frac, stable_frac=self.stable_frac, decay_frac=self.decay_frac,
        )
