"""The paper's findings (PAPER.md "Findings"), each a hypothesis test on a suite of our own runs.

    from analysis.findings import check_findings
    findings, noise = check_findings({"mini_preliminary": results, "mini_top_k": ..., ...})

Each study is recognised by its name without the prefix ("mini_top_k" and "paper_top_k" are both
"top_k"), so the same checks read the CPU mini suite and a GPU-scale rerun of studies/paper/.

Measures. Every finding is tested twice, each on its own metric with its own margin:
- benchmark accuracy, the paper's own metric (PAPER.md states every finding on the benchmark average):
  the accuracy gain of a PD run over its matching LM-only baseline (same student, data, tokens, LR
  schedule and seed), acc_PD - acc_LM in accuracy points, each side the mean over the benchmark tasks
  the study recorded (run_accuracy: one metric per task, acc first; the final evaluation of each run;
  both sides over the same tasks). Its margins are in accuracy points, from the paper: its Δ % of a
  claim converted at its 1.9B LM-only average of 37.7 points (DEFAULT_ACC_MARGIN, 0.6 points, is Table 1's
  vanilla gain, 38.3 vs 37.7). A study that recorded no benchmark scores: `not testable here` ("no
  benchmark scores recorded"). At CPU scale the scores sit near chance and the binomial noise of
  `limit` items per task is large, so these verdicts are often inconclusive;
- the held-out loss gain, a loss-based proxy in its own columns: gain % = 100 (L_LM - L_PD) / L_LM
  from the final `val_loss` of each run, tested with its own margins in loss-gain points. The paper's
  numbers (benchmark Δ) are shown for reference and never compared with a loss interval.
A finding the paper states on benchmark accuracy (Claim.on_accuracy; today every one) has the accuracy
verdict as its primary one (Finding.verdict); one it does not would keep the loss verdict as primary,
its accuracy column `not testable here`.
Sampling error of the accuracy. Each run's score on `limit` items per task is a binomial draw around its
model's accuracy. Every standard error below comes from the spread between runs that were scored on the
same items (seeds of one condition, or sigma_seed / sigma_eps of distinct runs), and near chance the
items a model gets right are close to independent from run to run, so each run's binomial error is
already part of that spread (a shared baseline's part of it is sigma_block): adding the reported
binomial stderr on top would count it twice, and it is not added. What run-to-run spread cannot see is
the draw of the items themselves, common to every run; for a difference of two models on the same items
near chance it is small next to the runs' own binomial error. The accuracy noise is estimated like the
loss noise, over the same distinct runs (each run once, bit-identical duplicates once, an α = 0
student not at all: its benchmark scores are its baseline's).
Conditions. A condition's runs (cond) agree on every knob a study varies (KNOB_COLUMNS); runs that differ
in one (e.g. kd.normalization: normkd renormalised vs normkd with a tail bucket) are never pooled as
seeds of one: a check keys them apart ("normkd", "normkd (tail)") or the finding is not testable.

Tests. Every finding in FINDINGS is one test, declared once with its margins δ (loss-gain points and
accuracy points) and where each comes from:
- an effect ("PD beats LM-only", "MSE hurts"): one-sided. Reproduced when θ ≤ 0 is rejected at
  α = 5 % (θ signed in the claim's direction); contradicted when θ ≥ δ is rejected (the effect,
  if any, is smaller than the margin the claim needs; δ = 0: shown to go the other way). When
  both are rejected (0 < θ < δ) the verdict is reproduced, with a note;
- no effect ("truncation barely matters"): equivalence (TOST). Reproduced when both |θ| ≥ δ
  one-sided tests reject; contradicted when |θ| ≤ δ is rejected (each side at α/2);
- no better ("adaptive τ is no better", "the bigger teacher is not better"): reproduced when
  θ ≥ δ is rejected, contradicted when θ ≤ δ is rejected;
- a claim over several conditions ("every τ ≤ 2 helps", "k = 50 beats every other k"): an
  intersection-union test. It is reproduced only when every part is (its p-value is the largest
  part's, valid at α without correction) and contradicted when any part is, with Bonferroni over
  the parts. A claim about a selected best ("a good fixed τ": any of several) is the dual union:
  Bonferroni over the candidates for reproduction. So best-of-n claims account for the selection.
- `not testable here`: the design cannot test the claim (a contrast identical by construction,
  teachers of equal quality, a metric the study did not record); `not run`: the study is absent
  or has no finished PD run with its baseline yet.
Estimates are in the metric's points (loss-gain %, accuracy points) with a standard error and t
degrees of freedom:
- one condition with several seeds: mean, sd/sqrt(n), n - 1 dof;
- one condition with one seed: its gain, sigma_seed of its student size, dof_seed;
- a contrast of two conditions: paired over 2+ common seeds (t on the differences); else
  mean(a) - mean(b) with Var = sigma_seed² (1/n_a + 1/n_b) - 2 c sigma_block² / (n_a n_b), c the
  number of run pairs that share a baseline (a seed's LM-only run), sigma_block² = sigma_seed² -
  sigma_eps²: two one-seed conditions on one baseline differ by √2 sigma_eps, on two baselines
  by √2 sigma_seed.
Noise (estimate_noise) is measured on distinct runs only: a run that several studies or trial ids
name counts once (config hash), a run whose final loss is bit-identical to another's on the
same baseline (KLD and NLL with a fixed teacher: the same gradient) counts once, and one
bit-identical to its own baseline (an α = 0 student) not at all. sigma_seed is
the pooled within-condition sd over conditions with 2+ seeds (a condition: the config without its
seed), sigma_eps the residual sd of gain ~ condition + baseline by least squares, each with its
dof; per student size, since the noise grows with it.
Family-wise control: Holm over each metric's tests separately (each tested finding's reproduce and
contradict tests on that metric) gives the `holm` verdicts: the table's verdicts on accuracy that
survive with a family-wise error rate of 5 %, and likewise on the loss proxy. The per-finding verdict
has a 5 % error rate on its own (bench/verdict_calibration.py measures it by simulation, on both metrics).
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import special

from analysis.results import stable_hash
from analysis.tables import PERCENT_METRICS, _label, _pick_metric, parse_param_count
from results import Results, attach_baseline, final_losses

__all__ = ["Finding", "Verdict", "Claim", "FINDINGS", "METRICS", "metric_pairs", "check_suite_noise",
           "run_accuracy", "accuracy_over_training", "DEFAULT_ACC_MARGIN", "Noise", "NoiseBook", "noise_book", "Estimate", "Test", "SuiteData",
           "suite_data", "check_suite", "check_findings", "factorial_effects", "pd_pairs", "distinct_runs",
           "estimate_noise", "findings_frame", "family_text", "study_key", "gains_over_training", "holm",
           "is_pd_star", "ALPHA", "VERDICTS"]

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
NOT_TESTABLE, NOT_RUN = "not testable here", "not run"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE, NOT_RUN)
ALPHA = 0.05
DEFAULT_MARGIN = 1.0
"""% points of the held-out loss gain: about a quarter of the default recipe's gain at d64l3 (+4 %,
CPU_SCALE.md), declared before any mini-suite result; a finding's entry says where it uses another."""
DEFAULT_ACC_MARGIN = 0.6
"""accuracy points of the benchmark average: the paper's vanilla PD gain at 1.9B (Table 1: 38.3 vs
37.7, its +1.6 %), the smallest gain it states as a finding; a finding's entry says where it uses
another (the paper's own resolution of a claim where PAPER.md gives one)."""
TEACHER_QUALITY_GAP = 0.05
"""nats: a bigger teacher whose own held-out loss is not lower than the smaller one's by this much is
a teacher of equal quality, and "the bigger teacher is not better" cannot be tested with it."""


# ------------------------------------------------------------------------------------------------
# Noise: seed-to-seed spread of a paired gain, from distinct runs only
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Noise:
    """Seed noise of a paired gain (% points): sigma_seed (one run's gain about its condition's
    mean) and sigma_eps (the residual of gain ~ condition + baseline), with their dof."""

    sigma_seed: float
    dof_seed: int
    sigma_eps: float
    dof_eps: int

    @property
    def sigma_block(self) -> float:
        """The part of sigma_seed that runs on one baseline share (0 when sigma_eps is not smaller)."""
        if not (np.isfinite(self.sigma_seed) and np.isfinite(self.sigma_eps)):
            return 0.0
        return math.sqrt(max(self.sigma_seed ** 2 - self.sigma_eps ** 2, 0.0))


@dataclass(frozen=True)
class NoiseBook(Noise):
    """The suite's noise: pooled over every student (the fields), and per student size, since seed
    noise grows with it at CPU scale (d128l4's paired gains spread ~10× d64l3's). A condition uses
    its own student's noise where that student has 2+ dof of it (its sigma_eps falls back to its
    sigma_seed, an upper bound, without a condition × baseline layout of its own), else the pooled."""

    by_student: dict = field(default_factory=dict, compare=False)

    def for_student(self, student) -> Noise:
        own = self.by_student.get(student)
        if own is not None and own.dof_seed >= 2:
            if own.dof_eps >= 2:
                return Noise(own.sigma_seed, own.dof_seed, own.sigma_eps, own.dof_eps)
            return Noise(own.sigma_seed, own.dof_seed, own.sigma_seed, own.dof_seed)
        return Noise(self.sigma_seed, self.dof_seed, self.sigma_eps, self.dof_eps)

    def for_rows(self, rows: pd.DataFrame) -> Noise:
        students = set(rows["student"]) if "student" in rows else set()
        return self.for_student(next(iter(students)) if len(students) == 1 else None)


