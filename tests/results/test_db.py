"""The results database: migrations, upserts, and concurrent writers that lose no rows, on SQLite and
on a throw-away PostgreSQL server (the db_url fixture, tests/conftest.py)."""
from __future__ import annotations

import multiprocessing as mp

from sqlalchemy import func, inspect, select

from results import init_db, make_engine, record_evals, record_metrics, session_scope
from results.schema import Metric, Run


def _new_run(url: str, h: str) -> int:
    with session_scope(make_engine(url)) as s:
        run = Run(config_hash=h, kind="student", config={}, status="pending", attempts=0)
        s.add(run)
        s.flush()
        return run.id


def _writer(url: str, run_id: int, n: int) -> None:
    for step in range(n):
        record_metrics(url, run_id, step, step * 100, {"loss": float(step), "lr": 1e-3})


def test_migration_is_idempotent_and_creates_every_table(db_url):
    url = db_url
    init_db(url)
    init_db(url)
    names = set(inspect(make_engine(url)).get_table_names())
    assert {"studies", "runs", "study_runs", "metrics", "evals", "artifacts", "kept_stats",
            "alembic_version"} <= names


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    init_db(url)
    with make_engine(url).connect() as conn:
        raw = conn.connection.dbapi_connection.cursor()
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == 30000


def test_two_concurrent_writers_lose_no_rows(db_url):
    url = db_url
    init_db(url)
    ids = [_new_run(url, f"h{i}") for i in range(2)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, rid, 300)) for rid in ids]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with session_scope(make_engine(url)) as s:
        for rid in ids:
            n = s.execute(select(func.count(Metric.id)).where(Metric.run_id == rid)).scalar_one()
            assert n == 600


def test_rereported_steps_update_instead_of_duplicating(db_url):
    url = db_url
    init_db(url)
    rid = _new_run(url, "h")
    record_metrics(url, rid, 5, 500, {"loss": 2.0})
    record_metrics(url, rid, 5, 500, {"loss": 1.5})  # a resumed run repeats step 5
    record_evals(url, rid, [{"step": 5, "tokens": 500, "task": "t", "metric": "acc", "value": 0.3, "stderr": 0.1}] * 2)
    with session_scope(make_engine(url)) as s:
        rows = s.execute(select(Metric.value).where(Metric.run_id == rid)).scalars().all()
    assert rows == [1.5]


def test_counts_past_32_bits_are_stored(db_url):
    """A paper-scale run: 10^11 tokens, steps past 2^31, a 10^13-byte store (PostgreSQL's INTEGER
    refused these before migration 0003)."""
    from results import record_artifact
    from results.schema import Artifact

    init_db(db_url)
    rid = _new_run(db_url, "big")
    record_metrics(db_url, rid, 2**33, 10**11, {"loss": 1.0})
    record_evals(db_url, rid, [{"step": 2**33, "tokens": 10**11, "task": "t", "metric": "acc", "value": 0.5}])
    record_artifact(db_url, rid, "logits_store", "/s", num_bytes=10**13)
    with session_scope(make_engine(db_url)) as s:
        assert s.execute(select(Metric.step, Metric.tokens)).one() == (2**33, 10**11)
        assert s.execute(select(Artifact.bytes)).scalar_one() == 10**13


def test_the_metrics_indexes_serve_the_reads_and_none_is_redundant(db_url):
    init_db(db_url)
    insp = inspect(make_engine(db_url))
    indexes = {tuple(ix["column_names"]) for t in ("metrics",) for ix in insp.get_indexes(t)}
    assert ("run_id", "name", "step") in indexes and ("run_id",) not in indexes
    for table in ("evals", "kept_stats"):  # their unique keys start with run_id
        assert ("run_id",) not in {tuple(ix["column_names"]) for ix in insp.get_indexes(table)}
