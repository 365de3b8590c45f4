"""core.schedules: every shape at its key points, and argument checking."""
from __future__ import annotations

import math

import pytest

from core.schedules import (
    ALPHA_KINDS,
    LR_KINDS,
    AlphaScheduleConfig,
    LRScheduleConfig,
    alpha_at,
    lr_multiplier,
)

TOTAL = 101  # last step 100


def approx(x):
    return pytest.approx(x, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# LR


@pytest.mark.parametrize("step,want", [
    (0, 1 / 10), (4, 5 / 10), (9, 1.0),  # warm-up reaches the peak at its last step
    (10, 1.0), (55, 0.1 + 0.9 * 0.5), (100, 0.1), (150, 0.1),  # cosine from step 10 to the last step
])
def test_cosine(step, want):
    assert lr_multiplier(step, TOTAL, kind="cosine", warmup_steps=10, min_ratio=0.1) == approx(want)


def test_cosine_quarter_point():
    x = 0.25
    want = 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * x))
    assert lr_multiplier(25, TOTAL, kind="cosine", min_ratio=0.2) == approx(want)


@pytest.mark.parametrize("step,want", [(0, 1 / 5), (4, 1.0), (5, 1.0), (100, 1.0)])
def test_constant(step, want):
    assert lr_multiplier(step, TOTAL, kind="constant", warmup_steps=5) == approx(want)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
@pytest.mark.parametrize("step,linear,cosine", [
    (0, 0.1, 0.1), (9, 1.0, 1.0),  # warm-up
    (10, 1.0, 1.0), (50, 1.0, 1.0), (89, 1.0, 1.0),  # stable
    (90, 1.0, 1.0),  # first decay step
    (95, 1 - 0.9 * 0.5, 0.1 + 0.9 * 0.5),  # decay midpoint: both shapes give 0.55
    (93, 1 - 0.9 * 0.3, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.3))),
    (100, 0.1, 0.1),  # end
])
def test_wsd(shape, step, linear, cosine):
    # decay_frac 11/101: the decay covers the last 11 steps, 90..100 (1 at step 90, min at step 100).
    got = lr_multiplier(step, TOTAL, kind="wsd", warmup_steps=10, decay_frac=11 / TOTAL, min_ratio=0.1,
                        decay_shape=shape)
    assert got == approx(linear if shape == "linear" else cosine)


def test_wsd_phases_from_stable_frac():
    # 100 steps, warm-up 10, stable 60 -> decay starts at step 70 and ends at step 99.
    kw = dict(kind="wsd", warmup_steps=10, stable_frac=0.6, min_ratio=0.0)
    assert lr_multiplier(69, 100, **kw) == 1.0
    assert lr_multiplier(70, 100, **kw) == 1.0
    assert lr_multiplier(71, 100, **kw) < 1.0
    assert lr_multiplier(99, 100, **kw) == approx(0.0)


def test_warmup_frac():
    assert lr_multiplier(0, 100, kind="constant", warmup_frac=0.1) == approx(0.1)
    assert lr_multiplier(9, 100, kind="constant", warmup_frac=0.1) == approx(1.0)


def test_single_step_run():
    for kind in LR_KINDS:
        assert 0 < lr_multiplier(0, 1, kind=kind, warmup_steps=3) <= 1


@pytest.mark.parametrize("kwargs,match", [
    ({"kind": "linear"}, "cosine, wsd, constant"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"warmup_steps": 101}, "shorter than the run"),
    ({"warmup_steps": 5, "warmup_frac": 0.1}, "warmup_frac or warmup_steps"),
    ({"min_ratio": 1.5}, "min_ratio must be in"),
    ({"kind": "wsd", "stable_frac": 0.5, "decay_frac": 0.1}, "not both"),
    ({"kind": "wsd", "warmup_steps": 95, "decay_frac": 0.2}, "do not fit"),
    ({"kind": "wsd", "decay_shape": "exp"}, "linear, cosine"),
])
def test_lr_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lr_multiplier(3, TOTAL, **kwargs)


def test_lr_bad_step():
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_multiplier(-1, TOTAL)
    with pytest.raises(ValueError, match="total_steps"):
        lr_multiplier(0, 0)


def test_lr_config():
    cfg = LRScheduleConfig(kind="wsd", warmup_steps=10, decay_frac=0.2)
    assert cfg.at(50, TOTAL) == 1.0
    assert cfg.at(100, TOTAL) == approx(0.1)
    with pytest.raises(ValueError, match="kind must be one of"):
        LRScheduleConfig(kind="cos")
    with pytest.raises(ValueError, match="min_ratio"):
        LRScheduleConfig(min_ratio=-0.1)


@pytest.mark.parametrize("kind", LR_KINDS)
def test_lr_in_range_and_monotone_after_warmup(kind):
    vals = [lr_multiplier(s, TOTAL, kind=kind, warmup_steps=10) for s in range(TOTAL)]
    assert all(0 < v <= 1 for v in vals)
    assert all(b >= a for a, b in zip(vals[:10], vals[1:11]))
    assert all(b <= a + 1e-15 for a, b in zip(vals[10:], vals[11:]))