def _book(noise: Noise) -> NoiseBook:
    return noise if isinstance(noise, NoiseBook) else NoiseBook(noise.sigma_seed, noise.dof_seed, noise.sigma_eps,
                                                                noise.dof_eps)


def distinct_runs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Each run once: by config hash (a run several studies or trial ids name), then by (baseline,
    final loss) where both are known (a run bit-identical to another on the same baseline is the
    same computation under another config, e.g. KLD and NLL with a fixed teacher). A run whose final
    loss is bit-identical to its own baseline's (an α = 0 student) is that baseline: its gain is 0 by
    construction and says nothing about seed noise."""
    out = pairs
    if "config_hash" in out:
        out = out.drop_duplicates("config_hash")
    if {"lm", "pd"} <= set(out.columns):
        out = out[~(out["pd"] == out["lm"])]
    if {"baseline_hash", "pd"} <= set(out.columns):
        known = out["baseline_hash"].notna() & out["pd"].notna()
        out = pd.concat([out[known].drop_duplicates(["baseline_hash", "pd"]), out[~known]]).sort_index()
    return out


#: Config keys that do not make a condition: the seed, and what is not the run's identity (the store a
#: run read is chosen per study: a run shared by two studies may be recorded with either store;
#: the teacher's study-local name; derived hashes; execution settings).
_NOT_CONDITION = ("seed", "baseline_hash", "logits_hash", "teacher", "execution")


def _layout(pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(condition, block, gain) per run; frames without a condition or a baseline column use
    (study, group) and the seed."""
    cond = pairs["condition"] if "condition" in pairs else (
        pairs["study"].astype(str) + "|" + pairs["group"].astype(str))
    block = pairs["baseline_hash"] if "baseline_hash" in pairs else pairs["seed"]
    return (cond.astype(str).to_numpy(), block.astype(str).to_numpy(),
            pd.to_numeric(pairs["gain_pct"], errors="coerce").to_numpy(float))


def _noise(conds: np.ndarray, blocks: np.ndarray, gains: np.ndarray) -> Noise:
    """Pooled within-condition sd and the residual sd of gain ~ condition + block (least squares)."""
    ok = np.isfinite(gains)
    conds, blocks, gains = conds[ok], blocks[ok], gains[ok]
    if gains.size == 0:
        return Noise(float("nan"), 0, float("nan"), 0)
    _, ci, counts = np.unique(conds, return_inverse=True, return_counts=True)
    means = np.bincount(ci, gains) / counts
    multi = counts[ci] >= 2  # one-run conditions add a row and a parameter each: no residual, no dof
    dof_seed = int((counts[counts >= 2] - 1).sum())
    ss_seed = float(((gains - means[ci]) ** 2)[multi].sum())
    dof_eps, ss_eps = 0, 0.0
    if multi.sum() >= 3:
        _, cm = np.unique(ci[multi], return_inverse=True)
        _, bm = np.unique(blocks[multi], return_inverse=True)
        X = np.hstack([np.eye(cm.max() + 1)[cm], np.eye(bm.max() + 1)[bm]])
        y = gains[multi]
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        dof_eps = y.size - int(np.linalg.matrix_rank(X))
        ss_eps = float(((y - X @ coef) ** 2).sum()) if dof_eps > 0 else 0.0
    return Noise(math.sqrt(ss_seed / dof_seed) if dof_seed else float("nan"), dof_seed,
                 math.sqrt(ss_eps / dof_eps) if dof_eps > 0 else float("nan"), max(dof_eps, 0))


def estimate_noise(pairs: pd.DataFrame) -> Noise:
    """sigma_seed and sigma_eps of the paired gains of `pairs` (see the module docstring), over its
    distinct runs; NaN with dof 0 when no condition has two runs."""
    if pairs.empty:
        return Noise(float("nan"), 0, float("nan"), 0)
    return _noise(*_layout(distinct_runs(pairs)))


def noise_book(pairs: pd.DataFrame) -> NoiseBook:
    """The pooled noise and each student size's own (see NoiseBook), over distinct runs."""
    if pairs.empty:
        return NoiseBook(float("nan"), 0, float("nan"), 0, {})
    d = distinct_runs(pairs)
    conds, blocks, gains = _layout(d)
    pooled = _noise(conds, blocks, gains)
    per = {}
    if "student" in d:
        students = d["student"].to_numpy(object)
        for st in dict.fromkeys(students):
            m = students == st
            per[st] = _noise(conds[m], blocks[m], gains[m])
    return NoiseBook(pooled.sigma_seed, pooled.dof_seed, pooled.sigma_eps, pooled.dof_eps, per)


# ------------------------------------------------------------------------------------------------
# Estimates and tests
# ------------------------------------------------------------------------------------------------

def _t_sf(x: float, dof: float) -> float:
    """P(T > x) for Student's t with dof degrees of freedom (x may be ±inf)."""
    if math.isinf(x):
        return 0.0 if x > 0 else 1.0
    return float(special.stdtr(dof, -x))


def t_quantile(q: float, dof: float) -> float:
    """The q quantile of Student's t with dof degrees of freedom (NaN without dof)."""
    return float(special.stdtrit(dof, q)) if dof and dof > 0 else float("nan")


@dataclass(frozen=True)
class Estimate:
    """A parameter θ in % points of loss gain: its estimate, standard error and the t degrees of
    freedom of that standard error, and how it was had."""

    mean: float
    se: float
    dof: float
    how: str

    @property
    def usable(self) -> bool:
        return bool(np.isfinite(self.mean) and np.isfinite(self.se) and self.se >= 0 and self.dof > 0)

    def p_above(self, bound: float) -> float:
        """p-value of H0: θ ≤ bound (small: θ > bound). NaN when there is no standard error."""
        if not self.usable:
            return float("nan")
        if self.se == 0:
            return 0.0 if self.mean > bound else 1.0
        return _t_sf((self.mean - bound) / self.se, self.dof)

    def p_below(self, bound: float) -> float:
        """p-value of H0: θ ≥ bound (small: θ < bound)."""
        if not self.usable:
            return float("nan")
        if self.se == 0:
            return 0.0 if self.mean < bound else 1.0
        return _t_sf((bound - self.mean) / self.se, self.dof)

    def interval(self, alpha: float = ALPHA) -> tuple[float, float]:
        """The two-sided 1 - 2α interval: its ends are the one-sided α bounds the tests use."""
        if not self.usable:
            return float("nan"), float("nan")
        h = t_quantile(1 - alpha, self.dof) * self.se
        return self.mean - h, self.mean + h

    def text(self, alpha: float = ALPHA) -> str:
        lo, hi = self.interval(alpha)
        if not np.isfinite(lo):
            return f"{self.mean:+.2f} (no interval: {self.how})"
        return f"{self.mean:+.2f} [{lo:+.2f}, {hi:+.2f}] ({self.how})"


@dataclass(frozen=True)
class Test:
    """A finding's test: p_reproduce, the p-value of "the claim does not hold" (small: reproduced),
    and p_contradict, of "the claim holds at its margin" (small: contradicted). NaN: untestable."""

    p_reproduce: float
    p_contradict: float

    def verdict(self, alpha: float = ALPHA) -> str:
        if _small(self.p_reproduce, alpha):
            return REPRODUCED
        if _small(self.p_contradict, alpha):
            return CONTRADICTED
        return INCONCLUSIVE


def _small(p: float, alpha: float) -> bool:
    return bool(np.isfinite(p) and p <= alpha)


def _p(p: float) -> float:
    return 1.0 if not np.isfinite(p) else float(min(max(p, 0.0), 1.0))


def effect(est: Estimate, sign: int, margin: float) -> Test:
    """Claim: θ goes the `sign` way (+1: θ > 0). Contradicted when sign·θ < margin is shown."""
    if sign > 0:
        return Test(_p(est.p_above(0.0)), _p(est.p_below(margin)))
    return Test(_p(est.p_below(0.0)), _p(est.p_above(-margin)))


def equivalent(est: Estimate, margin: float) -> Test:
    """Claim: |θ| < margin (TOST). Contradicted when |θ| > margin is shown (each side at α/2)."""
    return Test(max(_p(est.p_above(-margin)), _p(est.p_below(margin))),
                min(1.0, 2.0 * min(_p(est.p_above(margin)), _p(est.p_below(-margin)))))


def not_above(est: Estimate, margin: float) -> Test:
    """Claim: θ < margin (no better by more than the margin)."""
    return Test(_p(est.p_below(margin)), _p(est.p_above(margin)))


def not_below(est: Estimate, margin: float) -> Test:
    """Claim: θ > -margin (no worse by more than the margin)."""
    return Test(_p(est.p_above(-margin)), _p(est.p_below(-margin)))


def all_of(tests: Sequence[Test]) -> Test:
    """Every part holds: intersection-union for reproduction (the largest p), Bonferroni over the
    parts for a contradiction (any part contradicted)."""
    if not tests:
        return Test(float("nan"), float("nan"))
    return Test(max(t.p_reproduce for t in tests), min(1.0, len(tests) * min(t.p_contradict for t in tests)))


def any_of(tests: Sequence[Test]) -> Test:
    """Some part holds (the candidates of a selection): Bonferroni over them for reproduction,
    intersection-union for a contradiction (every candidate contradicted)."""
    if not tests:
        return Test(float("nan"), float("nan"))
    return Test(min(1.0, len(tests) * min(t.p_reproduce for t in tests)), max(t.p_contradict for t in tests))


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Holm's step-down: which of the hypotheses are rejected with family-wise error ≤ alpha."""
    p = np.array([_p(v) for v in pvalues], dtype=float)
    m = p.size
    reject = np.zeros(m, dtype=bool)
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (m - rank):
            break
        reject[i] = True
    return reject


