"""The PD-vs-baseline pairing: each run matched with its LM-only baseline, the run whose
config_hash equals the run's `baseline_hash` (same student, data, tokens, LR schedule and seed).
The one place that pairs them: the run summary, the Δ tables and the findings all call it."""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["attach_baseline"]


def attach_baseline(frame: pd.DataFrame, value: str, *, on: str | None = None, fallback_last: bool = True,
                    out: str | None = None) -> pd.DataFrame:
    """A copy of ``frame`` with its baseline's ``value`` and trial id on every row.

    frame: rows of runs (PD runs and their baselines together) with columns config_hash,
    trial_id, ``value``, ``baseline_hash`` (missing or None: no baseline) and, when ``on`` is
    given, ``on``. Adds:
      ``out`` (default ``baseline_<value>``): the baseline's value; with ``on`` (e.g. "step" or
        "tokens") its value at the same ``on``, else (``fallback_last``) at its largest ``on``;
        NaN when the run has no baseline, or its baseline is not in ``frame``;
      ``baseline_trial_id``: the baseline's (first) trial id in ``frame``.
    The baseline's rows are the first per (config_hash, ``on``).
    """
    out = out or f"baseline_{value}"
    df = frame.copy()
    bh = df["baseline_hash"] if "baseline_hash" in df else pd.Series(None, index=df.index, dtype=object)
    keys = ["config_hash"] + ([on] if on else [])
    base = df[keys + [value]].drop_duplicates(keys)
    if on:
        same = (pd.DataFrame({"baseline_hash": bh.to_numpy(), on: df[on].to_numpy()})
                .merge(base.rename(columns={"config_hash": "baseline_hash", value: "_same"}),
                       on=["baseline_hash", on], how="left")["_same"].to_numpy().astype(float))
        last = base.loc[base.groupby("config_hash")[on].idxmax()].set_index("config_hash")[value]
    else:
        same = np.full(len(df), np.nan)
        last = base.set_index("config_hash")[value]
    fallback = bh.map(last).to_numpy(dtype=float) if fallback_last else np.full(len(df), np.nan)
    df[out] = np.where(np.isnan(same), fallback, same)
    df.loc[bh.isna().to_numpy(), out] = np.nan
    trial_of = df.drop_duplicates("config_hash").set_index("config_hash")["trial_id"]
    df["baseline_trial_id"] = bh.map(lambda h: trial_of.get(h) if isinstance(h, str) else None)
    return df
