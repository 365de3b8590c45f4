"""Writing the results database: register a study and its runs, record what a run produces
(status, metrics, evaluations, artifacts, kept-logits statistics), import external results.

Rows are upserted on their natural keys (run, step, name; run, step, task, metric; run, top_p,
top_k), so a resumed run that re-reports the steps after its last checkpoint neither duplicates nor
loses a row. Every function opens its own transaction on the process's engine for the URL
(results.engine.engine_for); SQLite's busy timeout lets concurrent trials write side by side.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import delete, select

from results.engine import engine_for, ensure_schema, session_scope
from results.schema import KEPT_STAT_FIELDS, Artifact, Eval, KeptStat, Metric, Run, Study, StudyRun, utcnow

__all__ = ["UnitRecord", "TrialRecord", "ImportedRun", "register_study", "run_id_for", "start_run", "finish_run",
           "record_metrics", "record_evals", "record_artifact", "record_kept_stats", "import_external"]


@dataclass(frozen=True)
class UnitRecord:
    """A unit of work to register: its identity, kind and resolved config."""

    config_hash: str
    kind: str
    config: dict


@dataclass(frozen=True)
class TrialRecord:
    """A study's readable name for a unit (several trial ids may name one unit)."""

    trial_id: str
    config_hash: str
    factor: str | None = None
    value: str | None = None


@dataclass(frozen=True)
class ImportedRun:
    """One run of an external results table: identity, trial id, config, and its evaluations
    (dicts with step, tokens, task, metric, value, stderr)."""

    config_hash: str
    trial_id: str
    factor: str | None
    value: str | None
    config: dict
    evals: list[dict] = field(default_factory=list)


def _upsert(session: Any, model: type, rows: list[dict[str, Any]], keys: list[str]) -> None:
    if not rows:
        return
    # one row per key, the last one winning (PostgreSQL refuses a batch that hits one key twice)
    rows = list({tuple(r[k] for k in keys): r for r in rows}.values())
    dialect = session.bind.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # portable fallback: delete-then-insert on the key
        for row in rows:
            session.execute(delete(model).where(*[getattr(model, k) == row[k] for k in keys]))
            session.add(model(**row))
        return
    stmt = insert(model).values(rows)
    updatable = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updatable))


def register_study(db_url: str, name: str, spec: dict, spec_hash: str, units: Iterable[UnitRecord],
                   trials: Iterable[TrialRecord]) -> dict[str, str]:
    """Make sure the study, every unit and every trial id are in the database.

    Returns config_hash -> status for ``units``. Existing runs are never overwritten (a unit shared
    with another study keeps its history), except that a missing ``baseline_hash`` (a run first
    registered by a study with `baselines: {auto: false}`) is filled in; the study's spec and its
    trial ids' links are updated.
    """
    units = list(units)
    with session_scope(engine_for(db_url)) as s:
        row = s.execute(select(Study).where(Study.name == name)).scalar_one_or_none()
        if row is None:
            row = Study(name=name, spec=spec, spec_hash=spec_hash)
            s.add(row)
            s.flush()
        else:
            row.spec, row.spec_hash = spec, spec_hash
        existing = {r.config_hash: r for r in s.execute(
            select(Run).where(Run.config_hash.in_([u.config_hash for u in units]))).scalars()}
        for u in units:
            if u.config_hash not in existing:
                run = Run(config_hash=u.config_hash, kind=u.kind, config=u.config, status="pending", attempts=0)
                s.add(run)
                existing[u.config_hash] = run
            elif (u.config or {}).get("baseline_hash") and not (existing[u.config_hash].config or {}).get("baseline_hash"):
                # the pairing is derived from the config itself (never part of the identity): a run
                # first registered by a study without baselines gets its LM-only twin when another
                # study that has it reuses the run, or no table could pair them
                existing[u.config_hash].config = {**existing[u.config_hash].config,
                                                  "baseline_hash": u.config["baseline_hash"]}
        s.flush()
        links = {sr.trial_id: sr for sr in s.execute(select(StudyRun).where(StudyRun.study_id == row.id)).scalars()}
        for t in trials:
            run_id = existing[t.config_hash].id
            if t.trial_id in links:
                link = links[t.trial_id]
                link.run_id, link.factor, link.value = run_id, t.factor, t.value
            else:
                s.add(StudyRun(study_id=row.id, run_id=run_id, trial_id=t.trial_id, factor=t.factor, value=t.value))
        return {h: r.status for h, r in existing.items()}


def run_id_for(db_url: str, config_hash: str) -> int:
    """The id of the registered run with this config hash; RuntimeError when there is none."""
    with session_scope(engine_for(db_url)) as s:
        run_id = s.execute(select(Run.id).where(Run.config_hash == config_hash)).scalar_one_or_none()
    if run_id is None:
        raise RuntimeError(f"unit {config_hash} is not registered in the database")
    return run_id