# ------------------------------------------------------------------------------------------------
# Conditions: a condition's runs (one per seed) and the estimates over them
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cond:
    """One condition's paired gains, one run per seed: seeds, blocks (each run's baseline) and
    gains; its student; the trial ids (study: trial) behind it."""

    label: str
    student: object
    seeds: np.ndarray
    blocks: np.ndarray
    gains: np.ndarray
    evidence: tuple[str, ...]

    @property
    def n(self) -> int:
        return int(self.gains.size)

    @property
    def mean(self) -> float:
        return float(self.gains.mean())


NUMERIC = ("seed", "num_params", "tokens", "top_p", "top_k", "temperature", "alpha", "lm", "pd", "gain_pct")
READ = NUMERIC + ("study", "trial_id", "student", "teacher", "loss", "adaptive", "normalization", "alpha_kind",
                  "lr_kind", "source", "window", "baseline_hash")
"""The pairs columns the checks read."""
KNOB_COLUMNS = ("student", "teacher", "tokens", "loss", "top_p", "top_k", "temperature", "adaptive", "normalization",
                "alpha_kind", "alpha", "lr_kind", "source", "window")
"""The knobs a study varies: one condition's runs (cond) agree on each."""


class Rows:
    """A study's pairs as numpy columns, filtered with boolean masks: what the checks read. (They
    run thousands of times in bench/verdict_calibration.py, where pandas' per-call overhead was
    most of the time.) Numeric knobs are float arrays (NaN: not set), the rest object arrays."""

    __slots__ = ("cols", "n")

    def __init__(self, cols: dict[str, np.ndarray], n: int):
        self.cols, self.n = cols, n

    @classmethod
    def of(cls, frame: pd.DataFrame) -> "Rows":
        have = set(frame.columns)

        def numeric(col: pd.Series) -> np.ndarray:
            if pd.api.types.is_float_dtype(col.dtype) and not isinstance(col.dtype, pd.ArrowDtype):
                return col.to_numpy()
            return pd.to_numeric(col, errors="coerce").to_numpy(float)

        return cls({c: numeric(frame[c]) if c in NUMERIC else frame[c].to_numpy(object) for c in READ if c in have},
                   len(frame))

    def __getitem__(self, col: str) -> np.ndarray:
        return self.cols[col] if col in self.cols else np.full(self.n, None, dtype=object)

    def __contains__(self, col: str) -> bool:
        return col in self.cols

    @property
    def empty(self) -> bool:
        return self.n == 0

    def where(self, mask) -> "Rows":
        mask = np.asarray(mask, dtype=bool)
        return Rows({k: v[mask] for k, v in self.cols.items()}, int(mask.sum()))

    def eq(self, col: str, value) -> np.ndarray:
        """Rows whose `col` is `value` (numbers to 1e-9)."""
        x = self[col]
        if x.dtype.kind == "f":
            return np.abs(x - float(value)) < 1e-9
        return np.array([v == value for v in x], dtype=bool)


def cond(rows, label: str) -> Cond | None:
    """The condition of `rows` (Rows or a pairs frame; None when empty); a seed named twice
    counts once (the last)."""
    if isinstance(rows, pd.DataFrame):
        rows = Rows.of(rows)
    if rows.empty:
        return None
    for knob in KNOB_COLUMNS:  # a knob the study varies that the check did not key on: never pooled as seeds
        if knob in rows and rows.n > 1:
            values = {str(v) for v in rows[knob] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(values) > 1:
                raise NotTestable(f"{label}: its runs differ in {knob} ({', '.join(sorted(values))}): different "
                                  "conditions, not seeds of one; they are not pooled")
    seeds = rows["seed"] if "seed" in rows else np.zeros(rows.n)
    keep = np.array([i for i, s in enumerate(seeds) if not np.any(seeds[i + 1:] == s)], dtype=int)
    students = set(rows["student"][keep]) if "student" in rows else set()
    blocks = rows["baseline_hash"] if "baseline_hash" in rows else seeds
    ev = tuple(f"{s}: {t}" for s, t in zip(rows["study"][keep], rows["trial_id"][keep])) if "trial_id" in rows else ()
    return Cond(label, next(iter(students)) if len(students) == 1 else None, seeds[keep],
                np.array([str(b) for b in blocks[keep]], dtype=object), rows["gain_pct"][keep].astype(float), ev)


def gain(c: Cond, noise: Noise) -> Estimate:
    """A condition's gain: over its seeds when it has several, else with its student's sigma_seed."""
    if c.n >= 2:
        return Estimate(c.mean, float(c.gains.std(ddof=1)) / math.sqrt(c.n), c.n - 1, f"{c.n} seeds")
    nz = _book(noise).for_student(c.student)
    return Estimate(c.mean, nz.sigma_seed, nz.dof_seed, f"1 seed, σ_seed {nz.sigma_seed:.2f} ({nz.dof_seed} dof)")


def contrast(a: Cond, b: Cond, noise: Noise) -> Estimate:
    """gain(a) - gain(b): paired over 2+ common seeds, else from the noise model (module docstring)."""
    common, ia, ib = np.intersect1d(a.seeds, b.seeds, return_indices=True)
    if common.size >= 2:
        d = a.gains[ia] - b.gains[ib]
        return Estimate(float(d.mean()), float(d.std(ddof=1)) / math.sqrt(d.size), d.size - 1,
                        f"{d.size} paired seeds")
    nz = _book(noise).for_student(a.student if a.student == b.student else None)
    shared = int(sum((a.blocks[:, None] == b.blocks[None, :]).ravel()))
    var = nz.sigma_seed ** 2 * (1 / a.n + 1 / b.n) - 2 * shared * nz.sigma_block ** 2 / (a.n * b.n)
    dof = min(nz.dof_seed, nz.dof_eps) if shared else nz.dof_seed
    how = ("one baseline, σ_eps" if shared and a.n == b.n == 1 else
           f"{a.n} vs {b.n} seeds, {shared} shared baselines" if shared else f"{a.n} vs {b.n} seeds, own baselines, σ_seed")
    return Estimate(a.mean - b.mean, math.sqrt(max(var, 0.0)) if np.isfinite(var) else float("nan"), dof,
                    f"{how} ({dof} dof)")


def _slope(x: np.ndarray, y: np.ndarray) -> Estimate:
    """OLS slope of y on x with its standard error (n - 2 dof)."""
    n = len(x)
    xc = x - x.mean()
    b = float((xc * (y - y.mean())).sum() / (xc ** 2).sum())
    resid = y - y.mean() - b * xc
    se = math.sqrt(float((resid ** 2).sum()) / (n - 2) / float((xc ** 2).sum())) if n > 2 else float("nan")
    return Estimate(b, se, n - 2, f"OLS over {n} runs")


# ------------------------------------------------------------------------------------------------
# The suite's data: PD-vs-baseline pairs per study, the long run's curves, the teachers
# ------------------------------------------------------------------------------------------------

def study_key(name: str) -> str:
    """'mini_top_k' -> 'top_k', 'paper_student_size' -> 'student_size'; other names unchanged."""
    head, _, rest = str(name).partition("_")
    return rest if head in ("mini", "paper") and rest else str(name)


def _col(runs: pd.DataFrame, name: str, default=np.nan) -> pd.Series:
    return runs[name] if name in runs else pd.Series(default, index=runs.index)


PAIR_COLUMNS = ["study", "trial_id", "config_hash", "baseline_hash", "baseline_trial_id", "condition", "group",
                "seed", "student", "num_params", "teacher", "tokens", "loss", "top_p", "top_k", "temperature",
                "adaptive", "normalization", "alpha_kind", "alpha", "lr_kind", "source", "window", "lm", "pd",
                "gain_pct", "acc_lm", "acc_pd", "acc_gain", "acc_tasks"]


def pd_pairs(results: Results) -> pd.DataFrame:
    """One row per completed PD run with a completed LM-only baseline in the study: the trial, its
    group (trial id without the seed), its condition (its config without the seed), its baseline's
    config hash, its knobs, the two final held-out losses and the gain (%), and the two final
    benchmark accuracies (acc_pd, acc_lm: run_accuracy at each run's last evaluation), their
    difference acc_gain in accuracy points and the tasks behind them (NaN when either run recorded
    no benchmark, or the two recorded different tasks)."""
    runs = results.runs
    if runs.empty or results.metrics.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    final = final_losses(results).drop_duplicates("run_id").set_index("config_hash")["val_loss"]
    paired = attach_baseline(runs.assign(val_loss=runs["config_hash"].map(final)), "val_loss", out="lm")
    st = paired[(paired["kind"] == "student") & (paired["status"] == "completed")]

    def condition(h):
        cfg = results.configs.get(h)
        if not cfg:
            return None
        return "cfg:" + stable_hash({k: v for k, v in cfg.items() if k not in _NOT_CONDITION})

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
        "baseline_hash": _col(st, "baseline_hash", None),
    })
    out["config_hash"] = st["config_hash"]
    cond_col = out["config_hash"].map(condition)
    out["condition"] = cond_col.where(cond_col.notna(), results.study + "|" + out["group"].astype(str))
    out = out[out["pd"].notna() & out["lm"].notna()].copy()
    out["gain_pct"] = 100.0 * (out["lm"] - out["pd"]) / out["lm"]
    acc = run_accuracy(results)
    final_acc = acc.sort_values("step").drop_duplicates("config_hash", keep="last").set_index("config_hash")
    tasks = final_acc["tasks"] if len(final_acc) else pd.Series(dtype=object)
    out["acc_pd"] = out["config_hash"].map(final_acc["acc"]) if len(final_acc) else np.nan
    out["acc_lm"] = out["baseline_hash"].map(final_acc["acc"]) if len(final_acc) else np.nan
    same_tasks = out["config_hash"].map(tasks).to_numpy(object) == out["baseline_hash"].map(tasks).to_numpy(object)
    out["acc_tasks"] = np.where(same_tasks, out["config_hash"].map(tasks), None) if len(final_acc) else None
    out.loc[~same_tasks, ["acc_pd", "acc_lm"]] = np.nan  # a gain is over the same benchmarks on both sides
    out["acc_gain"] = out["acc_pd"].astype(float) - out["acc_lm"].astype(float)
    # a run two trial ids name (a study's "base" and its sweep point with the base's value) counts once,
    # under the more specific id
    out = out.drop_duplicates("config_hash", keep="last")
    return out[PAIR_COLUMNS].reset_index(drop=True)


