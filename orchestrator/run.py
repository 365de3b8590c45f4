"""`pdspace run` and the read-side verbs (status, results): register a study's units in the
database, run only what is missing, and summarise what the database holds."""
from __future__ import annotations

import fcntl
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import select

from orchestrator.db import Run, Study, StudyRun, init_db, make_engine, session_scope
from orchestrator.plan import Plan, Unit, build_plan
from orchestrator.recorder import engine_for


def register(plan: Plan, db_url: str) -> dict[str, str]:
    """Make sure the study, every unit and every trial id are in the database.

    Returns config_hash -> status for the plan's units. Existing rows are never overwritten
    (a unit shared with another study keeps its history).
    """
    study = plan.study
    with session_scope(engine_for(db_url)) as s:
        row = s.execute(select(Study).where(Study.name == study.name)).scalar_one_or_none()
        if row is None:
            row = Study(name=study.name, spec=study.to_dict(), spec_hash=study.spec_hash)
            s.add(row)
            s.flush()
        else:
            row.spec, row.spec_hash = study.to_dict(), study.spec_hash
        existing = {r.config_hash: r for r in s.execute(
            select(Run).where(Run.config_hash.in_([u.config_hash for u in plan.units]))).scalars()}
        for u in plan.units:
            if u.config_hash not in existing:
                run = Run(config_hash=u.config_hash, kind=u.kind, config=u.config, status="pending", attempts=0)
                s.add(run)
                existing[u.config_hash] = run
        s.flush()
        links = {sr.trial_id: sr for sr in s.execute(
            select(StudyRun).where(StudyRun.study_id == row.id)).scalars()}
        for trial_id, u in [(u.trial_id, u) for u in plan.units] + plan.aliases:
            run_id = existing[u.config_hash].id
            factor, value = (u.factor, u.value)
            if trial_id in links:
                links[trial_id].run_id = run_id
                links[trial_id].factor, links[trial_id].value = factor, value
            else:
                s.add(StudyRun(study_id=row.id, run_id=run_id, trial_id=trial_id, factor=factor, value=value))
        return {h: r.status for h, r in existing.items()}


