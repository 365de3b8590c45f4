"""Scaling-law fits of one study: which loss points go into which fit (SCALING.md §4).

Points are held-out losses (`val_loss`, nats/token) at every evaluation of a run, intermediate ones
included, minus the earliest `drop_fraction` of each run's tokens. N is the run's recorded
non-embedding parameter count (`num_non_embedding_params`, else `num_params`, else a count in the
student's name such as "1.9B"); D the tokens seen at the evaluation. Downstream scores never enter.

Bootstrap intervals resample runs, not evaluation points (a cluster bootstrap: a run's
evaluations share its seed and move together, so resampling them one by one would treat them as
independent and narrow the interval); the distillation law's refits both of its stages.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from results import Results
from analysis.scaling import (FitResult, fit_chinchilla, fit_distillation_law, fit_power_law,
                              fit_supervised_law)
from analysis.tables import run_info

__all__ = ["GroupFit", "loss_points", "power_law_fits", "chinchilla_fits", "distillation_fits",
           "teacher_losses", "fit_study", "LAWS", "Law", "law", "get_law"]

MIN_SIZES = 5  # SCALING.md: at least 5 sizes per curve


@dataclass(frozen=True)
class Law:
    """A scaling law a study can be fitted to: `pdspace fit --law NAME`, the report's fit section."""

    name: str
    formula: str
    """The formula as plain text (`pdspace fit`)."""
    title: str
    """The report's heading (HTML)."""
    fit: Callable[..., list["GroupFit"]]
    """fit(results, *, bootstrap, seed) -> one GroupFit per group of runs."""


LAWS: dict[str, Law] = {}
"""The laws by name, in report order; add one with @law."""


def law(name: str, formula: str, title: str):
    """Register a function fit(results, *, bootstrap=0, seed=0) -> [GroupFit] as a law."""

    def register(fn):
        if name in LAWS:
            raise ValueError(f"law {name!r} is registered twice")
        LAWS[name] = Law(name, formula, title, fn)
        return fn

    return register


@dataclass(frozen=True)
class GroupFit:
    """One fit of one group of runs: its points, the result (None when it could not be fitted),
    and a note (why not, or a caveat such as too few sizes)."""

    law: str
    group: str
    points: pd.DataFrame
    result: FitResult | None
    note: str = ""


def loss_points(results: Results, *, drop_fraction: float = 0.25, metric: str = "val_loss") -> pd.DataFrame:
    """Every evaluation of `metric` with its run's info: columns of run_info plus step, D (tokens
    seen), L (the loss), final (the run's last evaluation). Evaluations before drop_fraction of a
    run's budget are dropped (the final one is always kept)."""
    info = run_info(results)
    m = results.metrics
    if m.empty or info.empty:
        return pd.DataFrame(columns=list(info.columns) + ["step", "D", "L", "final"])
    m = m[(m["name"] == metric) & m["value"].notna() & m["run_id"].isin(info["run_id"])]
    df = info.drop_duplicates("run_id").merge(
        m[["run_id", "step", "tokens", "value"]].rename(columns={"tokens": "D", "value": "L"}), on="run_id")
    df["final"] = df["step"] == df.groupby("run_id")["step"].transform("max")
    budget = df["tokens_budget"].where(df["tokens_budget"].notna(), df.groupby("run_id")["D"].transform("max"))
    keep = df["final"] | (df["D"] >= drop_fraction * budget)
    return df[keep & (df["D"] > 0) & (df["L"] > 0)].reset_index(drop=True)


def _groups(points: pd.DataFrame) -> dict[str, pd.DataFrame]:
    out: dict[str, pd.DataFrame] = {}
    lm = points[points["is_lm"]]
    if not lm.empty:
        out["LM-only"] = lm
    pd_ = points[~points["is_lm"] & points["is_vanilla"]]
    for teacher, sub in pd_.groupby("teacher", sort=False):
        out[f"PD ({teacher})"] = sub
    return out


@law("power", "L(N) = E + A·N^(−alpha)", "Power law L(N) = E + A·N<sup>−α</sup> (final losses)")
def power_law_fits(results: Results, *, bootstrap: int = 0, seed: int = 0) -> list[GroupFit]:
    """L(N) = E + A·N^(-alpha) on the final losses of LM-only runs and of vanilla PD per teacher."""
    pts = loss_points(results)
    pts = pts[pts["final"]]
    out = []
    for group, sub in _groups(pts).items():
        sub = sub[np.isfinite(sub["num_params"].astype(float))]
        sizes = sub["num_params"].nunique()
        if len(sub) < 4 or sizes < 2:
            out.append(GroupFit("power", group, sub, None,
                                f"needs at least 4 runs over 2+ sizes with a parameter count; has {len(sub)} "
                                f"over {sizes}"))
            continue
        res = fit_power_law(sub["num_params"].to_numpy(float), sub["L"].to_numpy(float),
                            bootstrap=bootstrap, seed=seed, groups=sub["run_id"].to_numpy())
        note = f"only {sizes} sizes (SCALING.md asks for at least {MIN_SIZES})" if sizes < MIN_SIZES else ""
        out.append(GroupFit("power", group, sub, res, note))
    return out


