"""A database written by the release before migration 0003 keeps working: read as it is, then
upgraded in place with every row intact, 64-bit counts afterwards, and the same results read back.

fixtures/release-0.1.0.db was made by that release's own results package (commit a674b3a^, at
revision 0002): one study with a data unit, a teacher, its logits run (kept_stats, store_bytes),
a baseline and a KD student with metrics, evaluations and artifacts. On PostgreSQL the same rows are
copied into a database migrated to 0002, then upgraded.
"""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

import results
from results.migrate import downgrade, upgrade

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1.0.db"
TABLES = ("studies", "runs", "study_runs", "metrics", "evals", "artifacts", "kept_stats")


def _rows(url: str) -> dict[str, list]:
    out = {}
    for table in TABLES:
        frame = results.query(url, f"SELECT * FROM {table} ORDER BY id")
        out[table] = [tuple(str(v) for v in row) for row in frame.itertuples(index=False, name=None)]
    return out


def _version(url: str) -> str:
    return results.query(url, "SELECT version_num FROM alembic_version")["version_num"].item()


def _copy_fixture_into(url: str) -> None:
    """The fixture's rows, ids included, into a database at revision 0002 (PostgreSQL)."""
    upgrade(url, "0002")
    src = sqlite3.connect(FIXTURE)
    engine = results.make_engine(url)
    with engine.begin() as conn:
        for table in TABLES:
            cur = src.execute(f"SELECT * FROM {table}")
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
            if rows:
                conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                                     rows)
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"))
    engine.dispose()
    src.close()


@pytest.fixture
def release_db(db_url, tmp_path) -> str:
    if db_url.startswith("sqlite"):
        shutil.copy(FIXTURE, tmp_path / "test.db")
    else:
        _copy_fixture_into(db_url)
    return db_url


def test_a_release_database_reads_then_upgrades_with_every_row(release_db):
    url = release_db
    assert _version(url) == "0002"
    before = _rows(url)
    assert len(before["metrics"]) == 133 and len(before["runs"]) == 5
    r = results.load_results(url, "release")  # read as it is, before any upgrade
    table = results.results_frame(url, "release")
    fl = results.final_losses(r)
    assert _version(url) == "0002"  # reading never migrates

    results.init_db(url)  # what the next `pdspace run` or import does
    assert _version(url) == "0003"
    assert _rows(url) == before
    insp = inspect(results.make_engine(url))
    assert "ix_metrics_run_name_step" in {ix["name"] for ix in insp.get_indexes("metrics")}
    assert "ix_metrics_run_id" not in {ix["name"] for ix in insp.get_indexes("metrics")}
    if url.startswith("postgresql"):
        types = dict(results.query(url, "SELECT table_name || '.' || column_name, data_type FROM "
                                        "information_schema.columns WHERE table_schema = 'public'")
                     .itertuples(index=False, name=None))
        for col in ("metrics.id", "metrics.step", "metrics.tokens", "evals.step", "evals.tokens", "artifacts.bytes"):
            assert types[col] == "bigint", col
    after = results.load_results(url, "release")
    assert after.metrics.drop(columns=["wall_time"]).equals(r.metrics.drop(columns=["wall_time"]))
    assert results.results_frame(url, "release").equals(table)
    assert results.final_losses(after).equals(fl)
    # and it takes what a paper-scale run writes
    rid = results.run_id_for(url, "s0")
    results.record_metrics(url, rid, 2**40, 10**11, {"val_loss": 3.0})
    results.record_artifact(url, rid, "logits_store", "/a/store", num_bytes=10**13)
    assert results.final_losses(results.load_results(url, "release")).set_index("trial_id").loc["seed=0", "tokens"] == 10**11


def test_the_upgrade_downgrades_and_upgrades_again(release_db):
    url = release_db
    before = _rows(url)
    results.init_db(url)
    downgrade(url, "0002")
    assert _version(url) == "0002" and _rows(url) == before
    upgrade(url)
    assert _version(url) == "0003" and _rows(url) == before
