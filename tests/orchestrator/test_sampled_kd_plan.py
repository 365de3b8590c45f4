"""Sampled KD in a study (orchestrator.sampling): one sampled store per sampling beside the one
truncated store, students that depend on the store that serves them and carry their sampling to
the worker, and the combinations refused with one sentence (exit 2 from the CLI)."""
from __future__ import annotations

import copy

import pytest

from cli.main import main
from orchestrator import units
from orchestrator.errors import StudyError
from orchestrator.plan import build_plan, format_plan
from orchestrator.study import validate_study

STUDY = {
    "teachers": {"t1": {"size": "d32l2", "tokens": 2_000_000}},
    "base": {"teacher": "t1", "tokens": 1_000_000},
    "sweeps": [{"kd.top_k": [10, 50]}, {"kd.samples": [4, 12]}],
    "seeds": [0, 1],
}


def _plan(study):
    return build_plan(validate_study(copy.deepcopy(study), name="sampled"))


def test_one_store_per_sampling_and_students_read_theirs():
    plan = _plan({**STUDY, "sweeps": STUDY["sweeps"] + [{"kd.samples": [4], "kd.proposal_temperature": [2.0]}]})
    stores = {u.trial_id: u for u in plan.units if u.kind == "logits"}
    assert set(stores) == {"logits:t1", "logits:t1:sample-4", "logits:t1:sample-12", "logits:t1:sample-4-tp2"}
    assert "sampling" not in stores["logits:t1"].config
    assert stores["logits:t1:sample-4-tp2"].config["sampling"] == {"samples": 4, "proposal_temperature": 2.0,
                                                                    "seed": 0}
    assert stores["logits:t1:sample-12"].config["top_k_max"] == 12
    by_id = {u.trial_id: u for u in plan.units}
    for trial, store in [("samples=4,seed=0", "logits:t1:sample-4"), ("samples=4,seed=1", "logits:t1:sample-4"),
                         ("samples=12,seed=1", "logits:t1:sample-12"), ("top_k=10,seed=0", "logits:t1"),
                         ("samples=4,proposal_temperature=2,seed=0", "logits:t1:sample-4-tp2")]:
        u = by_id[trial]
        assert u.config["logits_hash"] == stores[store].config_hash and stores[store].config_hash in u.deps
        rule = units.truncation(u.config)  # what the worker reads
        assert rule.covered_by(units.truncation(u.config)) and rule.samples == u.config["logits"].get("samples")
    assert units.truncation(by_id["samples=4,proposal_temperature=2,seed=0"].config).proposal_temperature == 2.0
    # sampled students leave the truncated store as a study without them has it
    plain = _plan({**STUDY, "sweeps": [{"kd.top_k": [10, 50]}]})
    assert {u.trial_id: u.config_hash for u in plain.units if u.kind == "logits"} == {
        "logits:t1": stores["logits:t1"].config_hash}
    text = format_plan(plan)
    assert "logits:t1:sample-12: store format 1" in text and "~51 B/token estimated" in text


def test_a_study_with_only_sampled_students_has_no_truncated_store():
    plan = _plan({**STUDY, "sweeps": [{"kd.samples": [4]}], "base": {**STUDY["base"], "kd": {"samples": 4}}})
    assert [u.trial_id for u in plan.units if u.kind == "logits"] == ["logits:t1:sample-4"]


@pytest.mark.parametrize("change, path, words", [
    ({"kd": {"samples": 4, "top_k": 10}}, "base.kd.samples", "replaces top_p/top_k"),
    ({"kd": {"samples": 4, "loss": "mse"}}, "base.kd.loss", "must be kld or nll with samples"),
    ({"kd": {"samples": 4, "temperature": 2.0}}, "base.kd.temperature", "must be 1 with samples"),
    ({"kd": {"samples": 4, "normalization": "tail"}}, "base.kd.normalization", "must be renormalize"),
    ({"kd": {"samples": 4, "adaptive": "normkd"}}, "base.kd.adaptive", "must be null with samples"),
    ({"kd": {"proposal_temperature": 2.0}}, "base.kd.proposal_temperature", "only with samples"),
    ({"kd": {"samples": 4}, "logits_source": "online"}, "base.kd.samples", "needs an offline store"),
])
def test_refused_combinations(change, path, words):
    study = copy.deepcopy(STUDY)
    study["sweeps"] = []
    study["base"].update(change)
    if change.get("logits_source") == "online":
        study["teachers"]["t1"]["online"] = {"capture": True}
    with pytest.raises(StudyError) as info:
        validate_study(study, name="bad")
    errors = dict(info.value.errors)
    assert path in errors and words in errors[path], info.value.errors
    assert errors[path].count(". ") == 0  # one sentence


def test_format_2_is_refused_and_the_cli_exits_2(tmp_path, capsys):
    study = copy.deepcopy(STUDY)
    study["logits"] = {"format_version": 2}
    with pytest.raises(StudyError, match="needs logits.format_version 1"):
        validate_study(study, name="bad")
    path = tmp_path / "bad.yaml"
    path.write_text("teachers: {t1: {size: d32l2, tokens: 2000000}}\n"
                    "base: {teacher: t1, tokens: 1000000, kd: {samples: 4, top_k: 10}}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "base.kd.samples: replaces top_p/top_k" in err and "Traceback" not in err
