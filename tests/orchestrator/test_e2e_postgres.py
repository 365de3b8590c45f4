"""End to end on a real PostgreSQL server: a tiny study through Ray into PostgreSQL, killed with
SIGKILL while its teacher trains, then run again: the teacher resumes from its checkpoint, every
unit completes, no metric row is lost or doubled, and no process is left behind.

The server is tests/conftest.py's throw-away cluster (skipped where PostgreSQL is not installed).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from results import query

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

STUDY = {
    "name": "pg_tiny",
    "data": {"vocab_size": 512, "seq_len": 32, "max_corpus_bytes": 1_500_000, "val_fraction": 0.1},
    "teachers": {"t1": {"size": "d32l2", "tokens": 160_000, "batch_size": 16, "checkpoint_every_steps": 10,
                        "optimizer": {"lr": 4e-3}}},
    "base": {"student": "d32l2", "teacher": "t1", "tokens": 16_000, "batch_size": 16, "alpha": 0.9},
    "seeds": [0],
    "eval": {"every_tokens": 8_000, "heldout_sequences": 8, "builtin_tasks": []},
    "resources": {"max_concurrent": 2, "max_retries": 0},
}


def _rows(url: str, sql: str) -> list[tuple]:
    return list(query(url, sql).itertuples(index=False, name=None))


def _pdspace(url: str, home: Path, *argv: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PDSPACE_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "cli", "--db", url, "--quiet", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kw)


def _left_behind(home: Path) -> list[str]:
    """Processes of this test's Ray (its command line, or a renamed worker's open files, name the
    Ray folder of these artifacts; see orchestrator.execute._kill_orphans)."""
    import psutil

    from orchestrator.execute import _ray_temp_dir

    temp_dir = _ray_temp_dir(home)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["pid"] != os.getpid() and (temp_dir in cmd or str(home) in cmd or (
                    cmd.startswith("ray::") and any(f.path.startswith(temp_dir) for f in proc.open_files()))):
                found.append(f"{proc.info['pid']}: {cmd[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_a_study_killed_mid_run_resumes_into_postgres(pg_url, tmp_path):
    home = tmp_path / "home"
    study = tmp_path / "pg_tiny.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    proc = _pdspace(pg_url, home, "run", str(study))
    # kill it (and its whole process group: Ray included) once the teacher has a checkpoint
    deadline = time.time() + 300
    killed = False
    try:
        while time.time() < deadline and proc.poll() is None:
            ckpt = list((home / "runs").glob("*/checkpoint")) if (home / "runs").exists() else []
            teacher = _rows(pg_url, "SELECT COUNT(*) FROM metrics m JOIN runs r ON r.id = m.run_id "
                                    "WHERE r.kind = 'teacher'") if ckpt else [(0,)]
            if ckpt and teacher[0][0] > 0:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    assert killed, f"the run ended before its teacher checkpointed: {proc.stdout.read()[-2000:]}"
    assert _rows(pg_url, "SELECT status FROM runs WHERE kind = 'teacher'") == [("running",)]
    steps_before = _rows(pg_url, "SELECT MAX(step) FROM metrics m JOIN runs r ON r.id = m.run_id "
                                 "WHERE r.kind = 'teacher'")[0][0]

    again = _pdspace(pg_url, home, "run", str(study))
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out[-3000:]
    status = dict(_rows(pg_url, "SELECT sr.trial_id, r.status FROM study_runs sr JOIN runs r ON r.id = sr.run_id"))
    assert set(status.values()) == {"completed"} and len(status) == 5, status
    (attempts, max_step), = _rows(pg_url, "SELECT r.attempts, MAX(m.step) FROM runs r JOIN metrics m ON "
                                          "m.run_id = r.id WHERE r.kind = 'teacher' GROUP BY r.attempts")
    assert attempts == 2 and max_step > steps_before  # resumed, not restarted from a fresh run row
    # every training step of the teacher once: the steps repeated after the checkpoint were upserted
    loss_steps = [s for (s,) in _rows(pg_url, "SELECT m.step FROM metrics m JOIN runs r ON r.id = m.run_id "
                                              "WHERE r.kind = 'teacher' AND m.name = 'loss' ORDER BY m.step")]
    assert len(loss_steps) == len(set(loss_steps)) and loss_steps[-1] == max_step
    assert _rows(pg_url, "SELECT COUNT(*) FROM kept_stats")[0][0] >= 2
    # the read side on PostgreSQL: status, results, the study's frames
    from orchestrator.run import format_status
    from results import load_results, results_frame

    assert "5 runs: 5 completed" in format_status(pg_url, "pg_tiny")
    table = results_frame(pg_url, "pg_tiny")
    assert table["val_loss"].notna().sum() == 3  # teacher, baseline, student
    assert len(load_results(pg_url, "pg_tiny").runs) == 5
    for _ in range(20):  # Ray's processes exit within moments of the driver's shutdown
        if not _left_behind(home):
            break
        time.sleep(0.5)
    assert _left_behind(home) == []
