"""The paper's findings (PAPER.md "Findings"), checked one by one against a suite of our own runs.

    from analysis.findings import check_findings
    findings = check_findings({"mini_preliminary": results, "mini_top_k": ..., ...})

Each study is recognised by its name without the prefix ("mini_top_k" and "paper_top_k" are both
"top_k"), so the same checks read the CPU mini suite and a GPU-scale rerun of studies/paper/.

The measure is the held-out loss gain of a PD run over its matching LM-only baseline (same student,
data, tokens, LR schedule and seed): gain % = 100 (L_LM - L_PD) / L_LM, from the final `val_loss`
row of each run. (The paper's Δ is on benchmark averages; at CPU scale our benchmark scores sit
near chance and their 200-example noise is larger than any effect, so the held-out loss is the
measure that can tell; the benchmark Δ is in each study's table.)

Intervals are 95 %:
- a condition run with several seeds: mean ± t · sd / sqrt(n) of its paired per-seed gains;
- a condition run with one seed: ± z · sigma_seed, where sigma_seed is the seed-to-seed sd of a
  paired gain pooled over every multi-seed condition in the suite;
- a contrast between two conditions at the same seed: ± z · sqrt(2) · sigma_eps, where sigma_eps
  is the residual sd of a condition × seed two-way layout pooled over the multi-seed studies
  (the seed's shared part, e.g. its data order and baseline, cancels in such a contrast).

A verdict says "reproduced" when the interval lies on the paper's side, "not reproduced" when it
lies on the other side, and "within noise" when it straddles the line. Every verdict names the
trial ids it was computed from.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from results import Results, attach_baseline, final_losses
from analysis.tables import _label, parse_param_count

__all__ = ["Finding", "Noise", "NoiseBook", "noise_book", "check_findings", "factorial_effects", "pd_pairs", "estimate_noise", "findings_frame", "study_key",
           "gains_over_training"]

REPRODUCED, NOT_REPRODUCED, WITHIN_NOISE, NOT_RUN = "reproduced", "not reproduced", "within noise", "not run"
Z = 1.959963984540054


@dataclass
class Finding:
    """One finding: the paper's claim and number, ours (text), the 95 % interval, the verdict and
    the trial ids (study: trial, ...) it was computed from."""

    key: str
    claim: str
    paper: str
    ours: str = ""
    interval: str = ""
    verdict: str = NOT_RUN
    evidence: list[str] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class Noise:
    """Seed noise of a paired gain (in % points): sigma_seed (one condition's gain, seed to seed)
    and sigma_eps (the residual of a condition × seed layout), with their degrees of freedom."""

    sigma_seed: float
    dof_seed: int
    sigma_eps: float
    dof_eps: int

    def single(self) -> float:
        """Half-width of the 95 % interval of a one-seed gain."""
        return Z * self.sigma_seed if self.dof_seed else float("nan")

    def contrast(self) -> float:
        """Half-width of the 95 % interval of a difference between two one-seed conditions at one seed."""
        return Z * math.sqrt(2.0) * self.sigma_eps if self.dof_eps else float("nan")


@dataclass(frozen=True)
class NoiseBook(Noise):
    """The suite's noise: pooled over every student (the fields), and per student size, since seed
    noise grows with it at CPU scale (d128l4's paired gains spread ~10× d64l3's). A condition's
    interval uses its own student's noise where that student has multi-seed runs (sigma_eps
    falls back to its sigma_seed), else the pooled one."""

    by_student: dict = field(default_factory=dict, compare=False)

    def for_rows(self, rows: pd.DataFrame) -> Noise:
        students = set(rows["student"]) if "student" in rows else set()
        if len(students) == 1:
            own = self.by_student.get(next(iter(students)))
            if own is not None and own.dof_seed >= 2:
                if own.dof_eps >= 2:
                    return Noise(own.sigma_seed, own.dof_seed, own.sigma_eps, own.dof_eps)
                return Noise(own.sigma_seed, own.dof_seed, own.sigma_seed, own.dof_seed)
        return Noise(self.sigma_seed, self.dof_seed, self.sigma_eps, self.dof_eps)


def noise_book(pairs: pd.DataFrame) -> NoiseBook:
    pooled = estimate_noise(pairs)
    per = {s: estimate_noise(g) for s, g in pairs.groupby("student")} if not pairs.empty else {}
    return NoiseBook(pooled.sigma_seed, pooled.dof_seed, pooled.sigma_eps, pooled.dof_eps, per)


def _noise_for(noise: Noise, *frames: pd.DataFrame) -> Noise:
    if isinstance(noise, NoiseBook):
        return noise.for_rows(pd.concat(frames, ignore_index=True))
    return noise


def study_key(name: str) -> str:
    """'mini_top_k' -> 'top_k', 'paper_student_size' -> 'student_size'; other names unchanged."""
    head, _, rest = str(name).partition("_")
    return rest if head in ("mini", "paper") and rest else str(name)


def _col(runs: pd.DataFrame, name: str, default=np.nan) -> pd.Series:
    return runs[name] if name in runs else pd.Series(default, index=runs.index)


def pd_pairs(results: Results) -> pd.DataFrame:
    """One row per completed PD run with a completed LM-only baseline in the study: the trial, its
    group (trial id without the seed), its knobs, the two final held-out losses and the gain (%)."""
    cols = ["study", "trial_id", "config_hash", "baseline_trial_id", "group", "seed", "student", "num_params",
            "teacher", "tokens", "loss", "top_p", "top_k", "temperature", "adaptive", "normalization", "alpha_kind",
            "alpha", "lr_kind", "source", "window", "lm", "pd", "gain_pct"]
    runs = results.runs
    if runs.empty or results.metrics.empty:
        return pd.DataFrame(columns=cols)
    final = final_losses(results).drop_duplicates("run_id").set_index("config_hash")["val_loss"]
    paired = attach_baseline(runs.assign(val_loss=runs["config_hash"].map(final)), "val_loss", out="lm")
    st = paired[(paired["kind"] == "student") & (paired["status"] == "completed")]
    out = pd.DataFrame({
        "study": results.study, "trial_id": st["trial_id"], "group": st["trial_id"].map(_label),
        "seed": _col(st, "seed"), "student": _col(st, "student"),
        "num_params": _col(st, "num_non_embedding_params"), "teacher": _col(st, "teacher"),
        "tokens": _col(st, "tokens"), "loss": _col(st, "kd.kind"), "top_p": _col(st, "logits.top_p"),
        "top_k": _col(st, "logits.top_k"), "temperature": _col(st, "kd.temperature"),
        "adaptive": _col(st, "kd.adaptive"), "normalization": _col(st, "kd.normalization"),
        "alpha_kind": _col(st, "alpha_schedule.kind"), "alpha": _col(st, "alpha_schedule.alpha"),
        "lr_kind": _col(st, "lr_schedule.kind"), "source": _col(st, "logits.source"),
        "window": _col(st, "logits.window"),
        "pd": st["val_loss"], "lm": st["lm"], "baseline_trial_id": st["baseline_trial_id"],
    })
    out["config_hash"] = st["config_hash"]
    out = out[out["pd"].notna() & out["lm"].notna()].copy()
    out["gain_pct"] = 100.0 * (out["lm"] - out["pd"]) / out["lm"]
    # a run two trial ids name (a study's "base" and its sweep point with the base's value) counts once,
    # under the more specific id
    out = out.drop_duplicates("config_hash", keep="last")
    return out[cols].reset_index(drop=True)


def estimate_noise(pairs: pd.DataFrame) -> Noise:
    """Pool the seed noise of the paired gains over every multi-seed condition (see the module
    docstring); zeros with dof 0 when no condition has two seeds."""
    ss_seed, dof_seed, ss_eps, dof_eps = 0.0, 0, 0.0, 0
    if not pairs.empty:
        multi = pairs.groupby(["study", "group"]).filter(lambda g: g["seed"].nunique() >= 2)
        for _, g in multi.groupby(["study", "group"]):
            x = g["gain_pct"].to_numpy(float)
            ss_seed += float(((x - x.mean()) ** 2).sum())
            dof_seed += len(x) - 1
        for _, s in multi.groupby("study"):
            table = s.pivot_table(index="group", columns="seed", values="gain_pct", aggfunc="mean")
            table = table.dropna(axis=1, thresh=max(2, int(0.5 * len(table))))  # seeds most groups have
            table = table.dropna(axis=0)
            if table.shape[0] < 2 or table.shape[1] < 2:
                continue
            x = table.to_numpy(float)
            r = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
            ss_eps += float((r ** 2).sum())
            dof_eps += (x.shape[0] - 1) * (x.shape[1] - 1)
    return Noise(math.sqrt(ss_seed / dof_seed) if dof_seed else float("nan"), dof_seed,
                 math.sqrt(ss_eps / dof_eps) if dof_eps else float("nan"), dof_eps)


def _t(dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, dof)) if dof > 0 else float("nan")


@dataclass(frozen=True)
class _Est:
    """A gain (or a contrast of gains) in % points with its 95 % half-width and how it was had."""

    mean: float
    half: float
    n: int
    how: str

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half

    def text(self) -> str:
        return f"{self.mean:+.2f}%"

    def interval(self) -> str:
        if not np.isfinite(self.half):
            return f"n={self.n}, no interval"
        return f"[{self.lo:+.2f}, {self.hi:+.2f}] ({self.how})"


def _gain(rows: pd.DataFrame, noise: Noise) -> _Est:
    """The gain of one condition: over seeds when it has several, else with the pooled seed noise."""
    noise = _noise_for(noise, rows)
    x = rows["gain_pct"].to_numpy(float)
    if len(x) >= 2:
        return _Est(float(x.mean()), _t(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x)), len(x),
                    f"{len(x)} seeds, t interval")
    return _Est(float(x[0]), noise.single(), 1, f"1 seed, ± z·σ_seed, σ_seed={noise.sigma_seed:.2f}")


def _contrast(a: pd.DataFrame, b: pd.DataFrame, noise: Noise) -> _Est:
    """gain(a) - gain(b), paired by seed where both have 2+ common seeds, else with sigma_eps."""
    noise = _noise_for(noise, a, b)
    sa, sb = a.groupby("seed")["gain_pct"].mean(), b.groupby("seed")["gain_pct"].mean()
    common = sa.index.intersection(sb.index)
    if len(common) >= 2:
        d = (sa[common] - sb[common]).to_numpy(float)
        return _Est(float(d.mean()), _t(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d)), len(d),
                    f"{len(d)} paired seeds, t interval")
    if len(common) == 1:
        s = common[0]
        return _Est(float(sa[s] - sb[s]), noise.contrast(), 1,
                    f"seed {int(s)}, ± z·√2·σ_eps, σ_eps={noise.sigma_eps:.2f}")
    m = float(sa.mean() - sb.mean())
    half = math.hypot(_gain(a, noise).half, _gain(b, noise).half)
    return _Est(m, half, 1, "unpaired seeds, both intervals combined")


def _side(est: _Est, sign: int = 1, *, margin: float = 0.0) -> str:
    """Reproduced when the interval lies beyond `margin` on the `sign` side (+1: above)."""
    lo, hi = (est.lo - margin, est.hi - margin) if sign > 0 else (-(est.hi - margin), -(est.lo - margin))
    if not np.isfinite(est.half):
        return WITHIN_NOISE
    if lo > 0:
        return REPRODUCED
    if hi < 0:
        return NOT_REPRODUCED
    return WITHIN_NOISE


def _ev(rows: pd.DataFrame) -> list[str]:
    return [f"{s}: {t}" for s, t in zip(rows["study"], rows["trial_id"])]


def _is(col: pd.Series, value) -> pd.Series:
    return col.astype(float).sub(float(value)).abs().lt(1e-9)


def _fmt_series(d: Mapping, unit: str = "%") -> str:
    return ", ".join(f"{k}: {v:+.2f}{unit}" for k, v in d.items())


# ------------------------------------------------------------------------------------------------
# The findings. Each check gets {study key: pairs frame} and the noise, and fills a Finding.
# ------------------------------------------------------------------------------------------------

def _vanilla_pd(P, noise, f: Finding):
    pairs = P["preliminary"]
    van = pairs[_is(pairs["alpha"], 1.0) & (pairs["normalization"] == "renormalize")]
    if van.empty:
        f.note = "the preliminary study has no α = 1 runs"
        return
    est = _gain(van, noise)
    f.ours, f.interval, f.verdict, f.evidence = f"α = 1: {est.text()}", est.interval(), _side(est), _ev(van)
    extra = []
    for a in sorted(set(pairs["alpha"].astype(float)) - {1.0}):
        e = _gain(pairs[_is(pairs["alpha"], a)], noise)
        extra.append(f"α = {a:g}: {e.text()} {e.interval()}")
    tail = pairs[pairs["normalization"] == "tail"]
    if not tail.empty:
        e = _gain(tail, noise)
        extra.append(f"α = 1 with a tail bucket: {e.text()} {e.interval()}")
    f.note = "; ".join(extra)


def _best(pairs: pd.DataFrame, col: str) -> tuple[float, pd.Series]:
    means = pairs.groupby(pairs[col].astype(float))["gain_pct"].mean().sort_index()
    return float(means.idxmax()), means


def _top_p(P, noise, f: Finding):
    pairs = P["top_p"]
    pairs = pairs[_is(pairs["top_k"], 100)]
    means = pairs.groupby(pairs["top_p"].astype(float))["gain_pct"].mean().sort_index()
    if len(means) < 2:
        f.note = "needs two or more top-p values at k = 100"
        return
    spread = float(means.max() - means.min())
    half = _noise_for(noise, pairs).contrast()
    f.ours = f"gain range over p = {spread:.2f} pts ({_fmt_series({f'p={k:g}': v for k, v in means.items()})})"
    f.interval = f"two one-seed conditions differ by up to ±{half:.2f} pts by noise alone"
    f.verdict = (REPRODUCED if spread <= half else NOT_REPRODUCED) if np.isfinite(half) else WITHIN_NOISE
    f.evidence = _ev(pairs)
    f.note = "reproduced when the best and worst p are within noise of each other"


def _best_is(f: Finding, pairs: pd.DataFrame, col: str, target: float, sym: str, noise) -> None:
    """A finding that `target` is the best value of `col`: reproduced when it has the largest mean
    gain beyond noise of the runner-up, not reproduced when another value beats it beyond noise."""
    if pairs[col].nunique() < 2:
        f.note = f"needs two or more {sym} values"
        return
    best, means = _best(pairs, col)
    f.ours = f"best {sym} = {best:g} ({_fmt_series({f'{sym}={k:g}': v for k, v in means.items()})})"
    f.evidence = _ev(pairs)
    if not (np.abs(means.index.to_numpy(float) - target) < 1e-9).any():
        f.note = f"{sym} = {target:g} was not run"
        return
    other = means.drop(best).idxmax() if best == target else best
    c = _contrast(pairs[_is(pairs[col], target)], pairs[_is(pairs[col], other)], noise)
    f.interval = f"gain({sym}={target:g}) - gain({sym}={other:g}) = {c.text()} {c.interval()}"
    if best == target:
        f.verdict = REPRODUCED if c.lo > 0 else WITHIN_NOISE
    else:
        f.verdict = NOT_REPRODUCED if c.hi < 0 else WITHIN_NOISE


def _top_k_best(P, noise, f: Finding):
    pairs = P["top_k"]
    _best_is(f, pairs[_is(pairs["top_p"], 0.95)], "top_k", 50.0, "k", noise)


def _top_k_one(P, noise, f: Finding):
    pairs = P["top_k"]
    _one_condition(f, pairs[_is(pairs["top_k"], 1)], noise, "k = 1", 1)


def _tau_low(P, noise, f: Finding):
    pairs = P["temperature"]
    low = pairs[pairs["temperature"].astype(float) <= 2.0]
    if low.empty:
        f.note = "no τ ≤ 2 runs"
        return
    ests = {t: _gain(g, noise) for t, g in low.groupby(low["temperature"].astype(float))}
    best = max(ests, key=lambda t: ests[t].mean)
    f.ours = f"best τ = {best:g}; " + ", ".join(f"τ={t:g}: {e.text()}" for t, e in sorted(ests.items()))
    lo = min(e.lo for e in ests.values())
    f.interval = f"lowest lower bound over τ ≤ 2: {lo:+.2f}% ({next(iter(ests.values())).how})"
    verdicts = {_side(e) for e in ests.values()}
    f.verdict = (REPRODUCED if verdicts == {REPRODUCED} else NOT_REPRODUCED if NOT_REPRODUCED in verdicts
                 else WITHIN_NOISE)
    f.evidence = _ev(low)
    f.note = "reproduced when every τ ≤ 2 helps beyond noise"


def _tau_high(P, noise, f: Finding):
    pairs = P["temperature"]
    high = pairs[pairs["temperature"].astype(float) >= 5.0]
    if high.empty:
        f.note = "no τ ≥ 5 runs"
        return
    ests = {t: _gain(g, noise) for t, g in high.groupby(high["temperature"].astype(float))}
    f.ours = ", ".join(f"τ={t:g}: {e.text()}" for t, e in sorted(ests.items()))
    f.interval = "; ".join(f"τ={t:g}: {e.interval()}" for t, e in sorted(ests.items()))
    # "gives nothing": reproduced when no τ ≥ 5 helps beyond noise
    helps = [e.lo > 0 for e in ests.values()]
    f.verdict = NOT_REPRODUCED if all(helps) else (REPRODUCED if not any(helps) else WITHIN_NOISE)
    f.evidence = _ev(high)


def _adaptive(P, noise, f: Finding):
    ada, fixed = P["adaptive_temperature"], P["temperature"]
    ada = ada[ada["adaptive"].notna() & (ada["adaptive"].astype(str) != "None")]
    if ada.empty or fixed.empty:
        f.note = "needs the adaptive_temperature and temperature studies"
        return
    a_means = ada.groupby("adaptive")["gain_pct"].mean()
    t_best, t_means = _best(fixed, "temperature")
    a_best = str(a_means.idxmax())
    c = _contrast(ada[ada["adaptive"] == a_best], fixed[_is(fixed["temperature"], t_best)], noise)
    f.ours = (f"best adaptive {a_best} {a_means.max():+.2f}% vs best fixed τ = {t_best:g} {t_means.max():+.2f}% "
              f"(" + _fmt_series(a_means.to_dict()) + ")")
    f.interval = f"best adaptive - best fixed = {c.text()} {c.interval()}"
    f.verdict = NOT_REPRODUCED if c.lo > 0 else REPRODUCED
    f.evidence = _ev(ada) + _ev(fixed[_is(fixed["temperature"], t_best)])
    f.note = "reproduced unless an adaptive τ beats the best fixed τ beyond noise"


def _losses(P, noise, f: Finding):
    pairs = P["kd_loss"]
    by = {k: g for k, g in pairs.groupby("loss")}
    if not {"kld", "nll"} <= set(by):
        f.note = "needs kld and nll runs"
        return
    g_nll, g_kld = _gain(by["nll"], noise), _gain(by["kld"], noise)
    c = _contrast(by["kld"], by["nll"], noise)
    f.ours = f"KLD {g_kld.text()}, NLL {g_nll.text()}; KLD - NLL = {c.text()}"
    f.interval = f"NLL: {g_nll.interval()}; KLD - NLL: {c.interval()}"
    nll_helps = _side(g_nll)
    kld_ge = NOT_REPRODUCED if c.hi < 0 else REPRODUCED
    f.verdict = (REPRODUCED if nll_helps == REPRODUCED and kld_ge == REPRODUCED
                 else NOT_REPRODUCED if NOT_REPRODUCED in (nll_helps, kld_ge) else WITHIN_NOISE)
    f.evidence = _ev(by["kld"]) + _ev(by["nll"])
    f.note = "reproduced when NLL beats LM-only and KLD is not worse than NLL beyond noise"
    if np.allclose(by["kld"].sort_values("seed")["pd"].to_numpy(float),
                   by["nll"].sort_values("seed")["pd"].to_numpy(float), rtol=0, atol=1e-9):
        f.note += ("; KLD and NLL runs are identical: with a fixed teacher they have the same gradient "
                   "and training is deterministic, so the paper's gap between them is noise")


def _one_condition(f: Finding, rows: pd.DataFrame, noise, label: str, sign: int) -> None:
    """A finding about one condition's gain: positive (sign 1) or negative (sign -1)."""
    if rows.empty:
        f.note = f"no {label} run"
        return
    est = _gain(rows, noise)
    f.ours, f.interval, f.verdict, f.evidence = f"{label}: {est.text()}", est.interval(), _side(est, sign), _ev(rows)


