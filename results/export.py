"""A study as columnar files for bulk analysis: runs, metrics, evals and kept_stats as Parquet that
pandas, Polars and DuckDB open directly (`pdspace export STUDY --out DIR`).

Rows are streamed from a read-only connection in chunks (a server-side cursor on PostgreSQL) and
written one row group per chunk, so memory stays bounded at 10^7 metric rows. Each file is written
under a temporary name and renamed when complete.

    runs.parquet        one row per study run: run_id, config_hash, trial_id, factor, value, kind,
                        status, error, attempts, started_at, finished_at, duration_s, host, git_rev,
                        artifact_dir, config (JSON text)
    metrics.parquet     run_id, step, tokens, name, value, wall_time (every row; join runs on run_id)
    evals.parquet       run_id, config_hash, step, tokens, task, metric, value, stderr, extra (JSON text)
    kept_stats.parquet  run_id, config_hash, top_p, top_k, num_tokens, mean_kept_per_token, ...
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import inspect, select

from results.engine import check_exists, reading
from results.schema import KEPT_STAT_FIELDS, Eval, KeptStat, Metric, Run, Study, StudyRun

__all__ = ["export_study", "DEFAULT_CHUNK_ROWS"]

DEFAULT_CHUNK_ROWS = 250_000

_TEXT, _INT, _FLOAT, _TIME = pa.string(), pa.int64(), pa.float64(), pa.timestamp("us")
RUNS = pa.schema([("run_id", _INT), ("config_hash", _TEXT), ("trial_id", _TEXT), ("factor", _TEXT),
                  ("value", _TEXT), ("kind", _TEXT), ("status", _TEXT), ("error", _TEXT), ("attempts", _INT),
                  ("started_at", _TIME), ("finished_at", _TIME), ("duration_s", _FLOAT), ("host", _TEXT),
                  ("git_rev", _TEXT), ("artifact_dir", _TEXT), ("config", _TEXT)])
METRICS = pa.schema([("run_id", _INT), ("step", _INT), ("tokens", _INT), ("name", _TEXT), ("value", _FLOAT),
                     ("wall_time", _FLOAT)])
EVALS = pa.schema([("run_id", _INT), ("config_hash", _TEXT), ("step", _INT), ("tokens", _INT), ("task", _TEXT),
                   ("metric", _TEXT), ("value", _FLOAT), ("stderr", _FLOAT), ("extra", _TEXT)])
KEPT = pa.schema([("run_id", _INT), ("config_hash", _TEXT), ("top_p", _FLOAT), ("top_k", _INT),
                  ("num_tokens", _INT), ("mean_kept_per_token", _FLOAT), ("bytes_per_token", _FLOAT),
                  ("mean_kept_mass", _FLOAT), ("capped_frac", _FLOAT), ("sampled_rows", _INT)])


def _json(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def _chunks(conn: Any, stmt: Any, chunk_rows: int, raw: bool) -> Iterator[list[tuple]]:
    """The rows of ``stmt`` in chunks. raw: through the driver's own cursor (a server-side one on
    PostgreSQL), skipping SQLAlchemy's row processing: the metrics table's 10^7 plain rows (its
    only parameter, the study id, is an integer the database gave us, inlined)."""
    if not raw:
        result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(stmt)
        try:
            yield from result.partitions(chunk_rows)
        finally:
            result.close()
        return
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    dbapi = conn.connection.dbapi_connection
    cur = dbapi.cursor(name="pdspace_export") if conn.dialect.name == "postgresql" else dbapi.cursor()
    try:
        if conn.dialect.name == "postgresql":
            cur.itersize = chunk_rows
        cur.execute(sql)
        while True:
            rows = cur.fetchmany(chunk_rows)
            if not rows:
                break
            yield rows
    finally:
        cur.close()


def _write(conn: Any, stmt: Any, schema: pa.Schema, path: Path, chunk_rows: int, json_columns=(),
           raw: bool = False) -> int:
    """Stream the rows of ``stmt`` into a Parquet file at ``path``, one row group per chunk."""
    tmp = path.with_name(path.name + ".tmp")
    names = schema.names
    jcols = [names.index(c) for c in json_columns]
    rows_written = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for chunk in _chunks(conn, stmt, chunk_rows, raw):
                if raw:  # plain numbers and names, none null but value: pandas transposes in C
                    frame = pd.DataFrame.from_records(chunk, columns=names)
                    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
                else:
                    cols = [list(c) for c in zip(*chunk)]
                    for j in jcols:
                        cols[j] = [_json(v) for v in cols[j]]
                    table = pa.Table.from_arrays([pa.array(c, type=t) for c, t in zip(cols, schema.types)],
                                                 schema=schema)
                writer.write_table(table)
                rows_written += len(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return rows_written


def export_study(db_url: str, study: str, out_dir: str | Path, *,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict[str, tuple[Path, int]]:
    """Write the study's runs, metrics, evals and kept_stats as Parquet files in ``out_dir``
    (created); returns {table: (path, rows)}. ValueError for an unknown study."""
    check_exists(db_url)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1; got {chunk_rows}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; pass a folder for the Parquet files")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[Path, int]] = {}
    with reading(db_url) as conn:
        study_id = conn.execute(select(Study.id).where(Study.name == study)).scalar()
        if study_id is None:
            names = sorted(conn.execute(select(Study.name)).scalars())
            raise ValueError(f"no study named {study!r} in the database (studies there: {', '.join(names) or 'none'})")
        mine = select(StudyRun.run_id).where(StudyRun.study_id == study_id).distinct()
        runs = (select(Run.id, Run.config_hash, StudyRun.trial_id, StudyRun.factor, StudyRun.value, Run.kind,
                       Run.status, Run.error, Run.attempts, Run.started_at, Run.finished_at, Run.duration_s,
                       Run.host, Run.git_rev, Run.artifact_dir, Run.config)
                .join(StudyRun, StudyRun.run_id == Run.id).where(StudyRun.study_id == study_id).order_by(StudyRun.id))
        tables = [("runs", runs, RUNS, ("config",)),
                  ("metrics", select(Metric.run_id, Metric.step, Metric.tokens, Metric.name, Metric.value,
                                     Metric.wall_time)
                   .where(Metric.run_id.in_(mine)).order_by(Metric.run_id, Metric.step, Metric.name), METRICS, ()),
                  ("evals", select(Eval.run_id, Run.config_hash, Eval.step, Eval.tokens, Eval.task, Eval.metric,
                                   Eval.value, Eval.stderr, Eval.extra).join(Run, Run.id == Eval.run_id)
                   .where(Eval.run_id.in_(mine)).order_by(Eval.run_id, Eval.step, Eval.task, Eval.metric),
                   EVALS, ("extra",))]
        if inspect(conn).has_table(KeptStat.__tablename__):
            tables.append(("kept_stats", select(KeptStat.run_id, Run.config_hash,
                                                *[getattr(KeptStat, c) for c in KEPT_STAT_FIELDS])
                           .join(Run, Run.id == KeptStat.run_id).where(KeptStat.run_id.in_(mine))
                           .order_by(KeptStat.run_id, KeptStat.top_p, KeptStat.top_k), KEPT, ()))
        for name, stmt, schema, json_columns in tables:
            path = out / f"{name}.parquet"
            written[name] = (path, _write(conn, stmt, schema, path, chunk_rows, json_columns, raw=name == "metrics"))
    return written