_OVER_TRAINING = ["trial_id", "student", "tokens", "lm", "pd", "gain_pct"]


def _paired_over_training(results: Results, curves: pd.DataFrame, value: str) -> pd.DataFrame:
    """Each completed PD run's ``value`` per evaluation (curves: config_hash, tokens, value, one row
    per run and evaluation) next to its LM-only baseline's at the same tokens. Columns: trial_id,
    student, tokens, lm, pd."""
    runs = results.runs.drop_duplicates("config_hash")
    info = runs[["config_hash", "trial_id", "kind", "status"]].assign(
        baseline_hash=_col(runs, "baseline_hash", None), student=_col(runs, "student", None))
    paired = attach_baseline(curves.merge(info, on="config_hash"), value, on="tokens", fallback_last=False, out="lm")
    paired = paired[(paired["kind"] == "student") & (paired["status"] == "completed") & paired["lm"].notna()
                    & (paired["tokens"] > 0)]  # tokens 0: the evaluation before training, one initial model
    return pd.DataFrame({"trial_id": paired["trial_id"], "student": paired["student"],
                         "tokens": paired["tokens"].astype(float), "lm": paired["lm"].astype(float),
                         "pd": paired[value].astype(float)})


def gains_over_training(results: Results) -> pd.DataFrame:
    """Per PD run and evaluation: LM-only and PD held-out losses at the same tokens and the gain (%).
    Columns: trial_id, student, tokens, lm, pd, gain_pct."""
    m = results.metrics
    if m.empty:
        return pd.DataFrame(columns=_OVER_TRAINING)
    m = m[(m["name"] == "val_loss") & m["value"].notna()].drop_duplicates(["run_id", "step"])
    out = _paired_over_training(results, m[["config_hash", "tokens", "value"]], "value")
    out["gain_pct"] = 100.0 * (out["lm"] - out["pd"]) / out["lm"]
    return out[_OVER_TRAINING].sort_values(["trial_id", "tokens"]).reset_index(drop=True)


def run_accuracy(results: Results) -> pd.DataFrame:
    """Per run and benchmark evaluation: the mean accuracy over the tasks it recorded, in accuracy
    points (percent; one metric per task, tables' METRIC_PREFERENCE: acc first). Columns:
    config_hash, step, tokens, acc, tasks (the task names, comma-joined). Empty without evals."""
    cols = ["config_hash", "step", "tokens", "acc", "tasks"]
    ev = results.evals
    if ev is None or ev.empty:
        return pd.DataFrame(columns=cols)
    ev = ev[ev["value"].notna() & (ev["task"] != "average")]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    ev = _pick_metric(ev)
    v = ev["value"].astype(float)
    frac = (ev["metric"].isin(PERCENT_METRICS) & (v.abs() <= 1.0)).groupby([ev["task"], ev["metric"]]).transform("all")
    ev = ev.assign(value=np.where(frac, v * 100.0, v)).drop_duplicates(["config_hash", "step", "task"])
    g = ev.groupby(["config_hash", "step"], sort=False)
    out = pd.DataFrame({"tokens": g["tokens"].max(), "acc": g["value"].mean(),
                        "tasks": g["task"].agg(lambda t: ",".join(sorted(t)))}).reset_index()
    return out[cols]


def accuracy_over_training(results: Results) -> pd.DataFrame:
    """gains_over_training on benchmark accuracy: per PD run and benchmark evaluation, LM-only and PD
    accuracy (points) at the same tokens and their difference (gain_pct, in accuracy points).
    Columns: trial_id, student, tokens, lm, pd, gain_pct."""
    acc = run_accuracy(results)
    if acc.empty:
        return pd.DataFrame(columns=_OVER_TRAINING)
    out = _paired_over_training(results, acc, "acc")
    out["gain_pct"] = out["pd"] - out["lm"]
    return out[_OVER_TRAINING].sort_values(["trial_id", "tokens"]).reset_index(drop=True)


@dataclass
class SuiteData:
    """What the findings read from a suite: study key -> study name, the PD-vs-baseline pairs of
    each study (pd_pairs), the long run's gains over training (gains_over_training; on benchmark
    accuracy: acc_curves, accuracy_over_training), and each teacher's parameter count and own final
    held-out loss ({name: {"num_params", "val_loss"}})."""

    names: dict[str, str]
    pairs: dict[str, pd.DataFrame]
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    teachers: dict[str, dict] = field(default_factory=dict)
    acc_curves: dict[str, pd.DataFrame] = field(default_factory=dict)


def _teachers(results: Sequence[Results]) -> dict[str, dict]:
    """Teacher name -> {"num_params", "val_loss"} from the teacher runs the studies hold."""
    out: dict[str, dict] = {}
    for r in results:
        runs = r.runs
        if runs.empty or "name" not in runs:
            continue
        final = final_losses(r).drop_duplicates("run_id").set_index("config_hash")["val_loss"] if not \
            r.metrics.empty else pd.Series(dtype=float)
        for _, t in runs[runs["kind"] == "teacher"].iterrows():
            n = t.get("num_params")
            if n is None or not np.isfinite(float(n)):
                hit = re.fullmatch(r"d(\d+)l(\d+)", str(t.get("size", "")))  # CPU sizes: ~12·d²·layers
                n = 12.0 * int(hit.group(1)) ** 2 * int(hit.group(2)) if hit else parse_param_count(t.get("size"))
            entry = out.setdefault(str(t["name"]), {"num_params": float("nan"), "val_loss": float("nan")})
            if np.isfinite(float(n)):
                entry["num_params"] = float(n)
            loss = final.get(t["config_hash"], float("nan"))
            if loss is not None and np.isfinite(float(loss)):
                entry["val_loss"] = float(loss)
    return out


def suite_data(results: Mapping[str, Results]) -> SuiteData:
    """Read what the findings need from {study name: Results}."""
    R = {study_key(name): r for name, r in results.items()}
    data = SuiteData(names={k: r.study for k, r in R.items()}, pairs={k: pd_pairs(r) for k, r in R.items()},
                     teachers=_teachers(list(R.values())))
    if "long_training" in R:
        data.curves["long_training"] = gains_over_training(R["long_training"])
        data.acc_curves["long_training"] = accuracy_over_training(R["long_training"])
    return data


# ------------------------------------------------------------------------------------------------
# The findings: one registry entry each, declaring the test and its margin once
# ------------------------------------------------------------------------------------------------

METRICS = ("accuracy", "loss")
"""The two metrics every finding is tested on: benchmark accuracy (the paper's own), and the
held-out loss gain (a loss-based proxy, with its own margins)."""
UNITS = {"accuracy": " pts", "loss": "%"}


@dataclass
class Verdict:
    """A finding tested on one metric ("accuracy" or "loss"): the test and its margin (accuracy
    points, or loss-gain points), ours (text), the 1 - 2α interval(s) of what was tested, the two
    p-values, the verdict, the verdict after Holm across that metric's family, the trial ids behind
    it, and a note."""

    metric: str
    test: str = ""
    margin: float | None = None
    ours: str = ""
    interval: str = ""
    p_reproduce: float = float("nan")
    p_contradict: float = float("nan")
    verdict: str = NOT_RUN
    holm: str = ""
    evidence: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Finding:
    """One finding checked: the paper's claim and number (benchmark Δ), its verdict on benchmark
    accuracy and its verdict on the held-out loss gain (a proxy), and which of the two is its
    primary verdict (accuracy, for a claim the paper states on benchmark accuracy)."""

    key: str
    claim: str
    paper: str
    accuracy: Verdict = field(default_factory=lambda: Verdict("accuracy"))
    loss: Verdict = field(default_factory=lambda: Verdict("loss"))
    primary: str = "accuracy"

    def of(self, metric: str) -> Verdict:
        return self.accuracy if metric == "accuracy" else self.loss

    @property
    def verdict(self) -> str:
        """The primary metric's verdict."""
        return self.of(self.primary).verdict

    @property
    def holm(self) -> str:
        return self.of(self.primary).holm


class NotTestable(Exception):
    """Raised by a check when the design cannot test its claim (the message says why)."""