def _mse(P, noise, f: Finding):
    pairs = P["kd_loss"]
    _one_condition(f, pairs[pairs["loss"] == "mse"], noise, "MSE", -1)


def _alpha(P, noise, f: Finding):
    pairs = P["alpha"]
    _best_is(f, pairs[pairs["alpha_kind"] == "constant"], "alpha", 0.9, "α", noise)


def _beats(f: Finding, a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str, noise) -> None:
    """A finding that condition a gains more than condition b."""
    if a.empty or b.empty:
        f.note = f"needs {name_a} and {name_b} runs"
        return
    c = _contrast(a, b, noise)
    f.ours = f"{name_a} {a['gain_pct'].mean():+.2f}%, {name_b} {b['gain_pct'].mean():+.2f}%"
    f.interval = f"{name_a} - {name_b} = {c.text()} {c.interval()}"
    f.verdict, f.evidence = _side(c), _ev(a) + _ev(b)


def _kd_first(P, noise, f: Finding):
    pairs = P["schedules"]
    _beats(f, pairs[pairs["alpha_kind"] == "linear_dec"], pairs[pairs["alpha_kind"] == "linear_inc"],
           "KD-first (linear_dec)", "LM-first (linear_inc)", noise)


def _schedule_key(r) -> str:
    return f"{r['alpha_kind']} α + {r['lr_kind']} LR"


