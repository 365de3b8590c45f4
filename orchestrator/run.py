"""`pdspace run` and the status verb: register a study's units in the database (through the
results package), run only what is missing, and say what the database holds."""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import results
from orchestrator.artifacts import heal
from orchestrator.plan import Plan, Unit, build_plan, check_memory, check_regions


def register(plan: Plan, db_url: str) -> dict[str, str]:
    """Make sure the study, every unit and every trial id are in the database.

    Returns config_hash -> status for the plan's units. Existing rows are never overwritten
    (a unit shared with another study keeps its history).
    """
    study = plan.study
    units = [results.UnitRecord(u.config_hash, u.kind, u.config) for u in plan.units]
    trials = [results.TrialRecord(trial_id, u.config_hash, u.factor, u.value)
              for trial_id, u in [(u.trial_id, u) for u in plan.units] + plan.aliases]
    return results.register_study(db_url, study.name, study.to_dict(), study.spec_hash, units, trials)


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


@dataclass(frozen=True)
class RunResult:
    """What a `pdspace run` did: the studies (in order), whether any unit was to run, the failed
    units per study as (trial id, error) in plan order, how many distinct units failed, and when
    it started (epoch s). The caller prints each study's summary and failures, writes the reports
    (cli.main), then prints `done_line`."""

    studies: list[str]
    ran: bool
    failed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    num_failed: int = 0
    started_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when every unit completed, 1 when some failed."""
        return 1 if self.num_failed else 0

    def done_line(self) -> str | None:
        """The closing line, timed from the start until now; None for one study that had nothing to run."""
        one = len(self.studies) == 1
        if one and not self.ran:
            return None
        status_cmd = f"pdspace status {self.studies[0]}" if one else "pdspace status"
        return (f"{_head(self.studies)}: done in {time.time() - self.started_s:.0f} s"
                + (f", {self.num_failed} unit(s) failed (see `{status_cmd}`)" if self.num_failed else ""))


def _head(names: list[str]) -> str:
    return f"study {names[0]}" if len(names) == 1 else f"{len(names)} studies"


def run_study(study: Any, *, db_url: str, artifacts: Path, address: str | None = None,
              max_concurrent: int | None = None, quiet: bool = False, live: bool = False) -> RunResult:
    """Run what is missing of ``study`` (see run_studies)."""
    return run_studies([study], db_url=db_url, artifacts=artifacts, address=address,
                       max_concurrent=max_concurrent, quiet=quiet, live=live)


def run_studies(studies: list[Any], *, db_url: str, artifacts: Path, address: str | None = None,
                max_concurrent: int | None = None, quiet: bool = False, live: bool = False) -> RunResult:
    """Run what is missing of one or several studies as one schedule.

    Their units are merged by config_hash (a teacher, store or run two studies share runs once)
    and run in one Ray session, in dependency stages over the whole suite, so the long teachers of
    one study train while the LM-only baselines of the others fill the free slots.
    """
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"two study files are both named {dup!r}; study names must be unique")
    one = len(studies) == 1
    head = _head(names)
    units_word = "units" if one else "distinct units"
    t0 = time.time()
    results.init_db(db_url)
    plans = [build_plan(s, artifacts) for s in studies]
    for plan in plans:  # a unit that cannot fit its declared GPU memory fails the run before any work
        check_memory(plan)
    with _runner_lock(Path(artifacts)):
        status: dict[str, str] = {}
        merged: dict[str, Unit] = {}
        for plan in plans:
            status.update(register(plan, db_url))
            for u in plan.units:
                merged.setdefault(u.config_hash, u)
        todo = [u for u in merged.values() if status.get(u.config_hash) != "completed"]
        # a completed unit is reused only if its artifact is still there and whole
        todo = heal(merged, status, todo, Path(artifacts), say=lambda line: print(line, flush=True))
        errors: dict[str, str | None] = {}
        if todo:
            resumed = [u for u in todo if status.get(u.config_hash) in ("running", "failed", "pending")
                       and (Path(artifacts) / "runs" / u.config_hash / "checkpoint").exists()]
            _say(quiet, f"{head}: {len(todo)} of {len(merged)} {units_word} to run"
                        + (f" ({len(resumed)} resume from a checkpoint)" if resumed else "")
                        + ("" if one else ", as one schedule"))
            errors = _execute(todo, plans=plans, db_url=db_url, artifacts=Path(artifacts), address=address,
                              max_concurrent=max_concurrent or max(s.resources.max_concurrent for s in studies),
                              max_retries=max(s.resources.max_retries for s in studies), quiet=quiet, live=live)
        else:
            print(f"{head}: all {len(merged)} {units_word} are complete; nothing to run.")
    failed = {h: e for h, e in errors.items() if e}
    per_study = {study.name: [(u.trial_id, failed[u.config_hash]) for u in plan.units if u.config_hash in failed]
                 for study, plan in zip(studies, plans)}
    return RunResult(studies=names, ran=bool(todo), failed=per_study, num_failed=len(failed),
                     started_s=t0)


def _execute(todo: list[Unit], *, plans: list[Plan], db_url: str, artifacts: Path, address: str | None,
             max_concurrent: int | None, max_retries: int, quiet: bool, live: bool) -> dict[str, str | None]:
    from orchestrator.execute import execute
    from orchestrator.progress import LiveView
    from orchestrator.worker import execute_unit

    todo_hashes = {u.config_hash for u in todo}
    errors: dict[str, str | None] = {}
    if address:  # on a cluster, every node must see the artifacts home before any unit writes to it
        from orchestrator.execute import check_shared_artifacts

        check_shared_artifacts(address, artifacts)
    # The data unit runs here first: everything else reads it, and it has no GPU work.
    data = [u for u in todo if u.kind == "data"]
    for u in data:
        _say(quiet, "preparing data (tokenizer and packed sequences; cached after the first run)")
        try:
            execute_unit(u.as_dict(), db_url, str(artifacts), threads=os.cpu_count() or 1)
            errors[u.config_hash] = None
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"preparing the study's data failed: {exc}") from exc
    for plan in plans:  # before any training: no student may read a scratch teacher's text
        check_regions(plan, artifacts)
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


def format_status(db_url: str, study: str | None) -> str:
    """What `pdspace status` prints: a count per state, then one line per study run."""
    import pandas as pd

    frame = results.status_rows(db_url, study)[["study", "trial_id", "kind", "status", "attempts", "duration_s",
                                                "error", "config_hash"]]
    if frame.empty:
        raise ValueError(f"no study named {study!r} in the database" if study else "the database holds no study")
    frame["duration_s"] = frame["duration_s"].round(1)
    frame["config_hash"] = frame["config_hash"].str[:10]
    frame["error"] = frame["error"].fillna("").str.slice(0, 100)
    counts = frame["status"].value_counts().to_dict()
    head = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_colwidth", 100):
        return f"{len(frame)} runs: {head}\n" + frame.to_string(index=False)


def lm_eval_hint(db_url: str, study: str, artifacts: Path) -> str | None:
    """The exact `lm_eval` command line for one of the study's exported students."""
    from core.lmeval import lm_eval_command

    found = results.export_artifact(db_url, study)
    tasks = sorted(Path(artifacts).glob("tasks/builtin-*"))
    if found is None or not tasks:
        return None
    path, trial_id = found
    cmd = lm_eval_command(path, str(tasks[-1].resolve()), ["pdspace_nextline", "pdspace_cloze"])
    return f"evaluate an exported checkpoint ({trial_id}) with the lm-evaluation-harness CLI:\n  {cmd}"
