"""Writes what a unit of work produces into the database: status, metrics, evals, artifacts.

Rows are upserted on their natural keys (run, step, name) so a resumed run that re-reports the
steps after its last checkpoint neither duplicates nor loses a row.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from orchestrator.db import Artifact, Eval, Metric, Run, make_engine, session_scope, utcnow

TRACKED_PACKAGES = ("pdspace", "torch", "transformers", "tokenizers", "ray", "lm_eval", "sqlalchemy", "numpy")
_ENGINES: dict[str, Engine] = {}


def engine_for(db_url: str) -> Engine:
    """One engine per URL per process (workers reuse theirs across units)."""
    if db_url not in _ENGINES:
        _ENGINES[db_url] = make_engine(db_url)
    return _ENGINES[db_url]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision() -> str | None:
    """The git revision of the pdspace source tree, if it is a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _upsert(session: Any, model: type, rows: list[dict[str, Any]], keys: list[str]) -> None:
    if not rows:
        return
    dialect = session.bind.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # portable fallback: delete-then-insert on the key
        for row in rows:
            cond = [getattr(model, k) == row[k] for k in keys]
            session.query(model).filter(*cond).delete()
            session.add(model(**row))
        return
    stmt = insert(model).values(rows)
    updatable = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updatable))


class RunRecorder:
    """The database side of one run; its ``report`` method is the trainer's callback."""

    def __init__(self, db_url: str, run_id: int):
        self.db_url = db_url
        self.run_id = run_id
        self.engine = engine_for(db_url)
        self.last_metrics: dict[str, Any] = {}

    def start(self, artifact_dir: str | None = None) -> None:
        with session_scope(self.engine) as s:
            run = s.get(Run, self.run_id)
            run.status = "running"
            run.attempts = (run.attempts or 0) + 1
            run.error = None
            run.started_at = run.started_at or utcnow()
            run.host = socket.gethostname()
            run.versions = package_versions()
            run.git_rev = git_revision()
            if artifact_dir:
                run.artifact_dir = str(artifact_dir)

    def finish(self, status: str, error: str | None = None) -> None:
        with session_scope(self.engine) as s:
            run = s.get(Run, self.run_id)
            run.status = status
            run.error = error
            run.finished_at = utcnow()
            if run.started_at is not None:
                run.duration_s = (run.finished_at - run.started_at).total_seconds()

    def report(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "metrics":
            self.metrics(payload)
        elif kind == "eval":
            self.evals([payload])

    def metrics(self, payload: dict[str, Any]) -> None:
        step, tokens = int(payload["step"]), int(payload["tokens"])
        now = time.time()
        rows = [
            {"run_id": self.run_id, "step": step, "tokens": tokens, "name": k,
             "value": None if v is None else float(v), "wall_time": now}
            for k, v in payload.items() if k not in ("step", "tokens")
        ]
        with session_scope(self.engine) as s:
            _upsert(s, Metric, rows, ["run_id", "step", "name"])
        self.last_metrics.update({r["name"]: r["value"] for r in rows}, step=step)

    def evals(self, records: list[dict[str, Any]]) -> None:
        rows = [
            {"run_id": self.run_id, "step": int(r["step"]), "tokens": int(r["tokens"]),
             "task": r["task"], "metric": r["metric"], "value": r.get("value"),
             "stderr": r.get("stderr"), "extra": r.get("extra")}
            for r in records
        ]
        with session_scope(self.engine) as s:
            _upsert(s, Eval, rows, ["run_id", "step", "task", "metric"])

    def artifact(self, kind: str, path: str | os.PathLike, checksum: str | None = None) -> None:
        path = Path(path)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else (
            path.stat().st_size if path.exists() else None)
        with session_scope(self.engine) as s:
            s.query(Artifact).filter(Artifact.run_id == self.run_id, Artifact.kind == kind).delete()
            s.add(Artifact(run_id=self.run_id, kind=kind, path=str(path), bytes=size, checksum=checksum))