def start_run(db_url: str, run_id: int, *, host: str | None, versions: dict | None, git_rev: str | None,
              artifact_dir: str | None = None) -> None:
    """Mark a run as running (one more attempt; the first start time is kept)."""
    with session_scope(engine_for(db_url)) as s:
        run = s.get(Run, run_id)
        run.status = "running"
        run.attempts = (run.attempts or 0) + 1
        run.error = None
        run.started_at = run.started_at or utcnow()
        run.host, run.versions, run.git_rev = host, versions, git_rev
        if artifact_dir:
            run.artifact_dir = str(artifact_dir)


def finish_run(db_url: str, run_id: int, status: str, error: str | None = None) -> None:
    """Record a run's end: status (completed / failed), error sentence, finish time, duration (s)."""
    with session_scope(engine_for(db_url)) as s:
        run = s.get(Run, run_id)
        run.status = status
        run.error = error
        run.finished_at = utcnow()
        if run.started_at is not None:
            run.duration_s = (run.finished_at - run.started_at).total_seconds()


def record_metrics(db_url: str, run_id: int, step: int, tokens: int, values: Mapping[str, float | None], *,
                   wall_time: float | None = None) -> None:
    """One metric row per name at (step, tokens); wall_time defaults to now (epoch seconds)."""
    now = time.time() if wall_time is None else float(wall_time)
    rows = [{"run_id": run_id, "step": int(step), "tokens": int(tokens), "name": name,
             "value": None if v is None else float(v), "wall_time": now} for name, v in values.items()]
    with session_scope(engine_for(db_url)) as s:
        _upsert(s, Metric, rows, ["run_id", "step", "name"])


def record_evals(db_url: str, run_id: int, records: Sequence[Mapping[str, Any]]) -> None:
    """Evaluation rows (dicts with step, tokens, task, metric, value, stderr, extra)."""
    rows = [{"run_id": run_id, "step": int(r["step"]), "tokens": int(r["tokens"]), "task": r["task"],
             "metric": r["metric"], "value": r.get("value"), "stderr": r.get("stderr"), "extra": r.get("extra")}
            for r in records]
    with session_scope(engine_for(db_url)) as s:
        _upsert(s, Eval, rows, ["run_id", "step", "task", "metric"])


def record_artifact(db_url: str, run_id: int, kind: str, path: str, *, num_bytes: int | None,
                    checksum: str | None = None) -> None:
    """A run's artifact of this kind (replacing an earlier one of the same kind)."""
    with session_scope(engine_for(db_url)) as s:
        s.execute(delete(Artifact).where(Artifact.run_id == run_id, Artifact.kind == kind))
        s.add(Artifact(run_id=run_id, kind=kind, path=str(path), bytes=num_bytes, checksum=checksum))


def record_kept_stats(db_url: str, run_id: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """Kept-logits statistics of a logits run, one row per (top_p, top_k): dicts with the
    kept_stats columns (top_p, top_k, num_tokens, mean_kept_per_token, bytes_per_token, and
    optionally mean_kept_mass, capped_frac, sampled_rows)."""
    out = []
    for r in rows:
        row = {k: r.get(k) for k in KEPT_STAT_FIELDS}
        row.update(run_id=run_id, top_p=float(r["top_p"]), top_k=int(r["top_k"]), num_tokens=int(r["num_tokens"]))
        out.append(row)
    with session_scope(engine_for(db_url)) as s:
        _upsert(s, KeptStat, out, ["run_id", "top_p", "top_k"])


def import_external(db_url: str, study: str, runs: Sequence[ImportedRun], *, spec: dict, spec_hash: str) -> int:
    """Store external results as study ``study`` (created with ``spec`` when new): one completed run
    of kind "external" per ImportedRun with its evaluations. Re-importing updates in place (configs,
    trial links, evaluation values). Creates the schema when the database is new. Returns the
    number of runs."""
    engine = ensure_schema(db_url)
    try:
        with session_scope(engine) as s:
            st = s.execute(select(Study).where(Study.name == study)).scalar_one_or_none()
            if st is None:
                st = Study(name=study, spec=spec, spec_hash=spec_hash)
                s.add(st)
                s.flush()
            for r in runs:
                run = s.execute(select(Run).where(Run.config_hash == r.config_hash)).scalar_one_or_none()
                if run is None:
                    run = Run(config_hash=r.config_hash, kind="external", config=r.config, status="completed")
                    s.add(run)
                    s.flush()
                else:
                    run.config = r.config
                link = s.execute(select(StudyRun).where(StudyRun.study_id == st.id,
                                                        StudyRun.trial_id == r.trial_id)).scalar_one_or_none()
                if link is None:
                    s.add(StudyRun(study_id=st.id, run_id=run.id, trial_id=r.trial_id, factor=r.factor,
                                   value=r.value))
                else:
                    link.run_id, link.factor, link.value = run.id, r.factor, r.value
                have = {(e.step, e.task, e.metric): e for e in
                        s.execute(select(Eval).where(Eval.run_id == run.id)).scalars()}
                for e in r.evals:
                    row = have.get((e["step"], e["task"], e["metric"]))
                    if row is None:
                        s.add(Eval(run_id=run.id, **e))
                    else:
                        row.value, row.tokens = e["value"], e["tokens"]
    finally:
        engine.dispose()
    return len(runs)