@dataclass
class Ctx:
    """What a check reads: the pairs by study key (Rows) whose gain_pct is the metric's gain (loss
    gain %, or accuracy points), the suite's SuiteData, the metric's noise, the finding's margin on
    that metric, the metric's name and the long run's curves on it."""

    P: dict[str, Rows]
    data: SuiteData
    noise: NoiseBook
    margin: float
    metric: str = "loss"
    curves: dict = field(default_factory=dict)

    @property
    def u(self) -> str:
        """The unit written after a gain: % (loss gain) or pts (accuracy points)."""
        return UNITS[self.metric]

    def conds(self, rows: Rows, by: str) -> dict:
        """{value of `by`: Cond} for the rows, sorted by value (NaN and None left out)."""
        keys = rows[by]
        values = sorted({k for k in keys if k is not None and not (isinstance(k, float) and math.isnan(k))})
        return {k: cond(rows.where(keys == k), f"{by}={k}") for k in values}


@dataclass
class Result:
    """What a check returns: the test, and the text of the finding's row."""

    test: Test
    ours: str
    interval: str
    evidence: list[str]
    note: str = ""


@dataclass(frozen=True)
class Claim:
    """A finding of the paper as a test: `kind` names the test (see the module docstring),
    `margin` its δ in % points of the held-out loss gain with `why` (where δ comes from), and
    `acc_margin` its δ in accuracy points with `acc_why`. `on_accuracy`: the paper states it on
    benchmark accuracy (then the accuracy verdict is the primary one). `check` reads the suite (on
    either metric) and returns a Result, or raises NotTestable. `testable=False` declares a claim
    the design cannot test whatever the data (`why` says why)."""

    key: str
    claim: str
    paper: str
    needs: tuple[str, ...]
    kind: str
    margin: float
    why: str
    check: Callable[[Ctx], Result] | None = None
    testable: bool = True
    acc_margin: float = 0.0
    acc_why: str = ""
    on_accuracy: bool = True

    def margin_of(self, metric: str) -> float:
        return self.acc_margin if metric == "accuracy" else self.margin

    def test_text(self, metric: str = "loss") -> str:
        if not self.testable:
            return "not testable here"
        if metric == "accuracy":
            return f"{self.kind}; δ = {self.acc_margin:g} accuracy pts ({self.acc_why})"
        return f"{self.kind}; δ = {self.margin:g} pts ({self.why})"


def _need(c: Cond | None, what: str) -> Cond:
    if c is None:
        raise NotTestable(f"the study has no {what} run")
    return c


def _ev(*conds: Cond | None) -> list[str]:
    return [e for c in conds if c is not None for e in c.evidence]


def _means(conds: Mapping, fmt: str = "{:g}") -> str:
    return ", ".join(f"{fmt.format(k)}: {c.mean:+.2f}" for k, c in conds.items() if c is not None)


def _one(x: Ctx, c: Cond, sign: int, label: str) -> Result:
    est = gain(c, x.noise)
    return Result(effect(est, sign, x.margin), f"{label}: {c.mean:+.2f}{x.u}", est.text(), _ev(c))


def _best_of(x: Ctx, conds: dict, target, sym: str) -> Result:
    """`target` beats every other value: one-sided contrasts with every competitor, all required
    (no correction needed); a contradiction (some competitor shown better) is Bonferroni over them."""
    conds = {k: v for k, v in conds.items() if v is not None}
    if len(conds) < 2:
        raise NotTestable(f"needs two or more {sym} values")
    hit = [k for k in conds if isinstance(k, str) and k == target or not isinstance(k, str) and abs(k - target) < 1e-9]
    if not hit:
        raise NotTestable(f"{sym} = {target} was not run")
    t = conds[hit[0]]
    rivals = {k: c for k, c in conds.items() if k != hit[0]}
    ests = {k: contrast(t, c, x.noise) for k, c in rivals.items()}
    test = all_of([effect(e, +1, x.margin) for e in ests.values()])
    best = max(conds, key=lambda k: conds[k].mean)
    runner = min(ests, key=lambda k: ests[k].mean)
    fmt = "{}" if isinstance(target, str) else "{:g}"
    ours = f"best {sym} = {fmt.format(best)} ({_means(conds, sym + '=' + fmt)})"
    interval = f"{fmt.format(target)} − {fmt.format(runner)} (closest rival): {ests[runner].text()}"
    return Result(test, ours, interval, _ev(*conds.values()),
                  f"reproduced when {fmt.format(target)} beats each of the {len(rivals)} others; contradicted "
                  "when any other is shown better (Bonferroni over them)")


def _vanilla(x: Ctx) -> Result:
    rows = x.P["preliminary"]
    van = _need(cond(rows.where(rows.eq("alpha", 1.0) & rows.eq("normalization", "renormalize")), "α=1"), "α = 1")
    r = _one(x, van, +1, "α = 1")
    extra = []
    for a, c in x.conds(rows.where(~rows.eq("alpha", 1.0)), "alpha").items():
        extra.append(f"α = {a:g}: {gain(c, x.noise).text()}")
    tail = cond(rows.where(rows.eq("normalization", "tail")), "tail")
    if tail is not None:
        extra.append(f"α = 1 with a tail bucket: {gain(tail, x.noise).text()}")
    r.note = "; ".join(extra)
    return r


def _top_p(x: Ctx) -> Result:
    rows = x.P["top_p"]
    conds = x.conds(rows.where(rows.eq("top_k", 100)), "top_p")
    if len(conds) < 2:
        raise NotTestable("needs two or more top-p values at k = 100")
    ests = {(a, b): contrast(conds[a], conds[b], x.noise) for a, b in itertools.combinations(conds, 2)}
    hi, lo = max(conds, key=lambda k: conds[k].mean), min(conds, key=lambda k: conds[k].mean)
    widest = contrast(conds[hi], conds[lo], x.noise)
    return Result(all_of([equivalent(e, x.margin) for e in ests.values()]),
                  f"range over p = {widest.mean:.2f} pts ({_means(conds, 'p={:g}')})",
                  f"p={hi:g} − p={lo:g} (widest): {widest.text()}", _ev(*conds.values()),
                  f"reproduced when every pair of the {len(conds)} p values is equivalent within δ (TOST, "
                  f"all {len(ests)} pairs required); contradicted when any pair differs beyond δ (Bonferroni)")


def _top_k_best(x: Ctx) -> Result:
    rows = x.P["top_k"]
    return _best_of(x, x.conds(rows.where(rows.eq("top_p", 0.95)), "top_k"), 50.0, "k")


def _top_k_one(x: Ctx) -> Result:
    rows = x.P["top_k"]
    return _one(x, _need(cond(rows.where(rows.eq("top_k", 1)), "k=1"), "k = 1"), +1, "k = 1")


def _tau_low(x: Ctx) -> Result:
    rows = x.P["temperature"]
    conds = x.conds(rows.where(rows["temperature"] <= 2.0), "temperature")
    if not conds:
        raise NotTestable("no τ ≤ 2 runs")
    ests = {t: gain(c, x.noise) for t, c in conds.items()}
    low = min(ests, key=lambda t: ests[t].interval()[0])
    best = max(conds, key=lambda t: conds[t].mean)
    return Result(all_of([effect(e, +1, x.margin) for e in ests.values()]),
                  f"best τ = {best:g}; {_means(conds, 'τ={:g}')}", f"weakest τ = {low:g}: {ests[low].text()}",
                  _ev(*conds.values()), f"reproduced when each of the {len(conds)} τ ≤ 2 helps; contradicted "
                  "when any is shown to help by less than δ (Bonferroni)")


def _tau_high(x: Ctx) -> Result:
    rows = x.P["temperature"]
    conds = x.conds(rows.where(rows["temperature"] >= 5.0), "temperature")
    if not conds:
        raise NotTestable("no τ ≥ 5 runs")
    ests = {t: gain(c, x.noise) for t, c in conds.items()}
    return Result(all_of([equivalent(e, x.margin) for e in ests.values()]), _means(conds, "τ={:g}"),
                  "; ".join(f"τ={t:g}: {e.text()}" for t, e in ests.items()), _ev(*conds.values()),
                  "reproduced when every τ ≥ 5 is within ±δ of no gain (TOST); contradicted when any is shown "
                  "beyond ±δ, helping or hurting")


def _adaptive(x: Ctx) -> Result:
    ada, fixed = x.P["adaptive_temperature"], x.P["temperature"]
    ada = ada.where(_adaptive_rows(ada))
    ada.cols["method"] = _with_normalization(ada, ada["adaptive"])
    a_conds = x.conds(ada, "method")
    fixed = fixed.where(~_adaptive_rows(fixed))
    fixed.cols["fixed"] = _with_normalization(fixed, [f"{t:g}" for t in fixed["temperature"]])
    f_conds = x.conds(fixed, "fixed")
    if not a_conds or not f_conds:
        raise NotTestable("needs adaptive runs and fixed-τ runs")
    # "a good fixed τ": some fixed τ that no adaptive method beats by δ; the τ is selected, so
    # reproduction is Bonferroni over the fixed τ (any_of), each needing every adaptive method (all_of)
    test = any_of([all_of([not_above(contrast(a, f, x.noise), x.margin) for a in a_conds.values()])
                   for f in f_conds.values()])
    a_best = max(a_conds, key=lambda k: a_conds[k].mean)
    t_best = max(f_conds, key=lambda k: f_conds[k].mean)
    c = contrast(a_conds[a_best], f_conds[t_best], x.noise)
    return Result(test, f"best adaptive {a_best} {a_conds[a_best].mean:+.2f}{x.u} vs best fixed τ = {t_best} "
                        f"{f_conds[t_best].mean:+.2f}{x.u} ({_means(a_conds, '{}')})",
                  f"best adaptive − best fixed: {c.text()}", _ev(*a_conds.values(), *f_conds.values()),
                  f"reproduced when for some fixed τ every adaptive method is shown not better by δ (Bonferroni "
                  f"over the {len(f_conds)} τ that could be that τ); contradicted when for every τ some adaptive "
                  "method is shown better by more than δ")


