"""Loading a study into tidy frames (results.read, also under its analysis.results name)."""
import pytest

from analysis.results import final_losses, flatten_config, list_studies, load_results
from tests.analysis.synth_db import KEPT, SEEDS, SIZES, STEPS, TOP_KS, planted_loss


def test_runs_frame_is_one_row_per_study_run(synth_results):
    runs = synth_results.runs
    n_students = len(SIZES) * len(SEEDS)
    assert len(runs) == 2 + 2 * n_students + len(TOP_KS) * len(SEEDS)  # teacher, logits + baselines + PD + sweep
    assert runs["trial_id"].is_unique
    for col in ("trial_id", "factor", "value", "kind", "status", "config_hash", "student", "seed",
                "logits.top_k", "logits.top_p", "kd.kind", "baseline_hash", "config.kind"):
        assert col in runs.columns, col
    pd_runs = runs[runs["kind"] == "student"]
    assert set(pd_runs["logits.top_k"]) == {100, *TOP_KS}


def test_metrics_and_evals_are_tidy(synth_results):
    m, e = synth_results.metrics, synth_results.evals
    assert list(m.columns[:3]) == ["run_id", "config_hash", "trial_id"]
    assert not m.duplicated(["run_id", "step", "name"]).any()
    assert set(e["task"]) == {"pdspace_nextline", "pdspace_cloze"}
    assert not e.duplicated(["run_id", "step", "task", "metric"]).any()


def test_kept_stats_are_columns_of_the_logits_run(synth_results):
    kept = synth_results.kept_stats
    assert list(kept.columns[:5]) == ["run_id", "config_hash", "trial_id", "top_p", "top_k"]
    assert set(kept["trial_id"]) == {"logits:t8m"}
    got = {(p, k): v for p, k, v in zip(kept["top_p"], kept["top_k"], kept["mean_kept_per_token"])}
    assert got == pytest.approx(KEPT)


def test_final_losses_take_the_largest_step(synth_results):
    fl = final_losses(synth_results)
    assert (fl["step"] == max(STEPS)).all()
    base = fl[fl["trial_id"] == "baseline:student=d32l2,seed=0"].iloc[0]
    assert base["val_loss"] == pytest.approx(planted_loss(SIZES["d32l2"], base["tokens"]), rel=3e-3)
    assert "teacher:t8m" in set(fl["trial_id"])


def test_unknown_study_and_missing_db_are_value_errors(synth_db, tmp_path):
    with pytest.raises(ValueError, match="unknown study 'nope'.*synth"):
        load_results(synth_db, "nope")
    with pytest.raises(ValueError, match="does not exist"):
        load_results(f"sqlite:///{tmp_path}/missing.db", "synth")
    assert list_studies(synth_db) == ["empty", "synth"]


def test_empty_study_loads_empty_frames(synth_db):
    r = load_results(synth_db, "empty")
    assert r.runs.empty and r.metrics.empty and r.evals.empty and r.kept_stats.empty
    assert final_losses(r).empty


def test_flatten_config():
    assert flatten_config({"kd": {"top_k": 5, "x": {"y": 1}}, "a": None, "l": [1, 2], "e": {}}) == {
        "kd.top_k": 5, "kd.x.y": 1, "a": None, "l": [1, 2], "e": {}}


def test_stable_hash_matches_core():
    from analysis.results import stable_hash
    from core.utils import stable_hash as core_hash

    obj = {"b": [1, 2.5, None], "a": {"x": "y"}}
    assert stable_hash(obj) == core_hash(obj)
