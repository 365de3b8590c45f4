"""results.attach_baseline: the one PD-vs-baseline pairing (summary, Δ tables and findings use it)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from results import attach_baseline


def _frame(rows):
    return pd.DataFrame(rows, columns=["trial_id", "config_hash", "baseline_hash", "step", "loss"])


def test_pairs_each_run_with_its_baselines_value():
    f = _frame([("lm", "b", None, 2, 5.0), ("pd", "p", "b", 2, 4.5), ("orphan", "o", "gone", 2, 4.0),
                ("pd again", "p", "b", 2, 4.5)])
    out = attach_baseline(f, "loss")
    assert np.isnan(out["baseline_loss"][0]) and out["baseline_loss"][1] == 5.0 and out["baseline_loss"][3] == 5.0
    assert np.isnan(out["baseline_loss"][2])  # its baseline is not in the frame
    assert out["baseline_trial_id"].isna().tolist() == [True, False, True, False]
    assert out["baseline_trial_id"][1] == out["baseline_trial_id"][3] == "lm"
    assert list(f.columns) == ["trial_id", "config_hash", "baseline_hash", "step", "loss"]  # input untouched


def test_same_step_else_the_baselines_last():
    f = _frame([("lm", "b", None, 1, 6.0), ("lm", "b", None, 2, 5.0),
                ("pd", "p", "b", 1, 5.5), ("pd", "p", "b", 2, 4.5), ("pd", "p", "b", 3, 4.0)])
    out = attach_baseline(f, "loss", on="step", out="lm")
    assert out["lm"].tolist()[2:] == [6.0, 5.0, 5.0]  # step 3: the baseline's last (step 2)
    strict = attach_baseline(f, "loss", on="step", fallback_last=False)
    assert np.isnan(strict["baseline_loss"].iloc[4])


def test_without_a_baseline_column_nothing_is_paired():
    f = pd.DataFrame({"trial_id": ["a"], "config_hash": ["a"], "loss": [1.0]})
    out = attach_baseline(f, "loss")
    assert np.isnan(out["baseline_loss"].iloc[0]) and out["baseline_trial_id"].isna().all()
