"""Which metric rows a reader gets, chosen in SQL: a study's evaluation rows in full, its training
curves thinned by the database to a fixed number of points per run and metric (the last one always
kept), or every row on request. A paper-scale suite logs 10^7 metric rows; a report needs a few
thousand of them.

Every query walks the index metrics(run_id, name, step) (migration 0003) by seeks, never a scan of
a run's rows: the names a run has (a loose index scan, as a recursive CTE), the first and last
step of each series, and for each of P evenly spaced target steps the first logged step at or past
it. Plain SQL (recursive CTEs, correlated subqueries), the same on SQLite and PostgreSQL.
"""
from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import bindparam, text

__all__ = ["TRAINING_METRICS", "DEFAULT_CURVE_POINTS", "metric_rows"]

TRAINING_METRICS = ("lm_loss", "kd_loss", "loss", "lr", "alpha", "grad_norm", "tokens_per_s")
"""The per-step training curves (core.trainer's `report("metrics", ...)`); every other name
(val_loss, teacher_kl, top1_agreement, store_bytes, ...) is an evaluation series, read in full."""
DEFAULT_CURVE_POINTS = 200

_COLUMNS = ["run_id", "step", "tokens", "name", "value", "wall_time"]

# The distinct (run, name) series of the study's runs: each step is one index seek.
_SERIES = """
WITH RECURSIVE study AS (SELECT DISTINCT run_id FROM study_runs WHERE study_id = :study_id),
series(run_id, name) AS (
    SELECT s.run_id, (SELECT MIN(m.name) FROM metrics m WHERE m.run_id = s.run_id) FROM study s
    UNION ALL
    SELECT p.run_id, (SELECT MIN(m.name) FROM metrics m WHERE m.run_id = p.run_id AND m.name > p.name)
    FROM series p WHERE p.name IS NOT NULL
)"""

_EVALUATION = _SERIES + """
SELECT m.run_id, m.step, m.tokens, m.name, m.value, m.wall_time
FROM series s JOIN metrics m ON m.run_id = s.run_id AND m.name = s.name
WHERE s.name IS NOT NULL AND s.name NOT IN :curves
"""

_ALL = _SERIES + """
SELECT m.run_id, m.step, m.tokens, m.name, m.value, m.wall_time
FROM series s JOIN metrics m ON m.run_id = s.run_id AND m.name = s.name
WHERE s.name IS NOT NULL
"""

# P targets from the first to the last step of each curve; the first logged step at or after each.
_THINNED = _SERIES + """,
bounds AS (
    SELECT s.run_id, s.name,
           (SELECT MIN(m.step) FROM metrics m WHERE m.run_id = s.run_id AND m.name = s.name) AS lo,
           (SELECT MAX(m.step) FROM metrics m WHERE m.run_id = s.run_id AND m.name = s.name) AS hi
    FROM series s WHERE s.name IN :curves
),
ticks(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM ticks WHERE i + 1 < :points),
picked AS (
    SELECT DISTINCT b.run_id, b.name,
           (SELECT MIN(m.step) FROM metrics m WHERE m.run_id = b.run_id AND m.name = b.name
              AND m.step >= b.lo + ((b.hi - b.lo) * t.i) / (:points - 1)) AS step
    FROM bounds b CROSS JOIN ticks t
)
SELECT m.run_id, m.step, m.tokens, m.name, m.value, m.wall_time
FROM picked p JOIN metrics m ON m.run_id = p.run_id AND m.name = p.name AND m.step = p.step
"""


def _frame(conn: Any, sql: str, **params: Any) -> pd.DataFrame:
    stmt = text(sql)
    if "curves" in params:
        stmt = stmt.bindparams(bindparam("curves", expanding=True))
    rows = conn.execute(stmt, params).all()
    return pd.DataFrame(rows, columns=_COLUMNS)


def metric_rows(conn: Any, study_id: int, *, curves: int | None = DEFAULT_CURVE_POINTS,
                full: bool = False) -> pd.DataFrame:
    """The metric rows of a study's runs (columns run_id, step, tokens, name, value, wall_time),
    sorted by run, step and name.

    Evaluation series in full. Training curves (TRAINING_METRICS): with ``full``, every row; else
    ``curves`` points per run and name, spread evenly over its steps, first and last included
    (fewer where the curve has fewer rows); ``curves`` 0 or None: none. ValueError for
    ``curves`` 1 (a curve needs its two ends) or below 0.
    """
    if full:
        out = _frame(conn, _ALL, study_id=study_id)
    else:
        points = int(curves or 0)
        if points == 1 or points < 0:
            raise ValueError(f"curves must be 0 (no training curves) or at least 2 points per run; got {curves}")
        parts = [_frame(conn, _EVALUATION, study_id=study_id, curves=list(TRAINING_METRICS))]
        if points:
            parts.append(_frame(conn, _THINNED, study_id=study_id, curves=list(TRAINING_METRICS), points=points))
        parts = [p for p in parts if not p.empty]
        out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=_COLUMNS)
    if out.empty:
        return pd.DataFrame(columns=_COLUMNS)
    out = out.astype({"run_id": "int64", "step": "int64", "tokens": "int64"})
    out["value"] = pd.to_numeric(out["value"]).astype(float)
    out["wall_time"] = pd.to_numeric(out["wall_time"]).astype(float)
    return out.sort_values(["run_id", "step", "name"], kind="stable").reset_index(drop=True)
