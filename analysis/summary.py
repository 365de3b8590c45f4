"""The run summary `pdspace run` ends with, and the per-run results table: read from the database.

Every number here comes from a run row (final `val_loss` = the held-out loss at a run's last
evaluation step); the tables name the trial ids they were computed from.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sqlalchemy import text

from analysis.tables import _label
from orchestrator.db import make_engine


def _frames(db_url: str, study: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    engine = make_engine(db_url, read_only=True)
    try:
        with engine.connect() as conn:
            runs = pd.read_sql(text(
                "SELECT sr.trial_id, sr.factor, sr.value, r.id AS run_id, r.kind, r.status, r.config, "
                "r.config_hash, r.duration_s, r.error FROM study_runs sr JOIN studies s ON s.id = sr.study_id "
                "JOIN runs r ON r.id = sr.run_id WHERE s.name = :study ORDER BY sr.id"), conn, params={"study": study})
            if runs.empty:
                exists = conn.execute(text("SELECT 1 FROM studies WHERE name = :s"), {"s": study}).first()
                if not exists:
                    raise ValueError(f"no study named {study!r} in the database")
            final = pd.read_sql(text(
                "SELECT m.run_id, m.name, m.value, m.step, m.tokens FROM metrics m JOIN "
                "(SELECT run_id, MAX(step) AS step FROM metrics WHERE name = 'val_loss' GROUP BY run_id) last "
                "ON last.run_id = m.run_id AND last.step = m.step "
                "WHERE m.name IN ('val_loss', 'teacher_kl', 'top1_agreement')"), conn)
            evals = pd.read_sql(text(
                "SELECT e.run_id, e.task, e.metric, e.value, e.stderr, e.step FROM evals e JOIN "
                "(SELECT run_id, MAX(step) AS step FROM evals GROUP BY run_id) last "
                "ON last.run_id = e.run_id AND last.step = e.step"), conn)
    finally:
        engine.dispose()
    import json

    runs["config"] = runs["config"].map(lambda c: json.loads(c) if isinstance(c, str) else c)
    wide = final.pivot_table(index="run_id", columns="name", values="value", aggfunc="first")
    runs = runs.merge(wide, left_on="run_id", right_index=True, how="left")
    return runs, evals


def results_table(db_url: str, study: str) -> pd.DataFrame:
    """One row per trial: id, kind, status, student/teacher/seed/tokens/α/kd, final metrics, evals."""
    runs, evals = _frames(db_url, study)
    out = pd.DataFrame({
        "trial_id": runs["trial_id"], "kind": runs["kind"], "status": runs["status"],
        "student": runs["config"].map(lambda c: c.get("student") or c.get("size")),
        "teacher": runs["config"].map(lambda c: c.get("teacher")),
        "seed": runs["config"].map(lambda c: c.get("seed")),
        "tokens": runs["config"].map(lambda c: c.get("tokens") or c.get("num_tokens")),
        "alpha": runs["config"].map(lambda c: (c.get("alpha_schedule") or {}).get("alpha")),
        "kd": runs["config"].map(lambda c: (c.get("kd") or {}).get("kind")),
    })
    for col in ("val_loss", "teacher_kl", "top1_agreement"):
        if col in runs:
            out[col] = runs[col].round(4)
    if not evals.empty:
        acc = evals[evals["metric"].isin(["acc", "acc_norm", "exact_match"])]
        wide = acc.pivot_table(index="run_id", columns="task", values="value", aggfunc="first").round(4)
        out = out.join(runs[["run_id"]]).merge(wide, left_on="run_id", right_index=True, how="left")
        out = out.drop(columns="run_id")
    out["duration_s"] = runs["duration_s"].round(1)
    out["config_hash"] = runs["config_hash"].str[:10]
    return out


def paired_gains(db_url: str, study: str) -> pd.DataFrame:
    """Per KD trial group (trial id without its seed): LM and PD held-out losses paired by seed."""
    runs, _ = _frames(db_url, study)
    if "val_loss" not in runs:
        return pd.DataFrame()
    by_hash = runs.drop_duplicates("config_hash").set_index("config_hash")
    rows = []
    for _, r in runs[runs["kind"] == "student"].iterrows():
        bh = r["config"].get("baseline_hash")
        if not bh or bh not in by_hash.index:
            continue
        pd_loss, lm_loss = r.get("val_loss"), by_hash.loc[bh].get("val_loss")
        if pd.isna(pd_loss) or pd.isna(lm_loss):
            continue
        group = _label(r["trial_id"])
        rows.append({"group": group, "student": r["config"]["student"], "seed": r["config"]["seed"],
                     "trial_id": r["trial_id"], "baseline_trial_id": by_hash.loc[bh]["trial_id"],
                     "lm": float(lm_loss), "pd": float(pd_loss), "gain": float(lm_loss) - float(pd_loss)})
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