def _schedules(P, noise, f: Finding):
    pairs = P["schedules"]
    pd_runs = pairs[pairs["alpha"].astype(float) > 0]
    if pd_runs.empty:
        f.note = "no schedule runs"
        return
    pd_runs = pd_runs.assign(schedule=pd_runs.apply(_schedule_key, axis=1))
    means = pd_runs.groupby("schedule")["gain_pct"].mean().sort_values(ascending=False)
    best = str(means.index[0])
    target = "wsd_alpha α + wsd LR"
    f.ours = f"best: {best} ({_fmt_series(means.head(4).to_dict())}, …)"
    f.evidence = _ev(pd_runs)
    if target not in means.index:
        f.note = "WSD-α + WSD-LR was not run"
        return
    if best == target:
        second = str(means.index[1]) if len(means) > 1 else None
        f.verdict = REPRODUCED
        if second:
            c = _contrast(pd_runs[pd_runs["schedule"] == target], pd_runs[pd_runs["schedule"] == second], noise)
            f.interval = f"{target} - {second} = {c.text()} {c.interval()}"
            f.verdict = REPRODUCED if c.lo > 0 else WITHIN_NOISE
        return
    c = _contrast(pd_runs[pd_runs["schedule"] == best], pd_runs[pd_runs["schedule"] == target], noise)
    f.interval = f"{best} - {target} = {c.text()} {c.interval()}"
    f.verdict = NOT_REPRODUCED if c.lo > 0 else WITHIN_NOISE
    f.note = ("gains are against each run's own LM-only baseline (WSD-LR runs against the WSD-LR LM run), "
              "as the paper's Table 5 does")


