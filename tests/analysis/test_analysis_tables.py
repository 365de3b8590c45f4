"""analysis.tables: Δ tables against matched baselines, seeds aggregated and paired."""
import dataclasses

import numpy as np
import pytest

from analysis.external import reference_results
from analysis.tables import (delta_table, format_table, loss_delta_table, parse_param_count, run_info,
                             run_scores, to_html, to_markdown)
from tests.analysis.synth_db import PD_LOSS_FACTOR, SEEDS, SIZES, STEPS, TOP_KS, score


def _avg(i, seed, pd, k=None):
    return 100 * float(np.mean(score(i, seed, pd, max(STEPS), k)))


def test_run_info_roles(synth_results):
    info = run_info(synth_results)
    assert "teacher" not in set(info["kind"])  # only students, baselines, external rows
    assert info.loc[info["kind"] == "baseline", "is_baseline"].all()
    pd_ = info[info["kind"] == "student"]
    assert (pd_["method"] == "PD").all() and pd_["baseline_hash"].notna().all()
    assert pd_.loc[pd_["factor"] == "student", "is_vanilla"].all()
    assert not pd_.loc[pd_["factor"] == "kd.top_k", "is_vanilla"].any()
    # seeds of one config share a condition, different configs do not
    vanilla = pd_[pd_["student"] == "d32l2"]
    assert vanilla[vanilla["factor"] == "student"]["condition"].nunique() == 1
    assert info["condition"].nunique() == 2 * len(SIZES) + len(TOP_KS)


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_the_study_base_has_no_factor_and_is_vanilla_pd(synth_results, missing):
    # a study's own base trial (trial id "base") has no factor; read back from SQL it is None or NaN
    runs = synth_results.runs.copy().astype({"factor": object})
    i = runs.index[(runs["kind"] == "student") & (runs["factor"] == "student")][0]
    runs.loc[i, "factor"] = missing
    info = run_info(dataclasses.replace(synth_results, runs=runs))
    assert info.loc[info["config_hash"] == runs.loc[i, "config_hash"], "is_vanilla"].all()


def test_scores_are_percent_and_use_acc(synth_results):
    s = run_scores(synth_results)
    assert s.attrs["tasks"] == ["pdspace_nextline", "pdspace_cloze"]
    row = s[(s["trial_id"] == "baseline:student=d32l2,seed=0") & s["final"]].iloc[0]
    assert row["pdspace_cloze"] == pytest.approx(100 * score(0, 0, False, max(STEPS))[1])  # acc, not acc_norm
    assert row["average"] == pytest.approx(_avg(0, 0, False))


def test_delta_table_aggregates_seeds_and_pairs_them(synth_results):
    t = delta_table(synth_results)
    assert t["is_baseline"].iloc[: len(SIZES)].all()  # baselines first
    row = t[(t["label"] == "student=d32l2")].iloc[0]
    lm = [_avg(0, s, False) for s in SEEDS]
    pd_ = [_avg(0, s, True) for s in SEEDS]
    assert row["n"] == 3
    assert row["average"] == pytest.approx(np.mean(pd_))
    assert row["average_std"] == pytest.approx(np.std(pd_, ddof=1))
    assert row["baseline_average"] == pytest.approx(np.mean(lm))
    assert row["delta_pct"] == pytest.approx((np.mean(pd_) - np.mean(lm)) / np.mean(lm) * 100)
    paired = [(p - l) / l * 100 for p, l in zip(pd_, lm)]
    assert row["paired_delta_mean"] == pytest.approx(np.mean(paired))
    assert row["paired_delta_std"] == pytest.approx(np.std(paired, ddof=1))
    assert row["paired_n"] == 3
    assert row["baseline"] == "baseline:student=d32l2"
    k1 = t[t["label"] == "top_k=1"].iloc[0]
    assert k1["delta_pct"] < 0 < row["delta_pct"]


def test_delta_table_filters_by_factor(synth_results):
    t = delta_table(synth_results, factor="kd.top_k")
    assert set(t["label"]) == {f"top_k={k}" for k in TOP_KS} | {"baseline:student=d64l3"}


def test_loss_delta_table_gain(synth_results):
    t = loss_delta_table(synth_results)
    pd_rows = t[~t["is_baseline"]]
    assert pd_rows["gain_pct"].to_numpy() == pytest.approx(100 * (1 - PD_LOSS_FACTOR))
    assert pd_rows["paired_delta_mean"].to_numpy() == pytest.approx(100 * (1 - PD_LOSS_FACTOR))
    assert pd_rows["paired_delta_std"].to_numpy() == pytest.approx(0.0, abs=1e-9)
    assert t[t["is_baseline"]]["gain_pct"].isna().all()


def test_rendering(synth_results):
    t = delta_table(synth_results)
    md = to_markdown(t)
    lines = md.splitlines()
    assert lines[0].startswith("| run") and "Δ (%)" in lines[0] and "paired Δ (%)" in lines[0]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    assert "↑" in md and "↓" in md and "±" in md
    html = to_html(t)
    assert html.startswith("<table") and 'class="up"' in html and 'class="down"' in html
    f = format_table(loss_delta_table(synth_results))
    assert "Δ loss (%)" in f.columns and f["Δ loss (%)"].iloc[-1].startswith("+2.00")


def test_paper_table_deltas_match_the_paper():
    """PAPER.md findings, recomputed from the rounded table (±0.3)."""
    t = delta_table(reference_results())
    by = t.set_index("label")["delta_pct"]
    expected = {"T1 pd_vanilla": 1.6, "T8 top-0.95-50": 4.9, "T9 tau-0.5": 2.7, "T5 LLM-MSE": -7.6,
                "T10 alpha-0.9": 3.6, "T5 WSD-α + WSD-LR": 8.0, "T5 WSD-α + Cos-LR": 2.3,
                "T6 LLM-Online-100B-L": -20.9, "T6 LLM-Online-100B": -3.9}
    for label, value in expected.items():
        assert by[label] == pytest.approx(value, abs=0.3), label
    star = t[t["label"] == "T13 pd_star"].set_index("student")["delta_pct"]
    assert star.to_dict() == pytest.approx({"1.9B": 9.3, "3.8B": 8.7, "6.8B": 10.8}, abs=0.3)


def test_parse_param_count():
    assert parse_param_count("330M") == 3.3e8
    assert parse_param_count("1.9B") == 1.9e9
    assert np.isnan(parse_param_count("d64l3"))
