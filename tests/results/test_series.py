"""Reading what is needed, in SQL: evaluation rows in full, training curves thinned by the database
to a fixed number of points per run (first and last kept), every row on request; on SQLite and
PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import insert

import results
from results import TrialRecord, UnitRecord
from results.engine import make_engine
from results.schema import Metric

STEPS = 3000
EVERY = 500


@pytest.fixture
def curves_db(db_url):
    results.init_db(db_url)
    results.register_study(db_url, "s", {}, "h", [UnitRecord("a", "student", {}), UnitRecord("b", "baseline", {})],
                           [TrialRecord("a", "a"), TrialRecord("b", "b")])
    results.register_study(db_url, "other", {}, "h", [UnitRecord("c", "student", {})], [TrialRecord("c", "c")])
    rows = []
    for h, steps in (("a", STEPS), ("b", 50), ("c", STEPS)):
        rid = results.run_id_for(db_url, h)
        for step in range(1, steps + 1):
            for name in ("loss", "lr"):
                rows.append({"run_id": rid, "step": step, "tokens": step * 10**9, "name": name,
                             "value": 1.0 / step, "wall_time": float(step)})
            if step % EVERY == 0 or step == steps:
                rows.append({"run_id": rid, "step": step, "tokens": step * 10**9, "name": "val_loss",
                             "value": 2.0 / step, "wall_time": float(step)})
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(insert(Metric), rows)
    engine.dispose()
    return db_url


def test_curves_are_thinned_in_the_query_keeping_first_and_last(curves_db):
    r = results.load_results(curves_db, "s", curves=100)
    m = r.metrics
    assert set(m["trial_id"]) == {"a", "b"}  # the other study's run is not read
    a = m[m["trial_id"] == "a"]
    loss = a[a["name"] == "loss"]["step"].tolist()
    assert len(loss) == 100 and loss[0] == 1 and loss[-1] == STEPS and loss == sorted(loss)
    gaps = [y - x for x, y in zip(loss, loss[1:])]
    assert max(gaps) - min(gaps) <= 1  # evenly spread
    assert a[a["name"] == "val_loss"]["step"].tolist() == list(range(EVERY, STEPS + 1, EVERY))  # in full
    b = m[m["trial_id"] == "b"]
    assert len(b[b["name"] == "loss"]) == 50  # shorter than the budget: every row
    assert m["tokens"].max() == STEPS * 10**9
    fl = results.final_losses(r)
    assert dict(zip(fl["trial_id"], fl["step"])) == {"a": STEPS, "b": 50}


def test_no_curves_and_every_row_on_request(curves_db):
    only_eval = results.load_results(curves_db, "s", curves=0).metrics
    assert set(only_eval["name"]) == {"val_loss"} and len(only_eval) == STEPS // EVERY + 1
    full = results.load_results(curves_db, "s", full=True).metrics
    assert len(full) == 2 * (STEPS + 50) + STEPS // EVERY + 1
    default = results.load_results(curves_db, "s").metrics
    assert len(default[(default["trial_id"] == "a") & (default["name"] == "lr")]) == 200
    with pytest.raises(ValueError, match="at least 2 points"):
        results.load_results(curves_db, "s", curves=1)


def test_results_frame_reads_only_the_studys_final_rows(curves_db):
    table = results.results_frame(curves_db, "s")
    assert dict(zip(table["trial_id"], table["val_loss"])) == {"a": round(2.0 / STEPS, 4), "b": round(2.0 / 50, 4)}
