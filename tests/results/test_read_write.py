"""results.write and results.read round trips on a real SQLite file and a real PostgreSQL database: a
study registered with its units and trial ids, a run's life recorded, and what the read side makes
of it."""
from __future__ import annotations

import pytest

import results
from results import TrialRecord, UnitRecord

UNITS = [UnitRecord("t", "teacher", {"kind": "teacher", "size": "d32l2"}),
         UnitRecord("b", "baseline", {"kind": "baseline", "student": "d32l2", "seed": 0, "baseline_hash": None}),
         UnitRecord("s", "student", {"kind": "student", "student": "d32l2", "seed": 0, "teacher": "t1",
                                     "baseline_hash": "b", "kd": {"kind": "kld"}, "alpha_schedule": {"alpha": 0.9}})]
TRIALS = [TrialRecord("teacher:t1", "t"), TrialRecord("baseline:seed=0", "b"),
          TrialRecord("seed=0", "s", "seed", "0"), TrialRecord("base", "s")]


@pytest.fixture
def db(db_url):
    results.init_db(db_url)
    return db_url


def test_register_is_idempotent_and_keeps_a_shared_units_history(db):
    assert results.register_study(db, "one", {"name": "one"}, "h1", UNITS, TRIALS) == {
        "t": "pending", "b": "pending", "s": "pending"}
    rid = results.run_id_for(db, "t")
    results.start_run(db, rid, host="h", versions={"python": "3"}, git_rev=None, artifact_dir="/a/t")
    results.finish_run(db, rid, "completed")
    # a second study sharing the teacher: its history stays, the new study links to it
    status = results.register_study(db, "two", {"name": "two"}, "h2", UNITS[:1], [TrialRecord("teacher:t1", "t")])
    assert status == {"t": "completed"}
    assert results.unit_statuses(db, ["t", "s", "nope"]) == {"t": "completed", "s": "pending"}
    rows = results.status_rows(db, "one")
    assert list(rows["trial_id"]) and len(rows) == 4 and set(rows["study"]) == {"one"}
    assert rows.loc[rows["trial_id"] == "teacher:t1", "attempts"].item() == 1
    assert len(results.status_rows(db)) == 5 and results.list_studies(db) == ["one", "two"]
    with pytest.raises(RuntimeError, match="not registered"):
        results.run_id_for(db, "nope")


def test_a_run_first_registered_without_its_baseline_gets_it_from_a_study_that_has_it(db):
    # a study with `baselines: {auto: false}` registers the student with no pairing; a later study
    # with its LM-only twin fills it in (derived, not identity), and the student pairs in tables
    alone = UnitRecord("s", "student", {**UNITS[2].config, "baseline_hash": None})
    results.register_study(db, "alone", {"name": "alone"}, "h0", [alone], [TrialRecord("base", "s")])
    results.register_study(db, "one", {"name": "one"}, "h1", UNITS, TRIALS)
    runs = results.status_rows(db, "one")
    assert len(runs) == 4
    with results.session_scope(results.engine_for(db)) as s:
        from sqlalchemy import select

        from results.schema import Run

        config = s.execute(select(Run.config).where(Run.config_hash == "s")).scalar_one()
    assert config["baseline_hash"] == "b" and config["seed"] == 0
    # a study without baselines never erases a pairing
    results.register_study(db, "again", {"name": "again"}, "h2", [alone], [TrialRecord("base", "s")])
    with results.session_scope(results.engine_for(db)) as s:
        assert s.execute(select(Run.config).where(Run.config_hash == "s")).scalar_one()["baseline_hash"] == "b"


def test_unit_statuses_of_a_database_not_there_yet_is_empty(tmp_path):
    assert results.unit_statuses(f"sqlite:///{tmp_path / 'none.db'}", ["x"]) == {}


def test_a_runs_record_reads_back_as_frames(db):
    results.register_study(db, "one", {"name": "one"}, "h1", UNITS, TRIALS)
    for h, losses in (("b", (5.5, 5.0)), ("s", (5.3, 4.8))):
        rid = results.run_id_for(db, h)
        results.start_run(db, rid, host="h", versions={}, git_rev="abc", artifact_dir=f"/a/{h}")
        for step, loss in enumerate(losses, 1):
            results.record_metrics(db, rid, step, step * 1000, {"val_loss": loss, "lr": None})
        results.record_evals(db, rid, [{"step": 2, "tokens": 2000, "task": "pdspace_cloze", "metric": "acc",
                                        "value": 0.3 if h == "b" else 0.35, "stderr": 0.01}])
        results.record_artifact(db, rid, "export", f"/a/{h}/export", num_bytes=10)
        results.finish_run(db, rid, "completed")
    r = results.load_results(db, "one")
    assert list(r.runs["trial_id"]) == [t.trial_id for t in TRIALS]
    assert r.runs.loc[r.runs["trial_id"] == "seed=0", "kd.kind"].item() == "kld"
    fl = results.final_losses(r)
    assert dict(zip(fl["trial_id"], fl["val_loss"])) == {"baseline:seed=0": 5.0, "seed=0": 4.8, "base": 4.8}
    table = results.results_frame(db, "one")
    assert list(table.columns[:3]) == ["trial_id", "kind", "status"]
    assert table.loc[table["trial_id"] == "seed=0", "pdspace_cloze"].item() == 0.35
    assert table.loc[table["trial_id"] == "teacher:t1", "duration_s"].isna().all()  # never ran: NaN, not an error
    assert results.export_artifact(db, "one") == ("/a/s/export", "seed=0")  # the KD student's before the baseline's
    with pytest.raises(ValueError, match="no study named 'nope'"):
        results.results_frame(db, "nope")


def test_query_reads_and_refuses_to_write(db):
    results.register_study(db, "one", {"name": "one"}, "h1", UNITS, TRIALS)
    assert results.query(db, "SELECT COUNT(*) AS n FROM runs")["n"].item() == 3
    with pytest.raises(ValueError, match="the query failed: (attempt to write a readonly database|cannot execute "
                                         "DELETE in a read-only transaction)"):
        results.query(db, "DELETE FROM runs")
    with pytest.raises(ValueError, match="the query failed"):
        results.query(db, "SELEC 1")
    assert results.query(db, "SELECT COUNT(*) AS n FROM runs")["n"].item() == 3


def test_import_external_creates_the_schema_and_updates_in_place(db_url):
    url = db_url
    run = results.ImportedRun("x1", "1/lm/1B", "method", "lm", {"kind": "external", "student": "1B"},
                              [{"step": 0, "tokens": 10, "task": "a", "metric": "acc", "value": 40.0, "stderr": None}])
    assert results.import_external(url, "ext", [run], spec={"source": "import"}, spec_hash="s") == 1
    changed = results.ImportedRun(**{**run.__dict__, "evals": [{**run.evals[0], "value": 41.0}]})
    assert results.import_external(url, "ext", [changed], spec={"source": "import"}, spec_hash="s") == 1
    r = results.load_results(url, "ext")
    assert len(r.runs) == 1 and r.evals["value"].tolist() == [41.0] and r.is_external