def _adaptive_rows(rows: Rows) -> np.ndarray:
    return np.array([a is not None and str(a) not in ("None", "nan", "") for a in rows["adaptive"]], dtype=bool)


def _with_normalization(rows: Rows, names) -> np.ndarray:
    """Condition names that keep the teacher's normalization apart: "normkd" (the default,
    renormalised over the kept tokens) and "normkd (tail)" (the dropped mass as a tail bucket) are
    two conditions, never seeds of one."""
    norm = rows["normalization"]
    return np.array([f"{n}" if m is None or str(m) in ("renormalize", "None", "nan", "") else f"{n} ({m})"
                     for n, m in zip(names, norm)], dtype=object)


def _losses(x: Ctx) -> Result:
    rows = x.P["kd_loss"]
    kld, nll = cond(rows.where(rows.eq("loss", "kld")), "kld"), cond(rows.where(rows.eq("loss", "nll")), "nll")
    same = (kld is not None and nll is not None and kld.n == nll.n
            and np.array_equal(kld.gains[np.argsort(kld.seeds)], nll.gains[np.argsort(nll.seeds)]))
    raise NotTestable("with a fixed teacher KLD and NLL differ by the teacher's entropy, a constant: the same "
                      "gradient, so their runs are identical by construction"
                      + ("; here they are bit-identical" if same else
                         "; any gap between them is numerical noise" if kld and nll else ""))


def _nll(x: Ctx) -> Result:
    rows = x.P["kd_loss"]
    return _one(x, _need(cond(rows.where(rows.eq("loss", "nll")), "nll"), "NLL"), +1, "NLL")


def _mse(x: Ctx) -> Result:
    rows = x.P["kd_loss"]
    return _one(x, _need(cond(rows.where(rows.eq("loss", "mse")), "mse"), "MSE"), -1, "MSE")


def _alpha(x: Ctx) -> Result:
    rows = x.P["alpha"]
    return _best_of(x, x.conds(rows.where(rows.eq("alpha_kind", "constant")), "alpha"), 0.9, "α")


def _beats(x: Ctx, a: Cond | None, b: Cond | None, name_a: str, name_b: str) -> Result:
    a, b = _need(a, name_a), _need(b, name_b)
    c = contrast(a, b, x.noise)
    return Result(effect(c, +1, x.margin), f"{name_a} {a.mean:+.2f}{x.u}, {name_b} {b.mean:+.2f}{x.u}",
                  f"{name_a} − {name_b}: {c.text()}", _ev(a, b))


def _kd_first(x: Ctx) -> Result:
    rows = x.P["schedules"]
    return _beats(x, cond(rows.where(rows.eq("alpha_kind", "linear_dec")), "dec"),
                  cond(rows.where(rows.eq("alpha_kind", "linear_inc")), "inc"), "KD-first (linear_dec)",
                  "LM-first (linear_inc)")


def _schedules(x: Ctx) -> Result:
    rows = x.P["schedules"]
    rows = rows.where(rows["alpha"] > 0)
    if rows.empty:
        raise NotTestable("no schedule runs")
    rows.cols["schedule"] = np.array([f"{a} α + {lr} LR" for a, lr in zip(rows["alpha_kind"], rows["lr_kind"])],
                                     dtype=object)
    r = _best_of(x, x.conds(rows, "schedule"), "wsd_alpha α + wsd LR", "schedule")
    r.note += ("; gains are against each run's own LM-only baseline (WSD-LR runs against the WSD-LR LM run), "
               "as the paper's Table 5 does")
    return r


def _align(x: Ctx) -> Result:
    rows = x.P["schedules"]
    wsd_a = rows.eq("alpha_kind", "wsd_alpha")
    return _beats(x, cond(rows.where(wsd_a & rows.eq("lr_kind", "wsd")), "wsd"),
                  cond(rows.where(wsd_a & rows.eq("lr_kind", "cosine")), "cos"), "WSD-α + WSD-LR", "WSD-α + cosine LR")


def _student_size(x: Ctx) -> Result:
    rows = x.P["student_size"]
    rows = rows.where(np.isfinite(rows["num_params"]) & (rows["num_params"] > 0))
    conds = x.conds(rows, "student")
    if len(conds) < 2:
        raise NotTestable("needs two or more student sizes with a parameter count")
    size = {s: float(rows["num_params"][rows.eq("student", s)][0]) for s in conds}
    est = _slope(np.log10(rows["num_params"]), rows["gain_pct"])
    return Result(effect(est, +1, x.margin), f"slope {est.mean:+.2f} pts per decade of N ("
                  + ", ".join(f"{s}: {conds[s].mean:+.2f}" for s in sorted(conds, key=size.get)) + ")",
                  f"slope: {est.text()}", _ev(*conds.values()), "δ in pts per decade of N")


def _teacher_size(x: Ctx) -> Result:
    rows = x.P["teacher_size"]
    teachers = [t for t in dict.fromkeys(rows["teacher"]) if t is not None]
    if len(teachers) < 2:
        raise NotTestable("needs two teachers")
    info = x.data.teachers
    if all(np.isfinite(info.get(t, {}).get("num_params", float("nan"))) for t in teachers):
        teachers = sorted(teachers, key=lambda t: info[t]["num_params"])
    small, big = teachers[0], teachers[-1]  # by parameter count, else the study's order
    l_small, l_big = (info.get(t, {}).get("val_loss", float("nan")) for t in (small, big))
    note = ""
    if np.isfinite(l_small) and np.isfinite(l_big):
        if l_big > l_small - TEACHER_QUALITY_GAP:
            raise NotTestable(f"the teachers are of equal quality ({small} {l_small:.2f}, {big} {l_big:.2f} nats; "
                              f"the capacity-gap claim needs a bigger teacher that is better by at least "
                              f"{TEACHER_QUALITY_GAP:g} nats)")
        note = f"teachers' own held-out loss: {small} {l_small:.2f}, {big} {l_big:.2f} nats"
    else:
        note = "the teachers' own held-out losses are not recorded: their quality could not be compared"
    diffs = []
    for student in dict.fromkeys(rows["student"]):
        g = rows.where(rows.eq("student", student))
        a, b = cond(g.where(g.eq("teacher", big)), big), cond(g.where(g.eq("teacher", small)), small)
        if a is not None and b is not None:
            diffs.append((student, contrast(a, b, x.noise), a, b))
    if not diffs:
        raise NotTestable("no student was distilled from both teachers")
    if len(diffs) >= 2:
        d = np.array([e.mean for _, e, _, _ in diffs])
        est = Estimate(float(d.mean()), float(d.std(ddof=1)) / math.sqrt(d.size), d.size - 1, f"{d.size} students")
    else:
        est = diffs[0][1]
    return Result(not_above(est, x.margin), f"{big} − {small} = {est.mean:+.2f} averaged over students ("
                  + ", ".join(f"{s}: {e.mean:+.2f}" for s, e, _, _ in diffs) + ")",
                  f"{big} − {small}: {est.text()}", [e for _, _, a, b in diffs for e in _ev(a, b)], note)


