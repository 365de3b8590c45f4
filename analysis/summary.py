"""The run summary `pdspace run` ends with: PD vs LM-only on held-out loss, paired by seed, read
through the results package.

Every number here comes from a run row (final `val_loss` = the held-out loss at a run's last
evaluation step); the table names the trial ids it was computed from. (`pdspace results`' per-run
table is results.results_frame.)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.tables import _label
from results import attach_baseline, final_run_metrics


def paired_gains(db_url: str, study: str) -> pd.DataFrame:
    """Per KD trial group (trial id without its seed): LM and PD held-out losses paired by seed."""
    runs = final_run_metrics(db_url, study)
    if "val_loss" not in runs:
        return pd.DataFrame()
    runs = runs.assign(baseline_hash=runs["config"].map(lambda c: c.get("baseline_hash")))
    paired = attach_baseline(runs, "val_loss", out="lm")
    rows = []
    for _, r in paired[paired["kind"] == "student"].iterrows():
        if pd.isna(r["val_loss"]) or pd.isna(r["lm"]):
            continue
        rows.append({"group": _label(r["trial_id"]), "student": r["config"]["student"], "seed": r["config"]["seed"],
                     "trial_id": r["trial_id"], "baseline_trial_id": r["baseline_trial_id"],
                     "lm": float(r["lm"]), "pd": float(r["val_loss"]),
                     "gain": float(r["lm"]) - float(r["val_loss"])})
    return pd.DataFrame(rows)


def loss_comparison(db_url: str, study: str) -> str:
    """The table `pdspace run` prints at the end: PD vs LM-only on held-out loss, paired by seed."""
    pairs = paired_gains(db_url, study)
    if pairs.empty:
        return f"study {study}: no finished KD run with a finished LM-only baseline to compare yet."
    lines = [f"PD vs LM-only, study {study}: held-out cross-entropy (nats/token, lower is better), "
             "paired by seed (mean ± sd over seeds)"]
    w = max(28, *(len(g) for g in pairs["group"]))  # whole trial names: truncated ones can be ambiguous
    header = f"{'trial':<{w}} {'seeds':>5} {'LM-only':>15} {'PD':>15} {'gain LM-PD':>16} {'gain %':>7}  verdict"
    lines += [header, "-" * len(header)]

    def ms(x: pd.Series) -> str:
        return f"{x.mean():.3f} ± {x.std(ddof=1):.3f}" if len(x) > 1 else f"{x.mean():.3f}"

    for group, g in pairs.groupby("group", sort=False):
        gain = g["gain"]
        sd = gain.std(ddof=1) if len(g) > 1 else np.nan
        if len(g) < 2:
            verdict = "PD better (1 seed)" if gain.mean() > 0 else "LM better (1 seed)"
        elif gain.mean() > 0 and gain.mean() > sd:
            verdict = "PD better: gain > seed-pair spread"
        elif gain.mean() < 0 and -gain.mean() > sd:
            verdict = "LM better: loss > seed-pair spread"
        else:
            verdict = "within noise"
        lines.append(f"{group:<{w}} {len(g):>5} {ms(g['lm']):>15} {ms(g['pd']):>15} "
                     f"{('+' if gain.mean() >= 0 else '') + ms(gain):>16} {100 * gain.mean() / g['lm'].mean():>+6.1f}%  {verdict}")
    lines.append("(runs: `pdspace results " + study + "`; every number above is a val_loss row in the metrics table)")
    return "\n".join(lines)
