"""Kept-logits statistics as kept_stats rows: written and read as columns, and migration 0002
moving a database's old `kept_per_token[p=..,k=..]` metric rows into the table (and back); on
SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from results import (TrialRecord, UnitRecord, init_db, load_results, make_engine, record_kept_stats,
                     record_metrics, register_study, run_id_for, session_scope)
from results.migrate import downgrade, upgrade
from results.schema import KeptStat, Metric

POINTS = {(0.9, 100): (12.0, 40.0), (0.95, 100): (20.5, 67.6), (0.95, 10): (8.0, 27.0)}


def _study(url: str) -> int:
    register_study(url, "s", {"name": "s"}, "x", [UnitRecord("lg", "logits", {"kind": "logits"})],
                   [TrialRecord("logits:t1", "lg")])
    return run_id_for(url, "lg")


def test_kept_stats_are_upserted_and_read_as_columns(db_url):
    url = db_url
    init_db(url)
    rid = _study(url)
    rows = [{"top_p": p, "top_k": k, "num_tokens": 10**11, "mean_kept_per_token": kept, "bytes_per_token": b,
             "mean_kept_mass": 0.9, "capped_frac": 0.1, "sampled_rows": 4096} for (p, k), (kept, b) in POINTS.items()]
    record_kept_stats(url, rid, rows)
    record_kept_stats(url, rid, [{**rows[0], "mean_kept_per_token": 13.0}])  # a rerun updates in place
    kept = load_results(url, "s").kept_stats
    assert len(kept) == 3 and set(kept["trial_id"]) == {"logits:t1"}
    row = kept[(kept["top_p"] == 0.9) & (kept["top_k"] == 100)].iloc[0]
    assert row["mean_kept_per_token"] == 13.0 and row["num_tokens"] == 10**11 and row["sampled_rows"] == 4096


def _old_database(url: str) -> tuple[str, int]:
    """A database at revision 0001 whose logits run holds the old kept metric rows."""
    upgrade(url, "0001")
    rid = _study(url)
    values = {"store_bytes": 1234.0}
    for (p, k), (kept, b) in POINTS.items():
        values[f"kept_per_token[p={p:g},k={k}]"] = kept
        values[f"bytes_per_token[p={p:g},k={k}]"] = b
    record_metrics(url, rid, 0, 5000, values)
    return url, rid


def test_a_database_not_yet_migrated_still_reads_its_kept_stats(db_url):
    url, _ = _old_database(db_url)
    kept = load_results(url, "s").kept_stats
    got = {(p, k): (v, b) for p, k, v, b in zip(kept["top_p"], kept["top_k"], kept["mean_kept_per_token"],
                                                kept["bytes_per_token"])}
    assert got == POINTS and set(kept["num_tokens"]) == {5000}


def test_migration_0002_moves_the_old_metric_rows_and_its_downgrade_restores_them(db_url):
    url, rid = _old_database(db_url)
    init_db(url)  # what the next `pdspace run` or import does
    with session_scope(make_engine(url)) as s:
        names = set(s.execute(select(Metric.name)).scalars())
        rows = s.execute(select(KeptStat.top_p, KeptStat.top_k, KeptStat.num_tokens, KeptStat.mean_kept_per_token,
                                KeptStat.bytes_per_token, KeptStat.sampled_rows)).all()
    assert names == {"store_bytes"}  # only the plain metric is left
    assert {(p, k): (v, b) for p, k, _, v, b, _ in rows} == POINTS
    assert {r[2] for r in rows} == {5000}
    assert all(r[5] is None for r in rows)  # not measured by this version: unknown
    assert load_results(url, "s").kept_stats["mean_kept_per_token"].sum() == pytest.approx(40.5)
    downgrade(url, "0001")
    with session_scope(make_engine(url)) as s:
        back = dict(s.execute(select(Metric.name, Metric.value).where(Metric.run_id == rid)).all())
    assert back["kept_per_token[p=0.95,k=10]"] == 8.0 and back["bytes_per_token[p=0.9,k=100]"] == 40.0
    assert len(back) == 1 + 2 * len(POINTS)