def _long(x: Ctx) -> Result:
    curve = x.curves.get("long_training")
    if curve is None or curve.empty:
        raise NotTestable("the long_training study recorded no " + (
            "benchmark scores" if x.metric == "accuracy" else "held-out loss") + " during training")
    parts, tests, noise = [], [], []
    for student, g in curve.groupby("student", sort=False):
        g = g.drop_duplicates("tokens").sort_values("tokens")
        if len(g) < 4:
            raise NotTestable(f"{student}: needs four or more evaluations during training; has {len(g)}")
        nz = x.noise.for_student(student)
        v, t = g["gain_pct"].to_numpy(float), g["tokens"].to_numpy(float)
        n = len(v)
        late = np.arange(n // 2, n - 1)  # the second half before the end: where the gain should have levelled

        def est(w: np.ndarray) -> Estimate:  # a weighted sum of evaluations, taken as independent
            return Estimate(float(w @ v), nz.sigma_seed * float(np.sqrt((w ** 2).sum())), nz.dof_seed, "")

        first, end, plateau = np.eye(n)[0], np.eye(n)[-1], np.zeros(n)
        plateau[late] = 1.0 / late.size
        positive = all_of([effect(est(np.eye(n)[i]), +1, 0.0) for i in range(n)])
        grows = effect(est(plateau - first), +1, 0.0)
        levels = not_below(est(end - plateau), x.margin)
        tests.append(all_of([positive, grows, levels]))
        lo, hi = est(end - plateau).interval()
        noise.append(f"{student}: end − plateau {v[-1] - v[late].mean():+.2f} [{lo:+.2f}, {hi:+.2f}], σ_seed "
                     f"{nz.sigma_seed:.2f} ({nz.dof_seed} dof)")
        parts.append(f"{student}: " + ", ".join(f"{tt / 1e6:.2f}M {vv:+.1f}{x.u}" for tt, vv in zip(t, v))
                     + f" (first {v[0]:+.1f}{x.u}, plateau {v[late].mean():+.1f}{x.u}, end {v[-1]:+.1f}{x.u})")
    return Result(all_of(tests), "; ".join(parts), "; ".join(noise),
                  [f"{x.data.names.get('long_training', 'long_training')}: {tid}" for tid in curve["trial_id"].unique()],
                  "plateau: the mean of the second half's evaluations before the end. Reproduced when every "
                  "evaluation is above zero, the plateau is above the first evaluation and the end is not below "
                  "the plateau by δ (every student); contradicted when any of these is shown false (Bonferroni). "
                  "Evaluations of one run are taken as independent, each with σ_seed (conservative)")


def _online_early(x: Ctx) -> Result:
    rows = x.P["online_offline"]
    c = _need(cond(rows.where(rows.eq("source", "online") & rows.eq("window", "first")), "early"), "early-window")
    return _one(x, c, -1, "early window")


def _online_late(x: Ctx) -> Result:
    rows = x.P["online_offline"]
    late = rows.where(rows.eq("source", "online") & rows.eq("window", "last"))
    plain = cond(late.where(late["alpha"] >= 0.5), "late")  # the study's default α
    var = cond(late.where(late["alpha"] < 0.5), "late α=0.1")  # the paper's α = 0.1, top-0.95-50 variant
    off = cond(rows.where(rows.eq("source", "offline")), "offline")
    _need(plain, "late-window")
    ests = {"late window": gain(plain, x.noise)}
    if var is not None:
        ests["late, α = 0.1, top-0.95-50"] = gain(var, x.noise)
    ours = "; ".join(f"{k} {e.mean:+.2f}{x.u}" for k, e in ests.items())
    if off is not None:
        ours += f"; offline {off.mean:+.2f}{x.u}"
    return Result(all_of([equivalent(e, x.margin) for e in ests.values()]), ours,
                  "; ".join(f"{k}: {e.text()}" for k, e in ests.items()), _ev(plain, var, off),
                  "reproduced when each late-window variant is within ±δ of no gain (TOST) on "
                  + ("benchmark accuracy (points; δ from the paper's own −3.9 % of its 37.7 average)"
                     if x.metric == "accuracy" else "the held-out loss, with the loss proxy's own δ; the paper's "
                     "−3.9 % / +0.5 % are benchmark Δ and are not compared with it"))


def is_pd_star(alpha_kind, lr_kind):
    """Which runs follow PD*'s schedules (PAPER.md): WSD-α with a WSD learning rate (Series or
    arrays in, the same out). The rest of PD*'s recipe (top-0.95-50, τ = 2, KLD) is set by the
    pd_star study itself."""
    if isinstance(alpha_kind, pd.Series):
        return (alpha_kind == "wsd_alpha") & (lr_kind == "wsd")
    return np.array([a == "wsd_alpha" and b == "wsd" for a, b in zip(alpha_kind, lr_kind)], dtype=bool)


def _pd_star(x: Ctx) -> Result:
    rows = x.P["pd_star"]
    star = rows.where(is_pd_star(rows["alpha_kind"], rows["lr_kind"]))
    van = rows.where(rows.eq("alpha_kind", "constant") & rows.eq("lr_kind", "cosine"))
    if star.empty:
        raise NotTestable("no PD* runs")
    tests, parts, ivals, ev = [], [], [], []
    for student in dict.fromkeys(star["student"]):
        s = cond(star.where(star.eq("student", student)), "PD*")
        e = gain(s, x.noise)
        tests.append(effect(e, +1, x.margin))
        v = cond(van.where(van.eq("student", student)), "vanilla")
        txt, iv = f"{student}: {s.mean:+.2f}{x.u}", f"{student}: PD* {e.text()}"
        if v is not None:
            c = contrast(s, v, x.noise)
            tests.append(effect(c, +1, x.margin))
            txt += f" (vanilla {v.mean:+.2f}{x.u})"
            iv += f"; PD* − vanilla {c.text()}"
        parts.append(txt)
        ivals.append(iv)
        ev += _ev(s, v)
    return Result(all_of(tests), "; ".join(parts), "; ".join(ivals), ev,
                  "reproduced when PD* beats LM-only and vanilla PD on every size; contradicted when on any size "
                  "it is shown to gain less than δ over either (Bonferroni)")


M, A = DEFAULT_MARGIN, DEFAULT_ACC_MARGIN
_D = "the suite's default margin"
_AD = "the default: Table 1's vanilla PD gain, 38.3 vs 37.7"
FINDINGS: list[Claim] = [
    Claim("vanilla", "Vanilla PD beats LM-only", "+1.6% (1.9B)", ("preliminary",), "one-sided, gain > 0", M, _D,
          _vanilla,
          acc_margin=A, acc_why=_AD),
    Claim("top_p", "Truncation barely matters for p", "+1.3 to +2.1% over p = 0.5-0.95", ("top_p",),
          "equivalence (TOST) of every pair of p", M,
          "the loss proxy's default (the paper's 'barely matters' is a benchmark spread)", _top_p,
          acc_margin=0.3, acc_why="the paper's own 'barely matters': its 0.8 % spread over p, of its 37.7 average"),
    Claim("top_k_best", "k = 50 is the best k", "+4.9% at top-0.95-50", ("top_k",),
          "one-sided, k = 50 above every other k", 0.0, "contradicted only when another k is better", _top_k_best,
          acc_margin=0.0, acc_why="contradicted only when another k is better"),
    Claim("top_k_one", "Even k = 1 helps a little", "+1.9% at top-0.95-1", ("top_k",), "one-sided, gain > 0", 0.5,
          "'a little': half the default", _top_k_one,
          acc_margin=0.3, acc_why="'a little': half the default"),
    Claim("tau_low", "τ ≤ 2 all help (best 0.5)", "best +2.7% at τ = 0.5", ("temperature",),
          "one-sided, every τ ≤ 2 gains > 0", M, _D, _tau_low,
          acc_margin=A, acc_why=_AD),
    Claim("tau_high", "τ ≥ 5 gives nothing", "≈ 0% at τ = 5, 10", ("temperature",),
          "equivalence (TOST) of each τ ≥ 5 to no gain", M, _D, _tau_high,
          acc_margin=A, acc_why=_AD),
    Claim("adaptive", "Adaptive τ is no better than a good fixed τ", "NormKD/WTTM/AdaKD ≤ best fixed τ",
          ("adaptive_temperature", "temperature"), "one-sided non-superiority over a selected fixed τ", M, _D,
          _adaptive,
          acc_margin=A, acc_why=_AD),
    Claim("kld_nll", "KLD ≥ NLL", "KLD ≥ NLL", ("kd_loss",), "", 0.0,
          "identical by construction: with a fixed teacher KLD − NLL is a constant, the same gradient", _losses,
          testable=False,
          acc_margin=0.0, acc_why=""),
    Claim("nll", "NLL > LM-only", "NLL > 0", ("kd_loss",), "one-sided, gain > 0", M, _D, _nll,
          acc_margin=A, acc_why=_AD),
    Claim("mse", "MSE hurts", "−7.6%", ("kd_loss",), "one-sided, gain < 0", M, _D, _mse,
          acc_margin=A, acc_why=_AD),
    Claim("alpha", "Best static α = 0.9", "+3.6% at α = 0.9", ("alpha",), "one-sided, α = 0.9 above every other α",
          0.0, "contradicted only when another α is better", _alpha,
          acc_margin=0.0, acc_why="contradicted only when another α is better"),
    Claim("kd_first", "KD-first beats LM-first (linear_dec > linear_inc)", "Linear Dec > Linear Inc",
          ("schedules",), "one-sided, difference > 0", M, _D, _kd_first,
          acc_margin=A, acc_why=_AD),
    Claim("schedule", "Best schedule: WSD-α with WSD-LR", "+8.0%", ("schedules",),
          "one-sided, WSD-α + WSD-LR above every other schedule", 0.0,
          "contradicted only when another schedule is better", _schedules,
          acc_margin=0.0, acc_why="contradicted only when another schedule is better"),
    Claim("align", "WSD-α needs WSD-LR: with a cosine LR it gives less", "+2.3% vs +8.0%", ("schedules",),
          "one-sided, difference > 0", M, _D, _align,
          acc_margin=A, acc_why=_AD),
    Claim("student_size", "Larger students gain more", "330M −1.5% … 6.8B +6.9%", ("student_size",),
          "one-sided, slope per decade of N > 0", M, "the suite's default margin, per decade of N",
          _student_size,
          acc_margin=A, acc_why=_AD + ", per decade of N"),
    Claim("teacher_size", "The bigger teacher is not better (capacity gap)", "32B ≤ 9B", ("teacher_size",),
          "one-sided non-superiority, bigger − smaller teacher < δ", M, _D, _teacher_size,
          acc_margin=A, acc_why=_AD),
    Claim("long", "Over a long run the gain stays positive, grows, then levels off", "500B tokens, Table 12",
          ("long_training",), "one-sided, every part (positive, plateau > first, end > plateau − δ)", M, _D, _long,
          acc_margin=A, acc_why=_AD),
    Claim("online_early", "Online logits from an early teacher hurt badly", "−20.9%", ("online_offline",),
          "one-sided, gain < 0", 2.0, "'badly': twice the default", _online_early,
          acc_margin=1.2, acc_why="'badly': twice the default"),
    Claim("online_late", "Late-window online logits are close to neutral", "−3.9%; +0.5% with α = 0.1, top-0.95-50",
          ("online_offline",), "equivalence (TOST) of each late variant to no gain", 2.0,
          "'close to neutral': twice the loss proxy's default", _online_late,
          acc_margin=1.5, acc_why="'close to neutral': the paper's own −3.9 %, of its 37.7 average"),
    Claim("pd_star", "PD* (top-0.95-50, τ = 2, WSD-α + WSD-LR) is best on every size", "+9.3 / +8.7 / +10.8%",
          ("pd_star",), "one-sided, PD* above LM-only and vanilla PD on every size", M, _D, _pd_star,
          acc_margin=A, acc_why=_AD),
]


def metric_pairs(pairs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A pairs frame whose gain_pct is the metric's gain: the loss gain (%) as it is, or the
    accuracy gain (points) with the runs that recorded no benchmark left out."""
    if metric == "loss" or pairs.empty:
        return pairs
    acc = pd.to_numeric(pairs["acc_gain"], errors="coerce") if "acc_gain" in pairs else pd.Series(
        np.nan, index=pairs.index)
    keep = acc.notna().to_numpy()
    return pairs[keep].assign(gain_pct=acc[keep].to_numpy(float))


def _check_metric(data: SuiteData, metric: str, alpha: float) -> tuple[list[Verdict], NoiseBook]:
    """Every finding on one metric: its verdicts at level alpha, then Holm across this metric's
    tested findings (a reproduce and a contradict test each)."""
    pairs = {k: metric_pairs(f, metric) for k, f in data.pairs.items()}
    frames = [f for f in pairs.values() if not f.empty]
    noise = noise_book(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIR_COLUMNS))
    rows = {k: Rows.of(f) for k, f in pairs.items()}
    curves = data.acc_curves if metric == "accuracy" else data.curves
    out = []
    for c in FINDINGS:
        v = Verdict(metric, c.test_text(metric), c.margin_of(metric) if c.testable else None)
        missing = [n for n in c.needs if n not in data.pairs]
        empty = [n for n in c.needs if n in data.pairs and data.pairs[n].empty]
        unscored = [n for n in c.needs if n in pairs and pairs[n].empty and not data.pairs[n].empty]
        if missing:
            v.note = "study not in the suite: " + ", ".join(missing)
        elif empty:
            v.note = "no finished PD run with its finished baseline yet in: " + ", ".join(empty)
        elif metric == "accuracy" and not c.on_accuracy:
            v.verdict, v.note = NOT_TESTABLE, "the paper does not state this finding on benchmark accuracy"
        elif unscored and c.testable:
            v.verdict, v.note = NOT_TESTABLE, "no benchmark scores recorded in: " + ", ".join(unscored)
        else:
            try:
                r = c.check(Ctx(rows, data, noise, c.margin_of(metric), metric, curves))
                if not c.testable:
                    raise NotTestable(c.why)
            except NotTestable as e:
                v.verdict, v.note = NOT_TESTABLE, str(e) or c.why
            else:
                v.ours, v.interval, v.evidence, v.note = r.ours, r.interval, r.evidence, r.note
                v.p_reproduce, v.p_contradict = r.test.p_reproduce, r.test.p_contradict
                v.verdict = r.test.verdict(alpha)
                if v.verdict == REPRODUCED and _small(v.p_contradict, alpha):
                    v.note = "; ".join(filter(None, [v.note, "shown, but smaller than the margin δ"]))
        out.append(v)
    tested = [v for v in out if v.verdict in (REPRODUCED, CONTRADICTED, INCONCLUSIVE)]
    rejected = holm([p for v in tested for p in (v.p_reproduce, v.p_contradict)], alpha)
    for i, v in enumerate(tested):
        v.holm = REPRODUCED if rejected[2 * i] else CONTRADICTED if rejected[2 * i + 1] else INCONCLUSIVE
    return out, noise


def check_suite(data: SuiteData, *, alpha: float = ALPHA, metrics: Sequence[str] = METRICS
                ) -> tuple[list[Finding], NoiseBook]:
    """Every finding on the suite's data (see SuiteData; check_findings reads it from Results), on
    benchmark accuracy and on the held-out loss gain: the per-finding verdict at level alpha, then
    Holm across each metric's family separately. Returns the findings and the loss gain's noise
    (check_suite_noise returns every metric's)."""
    found, noises = check_suite_noise(data, alpha=alpha, metrics=metrics)
    return found, noises.get("loss", noises.get("accuracy"))


def check_suite_noise(data: SuiteData, *, alpha: float = ALPHA, metrics: Sequence[str] = METRICS
                      ) -> tuple[list[Finding], dict[str, NoiseBook]]:
    """check_suite, with every metric's noise ({"accuracy": NoiseBook, "loss": NoiseBook})."""
    per = {m: _check_metric(data, m, alpha) for m in metrics}
    out = []
    for i, c in enumerate(FINDINGS):
        f = Finding(c.key, c.claim, c.paper, primary="accuracy" if c.on_accuracy else "loss")
        for m, (verdicts, _) in per.items():
            setattr(f, m, verdicts[i])
        out.append(f)
    return out, {m: n for m, (_, n) in per.items()}


def check_findings(results: Mapping[str, Results], *, alpha: float = ALPHA) -> tuple[list[Finding], NoiseBook]:
    """Check every finding against the studies given ({study name: Results}); findings whose studies
    are missing are returned with verdict "not run". The noise returned is the loss gain's."""
    return check_suite(suite_data(results), alpha=alpha)


METRIC_NAMES = {"accuracy": "benchmark accuracy", "loss": "held-out loss gain (a proxy)"}
COLUMN_NAMES = {"accuracy": "accuracy", "loss": "loss proxy"}


def family_text(findings: Sequence[Finding], alpha: float = ALPHA) -> str:
    """The family-wise control used across the table, in one sentence per metric."""
    parts = []
    for m in METRICS:
        tested = [f.of(m) for f in findings if f.of(m).holm]
        kept = sum(v.holm in (REPRODUCED, CONTRADICTED) for v in tested)
        parts.append(f"on {METRIC_NAMES[m]}, Holm over the {2 * len(tested)} tests of its {len(tested)} findings "
                     f"tested: {kept} verdicts survive (column 'Holm, {COLUMN_NAMES[m]}')")
    return (f"Each verdict is a test at level {alpha:g} (one-sided tests, TOST; 1 − 2α = {1 - 2 * alpha:.0%} "
            "intervals). Family-wise error ≤ " f"{alpha:g} for each metric's family separately (a reproduce and a "
            "contradict test per finding): " + "; ".join(parts) + ".")


def findings_frame(findings: list[Finding]) -> pd.DataFrame:
    """The findings as a table (one row each): the paper's claim, the primary metric, then the
    accuracy verdict and the loss-proxy verdict, each with its test, estimate, interval, p-values,
    verdict, verdict after Holm within its metric, and note."""
    def p(v):
        return "—" if not np.isfinite(v) else f"{v:.3g}"

    rows = []
    for f in findings:
        a, lo = f.accuracy, f.loss
        rows.append({"finding": f.claim, "paper (benchmark Δ)": f.paper, "primary": f.primary,
                     "test, accuracy (δ in accuracy pts)": a.test, "ours, accuracy (benchmark average, pts)": a.ours,
                     "interval, accuracy (90%)": a.interval,
                     "p reproduce / contradict, accuracy": f"{p(a.p_reproduce)} / {p(a.p_contradict)}",
                     "verdict, accuracy": a.verdict, "Holm, accuracy": a.holm, "note, accuracy": a.note,
                     "test, loss proxy (δ in loss-gain pts)": lo.test,
                     "ours, loss proxy (held-out loss gain)": lo.ours, "interval, loss proxy (90%)": lo.interval,
                     "p reproduce / contradict, loss proxy": f"{p(lo.p_reproduce)} / {p(lo.p_contradict)}",
                     "verdict, loss proxy": lo.verdict, "Holm, loss proxy": lo.holm, "note, loss proxy": lo.note,
                     "verdict": f.verdict, "runs": len(set(a.evidence) | set(lo.evidence))})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Beyond the paper: a two-level factorial grid's main effects and interactions
# ------------------------------------------------------------------------------------------------

KNOBS = ("top_p", "top_k", "temperature", "adaptive", "loss", "alpha_kind", "alpha", "lr_kind", "student",
         "teacher", "window")


def factorial_effects(pairs: pd.DataFrame, noise: Noise) -> pd.DataFrame:
    """Main effects and two-way interactions of a two-level factorial grid of PD runs (e.g.
    mini_interactions: top_k × τ × α schedule), on the gain in % points: an effect is the mean
    gain at a factor's second level minus at its first; an interaction A×B is half the difference
    between A's effect at B's second level and at its first. With one run per cell on one
    baseline, each effect's 95 % half-width is t(dof_eps)·σ_eps·sqrt(4/n_runs) (two means of n/2
    runs; the seed's share cancels). Columns: effect, levels, estimate, half_width, verdict
    ("real" when the interval excludes 0)."""
    cols = ["effect", "levels", "estimate", "half_width", "verdict"]
    knobs = [k for k in KNOBS if k in pairs and pairs[k].astype(str).nunique() == 2]
    if len(knobs) < 2:
        return pd.DataFrame(columns=cols)
    x = pairs.assign(**{k: pairs[k].astype(str) for k in knobs})
    levels = {k: sorted(x[k].unique(), key=lambda v: (float(v) if _isnum(v) else 0.0, v)) for k in knobs}
    sign = {k: np.where(x[k] == levels[k][1], 1.0, -1.0) for k in knobs}
    g = x["gain_pct"].to_numpy(float)
    n = len(g)
    nz = _book(noise).for_rows(pairs)
    half = t_quantile(0.975, nz.dof_eps) * nz.sigma_eps * math.sqrt(4.0 / n) if nz.dof_eps else float("nan")
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