def _schedules_align(P, noise, f: Finding):
    pairs = P["schedules"]
    wsd_a = pairs["alpha_kind"] == "wsd_alpha"
    _beats(f, pairs[wsd_a & (pairs["lr_kind"] == "wsd")], pairs[wsd_a & (pairs["lr_kind"] == "cosine")],
           "WSD-α + WSD-LR", "WSD-α + cosine LR", noise)


def _slope(x: np.ndarray, y: np.ndarray) -> _Est:
    """OLS slope of y on x with its t interval."""
    n = len(x)
    xc = x - x.mean()
    b = float((xc * (y - y.mean())).sum() / (xc ** 2).sum())
    resid = y - y.mean() - b * xc
    se = math.sqrt(float((resid ** 2).sum()) / (n - 2) / float((xc ** 2).sum())) if n > 2 else float("nan")
    return _Est(b, _t(n - 2) * se, n, f"OLS over {n} runs, t interval")


def _student_size(P, noise, f: Finding):
    pairs = P["student_size"]
    if pairs["student"].nunique() < 2:
        f.note = "needs two or more student sizes"
        return
    means = pairs.groupby("student", sort=False)[["gain_pct", "num_params"]].mean().sort_values("num_params")
    est = _slope(np.log10(pairs["num_params"].to_numpy(float)), pairs["gain_pct"].to_numpy(float))
    f.ours = (f"slope {est.mean:+.2f} pts per decade of N ("
              + _fmt_series(means["gain_pct"].to_dict()) + ")")
    f.interval, f.verdict, f.evidence = est.interval(), _side(est), _ev(pairs)


