"""analysis.findings and analysis.suite: the noise model (distinct runs, least squares) and the tests
(one-sided, TOST, intersection-union, Bonferroni, Holm) against independent computations with
scipy, the selection-aware best-of test under its null, each verdict where it belongs on planted
results, and the suite report through the CLI."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.findings import (CONTRADICTED, INCONCLUSIVE, NOT_RUN, NOT_TESTABLE, REPRODUCED, VERDICTS, Estimate,
                               Noise,
                               NoiseBook, all_of, any_of, check_findings, check_suite, cond, contrast, effect,
                               equivalent, estimate_noise, gain, gains_over_training, holm, not_above, pd_pairs,
                               study_key, suite_data, t_quantile)
from analysis.results import stable_hash
from results import load_results
from results.engine import make_engine, session_scope
from results.schema import Base, Eval, Metric, Run, Study, StudyRun

ROOT = Path(__file__).resolve().parents[2]
LM = {0: 5.30, 1: 5.42, 2: 5.34}  # LM-only loss per seed


def _cfg(kind, seed, *, student="d64l3", teacher="t1", alpha=0.9, alpha_kind="constant", lr="cosine", loss="kld",
         top_p=0.95, top_k=100, tau=1.0, adaptive=None, source="offline", window=None, baseline=None,
         tokens=500_000, normalization="renormalize"):
    lm = kind == "baseline"
    n = {"d32l2": 4e4, "d64l3": 1.5e5, "d96l3": 3.3e5, "d128l4": 7.9e5}[student]
    return {"kind": kind, "student": student, "teacher": None if lm else teacher, "seed": seed, "tokens": tokens,
            "lr_schedule": {"kind": lr}, "alpha_schedule": {"kind": "constant" if lm else alpha_kind,
                                                            "alpha": 0.0 if lm else alpha},
            "kd": None if lm else {"kind": loss, "temperature": tau, "adaptive": adaptive,
                                   "normalization": normalization},
            "logits": None if lm else {"source": source, "top_p": top_p, "top_k": top_k, "window": window},
            "baseline_hash": baseline, "num_non_embedding_params": n, "num_params": 3 * n}


ACC_LM = {0: 0.27, 1: 0.255, 2: 0.28}  # LM-only benchmark accuracy per seed (a trial's "acc": PD's gain in points)


def build_db(path, studies: dict[str, list[tuple[str, dict, float]]], evals: bool = True) -> str:
    """studies: {name: [(trial_id, student config kwargs incl. seed, gain %)]}; each PD run gets an
    LM-only baseline (loss LM[seed], or LM[seed]·(1+student offset)) and loss LM·(1 − gain/100).
    Benchmark scores (evals=False: none): with a trial's "acc" (accuracy gain in points) the
    baseline scores ACC_LM[seed] and the PD run that plus acc on two tasks, else one task whose
    score follows the loss."""
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    runs: dict[str, int] = {}
    with session_scope(engine) as s:
        def run(cfg, losses, trial, study, acc=None):
            h = stable_hash(cfg)
            if h not in runs:
                r = Run(config_hash=h, kind=cfg["kind"], config=cfg, status="completed")
                s.add(r)
                s.flush()
                runs[h] = r.id
                for step, (tokens, v) in enumerate(losses, 1):
                    s.add(Metric(run_id=r.id, step=step, tokens=tokens, name="val_loss", value=v, wall_time=0.0))
                    if evals and acc is None:
                        s.add(Eval(run_id=r.id, step=step, tokens=tokens, task="pdspace_nextline", metric="acc",
                                   value=0.3 + 0.01 * (5.5 - v), stderr=0.03))
                    elif evals:
                        for task in ("pdspace_nextline", "pdspace_cloze"):
                            s.add(Eval(run_id=r.id, step=step, tokens=tokens, task=task, metric="acc", value=acc,
                                       stderr=0.03))
            s.add(StudyRun(study_id=study.id, run_id=runs[h], trial_id=trial, factor="x", value="y"))
            return h

        for name, trials in studies.items():
            st = Study(name=name, spec={"name": name, "description": f"planted {name}"}, spec_hash=name)
            s.add(st)
            s.flush()
            for trial_id, kw, gain in trials:
                kw = dict(kw)
                seed = kw.pop("seed", 0)
                curve = kw.pop("curve", None)
                lm_scale = kw.pop("lm_scale", 1.0)
                acc = kw.pop("acc", None)
                lm_kw = {k: v for k, v in kw.items() if k in ("student", "lr", "tokens")}
                bcfg = _cfg("baseline", seed, **lm_kw)
                lm = LM[seed] * (1.05 - 0.05 * ["d32l2", "d64l3", "d96l3", "d128l4"].index(bcfg["student"])) * lm_scale
                if curve is None:
                    blosses, plosses = [(500_000, lm)], [(500_000, lm * (1 - gain / 100))]
                else:  # a long run: (tokens, gain) points
                    blosses = [(t, lm + 1.0 / (i + 1)) for i, (t, _) in enumerate(curve)]
                    plosses = [(t, (lm + 1.0 / (i + 1)) * (1 - g / 100)) for i, (t, g) in enumerate(curve)]
                bh = run(bcfg, blosses, f"baseline:{trial_id}", st, None if acc is None else ACC_LM[seed])
                run(_cfg("student", seed, baseline=bh, **kw), plosses, trial_id, st,
                    None if acc is None else ACC_LM[seed] + acc / 100.0)
    engine.dispose()
    return url


def test_study_key():
    assert study_key("mini_top_k") == "top_k"
    assert study_key("paper_student_size") == "student_size"
    assert study_key("quickstart") == "quickstart"


def _pairs(rows):
    return pd.DataFrame(rows, columns=["study", "group", "seed", "gain_pct"])


def test_noise_matches_least_squares_and_pooled_variance():
    rng = np.random.default_rng(0)
    rows = []
    for g, mu in enumerate([1.0, 2.0, 4.0]):
        for seed, beta in enumerate([0.0, 0.5, -0.3, 0.2]):
            rows.append(("s", f"c{g}", seed, mu + beta + rng.normal(0, 0.3)))
    rows.append(("s", "single", 0, 9.0))  # a one-seed condition adds nothing to either estimate
    pairs = _pairs(rows)
    noise = estimate_noise(pairs)
    multi = pairs[pairs["group"] != "single"]
    # sigma_seed: pooled within-condition variance
    ss = sum(((g - g.mean()) ** 2).sum() for _, g in multi.groupby("group")["gain_pct"])
    assert noise.dof_seed == 9
    assert noise.sigma_seed == pytest.approx(math.sqrt(ss / 9))
    # sigma_eps: residual of an additive condition + seed model fitted by least squares
    X = np.column_stack([np.ones(len(multi))]
                        + [(multi["group"] == f"c{g}").to_numpy(float) for g in (1, 2)]
                        + [(multi["seed"] == s).to_numpy(float) for s in (1, 2, 3)])
    y = multi["gain_pct"].to_numpy(float)
    resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    assert noise.dof_eps == (3 - 1) * (4 - 1)
    assert noise.sigma_eps == pytest.approx(math.sqrt((resid ** 2).sum() / 6))


def test_noise_without_seeds_is_nan():
    noise = estimate_noise(_pairs([("s", "a", 0, 1.0), ("s", "b", 0, 2.0)]))
    assert noise.dof_seed == 0 and math.isnan(noise.sigma_seed) and noise.dof_eps == 0
    est = gain(cond(_pairs([("s", "a", 0, 1.0)]), "a"), noise)
    assert not est.usable and effect(est, +1, 1.0).verdict() == INCONCLUSIVE


def test_contrast_is_scipys_paired_t_interval():
    a = _pairs([("s", "a", s, v) for s, v in enumerate([3.0, 3.4, 2.9, 3.8])])
    b = _pairs([("s", "b", s, v) for s, v in enumerate([2.0, 2.9, 2.2, 2.6])])
    est = contrast(cond(a, "a"), cond(b, "b"), Noise(float("nan"), 0, float("nan"), 0))
    ci = stats.ttest_rel(a["gain_pct"], b["gain_pct"]).confidence_interval(0.95)
    assert est.interval(0.025) == (pytest.approx(ci.low), pytest.approx(ci.high))
    one = gain(cond(a, "a"), Noise(0.5, 10, 0.2, 10))
    ci1 = stats.ttest_1samp(a["gain_pct"], 0).confidence_interval(0.95)
    assert one.interval(0.025) == (pytest.approx(ci1.low), pytest.approx(ci1.high))


def test_single_seed_intervals_use_t_at_the_noise_dof():
    noise = Noise(0.4, 12, 0.25, 8)
    g = gain(cond(_pairs([("s", "a", 0, 1.0)]), "a"), noise)
    assert g.se == pytest.approx(0.4) and g.dof == 12
    assert g.interval(0.025)[1] - 1.0 == pytest.approx(stats.t.ppf(0.975, 12) * 0.4)  # t, not z
    # two one-seed conditions on one baseline (the fallback frames' block is the seed): √2·σ_eps, dof_eps
    c = contrast(cond(_pairs([("s", "a", 0, 1.0)]), "a"), cond(_pairs([("s", "b", 0, 0.2)]), "b"), noise)
    assert c.mean == pytest.approx(0.8) and c.se == pytest.approx(math.sqrt(2) * 0.25) and c.dof == 8
    # on two baselines the baseline's share does not cancel: √2·σ_seed
    c2 = contrast(cond(_pairs([("s", "a", 0, 1.0)]), "a"), cond(_pairs([("s", "b", 1, 0.2)]), "b"), noise)
    assert c2.se == pytest.approx(math.sqrt(2) * 0.4) and c2.dof == 12


@pytest.mark.parametrize("margin", [0.5, 1.0])
def test_one_sided_and_tost_p_values_are_scipys(margin):
    x = np.array([0.9, 1.4, 0.6, 1.1, 0.8])
    est = Estimate(float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size)), x.size - 1, "")

    def p(bound, side):
        return stats.ttest_1samp(x, bound, alternative=side).pvalue

    e = effect(est, +1, margin)
    assert e.p_reproduce == pytest.approx(p(0.0, "greater")) and e.p_contradict == pytest.approx(p(margin, "less"))
    neg = effect(Estimate(-est.mean, est.se, est.dof, ""), -1, margin)  # the same claim, signs flipped
    assert (neg.p_reproduce, neg.p_contradict) == (pytest.approx(e.p_reproduce), pytest.approx(e.p_contradict))
    tost = equivalent(est, margin)
    assert tost.p_reproduce == pytest.approx(max(p(-margin, "greater"), p(margin, "less")))
    assert tost.p_contradict == pytest.approx(min(1.0, 2 * min(p(margin, "greater"), p(-margin, "less"))))
    na = not_above(est, margin)
    assert na.p_reproduce == pytest.approx(p(margin, "less")) and na.p_contradict == pytest.approx(p(margin, "greater"))
    # TOST at level α is the 1 − 2α interval inside (−δ, δ)
    lo, hi = est.interval(0.05)
    assert (tost.p_reproduce <= 0.05) == (-margin < lo and hi < margin)


def test_intersection_union_bonferroni_and_holm():
    from analysis.findings import Test

    parts = [Test(0.01, 0.30), Test(0.04, 0.02), Test(0.03, 0.60)]
    assert (all_of(parts).p_reproduce, all_of(parts).p_contradict) == (0.04, pytest.approx(0.06))
    assert (any_of(parts).p_reproduce, any_of(parts).p_contradict) == (pytest.approx(0.03), 0.60)
    # Holm by hand: sorted 0.001 ≤ .05/5, 0.011 ≤ .05/4, 0.02 > .05/3 stops
    assert list(holm([0.02, 0.001, 0.5, 0.011, 0.04])) == [False, True, False, True, False]


def test_best_of_accounts_for_the_selection_under_its_null():
    """All seven k equal (one seed each, one baseline): "k = 50 is best" must be contradicted (another
    k shown better) at most α of the time. Testing 50 against the best-looking rival without
    correction, as before, said so ~10 % of the time."""
    from analysis.findings import Ctx, _best_of

    rng = np.random.default_rng(0)
    noise = NoiseBook(1.0, 200, 0.8, 200)
    x = Ctx({}, None, noise, 0.0)
    contradicted = naive = 0
    reps = 2000
    for _ in range(reps):
        g = rng.normal(0.0, 0.8, 7)
        conds = {k: cond(_pairs([("s", f"k={k}", 0, v)]), str(k)) for k, v in zip((1, 3, 5, 10, 20, 50, 100), g)}
        r = _best_of(x, conds, 50.0, "k")
        contradicted += r.test.verdict() == CONTRADICTED
        rival = max(v for k, v in zip((1, 3, 5, 10, 20, 50, 100), g) if k != 50)
        naive += stats.t.sf((rival - g[5]) / (math.sqrt(2) * 0.8), 200) <= 0.05
    mc = 3 * math.sqrt(0.05 * 0.95 / reps)
    assert contradicted / reps <= 0.05 + mc and naive / reps > 0.1


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    seeds = (0, 1, 2)
    jitter = {0: 0.0, 1: 0.3, 2: -0.2}
    studies = {
        # vanilla (α = 1) +2 %, α = 0.9 +4 %: reproduced
        "mini_preliminary": [("base", {"seed": 0, "alpha": 0.9}, 4.0)]  # the same run as alpha=0.9,seed=0
        + [(f"alpha={a},seed={s}", {"seed": s, "alpha": a}, g + jitter[s]) for a, g in ((1.0, 2.0), (0.9, 4.0))
           for s in seeds],
        # MSE clearly hurts (reproduced); NLL helps, KLD ≥ NLL
        "mini_kd_loss": [(f"loss={l},seed={s}", {"seed": s, "loss": l}, g + jitter[s])
                         for l, g in (("nll", 3.0), ("kld", 4.0), ("mse", -5.0)) for s in seeds],
        # k = 10 is far better than k = 50: not reproduced
        "mini_top_k": [(f"top_k={k}", {"top_k": k}, g) for k, g in ((1, -3.0), (10, 9.0), (50, 2.0), (100, 2.5))],
        # the gain grows with size: reproduced
        "mini_student_size": [(f"student={st},seed={s}", {"seed": s, "student": st}, g + jitter[s])
                              for st, g in (("d32l2", -1.0), ("d64l3", 2.0), ("d96l3", 3.5), ("d128l4", 5.0))
                              for s in seeds],
        # a 2×2×2 grid with a planted k × τ interaction
        "mini_interactions": [(f"top_k={k},temperature={t},kind={a}", {"top_k": k, "tau": t, "alpha_kind": a,
                                                                      "lr": "wsd"},
                               2 + 1.5 * (k == 50) - 1.0 * (t == 2) + 3.0 * (k == 50 and t == 2))
                              for k in (10, 50) for t in (0.5, 2) for a in ("constant", "wsd_alpha")],
        # rises, then levels off
        "mini_long_training": [("student=d64l3", {"tokens": 1_250_000, "curve": [(250_000, 1.0), (500_000, 3.0), (750_000, 4.0),
                                                           (1_000_000, 4.2), (1_250_000, 4.3)]}, 0.0)],
    }
    url = build_db(tmp_path_factory.mktemp("findings") / "f.db", studies)
    return url, list(studies)


def test_verdicts_on_planted_results(planted):
    url, names = planted
    findings, noise = check_findings({n: load_results(url, n) for n in names})
    by = {f.key: f.loss for f in findings}  # the loss proxy (the synthetic benchmark scores follow the loss)
    assert noise.dof_seed > 0 and noise.sigma_seed == pytest.approx(np.std([0.0, 0.3, -0.2], ddof=1), abs=1e-6)
    assert noise.sigma_eps == pytest.approx(0.0, abs=1e-6)  # planted gains are exactly additive
    assert by["vanilla"].verdict == REPRODUCED and "+2.03%" in by["vanilla"].ours  # 2 + mean jitter
    assert by["mse"].verdict == REPRODUCED and by["nll"].verdict == REPRODUCED
    assert by["kld_nll"].verdict == NOT_TESTABLE and "identical by construction" in by["kld_nll"].note
    assert by["top_k_best"].verdict == CONTRADICTED and "best k = 10" in by["top_k_best"].ours
    assert by["top_k_one"].verdict == CONTRADICTED  # k = 1 hurts here
    assert by["student_size"].verdict == REPRODUCED
    assert by["long"].verdict == REPRODUCED
    assert by["alpha"].verdict == NOT_RUN and "alpha" in by["alpha"].note
    assert all(f.evidence for f in by.values() if f.verdict in (REPRODUCED, CONTRADICTED, INCONCLUSIVE))
    assert any("mini_kd_loss: loss=mse,seed=1" == e for e in by["mse"].evidence)
    # every tested finding has its two p-values, a verdict after Holm, and its margin written next to it
    for f in by.values():
        if f.verdict in (REPRODUCED, CONTRADICTED, INCONCLUSIVE):
            assert np.isfinite(f.p_reproduce) and np.isfinite(f.p_contradict) and f.holm
            assert f"δ = {f.margin:g} pts" in f.test


def test_a_run_named_twice_counts_once(planted):
    url, _ = planted
    pairs = pd_pairs(load_results(url, "mini_preliminary"))
    assert len(pairs) == 6 and "base" not in set(pairs["trial_id"])


def test_a_gain_that_shrinks_after_its_peak_does_not_level_off(tmp_path, planted):
    url, _ = planted
    noisy = {n: load_results(url, n) for n in ("mini_preliminary", "mini_kd_loss")}  # for the noise
    curve = [(250_000, 4.0), (500_000, 5.5), (1_000_000, 4.0), (2_000_000, 2.0), (2_500_000, 0.5)]
    shr = build_db(tmp_path / "s.db", {"mini_long_training": [("student=d64l3", {"tokens": 2_500_000,
                                                                                "curve": curve}, 0.0)]})
    findings, _ = check_findings({**noisy, "mini_long_training": load_results(shr, "mini_long_training")})
    long = next(f.loss for f in findings if f.key == "long")
    # the end (+0.5) is 2.5 pts below the plateau (+3.0, the second half before it) with δ = 1
    assert long.verdict == CONTRADICTED and "plateau +3.0%, end +0.5%" in long.ours


def test_gains_over_training(planted):
    url, _ = planted
    curve = gains_over_training(load_results(url, "mini_long_training"))
    assert list(curve["tokens"]) == [250_000, 500_000, 750_000, 1_000_000, 1_250_000]
    assert curve["gain_pct"].to_numpy() == pytest.approx([1.0, 3.0, 4.0, 4.2, 4.3])


def test_pd_pairs_pairs_each_run_with_its_baseline(planted):
    url, _ = planted
    pairs = pd_pairs(load_results(url, "mini_kd_loss"))
    assert len(pairs) == 9
    row = pairs[pairs["trial_id"] == "loss=nll,seed=1"].iloc[0]
    assert row["lm"] == pytest.approx(LM[1]) and row["gain_pct"] == pytest.approx(3.3)
    assert row["baseline_trial_id"] == "baseline:loss=nll,seed=1"


def test_suite_report_through_the_cli(planted, tmp_path):
    url, _ = planted
    out = tmp_path / "suite.html"
    res = subprocess.run([sys.executable, "-m", "cli", "report", "studies/mini/", "--db", url,
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert "The paper&#x27;s findings, checked" in text or "The paper's findings, checked" in text
    assert "Not run yet: " in text and "mini_alpha" in text  # studies of the folder not in the database
    assert "fig4_delta_vs_size_loss" in text and "fig3_delta_vs_top_k_loss" in text
    assert "The paper (Table 8)" in text and "The paper (Table 11)" in text
    assert "| k = 50 is the best k |" in res.stdout and "| contradicted |" in res.stdout
    assert "Holm over the" in res.stdout and "Holm over the" in text  # the family-wise control, next to the table
    assert "Beyond the paper: interactions" in text
    assert "top_k × temperature" in res.stdout and "+1.50 ± " in res.stdout  # 3.0 / 2
    assert "best cell: top_k=50,temperature=2" in res.stdout


def test_suite_report_refuses_a_database_without_the_studies(tmp_path):
    url = build_db(tmp_path / "e.db", {"other": []})
    res = subprocess.run([sys.executable, "-m", "cli", "report", "studies/mini/", "--db", url],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    n = len([f for f in (ROOT / "studies" / "mini").glob("*.yaml") if not f.name.startswith("_")])
    assert res.returncode == 2 and f"none of the {n} studies is in the database" in res.stderr
    assert "Traceback" not in res.stderr


def test_factorial_effects_match_a_hand_computation():
    from analysis.findings import factorial_effects

    # gain = 2 + 1.5·[k=50] − 1·[τ=2] + 0.8·[k=50 and τ=2] (no α effect), one run per cell
    rows = []
    for k in (10, 50):
        for tau in (0.5, 2.0):
            for kind in ("constant", "wsd_alpha"):
                g = 2 + 1.5 * (k == 50) - 1.0 * (tau == 2.0) + 0.8 * (k == 50 and tau == 2.0)
                rows.append({"top_k": k, "temperature": tau, "alpha_kind": kind, "gain_pct": g})
    eff = factorial_effects(pd.DataFrame(rows), Noise(0.3, 10, 0.2, 10)).set_index("effect")
    # main effect of k: mean over τ of the k effect = 1.5 + 0.8/2; interaction: half the change = 0.4
    assert eff.loc["top_k", "estimate"] == pytest.approx(1.9)
    assert eff.loc["temperature", "estimate"] == pytest.approx(-1.0 + 0.4)
    assert eff.loc["alpha_kind", "estimate"] == pytest.approx(0.0)
    assert eff.loc["top_k × temperature", "estimate"] == pytest.approx(0.4)
    assert eff.loc["top_k × alpha_kind", "estimate"] == pytest.approx(0.0)
    assert eff.loc["top_k", "half_width"] == pytest.approx(stats.t.ppf(0.975, 10) * 0.2 * math.sqrt(4 / 8))
    assert eff.loc["top_k", "verdict"] == "real" and eff.loc["alpha_kind", "verdict"] == "within noise"


def test_run_summary_prints_whole_trial_names(planted):
    from analysis.summary import loss_comparison

    url, _ = planted
    text = loss_comparison(url, "mini_interactions")
    assert "top_k=50,temperature=2,kind=wsd_alpha " in text  # not cut at 28 characters
    row = next(line for line in text.splitlines() if line.startswith("top_k=10,temperature=0.5,kind=constant "))
    assert "+2.0%" in row and "PD better (1 seed)" in row


def test_fit_warnings_name_loss_that_does_not_fall_with_size(tmp_path, planted):
    from analysis.suite import fit_warnings

    url = build_db(tmp_path / "w.db", {"mini_w": [("student=d64l3", {"student": "d64l3"}, 1.0),
                                                  ("student=d128l4", {"student": "d128l4", "lm_scale": 1.2}, 1.0)]})
    warn = fit_warnings(load_results(url, "mini_w"), [])
    assert len(warn) == 1 and "the larger d128l4 ends worse than d64l3" in warn[0]
    ok_url, _ = planted
    assert fit_warnings(load_results(ok_url, "mini_student_size"), []) == []


def test_single_seed_intervals_use_their_own_student_noise():
    from analysis.findings import noise_book

    rows = [("s", f"c{c}", seed, "d64l3", 2.0 + c + d) for c in (0, 1) for seed, d in enumerate([0.0, 0.1, -0.1])]
    rows += [("s", "big", seed, "d128l4", 6.0 + d) for seed, d in enumerate([2.0, -3.0, 1.0])]
    pairs = pd.DataFrame(rows, columns=["study", "group", "seed", "student", "gain_pct"])
    book = noise_book(pairs)
    small = book.for_rows(pd.DataFrame({"student": ["d64l3"]}))
    big = book.for_rows(pd.DataFrame({"student": ["d128l4"]}))
    assert small.sigma_seed == pytest.approx(0.1) and small.sigma_eps == pytest.approx(0.0, abs=1e-12)
    assert big.sigma_seed == pytest.approx(np.std([2.0, -3.0, 1.0], ddof=1))
    assert big.sigma_eps == big.sigma_seed  # no condition × seed layout of its own
    pooled = book.for_rows(pd.DataFrame({"student": ["d192l6"]}))  # no multi-seed runs: all sizes pooled
    assert pooled.sigma_seed == pytest.approx(book.sigma_seed) and pooled.dof_seed == 6
    one = gain(cond(pd.DataFrame({"student": ["d64l3"], "gain_pct": [3.0], "seed": [0]}), "x"), book)
    assert one.se == pytest.approx(0.1) and one.dof == 4


def test_noise_counts_each_distinct_run_once(tmp_path):
    """The base run named by two studies and two trial ids, NLL bit-identical to KLD, and an α = 0
    student identical to its baseline: each counted once (or not at all), as a hand computation on
    the distinct runs says."""
    jit = {0: 0.0, 1: 0.4, 2: -0.3}
    studies = {
        "mini_preliminary": [("base", {"seed": 0}, 4.0)]
        + [(f"alpha=0.9,seed={s}", {"seed": s}, 4.0 + jit[s]) for s in (0, 1, 2)]
        + [(f"alpha=1.0,seed={s}", {"seed": s, "alpha": 1.0}, 2.0 + 2 * jit[s]) for s in (0, 1, 2)],
        "mini_kd_loss": [(f"loss={l},seed={s}", {"seed": s, "loss": l}, 4.0 + jit[s]) for l in ("kld", "nll")
                         for s in (0, 1, 2)],
        "mini_alpha": [(f"alpha=0,seed={s}", {"seed": s, "alpha": 0.0}, 0.0) for s in (0, 1, 2)],
    }
    url = build_db(tmp_path / "d.db", studies)
    R = {n: load_results(url, n) for n in studies}
    _, noise = check_findings(R)
    # distinct: base (α = 0.9 = KLD, 3 seeds) and α = 1 (3 seeds); NLL duplicates KLD, α = 0 is its baseline
    ss = sum(((v - np.mean(v)) ** 2).sum() for v in (np.array([4.0, 4.4, 3.7]), np.array([2.0, 2.8, 1.4])))
    assert noise.dof_seed == 4 and noise.sigma_seed == pytest.approx(math.sqrt(ss / 4))
    pairs = pd.concat([pd_pairs(r) for r in R.values()])
    assert len(pairs) == 15 and estimate_noise(pairs).dof_seed == 4  # 15 named runs, 6 distinct ones
    # two conditions × three baselines: (2 − 1)(3 − 1) residual dof
    assert noise.dof_eps == 2


def _suite(tmp_path, studies, noisy=True):
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = build_db(tmp_path / "v.db", studies)
    R = {n: load_results(url, n) for n in studies}
    if noisy:  # three seeds of two conditions: σ_seed ≈ 0.25 pts at d64l3
        jit = {0: 0.0, 1: 0.3, 2: -0.2}
        nurl = build_db(tmp_path / "n.db", {"mini_preliminary": [(f"alpha={a},seed={s}", {"seed": s, "alpha": a},
                                                                    g + jit[s] + (0.05 * s if a == 1 else 0))
                                                                   for a, g in ((1.0, 2.0), (0.9, 4.0)) for s in (0, 1, 2)]})
        R["mini_preliminary"] = load_results(nurl, "mini_preliminary")
    return R


def test_no_effect_claims_are_equivalence_tests_on_the_loss(tmp_path):
    """tau_high and online_late are TOST on the held-out loss gain with their own margins: a τ ≥ 5
    that hurts badly is a contradiction (it "passed" before), a late window at −3.0 % is beyond its
    ±2 pt margin even though the paper's benchmark band (−3.9 %, +0.5 %) would overlap it, and one
    near zero reproduces."""
    R = _suite(tmp_path, {
        "mini_temperature": [(f"temperature={t}", {"tau": t}, g) for t, g in ((1, 4.0), (5, -6.0), (10, -8.0))],
        "mini_online_offline": [("window=last", {"source": "online", "window": "last"}, -3.0),
                                ("offline", {}, 4.0)],
    })
    by = {f.key: f.loss for f in check_findings(R)[0]}
    assert by["tau_high"].verdict == CONTRADICTED
    assert by["online_late"].verdict == CONTRADICTED and "not compared" in by["online_late"].note
    R2 = _suite(tmp_path / "b", {"mini_online_offline": [("window=last", {"source": "online", "window": "last"}, 0.2)]})
    late = next(f.loss for f in check_findings(R2)[0] if f.key == "online_late")
    assert late.verdict == REPRODUCED and late.margin == 2.0


def test_verdicts_not_testable_and_inconclusive(tmp_path):
    R = _suite(tmp_path, {
        # two teachers; their quality comes from the teachers' own losses (set below)
        "mini_teacher_size": [(f"student={st},teacher={t}", {"student": st, "teacher": t}, g)
                              for st, d in (("d32l2", 0.1), ("d64l3", 0.3)) for t, g in (("t1", 3.0), ("t_big", 3.0 + d))],
        # k = 50 ahead of the rest by less than the noise can tell
        "mini_top_k": [(f"top_k={k}", {"top_k": k}, g) for k, g in ((20, 3.0), (50, 3.2))],
    })
    data = suite_data(R)
    data.teachers = {"t1": {"num_params": 7.9e5, "val_loss": 4.42}, "t_big": {"num_params": 2.6e6, "val_loss": 4.40}}
    by = {f.key: f.loss for f in check_suite(data)[0]}
    assert by["teacher_size"].verdict == NOT_TESTABLE and "equal quality" in by["teacher_size"].note
    assert by["top_k_best"].verdict == INCONCLUSIVE
    assert by["pd_star"].verdict == NOT_RUN and by["pd_star"].holm == ""
    data.teachers["t_big"]["val_loss"] = 4.00  # now the bigger teacher is the better one
    tsize = next(f.loss for f in check_suite(data)[0] if f.key == "teacher_size")
    # t over the two students' differences (+0.1, +0.3): upper bound below δ = 1
    assert tsize.verdict == REPRODUCED and "t_big − t1 = +0.20" in tsize.ours
    assert tsize.p_reproduce == pytest.approx(stats.ttest_1samp([0.1, 0.3], 1.0, alternative="less").pvalue)


# ------------------------------------------------------------------------------------------------
# Benchmark accuracy: its own verdict next to the loss proxy's
# ------------------------------------------------------------------------------------------------

def _prelim(acc_alpha1, loss_alpha1, jitter=(0.0, 0.4, -0.3)):
    """mini_preliminary with three seeds of α = 1 and α = 0.9: each PD run's accuracy gain (points)
    and loss gain (%) set apart, so the two verdicts can disagree."""
    return {"mini_preliminary": [(f"alpha={a},seed={s}", {"seed": s, "alpha": a, "acc": acc + jitter[s]},
                                  g + jitter[s]) for a, acc, g in ((1.0, acc_alpha1, loss_alpha1), (0.9, 1.0, 4.0))
                                 for s in (0, 1, 2)]}


def test_a_planted_accuracy_effect_is_reproduced_on_accuracy(tmp_path):
    """PD at α = 1 gains 3 accuracy points (and nothing on the loss): the accuracy verdict is
    reproduced at its own margin (the paper's 0.6 points), the loss proxy's is not, and the
    accuracy estimate is the t interval over the three seeds' accuracy gains."""
    url = build_db(tmp_path / "a.db", _prelim(3.0, 0.0))
    f = next(f for f in check_findings({"mini_preliminary": load_results(url, "mini_preliminary")})[0]
             if f.key == "vanilla")
    gains = [3.0, 3.4, 2.7]
    assert f.primary == "accuracy" and f.verdict == f.accuracy.verdict == REPRODUCED
    assert f.accuracy.margin == 0.6 and "δ = 0.6 accuracy pts" in f.accuracy.test
    assert f"α = 1: {np.mean(gains):+.2f} pts" in f.accuracy.ours
    assert f.accuracy.p_reproduce == pytest.approx(stats.ttest_1samp(gains, 0.0, alternative="greater").pvalue)
    assert f.loss.verdict != REPRODUCED and "δ = 1 pts" in f.loss.test


def test_no_accuracy_effect_is_not_reproduced_on_accuracy(tmp_path):
    """No accuracy gain (a clear loss gain): the accuracy verdict is not reproduced (contradicted:
    shown below the paper's 0.6 points), the loss proxy's is."""
    url = build_db(tmp_path / "n.db", _prelim(0.0, 4.0, jitter=(0.0, 0.1, -0.1)))
    f = next(f for f in check_findings({"mini_preliminary": load_results(url, "mini_preliminary")})[0]
             if f.key == "vanilla")
    assert f.accuracy.verdict == CONTRADICTED and f.loss.verdict == REPRODUCED
    assert f.verdict == CONTRADICTED  # the primary verdict is the accuracy one


def test_without_benchmark_scores_accuracy_is_not_testable(tmp_path):
    url = build_db(tmp_path / "e.db", _prelim(3.0, 2.0), evals=False)
    R = {"mini_preliminary": load_results(url, "mini_preliminary")}
    f = next(f for f in check_findings(R)[0] if f.key == "vanilla")
    assert f.accuracy.verdict == NOT_TESTABLE and "no benchmark scores recorded" in f.accuracy.note
    assert f.loss.verdict == REPRODUCED  # the loss proxy still tests it
    assert pd_pairs(R["mini_preliminary"])["acc_gain"].isna().all()


def test_accuracy_gain_is_the_mean_over_the_tasks_against_the_baseline(tmp_path):
    url = build_db(tmp_path / "g.db", _prelim(3.0, 2.0))
    pairs = pd_pairs(load_results(url, "mini_preliminary")).set_index("trial_id")
    row = pairs.loc["alpha=1.0,seed=1"]
    assert row["acc_lm"] == pytest.approx(100 * ACC_LM[1]) and row["acc_gain"] == pytest.approx(3.4)
    assert row["acc_tasks"] == "pdspace_cloze,pdspace_nextline"


def test_online_late_is_like_for_like(tmp_path):
    """The late window: on accuracy against the paper's own 'close to neutral' (1.5 points), on the
    loss with the proxy's own 2-point margin; a −1 point accuracy change with a −3 % loss gain is
    close to neutral on accuracy and beyond the loss proxy's margin."""
    R = _suite(tmp_path, {"mini_online_offline": [("window=last", {"source": "online", "window": "last",
                                                                   "acc": -1.0}, -3.0)]})
    R["mini_preliminary"] = load_results(build_db(tmp_path / "p.db", _prelim(0.5, 2.0, (0.0, 0.2, -0.2))),
                                         "mini_preliminary")  # accuracy noise: σ_seed 0.2 pts
    late = next(f for f in check_findings(R)[0] if f.key == "online_late")
    assert late.accuracy.margin == 1.5 and late.loss.margin == 2.0
    assert "−3.9 %" not in late.loss.test and "not compared" in late.loss.note
    assert late.accuracy.verdict == REPRODUCED and late.loss.verdict == CONTRADICTED


def test_normkd_and_normkd_tail_are_separate_conditions(tmp_path):
    """The adaptive study's normkd (renormalised) and normkd with a tail bucket share a seed: two
    conditions, each tested, never pooled as seeds of one."""
    from analysis.findings import NotTestable

    R = _suite(tmp_path, {
        "mini_adaptive_temperature": [("adaptive=normkd", {"adaptive": "normkd"}, 1.0),
                                      ("adaptive=normkd,normalization=tail",
                                       {"adaptive": "normkd", "normalization": "tail"}, 6.0)],
        "mini_temperature": [(f"temperature={t}", {"tau": t}, 3.0) for t in (0.5, 1, 2)],
    })
    f = next(f for f in check_findings(R)[0] if f.key == "adaptive")
    assert "normkd: +1.00" in f.loss.ours and "normkd (tail): +6.00" in f.loss.ours
    assert "best adaptive normkd (tail) +6.00%" in f.loss.ours
    assert f.loss.verdict != REPRODUCED  # the tail variant beats every fixed τ by 3 points
    rows = pd_pairs(R["mini_adaptive_temperature"])
    with pytest.raises(NotTestable, match="normalization"):
        cond(rows, "normkd")  # the two, pooled, would be two seeds 0 of one condition


def test_the_table_shows_both_verdicts_and_holm_per_metric(planted):
    from analysis.findings import findings_frame, family_text
    from analysis.suite import findings_text

    url, names = planted
    R = {n: load_results(url, n) for n in names}
    findings, _ = check_findings(R)
    frame = findings_frame(findings)
    for col in ("verdict, accuracy", "Holm, accuracy", "verdict, loss proxy", "Holm, loss proxy",
                "test, accuracy (δ in accuracy pts)", "test, loss proxy (δ in loss-gain pts)"):
        assert col in frame.columns
    assert set(frame["verdict, accuracy"]) <= set(VERDICTS) and set(frame["verdict, loss proxy"]) <= set(VERDICTS)
    fam = family_text(findings)
    assert "on benchmark accuracy, Holm over" in fam and "on held-out loss gain (a proxy), Holm over" in fam
    text = findings_text(R)
    assert "| verdict, accuracy | Holm, accuracy |" in text and "| verdict, loss proxy | Holm, loss proxy |" in text
    # Holm within each metric: a metric's Holm verdicts depend only on that metric's p-values
    for m in ("accuracy", "loss"):
        tested = [f.of(m) for f in findings if f.of(m).holm]
        rejected = holm([p for v in tested for p in (v.p_reproduce, v.p_contradict)])
        assert [v.holm for v in tested] == [REPRODUCED if rejected[2 * i] else CONTRADICTED if rejected[2 * i + 1]
                                            else INCONCLUSIVE for i in range(len(tested))]