@law("chinchilla", "L(N, D) = E + A/N^alpha + B/D^beta",
     "Chinchilla L(N, D) = E + A/N<sup>α</sup> + B/D<sup>β</sup> (evaluations past 25% of each run)")
def chinchilla_fits(results: Results, *, bootstrap: int = 0, seed: int = 0, drop_fraction: float = 0.25,
                    groups: tuple[str, ...] | None = None) -> list[GroupFit]:
    """L(N, D) = E + A/N^alpha + B/D^beta on LM-only runs' evaluations and on vanilla PD's per
    teacher (groups: only these, e.g. ("LM-only",))."""
    pts = loss_points(results, drop_fraction=drop_fraction)
    out = []
    for group, sub in _groups(pts).items():
        if groups is not None and group not in groups:
            continue
        sub = sub[np.isfinite(sub["num_params"].astype(float))]
        sizes = sub["num_params"].nunique()
        if len(sub) < 6 or sizes < 2 or sub["D"].nunique() < 2:
            out.append(GroupFit("chinchilla", group, sub, None,
                                f"needs at least 6 points over 2+ sizes and 2+ token counts; has {len(sub)} "
                                f"points over {sizes} sizes"))
            continue
        res = fit_chinchilla(sub["num_params"].to_numpy(float), sub["D"].to_numpy(float),
                             sub["L"].to_numpy(float), bootstrap=bootstrap, seed=seed,
                             groups=sub["run_id"].to_numpy())
        note = f"only {sizes} sizes (SCALING.md asks for at least {MIN_SIZES})" if sizes < MIN_SIZES else ""
        out.append(GroupFit("chinchilla", group, sub, res, note))
    return out


def teacher_losses(results: Results, metric: str = "val_loss") -> dict[str, float]:
    """Teacher name -> its final held-out loss, from teacher runs in the study (config "name")."""
    runs = results.runs
    if runs.empty or "name" not in runs.columns:
        return {}
    teachers = runs[runs["kind"] == "teacher"]
    m = results.metrics
    out = {}
    for _, t in teachers.iterrows():
        mm = m[(m["run_id"] == t["run_id"]) & (m["name"] == metric) & m["value"].notna()]
        if not mm.empty:
            out[str(t["name"])] = float(mm.loc[mm["step"].idxmax(), "value"])
    return out


@law("distillation", "supervised L(N, D) = E + (A/N^alpha + B/D^beta)^gamma; distilled L_S(N, D, L_T) "
                     "(Busbridge et al. 2025)",
     "Distillation law (Busbridge et al. 2025): supervised law, then distilled")
def distillation_fits(results: Results, *, bootstrap: int = 0, seed: int = 0,
                      drop_fraction: float = 0.25) -> list[GroupFit]:
    """The supervised law on LM-only evaluations, then the distillation law on PD evaluations with
    each teacher's own final loss as L_T (SCALING.md §3); its bootstrap refits both stages on
    resampled runs."""
    pts = loss_points(results, drop_fraction=drop_fraction)
    pts = pts[np.isfinite(pts["num_params"].astype(float))]
    lm = pts[pts["is_lm"]]
    if len(lm) < 7:
        return [GroupFit("distillation", "supervised", lm, None,
                         f"the supervised law needs at least 7 LM-only points with a parameter count; has {len(lm)}")]
    sup = fit_supervised_law(lm["num_params"].to_numpy(float), lm["D"].to_numpy(float), lm["L"].to_numpy(float),
                             bootstrap=bootstrap, seed=seed, groups=lm["run_id"].to_numpy())
    out = [GroupFit("distillation", "supervised", lm, sup)]
    lt = teacher_losses(results)
    kd = pts[~pts["is_lm"]].assign(L_T=lambda d: d["teacher"].map(lt))
    kd = kd[kd["L_T"].notna()]
    if len(kd) < 10:
        out.append(GroupFit("distillation", "distilled", kd, None,
                            f"needs at least 10 PD points whose teacher's own val_loss is recorded; has {len(kd)}"))
        return out
    res = fit_distillation_law(kd["num_params"].to_numpy(float), kd["D"].to_numpy(float),
                               kd["L_T"].to_numpy(float), kd["L"].to_numpy(float), supervised=sup,
                               bootstrap=bootstrap, seed=seed, groups=kd["run_id"].to_numpy())
    out.append(GroupFit("distillation", "distilled", kd, res))
    return out


def fit_study(results: Results, law: str, *, bootstrap: int = 0, seed: int = 0) -> list[GroupFit]:
    """Fit the registered law ``law`` (LAWS) to a study's runs."""
    return get_law(law).fit(results, bootstrap=bootstrap, seed=seed)


def get_law(name: str) -> Law:
    """The registered law ``name``; ValueError naming the known ones (and a close match)."""
    if name not in LAWS:
        import difflib

        close = difflib.get_close_matches(name, list(LAWS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown law {name!r}{hint}; expected one of {', '.join(LAWS)}")
    return LAWS[name]