@contextmanager
def _runner_lock(artifacts: Path) -> Iterator[None]:
    """One `pdspace run` per artifacts folder at a time (a second one would train twice)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    f = open(artifacts / ".run.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ValueError(f"another `pdspace run` is using {artifacts}; wait for it or set PDSPACE_HOME")
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def run_study(study: Any, *, db_url: str, artifacts: Path, address: str | None = None,
              max_concurrent: int | None = None, quiet: bool = False, live: bool = False,
              report: bool = True) -> int:
    """Run what is missing of ``study``; 0 when every unit completed, 1 when some failed."""
    return run_studies([study], db_url=db_url, artifacts=artifacts, address=address,
                       max_concurrent=max_concurrent, quiet=quiet, live=live, report=report)


def run_studies(studies: list[Any], *, db_url: str, artifacts: Path, address: str | None = None,
                max_concurrent: int | None = None, quiet: bool = False, live: bool = False,
                report: bool = True) -> int:
    """Run what is missing of one or several studies as one schedule; 0 when every unit completed.

    Their units are merged by config_hash (a teacher, store or run two studies share runs once)
    and run in one Ray session, in dependency stages over the whole suite, so the long teachers of
    one study train while the LM-only baselines of the others fill the free slots. Each study
    then gets its summary and report.
    """
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"two study files are both named {dup!r}; study names must be unique")
    one = len(studies) == 1
    head = f"study {names[0]}" if one else f"{len(studies)} studies"
    units_word = "units" if one else "distinct units"
    t0 = time.time()
    init_db(db_url)
    plans = [build_plan(s, artifacts) for s in studies]
    with _runner_lock(Path(artifacts)):
        status: dict[str, str] = {}
        merged: dict[str, Unit] = {}
        for plan in plans:
            status.update(register(plan, db_url))
            for u in plan.units:
                merged.setdefault(u.config_hash, u)
        todo = [u for u in merged.values() if status.get(u.config_hash) != "completed"]
        errors: dict[str, str | None] = {}
        if todo:
            resumed = [u for u in todo if status.get(u.config_hash) in ("running", "failed", "pending")
                       and (Path(artifacts) / "runs" / u.config_hash / "checkpoint").exists()]
            _say(quiet, f"{head}: {len(todo)} of {len(merged)} {units_word} to run"
                        + (f" ({len(resumed)} resume from a checkpoint)" if resumed else "")
                        + ("" if one else ", as one schedule"))
            errors = _execute(todo, db_url=db_url, artifacts=Path(artifacts), address=address,
                              max_concurrent=max_concurrent or max(s.resources.max_concurrent for s in studies),
                              max_retries=max(s.resources.max_retries for s in studies), quiet=quiet, live=live)
        else:
            print(f"{head}: all {len(merged)} {units_word} are complete; nothing to run.")
    failed = {h: e for h, e in errors.items() if e}
    for study, plan in zip(studies, plans):
        print(summary(db_url, study.name))
        for u in plan.units:
            if u.config_hash in failed:
                print(f"FAILED {'' if one else study.name + ' '}{u.trial_id}: {failed[u.config_hash]}",
                      file=sys.stderr)
        if report and todo:
            _write_report(db_url, study.name, quiet)
    if todo or not one:
        status_cmd = f"pdspace status {names[0]}" if one else "pdspace status"
        _say(quiet, f"{head}: done in {time.time() - t0:.0f} s"
                    + (f", {len(failed)} unit(s) failed (see `{status_cmd}`)" if failed else ""))
    return 1 if failed else 0


def _execute(todo: list[Unit], *, db_url: str, artifacts: Path, address: str | None,
             max_concurrent: int | None, max_retries: int, quiet: bool, live: bool) -> dict[str, str | None]:
    from orchestrator.execute import execute
    from orchestrator.progress import LiveView
    from orchestrator.worker import execute_unit

    todo_hashes = {u.config_hash for u in todo}
    errors: dict[str, str | None] = {}
    # The data unit runs here first: everything else reads it, and it has no GPU work.
    data = [u for u in todo if u.kind == "data"]
    for u in data:
        _say(quiet, "preparing data (tokenizer and packed sequences; cached after the first run)")
        try:
            execute_unit(u.as_dict(), db_url, str(artifacts), threads=os.cpu_count() or 1)
            errors[u.config_hash] = None
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"preparing the study's data failed: {exc}") from exc
    rest = [u for u in todo if u.kind != "data"]
    # Dependencies already complete are satisfied; pass only those still to run.
    rest = [Unit(**{**u.__dict__, "deps": tuple(d for d in u.deps if d in todo_hashes and d not in errors)})
            for u in rest]

    def on_wave(i: int, units: list[Unit]) -> None:
        kinds: dict[str, int] = {}
        for u in units:
            kinds[u.kind] = kinds.get(u.kind, 0) + 1
        _say(quiet, f"stage {i}: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))

    view = LiveView(db_url, {u.config_hash: u.trial_id for u in rest},
                    {u.config_hash: u.estimate.get("seconds", 0.0) for u in rest}) if live else None
    if view:
        view.__enter__()
    try:
        errors.update(execute(rest, db_url=db_url, artifacts=artifacts, address=address,
                              max_concurrent=max_concurrent, max_retries=max_retries, on_wave=on_wave))
    finally:
        if view:
            view.__exit__(None, None, None)
    return errors


def _write_report(db_url: str, study: str, quiet: bool) -> None:
    try:
        from analysis.commands import report_command

        path = report_command(db_url, study, None)
        _say(quiet, f"report: {path}")
    except Exception as exc:  # noqa: BLE001 - a report problem must not fail a finished study
        print(f"pdspace: the report could not be written: {exc}", file=sys.stderr)


def summary(db_url: str, study: str) -> str:
    """PD vs LM on held-out loss, per student, paired by seed; read from the database."""
    from analysis.summary import loss_comparison

    return loss_comparison(db_url, study)


def format_status(db_url: str, study: str | None) -> str:
    import pandas as pd

    engine = make_engine(db_url, read_only=True)
    q = (select(Study.name.label("study"), StudyRun.trial_id, Run.kind, Run.status, Run.attempts,
                Run.duration_s, Run.error, Run.config_hash)
         .join(StudyRun, StudyRun.study_id == Study.id).join(Run, Run.id == StudyRun.run_id))
    if study:
        q = q.where(Study.name == study)
    with engine.connect() as conn:
        frame = pd.read_sql(q, conn)
    if frame.empty:
        raise ValueError(f"no study named {study!r} in the database" if study else "the database holds no study")
    frame["duration_s"] = frame["duration_s"].round(1)
    frame["config_hash"] = frame["config_hash"].str[:10]
    frame["error"] = frame["error"].fillna("").str.slice(0, 100)
    counts = frame["status"].value_counts().to_dict()
    head = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_colwidth", 100):
        return f"{len(frame)} runs: {head}\n" + frame.to_string(index=False)


def results_frame(db_url: str, study: str):
    """One row per run of a study: trial id, kind, status, key config fields, final metrics, evals."""
    from analysis.summary import results_table

    return results_table(db_url, study)


def lm_eval_hint(db_url: str, study: str, artifacts: Path) -> str | None:
    """The exact `lm_eval` command line for one of the study's exported students."""
    from sqlalchemy import text

    from core.lmeval import lm_eval_command

    engine = make_engine(db_url, read_only=True)
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT a.path, sr.trial_id FROM artifacts a JOIN runs r ON r.id = a.run_id "
            "JOIN study_runs sr ON sr.run_id = r.id JOIN studies s ON s.id = sr.study_id "
            "WHERE s.name = :s AND a.kind = 'export' AND r.kind IN ('student', 'baseline') "
            "ORDER BY CASE r.kind WHEN 'student' THEN 0 ELSE 1 END, sr.id LIMIT 1"), {"s": study}).first()
    engine.dispose()
    tasks = sorted(Path(artifacts).glob("tasks/builtin-*"))
    if row is None or not tasks:
        return None
    cmd = lm_eval_command(row[0], str(tasks[-1].resolve()), ["pdspace_nextline", "pdspace_cloze"])
    return f"evaluate an exported checkpoint ({row[1]}) with the lm-evaluation-harness CLI:\n  {cmd}"