def _teacher_size(P, noise, f: Finding):
    pairs = P["teacher_size"]
    teachers = list(dict.fromkeys(pairs["teacher"]))
    if len(teachers) < 2:
        f.note = "needs two teachers"
        return
    sizes = P.get("_teacher_params", {})
    if all(t in sizes for t in teachers):
        teachers = sorted(teachers, key=lambda t: sizes[t])
    small, big = teachers[0], teachers[-1]  # by parameter count, else the study's order
    wide = pairs.pivot_table(index="student", columns="teacher", values="gain_pct", aggfunc="mean").dropna()
    d = (wide[big] - wide[small]).to_numpy(float)
    est = (_Est(float(d.mean()), _t(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d)), len(d),
                f"{len(d)} students, t interval") if len(d) >= 2 else _Est(float(d[0]), noise.contrast(), 1, "1 student"))
    f.ours = (f"{big} - {small} = {est.text()} averaged over students ("
              + ", ".join(f"{s}: {v:+.2f}" for s, v in zip(wide.index, d)) + ")")
    f.interval = est.interval()
    f.verdict = NOT_REPRODUCED if est.lo > 0 else REPRODUCED
    f.evidence = _ev(pairs)
    f.note = f"reproduced unless the bigger teacher ({big}) beats {small} beyond noise"


