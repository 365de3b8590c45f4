"""The results database: migrations, upserts, and concurrent writers that lose no rows."""
from __future__ import annotations

import multiprocessing as mp

from sqlalchemy import func, select

from orchestrator.db import Metric, Run, init_db, make_engine, session_scope
from orchestrator.recorder import RunRecorder


def _new_run(url: str, h: str) -> int:
    with session_scope(make_engine(url)) as s:
        run = Run(config_hash=h, kind="student", config={}, status="pending", attempts=0)
        s.add(run)
        s.flush()
        return run.id


def _writer(url: str, run_id: int, n: int) -> None:
    rec = RunRecorder(url, run_id)
    for step in range(n):
        rec.metrics({"step": step, "tokens": step * 100, "loss": float(step), "lr": 1e-3})


def test_migration_is_idempotent_and_creates_every_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    init_db(url)
    init_db(url)
    from sqlalchemy import inspect

    names = set(inspect(make_engine(url)).get_table_names())
    assert {"studies", "runs", "study_runs", "metrics", "evals", "artifacts", "alembic_version"} <= names


def test_two_concurrent_writers_lose_no_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
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


def test_rereported_steps_update_instead_of_duplicating(tmp_path):
    url = f"sqlite:///{tmp_path / 'u.db'}"
    init_db(url)
    rid = _new_run(url, "h")
    rec = RunRecorder(url, rid)
    rec.metrics({"step": 5, "tokens": 500, "loss": 2.0})
    rec.metrics({"step": 5, "tokens": 500, "loss": 1.5})  # a resumed run repeats step 5
    rec.evals([{"step": 5, "tokens": 500, "task": "t", "metric": "acc", "value": 0.3, "stderr": 0.1}] * 2)
    with session_scope(make_engine(url)) as s:
        rows = s.execute(select(Metric.value).where(Metric.run_id == rid)).scalars().all()
    assert rows == [1.5]
