"""Artifacts that heal, without training: which completed units `heal` sends back to run (a
missing or unusable artifact, and only where something needs it), and what `pdspace gc` lists and
removes (folders no study uses; logits stores whose readers are all done), dry run by default."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import results
from cli.main import main
from orchestrator.artifacts import collect_garbage, heal
from orchestrator.plan import Unit


def _unit(kind: str, h: str, deps=(), **config) -> Unit:
    return Unit(kind=kind, trial_id=f"{kind}:{h}", config={"kind": kind, **config}, config_hash=h, deps=tuple(deps))


def _export(artifacts: Path, h: str) -> None:
    d = artifacts / "runs" / h / "export"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\0" * 64)


UNITS = {u.config_hash: u for u in [
    _unit("teacher", "T"), _unit("logits", "L", deps=["T"]),
    _unit("student", "S1", deps=["T", "L"], logits_hash="L"), _unit("student", "S2", deps=["T", "L"], logits_hash="L"),
]}


def test_heal_reruns_what_is_broken_and_needed(tmp_path):
    a = tmp_path / "artifacts"
    for h in ("T", "S1", "S2"):
        _export(a, h)
    done = {h: "completed" for h in UNITS}
    lines = []
    # everything completed and no store on disk (gc removed it): nothing needs it, nothing runs
    assert heal(UNITS, done, [], a, say=lines.append) == [] and lines == []
    # S2 to run (pending, or its export gone): it reads the store, now needed and missing
    todo = heal(UNITS, {**done, "S2": "pending"}, [UNITS["S2"]], a, say=lines.append)
    assert [u.config_hash for u in todo] == ["L", "S2"]
    assert lines == [f"logits:L: its logits store {a / 'logits' / 'L' / 'store'} is missing; running it again"]
    # an unusable store (here: a manifest that is not one) is removed before the rerun
    store = a / "logits" / "L" / "store"
    store.mkdir(parents=True)
    (store / "manifest.json").write_text(json.dumps({"format": "something else"}))
    lines.clear()
    todo = heal(UNITS, {**done, "S2": "pending"}, [UNITS["S2"]], a, say=lines.append)
    assert [u.config_hash for u in todo] == ["L", "S2"] and not store.exists()
    assert "unusable" in lines[0] and "removed it" in lines[0]
    # a teacher whose export lost its weights runs again (resuming from its checkpoint re-exports it)
    (a / "runs" / "T" / "export" / "model.safetensors").unlink()
    todo = heal(UNITS, done, [], a, say=lines.append)
    assert [u.config_hash for u in todo] == ["T"]
    shutil.rmtree(a / "runs" / "S2" / "export")
    todo = heal(UNITS, done, [], a, say=lines.append)
    assert [u.config_hash for u in todo] == ["T", "L", "S2"]


def _db_with_artifacts(tmp_path) -> tuple[str, Path]:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    a = tmp_path / "artifacts"
    results.init_db(url)
    units = [results.UnitRecord(u.config_hash, u.kind, u.config) for u in UNITS.values()]
    results.register_study(url, "s", {}, "h", units, [results.TrialRecord(u.trial_id, h) for h, u in UNITS.items()])
    for h in UNITS:
        rid = results.run_id_for(url, h)
        results.start_run(url, rid, host="x", versions={}, git_rev=None, artifact_dir=str(a / "runs" / h))
        results.finish_run(url, rid, "completed" if h != "S2" else "failed")
    for h in ("T", "S1", "S2", "orphan"):
        _export(a, h)
    store = a / "logits" / "L" / "store"
    store.mkdir(parents=True)
    (store / "shard-0.bin").write_bytes(b"\1" * 1000)
    (a / "data" / ".tmp-preparing").mkdir(parents=True)  # a preparation in progress: never touched
    return url, a


def test_gc_lists_by_default_and_removes_with_yes(tmp_path, capsys, monkeypatch):
    url, a = _db_with_artifacts(tmp_path)
    # S2 (a reader of the store) failed: the store is still needed; only the orphan goes
    assert [g.path for g in collect_garbage(url, a)] == [a / "runs" / "orphan"]
    rid = results.run_id_for(url, "S2")
    results.finish_run(url, rid, "completed")
    garbage = collect_garbage(url, a)
    assert [g.path for g in garbage] == [a / "runs" / "orphan", a / "logits" / "L" / "store"]
    assert garbage[1].num_bytes == 1000 and "2 run(s)" in garbage[1].why
    monkeypatch.setenv("PDSPACE_HOME", str(a))
    assert main(["--db", url, "gc"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and str(a / "runs" / "orphan") in out
    assert (a / "runs" / "orphan").exists() and (a / "logits" / "L" / "store").exists()
    assert main(["--db", url, "gc", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 artifact(s), freed 1.0 KB" in out
    assert not (a / "runs" / "orphan").exists() and not (a / "logits" / "L" / "store").exists()
    assert (a / "runs" / "T" / "export").exists() and (a / "data" / ".tmp-preparing").exists()
    assert main(["--db", url, "gc"]) == 0
    assert "nothing to remove" in capsys.readouterr().out
    assert len(results.status_rows(url, "s")) == 4  # the database is untouched


def test_gc_refuses_while_a_run_holds_the_artifacts(tmp_path, capsys, monkeypatch):
    import fcntl

    url, a = _db_with_artifacts(tmp_path)
    monkeypatch.setenv("PDSPACE_HOME", str(a))
    with open(a / ".run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["--db", url, "gc", "--yes"]) == 2
    assert "a `pdspace run` is using" in capsys.readouterr().err
    assert (a / "runs" / "orphan").exists()