def gains_over_training(results: Results) -> pd.DataFrame:
    """Per PD run and evaluation: LM-only and PD held-out losses at the same tokens and the gain (%).
    Columns: trial_id, student, tokens, lm, pd, gain_pct."""
    cols = ["trial_id", "student", "tokens", "lm", "pd", "gain_pct"]
    m = results.metrics
    if m.empty:
        return pd.DataFrame(columns=cols)
    m = m[(m["name"] == "val_loss") & m["value"].notna()].drop_duplicates(["run_id", "step"])
    runs = results.runs.drop_duplicates("config_hash")
    info = runs[["config_hash", "trial_id", "kind", "status"]].assign(
        baseline_hash=_col(runs, "baseline_hash", None), student=_col(runs, "student", None))
    curves = m[["config_hash", "tokens", "value"]].merge(info, on="config_hash")
    paired = attach_baseline(curves, "value", on="tokens", fallback_last=False, out="lm")
    paired = paired[(paired["kind"] == "student") & (paired["status"] == "completed") & paired["lm"].notna()
                    & (paired["tokens"] > 0)]  # tokens 0: the evaluation before training, one initial model
    out = pd.DataFrame({"trial_id": paired["trial_id"], "student": paired["student"],
                        "tokens": paired["tokens"].astype(float), "lm": paired["lm"].astype(float),
                        "pd": paired["value"].astype(float)})
    out["gain_pct"] = 100.0 * (out["lm"] - out["pd"]) / out["lm"]
    return out[cols].sort_values(["trial_id", "tokens"]).reset_index(drop=True)


def _long(R, noise, f: Finding):
    res = R.get("long_training")
    curve = gains_over_training(res) if res is not None else pd.DataFrame()
    if curve.empty:
        f.note = "the long_training study has no paired evaluations"
        return
    parts, verdicts, halves = [], [], []
    for student, g in curve.groupby("student", sort=False):
        g = g.sort_values("tokens")
        half = _noise_for(noise, g[["student"]]).single()
        halves.append(f"{student} ± {half:.2f}")
        x, t = g["gain_pct"].to_numpy(float), g["tokens"].to_numpy(float)
        positive = bool((x[1:] - half > 0).all()) if len(x) > 1 else bool(x[0] - half > 0)
        peak = int(np.argmax(x))
        grows = peak > 0 and x[peak] - x[0] > half
        levels = x[-1] >= x[peak] - half  # the end is within noise of the peak: no decline
        parts.append(f"{student}: " + ", ".join(f"{tt / 1e6:.2f}M {v:+.1f}%" for tt, v in zip(t, x))
                     + f" (peak {x[peak]:+.1f}% at {t[peak] / 1e6:.2f}M, end {x[-1]:+.1f}%)")
        verdicts.append(REPRODUCED if positive and grows and levels else
                        NOT_REPRODUCED if not positive or x[peak] - x[-1] > 2 * half else WITHIN_NOISE)
    f.ours = "; ".join(parts)
    f.interval = "each one-seed point " + ", ".join(halves) + " pts (z·σ_seed of that student)"
    f.verdict = (REPRODUCED if set(verdicts) == {REPRODUCED} else NOT_REPRODUCED if NOT_REPRODUCED in verdicts
                 else WITHIN_NOISE)
    f.evidence = [f"{res.study}: {t}" for t in curve["trial_id"].unique()]
    f.note = ("reproduced when every evaluation is above zero beyond noise, the gain rises past the first "
              "evaluation and ends within noise of its peak; not reproduced when it ends more than twice the "
              "noise below its peak (the gain shrinks) or is not positive")


def _online_early(P, noise, f: Finding):
    pairs = P["online_offline"]
    _one_condition(f, pairs[(pairs["source"] == "online") & (pairs["window"] == "first")], noise, "early window", -1)


