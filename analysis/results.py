"""Loads one study from the results database into tidy pandas frames (read-only).

    results = load_results("sqlite:///pdspace.db", "quickstart")
    results.runs      # one row per study run: trial_id, factor, value, kind, status, config.* flattened
    results.metrics   # one row per (run, step, name): training and held-out metrics
    results.evals     # one row per (run, step, task, metric): benchmark scores
    final_losses(results)  # per run: val_loss at its largest step

Schema: docs/internals.md ("orchestrator.db"). This module never writes.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from sqlalchemy import select

from orchestrator.db import Eval, Metric, Run, Study, StudyRun, make_engine

__all__ = ["Results", "load_results", "final_losses", "flatten_config", "list_studies", "stable_hash"]

# Columns every runs frame has before the flattened config (a config key equal to one of these
# is kept under "config.<key>").
RUN_COLUMNS = ["run_id", "config_hash", "trial_id", "factor", "value", "kind", "status", "error",
               "attempts", "started_at", "finished_at", "duration_s", "host", "git_rev", "artifact_dir"]
METRIC_COLUMNS = ["run_id", "config_hash", "trial_id", "step", "tokens", "name", "value", "wall_time"]
EVAL_COLUMNS = ["run_id", "config_hash", "trial_id", "step", "tokens", "task", "metric", "value", "stderr"]


@dataclass(frozen=True)
class Results:
    """One study's rows as tidy frames (see the module docstring); `configs` maps config_hash to
    the run's resolved config dict (unflattened)."""

    study: str
    spec: dict
    runs: pd.DataFrame
    metrics: pd.DataFrame
    evals: pd.DataFrame
    configs: dict[str, dict] = field(default_factory=dict, repr=False)

    @property
    def is_external(self) -> bool:
        """True when every run was imported from an external table (kind "external")."""
        return len(self.runs) > 0 and bool((self.runs["kind"] == "external").all())


def stable_hash(obj: Any, length: int = 16) -> str:
    """Content hash of a JSON-able object: sha256 of its canonical JSON (sorted keys, no spaces),
    hex, truncated; the same recipe as core.utils.stable_hash (not imported: core needs torch)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def flatten_config(config: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """{"kd": {"top_k": 50}} -> {"kd.top_k": 50}; lists stay values; None config -> {}."""
    out: dict[str, Any] = {}
    for key, val in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(val, Mapping) and val:
            out.update(flatten_config(val, name + "."))
        else:
            out[name] = val
    return out


def _check_exists(db_url: str) -> None:
    """A read-only SQLite URL to a missing file is a user error, not a driver traceback."""
    if db_url.startswith("sqlite") and "///" in db_url:
        path = db_url.split("///", 1)[1].split("?", 1)[0]
        if path and path != ":memory:" and not path.startswith("file:") and not Path(path).exists():
            raise ValueError(f"database {path} does not exist (run a study or import results first)")


def list_studies(db_url: str) -> list[str]:
    _check_exists(db_url)
    engine = make_engine(db_url, read_only=True)
    try:
        with engine.connect() as conn:
            return sorted(conn.execute(select(Study.name)).scalars())
    finally:
        engine.dispose()


def load_results(db_url: str, study: str) -> Results:
    """Read one study (runs, metrics, evals) from the database at `db_url`, read-only.

    Raises ValueError when the study does not exist (naming the studies that do).
    """
    _check_exists(db_url)
    engine = make_engine(db_url, read_only=True)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(Study.id, Study.spec).where(Study.name == study)).first()
            if row is None:
                names = sorted(conn.execute(select(Study.name)).scalars())
                known = ", ".join(names) if names else "none"
                raise ValueError(f"unknown study {study!r} in {db_url} (studies there: {known})")
            study_id, spec = row
            q = (select(Run.id, Run.config_hash, StudyRun.trial_id, StudyRun.factor, StudyRun.value,
                        Run.kind, Run.status, Run.error, Run.attempts, Run.started_at, Run.finished_at,
                        Run.duration_s, Run.host, Run.git_rev, Run.artifact_dir, Run.config)
                 .join(StudyRun, StudyRun.run_id == Run.id)
                 .where(StudyRun.study_id == study_id)
                 .order_by(StudyRun.id))
            records, configs = [], {}
            for r in conn.execute(q).mappings():
                rec = {c: r[c if c != "run_id" else "id"] for c in RUN_COLUMNS}
                config = r["config"] or {}
                configs[r["config_hash"]] = config
                for key, val in flatten_config(config).items():
                    rec[f"config.{key}" if key in RUN_COLUMNS else key] = val
                records.append(rec)
            runs = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=RUN_COLUMNS)
            run_ids = [int(i) for i in runs["run_id"]] if len(runs) else []
            metrics = _read(conn, select(Metric.run_id, Metric.step, Metric.tokens, Metric.name,
                                         Metric.value, Metric.wall_time)
                            .where(Metric.run_id.in_(run_ids)).order_by(Metric.run_id, Metric.step, Metric.id),
                            runs, METRIC_COLUMNS)
            evals = _read(conn, select(Eval.run_id, Eval.step, Eval.tokens, Eval.task, Eval.metric,
                                       Eval.value, Eval.stderr)
                          .where(Eval.run_id.in_(run_ids)).order_by(Eval.run_id, Eval.step, Eval.id),
                          runs, EVAL_COLUMNS)
    finally:
        engine.dispose()
    return Results(study=study, spec=spec or {}, runs=runs, metrics=metrics, evals=evals,
                   configs=configs)


def _read(conn, stmt, runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    df = pd.read_sql(stmt, conn)
    if df.empty:
        return pd.DataFrame(columns=columns)
    keys = runs[["run_id", "config_hash", "trial_id"]].drop_duplicates("run_id")
    return df.merge(keys, on="run_id", how="left")[columns]


def final_losses(results: Results, metric: str = "val_loss") -> pd.DataFrame:
    """Per run: the held-out loss at its largest step.

    Columns: run_id, config_hash, trial_id, step, tokens, <metric>. Runs without the metric are left out.
    """
    m = results.metrics
    m = m[(m["name"] == metric) & m["value"].notna()]
    cols = ["run_id", "config_hash", "trial_id", "step", "tokens", metric]
    if m.empty:
        return pd.DataFrame(columns=cols)
    last = m.loc[m.groupby("run_id")["step"].idxmax()]
    # a run shared by several trial ids appears once per trial id, as in `runs`
    out = results.runs[["run_id", "trial_id"]].merge(
        last[["run_id", "config_hash", "step", "tokens", "value"]], on="run_id")
    return out.rename(columns={"value": metric})[cols].reset_index(drop=True)
