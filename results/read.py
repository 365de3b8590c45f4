"""Reading the results database (read-only connections): one study as tidy pandas frames, the
studies it holds, the status of runs, the per-run results table, and the read-only SQL of
`pdspace query`.

    results = load_results("sqlite:///pdspace.db", "quickstart")
    results.runs        # one row per study run: trial_id, factor, value, kind, status, config.* flattened
    results.metrics     # one row per (run, step, name): held-out metrics in full, training curves
                        # thinned to 200 points per run and name (curves=N to choose, full=True: all)
    results.evals       # one row per (run, step, task, metric): benchmark scores
    results.kept_stats  # one row per (logits run, top_p, top_k): kept logits and bytes per token
    final_losses(results)  # per run: val_loss at its largest step
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pandas as pd
from sqlalchemy import case, func, inspect, select

from results.engine import backend, check_exists, engine_for, reading, session_scope
from results.legacy import kept_rows_from_metrics
from results.schema import KEPT_STAT_FIELDS, Artifact, Eval, KeptStat, Metric, Run, Study, StudyRun
from results.series import DEFAULT_CURVE_POINTS, metric_rows
from results.sqltext import one_statement

__all__ = ["Results", "load_results", "final_losses", "flatten_config", "list_studies", "unit_statuses",
           "artifact_inventory",
           "unit_progress", "status_rows", "final_run_metrics", "results_frame", "export_artifact", "query",
           "RUN_COLUMNS", "METRIC_COLUMNS", "EVAL_COLUMNS", "KEPT_COLUMNS"]

# Columns every runs frame has before the flattened config (a config key equal to one of these
# is kept under "config.<key>").
RUN_COLUMNS = ["run_id", "config_hash", "trial_id", "factor", "value", "kind", "status", "error",
               "attempts", "started_at", "finished_at", "duration_s", "host", "git_rev", "artifact_dir"]
METRIC_COLUMNS = ["run_id", "config_hash", "trial_id", "step", "tokens", "name", "value", "wall_time"]
EVAL_COLUMNS = ["run_id", "config_hash", "trial_id", "step", "tokens", "task", "metric", "value", "stderr"]
KEPT_COLUMNS = ["run_id", "config_hash", "trial_id", *KEPT_STAT_FIELDS]
FINAL_METRICS = ("val_loss", "teacher_kl", "top1_agreement")


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=columns)


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
    kept_stats: pd.DataFrame = field(default_factory=lambda: _empty(KEPT_COLUMNS), repr=False)

    @property
    def is_external(self) -> bool:
        """True when every run was imported from an external table (kind "external")."""
        return len(self.runs) > 0 and bool((self.runs["kind"] == "external").all())


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


def list_studies(db_url: str) -> list[str]:
    """The names of the studies the database holds, sorted."""
    check_exists(db_url)
    with reading(db_url) as conn:
        return sorted(conn.execute(select(Study.name)).scalars())


def load_results(db_url: str, study: str, *, curves: int | None = DEFAULT_CURVE_POINTS,
                 full: bool = False) -> Results:
    """Read one study (runs, metrics, evals, kept-logits statistics) from the database, read-only.

    metrics: every evaluation row (val_loss, teacher_kl, top1_agreement, store_bytes, ...); the
    training curves (results.series.TRAINING_METRICS) thinned by the database to ``curves`` points
    per run and name, the first and last step always among them (0 or None: no training curves,
    what the report, fits and figures ask for); ``full=True``: every row. Raises ValueError when
    the study does not exist (naming the studies that do).
    """
    check_exists(db_url)
    with reading(db_url) as conn:
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
        runs = pd.DataFrame.from_records(records) if records else _empty(RUN_COLUMNS)
        run_ids = [int(i) for i in runs["run_id"]] if len(runs) else []
        metrics = _merge_keys(metric_rows(conn, study_id, curves=curves, full=full), runs, METRIC_COLUMNS)
        evals = _read(conn, select(Eval.run_id, Eval.step, Eval.tokens, Eval.task, Eval.metric,
                                   Eval.value, Eval.stderr)
                      .where(Eval.run_id.in_(run_ids)).order_by(Eval.run_id, Eval.step, Eval.id),
                      runs, EVAL_COLUMNS)
        if inspect(conn).has_table(KeptStat.__tablename__):
            kept = _read(conn, select(KeptStat.run_id, *[getattr(KeptStat, c) for c in KEPT_STAT_FIELDS])
                         .where(KeptStat.run_id.in_(run_ids))
                         .order_by(KeptStat.run_id, KeptStat.top_p, KeptStat.top_k), runs, KEPT_COLUMNS)
        else:  # a database from before migration 0002 that no `pdspace run` or import has upgraded yet
            legacy = kept_rows_from_metrics(zip(metrics["run_id"], metrics["tokens"], metrics["name"],
                                                metrics["value"]))
            kept = _merge_keys(pd.DataFrame(legacy, columns=["run_id", *KEPT_STAT_FIELDS]), runs, KEPT_COLUMNS)
    return Results(study=study, spec=spec or {}, runs=runs, metrics=metrics, evals=evals, configs=configs,
                   kept_stats=kept)


def _read(conn, stmt, runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return _merge_keys(pd.read_sql(stmt, conn), runs, columns)


def _merge_keys(df: pd.DataFrame, runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Add each row's config_hash and (first) trial_id from the runs frame."""
    if df.empty:
        return _empty(columns)
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
        return _empty(cols)
    last = m.loc[m.groupby("run_id")["step"].idxmax()]
    # a run shared by several trial ids appears once per trial id, as in `runs`
    out = results.runs[["run_id", "trial_id"]].merge(
        last[["run_id", "config_hash", "step", "tokens", "value"]], on="run_id")
    return out.rename(columns={"value": metric})[cols].reset_index(drop=True)