def _online_late(P, noise, f: Finding):
    pairs = P["online_offline"]
    late = pairs[(pairs["source"] == "online") & (pairs["window"] == "last")]
    off = pairs[pairs["source"] == "offline"]
    if late.empty:
        f.note = "no late-window online run"
        return
    parts, ev = [], _ev(late)
    plain = late[late["alpha"].astype(float) >= 0.5]  # the study's default α
    var = late[late["alpha"].astype(float) < 0.5]  # the paper's α = 0.1, top-0.95-50 variant
    e_plain = _gain(plain, noise) if not plain.empty else None
    if e_plain:
        parts.append(f"late window {e_plain.text()}")
    if not var.empty:
        parts.append(f"late, α = 0.1, top-0.95-50 {_gain(var, noise).text()}")
    if not off.empty:
        parts.append(f"offline {_gain(off, noise).text()}")
        ev += _ev(off)
    f.ours = "; ".join(parts)
    if e_plain is None:
        return
    f.interval = f"late window: {e_plain.interval()}"
    # "close to neutral": reproduced when the late window's gain is within noise of zero or of -3.9 %
    f.verdict = REPRODUCED if e_plain.lo <= 0.5 and e_plain.hi >= -3.9 else NOT_REPRODUCED
    f.evidence = ev
    f.note = "reproduced when the late window's interval reaches the band between -3.9 % and +0.5 %"


def is_pd_star(alpha_kind: pd.Series, lr_kind: pd.Series) -> pd.Series:
    """Which runs follow PD*'s schedules (PAPER.md): WSD-α with a WSD learning rate. The rest of
    PD*'s recipe (top-0.95-50, τ = 2, KLD) is set by the pd_star study itself."""
    return (alpha_kind == "wsd_alpha") & (lr_kind == "wsd")


def _pd_star(P, noise, f: Finding):
    pairs = P["pd_star"]
    star = pairs[is_pd_star(pairs["alpha_kind"], pairs["lr_kind"])]
    van = pairs[(pairs["alpha_kind"] == "constant") & (pairs["lr_kind"] == "cosine")]
    if star.empty:
        f.note = "no PD* runs"
        return
    parts, verdicts, ivals = [], [], []
    for student, g in star.groupby("student", sort=False):
        e = _gain(g, noise)
        v = van[van["student"] == student]
        txt = f"{student}: {e.text()}"
        if not v.empty:
            c = _contrast(g, v, noise)
            txt += f" (vanilla {_gain(v, noise).text()}, PD* - vanilla {c.text()})"
            ivals.append(f"{student}: PD* {e.interval()}; PD* - vanilla {c.interval()}")
            verdicts.append(_side(e) if _side(c) != NOT_REPRODUCED else NOT_REPRODUCED)
        else:
            ivals.append(f"{student}: {e.interval()}")
            verdicts.append(_side(e))
        parts.append(txt)
    f.ours, f.interval = "; ".join(parts), "; ".join(ivals)
    f.verdict = (REPRODUCED if set(verdicts) == {REPRODUCED} else NOT_REPRODUCED if NOT_REPRODUCED in verdicts
                 else WITHIN_NOISE)
    f.evidence = _ev(star) + _ev(van)
    f.note = "reproduced when PD* beats LM-only on every size and is not worse than vanilla PD beyond noise"


# (key, claim, the paper's number, studies needed, check)
FINDINGS: list[tuple[str, str, str, tuple[str, ...], Callable]] = [
    ("vanilla", "Vanilla PD beats LM-only", "+1.6% (1.9B)", ("preliminary",), _vanilla_pd),
    ("top_p", "Truncation barely matters for p", "+1.3 to +2.1% over p = 0.5-0.95", ("top_p",), _top_p),
    ("top_k_best", "k = 50 is the best k", "+4.9% at top-0.95-50", ("top_k",), _top_k_best),
    ("top_k_one", "Even k = 1 helps a little", "+1.9% at top-0.95-1", ("top_k",), _top_k_one),
    ("tau_low", "τ ≤ 2 all help (best 0.5)", "best +2.7% at τ = 0.5", ("temperature",), _tau_low),
    ("tau_high", "τ ≥ 5 gives nothing", "≈ 0% at τ = 5, 10", ("temperature",), _tau_high),
    ("adaptive", "Adaptive τ is no better than a good fixed τ", "NormKD/WTTM/AdaKD ≤ best fixed τ",
     ("adaptive_temperature", "temperature"), _adaptive),
    ("kld_nll", "KLD ≥ NLL > LM-only", "KLD ≥ NLL > 0", ("kd_loss",), _losses),
    ("mse", "MSE hurts", "−7.6%", ("kd_loss",), _mse),
    ("alpha", "Best static α = 0.9", "+3.6% at α = 0.9", ("alpha",), _alpha),
    ("kd_first", "KD-first beats LM-first (linear_dec > linear_inc)", "Linear Dec > Linear Inc",
     ("schedules",), _kd_first),
    ("schedule", "Best schedule: WSD-α with WSD-LR", "+8.0%", ("schedules",), _schedules),
    ("align", "WSD-α needs WSD-LR: with a cosine LR it gives less", "+2.3% vs +8.0%", ("schedules",),
     _schedules_align),
    ("student_size", "Larger students gain more", "330M −1.5% … 6.8B +6.9%", ("student_size",), _student_size),
    ("teacher_size", "The bigger teacher is not better (capacity gap)", "32B ≤ 9B", ("teacher_size",),
     _teacher_size),
    ("long", "Over a long run the gain stays positive, grows, then levels off", "500B tokens, Table 12",
     ("long_training",), None),
    ("online_early", "Online logits from an early teacher hurt badly", "−20.9%", ("online_offline",),
     _online_early),
    ("online_late", "Late-window online logits are close to neutral", "−3.9%; +0.5% with α = 0.1, top-0.95-50",
     ("online_offline",), _online_late),
    ("pd_star", "PD* (top-0.95-50, τ = 2, WSD-α + WSD-LR) is best on every size", "+9.3 / +8.7 / +10.8%",
     ("pd_star",), _pd_star),
]


