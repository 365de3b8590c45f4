"""No silent invalidity: a plan whose students would read the text a scratch teacher trained on
is refused with the numbers, by `pdspace plan` and `pdspace run`, before any training."""
from __future__ import annotations

import pytest
import yaml

from cli.main import main
from core.config import DataSpec
from core.data import prepare_data
from orchestrator.errors import StudyError
from orchestrator.plan import build_plan, check_regions, region_problems
from orchestrator.study import validate_study

DATA = {"vocab_size": 512, "seq_len": 32, "max_corpus_bytes": 120_000}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions")
    prepare_data(DataSpec(**DATA), root)
    return root


def _study(student_tokens: int, teacher: dict | None = None):
    return validate_study({
        "data": DATA, "teachers": {"t1": teacher or {"size": "d32l2", "tokens": 20_000}},
        "base": {"student": "d32l2", "teacher": "t1", "tokens": student_tokens, "batch_size": 8},
    }, name="regions")


def test_students_within_their_half_pass(artifacts):
    plan = build_plan(_study(8 * 32 * 4))
    assert check_regions(plan, artifacts) is True


def test_a_student_reading_the_teacher_half_is_refused_with_the_numbers(artifacts):
    plan = build_plan(_study(8 * 32 * 400))
    n = next(iter(artifacts.glob("data/*/manifest.json"))).read_text()
    half = yaml.safe_load(n)["splits"]["train"]["num_sequences"] // 2
    problems = dict(region_problems(plan, 2 * half))
    assert set(problems) == {"base", "baseline:student=d32l2", "logits:t1"}
    assert f"needs 102,400 tokens (3,200 sequences of 32)" in problems["base"]
    assert f"holds {half:,} sequences ({half * 32:,} tokens)" in problems["base"]
    with pytest.raises(StudyError, match="lower its tokens"):
        check_regions(plan, artifacts)


def test_pretrained_teachers_and_lm_only_studies_are_exempt(artifacts):
    plan = build_plan(validate_study({"data": DATA, "base": {"student": "d32l2", "tokens": 8 * 32 * 400,
                                                              "batch_size": 8}}, name="lm"))
    assert region_problems(plan, 10) == []


def test_pdspace_plan_exits_2_before_anything_runs(artifacts, tmp_path, monkeypatch, capsys):
    study = tmp_path / "big.yaml"
    study.write_text(yaml.safe_dump({"data": DATA, "teachers": {"t1": {"size": "d32l2", "tokens": 20_000}},
                                     "base": {"student": "d32l2", "teacher": "t1", "tokens": 8 * 32 * 400,
                                              "batch_size": 8}}))
    monkeypatch.setenv("PDSPACE_HOME", str(artifacts))
    assert main(["--db", str(tmp_path / "x.db"), "plan", str(study)]) == 2
    err = capsys.readouterr().err
    assert "big: base: needs 102,400 tokens" in err and "Traceback" not in err
    monkeypatch.setenv("PDSPACE_HOME", str(tmp_path / "fresh"))  # data not prepared: plan says so
    assert main(["--db", str(tmp_path / "x.db"), "plan", str(study)]) == 0
    assert "data not prepared yet" in capsys.readouterr().out


def test_pdspace_run_refuses_after_preparing_the_data_and_before_training(tmp_path):
    from orchestrator.run import run_studies
    from results import load_results

    db = f"sqlite:///{tmp_path / 'r.db'}"
    with pytest.raises(StudyError, match="base: needs 102,400 tokens"):
        run_studies([_study(8 * 32 * 400)], db_url=db, artifacts=tmp_path / "a", quiet=True)
    runs = load_results(db, "regions").runs
    assert set(runs.loc[runs["status"] == "completed", "kind"]) == {"data"}  # nothing trained
    assert not (tmp_path / "a" / "runs").exists() or not any((tmp_path / "a" / "runs").iterdir())