def unit_statuses(db_url: str, config_hashes: Iterable[str]) -> dict[str, str]:
    """config_hash -> status of those units already in the database (any study); {} when the
    database or its tables do not exist yet."""
    hashes = list(config_hashes)
    try:
        with reading(db_url) as conn:
            rows = conn.execute(select(Run.config_hash, Run.status).where(Run.config_hash.in_(hashes))).all()
    except Exception:  # noqa: BLE001 - a database (or its tables) not there yet holds nothing
        return {}
    return {h: s for h, s in rows}


def unit_progress(db_url: str, config_hashes: Iterable[str], metric: str = "loss"
                  ) -> list[tuple[str, str, tuple | None]]:
    """(config_hash, status, latest (step, tokens, value) of `metric` while running, else None) for
    those units in the database. Uses the process's cached engine (a live view polls it)."""
    out = []
    with session_scope(engine_for(db_url)) as s:
        rows = s.execute(select(Run.id, Run.config_hash, Run.status).where(Run.config_hash.in_(list(config_hashes))))
        for run_id, h, status in rows.all():
            last = None
            if status == "running":
                last = s.execute(select(Metric.step, Metric.tokens, Metric.value)
                                 .where(Metric.run_id == run_id, Metric.name == metric)
                                 .order_by(Metric.step.desc()).limit(1)).first()
                last = tuple(last) if last is not None else None
            out.append((h, status, last))
    return out


def status_rows(db_url: str, study: str | None = None) -> pd.DataFrame:
    """One row per study run (of one study, or all): study, trial_id, kind, status, attempts,
    duration_s, error, config_hash, started_at, finished_at."""
    q = (select(Study.name.label("study"), StudyRun.trial_id, Run.kind, Run.status, Run.attempts,
                Run.duration_s, Run.error, Run.config_hash, Run.started_at, Run.finished_at)
         .join(StudyRun, StudyRun.study_id == Study.id).join(Run, Run.id == StudyRun.run_id))
    if study:
        q = q.where(Study.name == study)
    with reading(db_url) as conn:
        frame = pd.read_sql(q, conn)
    frame["duration_s"] = pd.to_numeric(frame["duration_s"])  # float even when no run has finished
    return frame


def final_run_metrics(db_url: str, study: str) -> pd.DataFrame:
    """One row per study run: trial_id, factor, value, run_id, kind, status, config (dict),
    config_hash, duration_s, error, and val_loss, teacher_kl, top1_agreement at the run's last
    val_loss step (columns present when some run has them). ValueError for an unknown study."""
    runs, _ = _final_frames(db_url, study, evals=False)
    return runs