# ----------------------------------------------------------------------------------------------
# alpha


@pytest.mark.parametrize("kind,step,want", [
    ("constant", 0, 0.9), ("constant", 100, 0.9),
    ("linear_inc", 0, 0.1), ("linear_inc", 50, 0.5), ("linear_inc", 100, 0.9),
    ("linear_dec", 0, 0.9), ("linear_dec", 50, 0.5), ("linear_dec", 100, 0.1),
    # WSD on alpha: warm-up over steps 0..9 (alpha_min at step 0, alpha reached at step 10), decay
    # over the last 11 steps 90..100 (alpha at step 90, alpha_min at step 100).
    ("wsd_alpha", 0, 0.1), ("wsd_alpha", 5, 0.5), ("wsd_alpha", 10, 0.9), ("wsd_alpha", 50, 0.9),
    ("wsd_alpha", 90, 0.9), ("wsd_alpha", 95, 0.5), ("wsd_alpha", 100, 0.1),
    # WSD on beta = 1 - alpha: beta 0.1 -> 0.9 -> 0.1, so alpha 0.9 -> 0.1 -> 0.9.
    ("wsd_beta", 0, 0.9), ("wsd_beta", 5, 0.5), ("wsd_beta", 10, 0.1), ("wsd_beta", 50, 0.1),
    ("wsd_beta", 90, 0.1), ("wsd_beta", 95, 0.5), ("wsd_beta", 100, 0.9),
])
def test_alpha_shapes(kind, step, want):
    got = alpha_at(step, TOTAL, kind=kind, alpha=0.9, alpha_min=0.1, warmup_frac=10 / TOTAL,
                   decay_frac=11 / TOTAL)
    assert got == approx(want)


def test_wsd_alpha_and_beta_docstring_example():
    kw = dict(alpha=0.9, alpha_min=0.0, warmup_frac=0.1, decay_frac=0.1)
    a = [alpha_at(s, 100, kind="wsd_alpha", **kw) for s in (0, 5, 10, 50, 90, 99)]
    b = [alpha_at(s, 100, kind="wsd_beta", **kw) for s in (0, 5, 10, 50, 90, 99)]
    assert a == [approx(v) for v in (0.0, 0.45, 0.9, 0.9, 0.9, 0.0)]
    assert b == [approx(v) for v in (0.9, 0.45, 0.0, 0.0, 0.0, 0.9)]


@pytest.mark.parametrize("shape,step,want", [
    ("square", 0, 0.9), ("square", 9, 0.9), ("square", 10, 0.2), ("square", 19, 0.2), ("square", 20, 0.9),
    ("triangle", 0, 0.9), ("triangle", 5, 0.55), ("triangle", 10, 0.2), ("triangle", 15, 0.55),
    ("triangle", 20, 0.9),
])
def test_period(shape, step, want):
    got = alpha_at(step, TOTAL, kind="period", alpha=0.9, alpha_min=0.2, period_steps=20, period_shape=shape)
    assert got == approx(want)


@pytest.mark.parametrize("kind", ALPHA_KINDS)
def test_alpha_in_range(kind):
    kw = {"period_steps": 7} if kind == "period" else {}
    vals = [alpha_at(s, TOTAL, kind=kind, alpha=0.8, alpha_min=0.3, **kw) for s in range(TOTAL)]
    assert all(0.3 - 1e-12 <= v <= 0.8 + 1e-12 for v in vals)


@pytest.mark.parametrize("kwargs,match", [
    ({"kind": "cosine"}, "linear_inc"),
    ({"alpha": 1.2}, "alpha must be in"),
    ({"kind": "linear_inc", "alpha": 0.2, "alpha_min": 0.5}, "alpha_min"),
    ({"kind": "period"}, "period_steps is required"),
    ({"kind": "period", "period_steps": 1}, "period_steps must be"),
    ({"kind": "constant", "period_steps": 10}, "only used by kind period"),
    ({"kind": "period", "period_steps": 10, "period_shape": "sine"}, "square, triangle"),
    ({"kind": "wsd_alpha", "stable_frac": 0.5, "decay_frac": 0.1}, "not both"),
    ({"kind": "wsd_alpha", "warmup_frac": 0.7, "decay_frac": 0.5}, "do not fit"),
])
def test_alpha_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlphaScheduleConfig(**kwargs).at(3, TOTAL)


def test_alpha_config():
    cfg = AlphaScheduleConfig(kind="wsd_alpha", alpha=0.9)
    assert cfg.at(0, 100) == 0.0
    assert cfg.at(50, 100) == approx(0.9)
    assert AlphaScheduleConfig(kind="constant", alpha=0.0).at(7, 10) == 0.0
    with pytest.raises(ValueError, match="period_steps"):
        AlphaScheduleConfig(kind="period")