KNOBS = ("top_p", "top_k", "temperature", "adaptive", "loss", "alpha_kind", "alpha", "lr_kind", "student",
         "teacher", "window")


def factorial_effects(pairs: pd.DataFrame, noise: Noise) -> pd.DataFrame:
    """Main effects and two-way interactions of a two-level factorial grid of PD runs (e.g.
    mini_interactions: top_k × τ × α schedule), on the gain in % points: an effect is the mean
    gain at a factor's second level minus at its first; an interaction A×B is half the difference
    between A's effect at B's second level and at its first. With one run per cell, each effect's
    95 % half-width is z·σ_eps·sqrt(4/n_runs) (two means of n/2 runs; the seed's share cancels).
    Columns: effect, levels, estimate, half_width, verdict ("real" when the interval excludes 0)."""
    cols = ["effect", "levels", "estimate", "half_width", "verdict"]
    knobs = [k for k in KNOBS if k in pairs and pairs[k].astype(str).nunique() == 2]
    if len(knobs) < 2:
        return pd.DataFrame(columns=cols)
    x = pairs.assign(**{k: pairs[k].astype(str) for k in knobs})
    levels = {k: sorted(x[k].unique(), key=lambda v: (float(v) if _isnum(v) else 0.0, v)) for k in knobs}
    sign = {k: np.where(x[k] == levels[k][1], 1.0, -1.0) for k in knobs}
    g = x["gain_pct"].to_numpy(float)
    n = len(g)
    noise = _noise_for(noise, pairs)
    half = Z * noise.sigma_eps * math.sqrt(4.0 / n) if noise.dof_eps else float("nan")
    rows = []

    def add(name, lv, sgn):
        est = float(g[sgn > 0].mean() - g[sgn < 0].mean())  # for a product column: the interaction
        verdict = "within noise" if not np.isfinite(half) or abs(est) <= half else "real"
        rows.append({"effect": name, "levels": lv, "estimate": est, "half_width": half, "verdict": verdict})

    for k in knobs:
        add(k, f"{levels[k][0]} → {levels[k][1]}", sign[k])
    for i, a in enumerate(knobs):
        for b in knobs[i + 1:]:
            add(f"{a} × {b}", "", sign[a] * sign[b])
    return pd.DataFrame(rows, columns=cols)


def _isnum(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _teacher_params(results) -> dict[str, float]:
    """Teacher name -> parameter count, from the teacher runs the studies hold."""
    out = {}
    for r in results:
        runs = r.runs
        if runs.empty or "name" not in runs:
            continue
        for _, t in runs[runs["kind"] == "teacher"].iterrows():
            n = t.get("num_params")
            if n is None or not np.isfinite(float(n)):
                hit = re.fullmatch(r"d(\d+)l(\d+)", str(t.get("size", "")))  # CPU sizes: ~12·d²·layers
                n = 12.0 * int(hit.group(1)) ** 2 * int(hit.group(2)) if hit else parse_param_count(t.get("size"))
            if np.isfinite(float(n)):
                out[str(t["name"])] = float(n)
    return out


def check_findings(results: Mapping[str, Results]) -> tuple[list[Finding], Noise]:
    """Check every finding against the studies given ({study name: Results}); findings whose studies
    are missing are returned with verdict "not run"."""
    R = {study_key(name): r for name, r in results.items()}
    frames = [pd_pairs(r) for r in R.values()]
    frames = [f for f in frames if not f.empty]
    all_pairs = pd.concat(frames, ignore_index=True) if frames else pd_pairs(Results("", {}, pd.DataFrame(),
                                                                                      pd.DataFrame(), pd.DataFrame()))
    noise = noise_book(all_pairs)
    P = {key: all_pairs[all_pairs["study"] == r.study] for key, r in R.items()}
    P["_teacher_params"] = _teacher_params(R.values())
    out = []
    for key, claim, paper, needs, check in FINDINGS:
        f = Finding(key, claim, paper)
        missing = [n for n in needs if n not in R or (check is not None and P[n].empty)]
        if missing:
            f.note = "study not in the suite or without finished PD runs: " + ", ".join(missing)
        elif check is None:
            _long(R, noise, f)
        else:
            check(P, noise, f)
        out.append(f)
    return out, noise


def findings_frame(findings: list[Finding]) -> pd.DataFrame:
    """The findings as a table (one row each)."""
    return pd.DataFrame([{"finding": f.claim, "paper": f.paper, "ours (held-out loss gain)": f.ours,
                          "95% interval": f.interval, "verdict": f.verdict, "note": f.note,
                          "runs": len(f.evidence)} for f in findings])