def _final_frames(db_url: str, study: str, *, evals: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs with their final metrics, evaluations at each run's last evaluated step)."""
    with reading(db_url) as conn:
        q = (select(StudyRun.trial_id, StudyRun.factor, StudyRun.value, Run.id.label("run_id"), Run.kind,
                    Run.status, Run.config, Run.config_hash, Run.duration_s, Run.error)
             .join(Study, Study.id == StudyRun.study_id).join(Run, Run.id == StudyRun.run_id)
             .where(Study.name == study).order_by(StudyRun.id))
        runs = pd.DataFrame([dict(r) for r in conn.execute(q).mappings()],
                            columns=["trial_id", "factor", "value", "run_id", "kind", "status", "config",
                                     "config_hash", "duration_s", "error"])
        if runs.empty and conn.execute(select(Study.id).where(Study.name == study)).first() is None:
            raise ValueError(f"no study named {study!r} in the database")
        # the study's runs only, each by index seeks: its last val_loss step, the final metrics there
        mine = select(StudyRun.run_id).join(Study, Study.id == StudyRun.study_id).where(Study.name == study)
        mine = mine.distinct().subquery()
        last_step = (select(func.max(Metric.step)).where(Metric.run_id == mine.c.run_id, Metric.name == "val_loss")
                     .scalar_subquery())
        last = select(mine.c.run_id, last_step.label("step")).subquery()
        final = pd.read_sql(select(Metric.run_id, Metric.name, Metric.value, Metric.step, Metric.tokens)
                            .join(last, (last.c.run_id == Metric.run_id) & (last.c.step == Metric.step))
                            .where(Metric.name.in_(FINAL_METRICS)), conn)
        ev = pd.DataFrame()
        if evals:
            last_eval = (select(Eval.run_id, func.max(Eval.step).label("step"))
                         .where(Eval.run_id.in_(select(mine.c.run_id))).group_by(Eval.run_id).subquery())
            ev = pd.read_sql(select(Eval.run_id, Eval.task, Eval.metric, Eval.value, Eval.stderr, Eval.step)
                             .join(last_eval, (last_eval.c.run_id == Eval.run_id) & (last_eval.c.step == Eval.step)),
                             conn)
    runs["config"] = runs["config"].map(lambda c: json.loads(c) if isinstance(c, str) else (c or {}))
    runs["duration_s"] = pd.to_numeric(runs["duration_s"])  # float even when no run has finished
    wide = final.pivot_table(index="run_id", columns="name", values="value", aggfunc="first")
    runs = runs.merge(wide, left_on="run_id", right_index=True, how="left")
    return runs, ev


def results_frame(db_url: str, study: str) -> pd.DataFrame:
    """What `pdspace results` shows, one row per trial: id, kind, status, student/teacher/seed/
    tokens/α/kd, final held-out metrics, final benchmark scores per task, duration_s, config_hash."""
    runs, evals = _final_frames(db_url, study, evals=True)
    out = pd.DataFrame({
        "trial_id": runs["trial_id"], "kind": runs["kind"], "status": runs["status"],
        "student": runs["config"].map(lambda c: c.get("student") or c.get("size")),
        "teacher": runs["config"].map(lambda c: c.get("teacher")),
        "seed": runs["config"].map(lambda c: c.get("seed")),
        "tokens": runs["config"].map(lambda c: c.get("tokens") or c.get("num_tokens")),
        "alpha": runs["config"].map(lambda c: (c.get("alpha_schedule") or {}).get("alpha")),
        "kd": runs["config"].map(lambda c: (c.get("kd") or {}).get("kind")),
    })
    for col in FINAL_METRICS:
        if col in runs:
            out[col] = runs[col].round(4)
    if not evals.empty:
        acc = evals[evals["metric"].isin(["acc", "acc_norm", "exact_match"])]
        wide = acc.pivot_table(index="run_id", columns="task", values="value", aggfunc="first").round(4)
        out = out.join(runs[["run_id"]]).merge(wide, left_on="run_id", right_index=True, how="left")
        out = out.drop(columns="run_id")
    out["duration_s"] = runs["duration_s"].round(1)
    out["config_hash"] = runs["config_hash"].str[:10]
    return out


def export_artifact(db_url: str, study: str) -> tuple[str, str] | None:
    """(path, trial_id) of one exported checkpoint of the study: a KD student's first, else a
    baseline's; None when the study has none."""
    q = (select(Artifact.path, StudyRun.trial_id)
         .join(Run, Run.id == Artifact.run_id).join(StudyRun, StudyRun.run_id == Run.id)
         .join(Study, Study.id == StudyRun.study_id)
         .where(Study.name == study, Artifact.kind == "export", Run.kind.in_(("student", "baseline")))
         .order_by(case((Run.kind == "student", 0), else_=1), StudyRun.id).limit(1))
    with reading(db_url) as conn:
        row = conn.execute(q).first()
    return None if row is None else (row[0], row[1])


def artifact_inventory(db_url: str) -> list[dict[str, Any]]:
    """Every run of the database, for deciding which artifacts are still needed (`pdspace gc`):
    dicts with config_hash, kind, status, in_study (some study uses it), logits_hash (the logits
    run it reads, from its config; None when none), and paths (its artifact_dir and recorded
    artifact paths)."""
    check_exists(db_url)
    with reading(db_url) as conn:
        linked = set(conn.execute(select(StudyRun.run_id).distinct()).scalars())
        paths: dict[int, list[str]] = {}
        for run_id, path in conn.execute(select(Artifact.run_id, Artifact.path)):
            paths.setdefault(run_id, []).append(path)
        out = []
        for r in conn.execute(select(Run.id, Run.config_hash, Run.kind, Run.status, Run.artifact_dir, Run.config)):
            config = json.loads(r.config) if isinstance(r.config, str) else (r.config or {})
            out.append({"config_hash": r.config_hash, "kind": r.kind, "status": r.status, "in_study": r.id in linked,
                        "logits_hash": config.get("logits_hash") if isinstance(config, dict) else None,
                        "paths": [p for p in [r.artifact_dir, *paths.get(r.id, [])] if p]})
    return out


def query(db_url: str, sql: str) -> pd.DataFrame:
    """The rows of one user SQL statement, which cannot write on any backend.

    The text must be one statement (results.sqltext.one_statement: no second statement after a
    semicolon, no ATTACH, COPY, VACUUM, DO or CALL). It runs on a read-only connection: SQLite
    opens the file with mode=ro, sets PRAGMA query_only and an authorizer that refuses ATTACH,
    DETACH and pragmas that set a value; PostgreSQL runs it in a READ ONLY transaction (on a
    session whose default is read-only), inside a savepoint so that it cannot switch the
    transaction to read-write, as a prepared statement (the server refuses several commands),
    and rolls back. ValueError with the database's one-line message when it fails, and when the
    statement returns no rows."""
    check_exists(db_url)
    kind = backend(db_url)
    statement = one_statement(sql, kind)
    try:
        with reading(db_url) as conn:
            raw = conn.connection.dbapi_connection
            if kind == "sqlite":
                raw.set_authorizer(_sqlite_authorizer)
            cur = raw.cursor()
            try:
                if kind == "postgresql":
                    cur.execute("SET TRANSACTION READ ONLY")
                    cur.execute("SAVEPOINT pdspace_query")
                if kind == "postgresql" and hasattr(raw, "prepare_threshold"):  # psycopg 3
                    cur.execute(statement, prepare=True)
                else:
                    cur.execute(statement)
                if cur.description is None:
                    raise ValueError("the query returned no rows to show (pdspace query is read-only)")
                columns = [d[0] for d in cur.description]
                return pd.DataFrame(cur.fetchall(), columns=columns)
            finally:
                cur.close()
                raw.rollback()
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - the driver's own errors (sqlite3, psycopg) become one sentence
        orig = getattr(exc, "orig", None) or exc
        first = str(orig).strip().splitlines()
        message = first[0] if first else type(orig).__name__
        if kind == "sqlite" and message == "not authorized":
            message += " (pdspace query is read-only: no ATTACH, no pragma that sets a value, no extensions)"
        raise ValueError(f"the query failed: {message}") from exc


_SQLITE_INFO_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                        "foreign_key_list"}


def _sqlite_authorizer(action: int, arg1, arg2, _db, _trigger) -> int:  # noqa: ANN001
    """What a `pdspace query` statement may do on SQLite: anything but ATTACH/DETACH and pragmas
    that set a value (reading a pragma, and the schema pragmas that name a table, are allowed)."""
    import sqlite3

    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and arg2 is not None and str(arg1).lower() not in _SQLITE_INFO_PRAGMAS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK
