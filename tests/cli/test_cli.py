"""The CLI: bad input exits 2 with one sentence naming the problem, never a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import build_parser, main

STUDIES = Path(__file__).resolve().parents[1] / "orchestrator" / "studies"


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("text, path", [
    ("base: {kd: {topk: 5}}", "base.kd.topk: unknown key"),
    ("base: {tokens: lots}", "base.tokens"),
    ("base: {kd: {top_p: 1.5}}", "base.kd.top_p: must be in (0, 1]"),
    ("base: {kd: {top_k: 0}}", "base.kd.top_k"),
    ("base: {kd: {temperature: 0}}", "base.kd.temperature"),
    ("base: {alpha: 1.5}", "base.alpha"),
    ("sweeps: [{kd.nope: [1, 2]}]", "sweeps[0]"),
    ("base: {teacher: ghost}", "base.teacher"),
    ("teachers: {g: {pretrained: some/model}}\ndata: {tokenizer: some/model}\n"
     "base: {teacher: g, logits_source: {online: {window: last}}}", "base.logits_source"),
    ("base: [unclosed", "line"),
])
def test_bad_study_files_exit_2_with_the_dotted_path(tmp_path, capsys, text, path):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    code, out, err = _run(capsys, "validate", str(f))
    assert code == 2
    assert path in err
    assert "Traceback" not in err and "pydantic" not in err.lower()


def test_include_cycle_and_missing_file(capsys, tmp_path):
    code, _, err = _run(capsys, "validate", str(STUDIES / "cycle_a.yaml"))
    assert code == 2 and "cycle" in err
    code, _, err = _run(capsys, "validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml" in err


def test_validate_and_plan_print_the_units(capsys):
    root = Path(__file__).resolve().parents[2] / "studies"
    assert main(["validate", str(root / "quickstart.yaml")]) == 0
    assert main(["plan", str(root / "quickstart.yaml")]) == 0
    out = capsys.readouterr().out
    assert "FLOPs" in out and "teacher:t1" in out


def test_query_is_read_only_and_status_needs_a_database(capsys, tmp_path):
    from results import init_db

    db = tmp_path / "r.db"
    init_db(f"sqlite:///{db}")
    code, out, _ = _run(capsys, "--db", str(db), "query", "SELECT COUNT(*) AS n FROM runs")
    assert code == 0 and "n" in out
    code, _, err = _run(capsys, "--db", str(db), "query", "DELETE FROM runs")
    assert code == 2 and "readonly" in err.replace(" ", "").lower()
    code, _, err = _run(capsys, "--db", str(tmp_path / "missing.db"), "status")
    assert code == 2 and "no results database" in err


def test_the_cli_verbs_are_pinned():
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert sorted(verbs) == sorted(["validate", "plan", "run", "status", "results", "query", "fit",
                                    "figures", "report", "import", "export", "gc"])


@pytest.mark.slow
def test_a_standard_task_without_its_dataset_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PDSPACE_HOME", str(tmp_path / "artifacts"))
    f = tmp_path / "hs.yaml"
    f.write_text("base: {student: d32l2}\neval: {tasks: [hellaswag]}\n")
    code, _, err = _run(capsys, "validate", str(f))  # a valid study, with a warning
    assert code == 0 and "warning" in err and "hellaswag" in err
    code, _, err = _run(capsys, "--db", str(tmp_path / "r.db"), "run", str(f))
    assert code == 2 and "not available offline" in err
    assert not (tmp_path / "artifacts" / "runs").exists()  # nothing trained


def test_global_options_also_work_after_the_verb(capsys, tmp_path):
    code, _, err = _run(capsys, "status", "--db", str(tmp_path / "none.db"))
    assert code == 2 and "none.db" in err
