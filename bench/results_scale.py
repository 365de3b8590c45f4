"""Results at sweep scale: the time and peak memory of `pdspace status`, `pdspace results`,
`pdspace report` and `load_results` on a quickstart-like database (~3k metric rows) and on one grown
to 10^7 metric rows (SQLite), printed as JSON.

    python bench/results_scale.py            # 10^7 metric rows (builds a ~1 GB file; ~5 min)
    python bench/results_scale.py --quick    # 10^6
    python bench/results_scale.py --rows 3e6 --dir /tmp/rs --keep

Both databases hold the study "quickstart" with the same runs, held-out evaluations and benchmark
scores (a d128l4 teacher, its logits store, three student sizes × two seeds, KD and LM-only),
shaped like a real quickstart run: its small version logs training metrics every 10 steps, its
large one every step. The large database also holds a "sweep" study (240 runs of ~6k steps, 7
training metrics per step, held-out losses every 5 %) that brings it to the row count. Rows are
bulk-inserted into a database made by results.init_db (every migration), through its schema.

Each command runs in a fresh subprocess (cold imports, as a user runs it); time is wall-clock,
peak memory the child's maximum resident set (getrusage RUSAGE_CHILDREN of a one-child wrapper).
On the large database it also times load_results of the sweep study (240 runs, curves thinned in
SQL) and `pdspace export` of it (every row of ~10^7 to Parquet, streamed).
Floors (issue 16): status and results <= 1.5 s; report at 10^7 rows within 1.5x its time at 3k
rows and <= 1 GB.

Measured on the 2-core development machine, quiet (2,889 vs 10,011,843 metric rows; 0.3 vs 837 MB):
status 0.99 / 0.97 s, results 1.06 / 1.00 s, report 13.7 / 14.0 s at 248 / 249 MB, load_results
0.97 / 1.35 s; on the large one, load_results of the 240-run sweep 9.8 s at 345 MB and its export
(~10^7 rows) 37 s at 368 MB. Under other engineers' load every number grew up to 3x, alike on both.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAINING = ("lm_loss", "kd_loss", "loss", "lr", "alpha", "grad_norm", "tokens_per_s")
SIZES = {"d32l2": 2.6e4, "d64l3": 1.5e5, "d96l3": 3.3e5}  # non-embedding parameters
SEQ_TOKENS = 16 * 128  # batch 16 x seq_len 128
STUDENT_TOKENS, TEACHER_TOKENS, EVAL_EVERY = 500_000, 1_900_000, 125_000


def _loss(N: float, D: float) -> float:
    return 1.9 + 400.0 / N ** 0.36 + 150.0 / max(D, 1.0) ** 0.33


class Builder:
    """Bulk inserts through the results schema (results.schema tables, DBAPI executemany)."""

    def __init__(self, url: str):
        from results import init_db, make_engine

        init_db(url)
        self.engine = make_engine(url)
        self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.raw = self.conn.connection.dbapi_connection
        self.raw.execute("PRAGMA synchronous=OFF")
        self.metric_rows = 0
        self.buffer: list[tuple] = []

    def _insert(self, table, rows: list[dict]) -> list[int]:
        from sqlalchemy import insert

        ids = []
        with self.engine.begin() as conn:
            for r in rows:
                ids.append(conn.execute(insert(table).values(**r)).inserted_primary_key[0])
        return ids

    def study(self, name: str) -> int:
        from results.schema import Study

        return self._insert(Study, [{"name": name, "spec": {"name": name}, "spec_hash": name}])[0]

    def run(self, study_id: int, trial_id: str, kind: str, config: dict, factor=None, value=None) -> int:
        from analysis.results import stable_hash
        from results.schema import Run, StudyRun, utcnow

        now = utcnow()
        run_id = self._insert(Run, [{"config_hash": stable_hash([trial_id, config]), "kind": kind, "config": config,
                                     "status": "completed", "attempts": 1, "started_at": now, "finished_at": now,
                                     "duration_s": 60.0, "host": "bench", "versions": {}, "git_rev": None,
                                     "artifact_dir": f"/artifacts/runs/{trial_id}"}])[0]
        self._insert(StudyRun, [{"study_id": study_id, "run_id": run_id, "trial_id": trial_id, "factor": factor,
                                 "value": value}])
        return run_id

    def metrics(self, run_id: int, step: int, tokens: int, values: dict[str, float]) -> None:
        for name, v in values.items():
            self.buffer.append((run_id, step, tokens, name, v, float(step)))
        if len(self.buffer) >= 200_000:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            cur = self.raw.cursor()
            cur.execute("BEGIN")
            cur.executemany("INSERT INTO metrics (run_id, step, tokens, name, value, wall_time) "
                            "VALUES (?, ?, ?, ?, ?, ?)", self.buffer)
            cur.execute("COMMIT")
            self.metric_rows += len(self.buffer)
            self.buffer = []

    def evals(self, rows: list[dict]) -> None:
        from results.schema import Eval

        with self.engine.begin() as conn:
            conn.execute(Eval.__table__.insert(), rows)

    def kept(self, rows: list[dict]) -> None:
        from results.schema import KeptStat

        with self.engine.begin() as conn:
            conn.execute(KeptStat.__table__.insert(), rows)

    def close(self) -> None:
        self.flush()
        self.conn.close()
        self.engine.dispose()


def _training_run(b: Builder, run_id: int, N: float, tokens: int, *, kd: bool, log_every: int,
                  eval_every: int, seed: int, steps: int | None = None) -> None:
    steps = steps or max(1, tokens // SEQ_TOKENS)
    per_step = tokens / steps
    for step in range(0, steps + 1):
        D = step * per_step
        L = _loss(N, D) * (0.98 if kd else 1.0) * (1 + 0.002 * math.sin(step + seed))
        if step and (step % log_every == 0 or step == steps):
            b.metrics(run_id, step, int(D), {"lm_loss": L + 0.05, "kd_loss": 0.4 if kd else 0.0, "loss": L,
                                             "lr": 4e-3 * (1 - step / (steps + 1)), "alpha": 0.9 if kd else 0.0,
                                             "grad_norm": 1.0, "tokens_per_s": 5e4})
        if step % eval_every == 0 or step == steps:
            values = {"val_loss": L + 0.1}
            if kd:
                values.update(teacher_kl=0.5 + 1.0 / (1 + step), top1_agreement=0.4)
            b.metrics(run_id, step, int(D), values)


def _config(kind: str, student: str, seed: int, baseline_hash: str | None) -> dict:
    N = SIZES[student]
    return {"kind": kind, "student": student, "teacher": None if kind == "baseline" else "t1", "seed": seed,
            "tokens": STUDENT_TOKENS, "batch_size": 16, "lr_schedule": {"kind": "cosine"},
            "alpha_schedule": {"kind": "constant", "alpha": 0.0 if kind == "baseline" else 0.9},
            "kd": None if kind == "baseline" else {"kind": "kld", "temperature": 1.0},
            "logits": None if kind == "baseline" else {"source": "offline", "top_p": 0.95, "top_k": 100},
            "baseline_hash": baseline_hash, "num_params": N * 1.5, "num_non_embedding_params": N,
            "flops_per_token": 6 * N}


def quickstart(b: Builder, log_every: int) -> None:
    """The quickstart study's runs (studies/quickstart.yaml's shape)."""
    from analysis.results import stable_hash

    sid = b.study("quickstart")
    b.run(sid, "data", "data", {"kind": "data"})
    teacher = b.run(sid, "teacher:t1", "teacher", {"kind": "teacher", "name": "t1", "size": "d128l4"})
    _training_run(b, teacher, 8e5, TEACHER_TOKENS, kd=False, log_every=log_every,
                  eval_every=EVAL_EVERY // SEQ_TOKENS, seed=9)
    logits = b.run(sid, "logits:t1", "logits", {"kind": "logits", "teacher": "t1"})
    b.metrics(logits, 0, STUDENT_TOKENS, {"store_bytes": 7.5e7})
    b.kept([{"run_id": logits, "top_p": p, "top_k": 100, "num_tokens": STUDENT_TOKENS, "mean_kept_per_token": 30 * p,
             "bytes_per_token": 100 * p, "mean_kept_mass": p, "capped_frac": 0.1, "sampled_rows": 4096}
            for p in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)])
    evals = []
    for student in SIZES:
        for seed in (0, 1):
            bcfg = _config("baseline", student, seed, None)
            bh = stable_hash([f"baseline:student={student},seed={seed}", bcfg])  # its config_hash (Builder.run)
            for kind, cfg, trial in (("baseline", bcfg, f"baseline:student={student},seed={seed}"),
                                     ("student", _config("student", student, seed, bh),
                                      f"student={student},seed={seed}")):
                rid = b.run(sid, trial, kind, cfg, "student", student)
                _training_run(b, rid, SIZES[student], STUDENT_TOKENS, kd=kind == "student", log_every=log_every,
                              eval_every=EVAL_EVERY // SEQ_TOKENS, seed=seed)
                steps = STUDENT_TOKENS // SEQ_TOKENS
                for step in (steps // 2, steps):
                    for task, metric, v in (("pdspace_nextline", "acc", 0.3), ("pdspace_cloze", "acc", 0.35),
                                            ("pdspace_cloze", "acc_norm", 0.4)):
                        evals.append({"run_id": rid, "step": step, "tokens": step * SEQ_TOKENS, "task": task,
                                      "metric": metric, "value": v + (0.02 if kind == "student" else 0.0),
                                      "stderr": 0.03, "extra": None})
    b.evals(evals)


def sweep(b: Builder, rows: int) -> None:
    """A sweep study that brings the database to about `rows` metric rows: 240 runs."""
    sid = b.study("sweep")
    runs = 240
    left = max(rows - b.metric_rows - len(b.buffer), 0)
    steps = max(math.ceil(left / (runs * len(TRAINING))), 10)
    for i in range(runs):
        student = list(SIZES)[i % 3]
        kind = "student" if i % 2 else "baseline"
        rid = b.run(sid, f"lr={i // 6},student={student},seed={i % 2},{kind}", kind,
                    _config(kind, student, i % 2, None))
        _training_run(b, rid, SIZES[student], int(steps * SEQ_TOKENS), kd=kind == "student", log_every=1,
                      eval_every=max(int(steps) // 20, 1), seed=i, steps=int(steps))


def build(path: Path, rows: int | None) -> dict:
    t0 = time.time()
    b = Builder(f"sqlite:///{path}")
    quickstart(b, log_every=1 if rows else 10)
    if rows:
        sweep(b, rows)
    b.close()
    return {"metric_rows": b.metric_rows, "bytes": path.stat().st_size, "build_s": round(time.time() - t0, 1)}


WRAPPER = ("import json, resource, subprocess, sys, time\n"
           "t = time.perf_counter()\n"
           "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
           "s = time.perf_counter() - t\n"
           "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
           "print(json.dumps({'s': s, 'peak_mb': kb / 1024, 'rc': r.returncode, 'err': r.stderr[-300:]}))\n")


def measure(argv: list[str], env: dict) -> dict:
    """Time and peak memory of one command in a fresh subprocess."""
    out = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    got = {"s": round(res["s"], 2), "peak_mb": round(res["peak_mb"])}
    if res["rc"] != 0:
        got["error"] = res["err"]
    return got


def commands(db: Path, out: Path, study: str = "quickstart") -> dict[str, list[str]]:
    py, url = sys.executable, f"sqlite:///{db}"
    load = (f"from results import load_results; r = load_results({url!r}, {study!r}); "
            "print(len(r.metrics))")
    return {"status": [py, "-m", "cli", "--db", str(db), "status", study],
            "results": [py, "-m", "cli", "--db", str(db), "results", study],
            "report": [py, "-m", "cli", "--db", str(db), "report", study, "--out", str(out / f"{db.stem}.html")],
            "load_results": [py, "-c", load]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=1e7, help="metric rows of the large database (default 1e7)")
    ap.add_argument("--quick", action="store_true", help="10^6 rows instead")
    ap.add_argument("--dir", help="where to build the databases (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the databases (and reuse them when present)")
    args = ap.parse_args()
    rows = int(1e6 if args.quick else args.rows)
    work = Path(args.dir or tempfile.mkdtemp(prefix="pdspace-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PDSPACE_HOME": str(work / "home"), "PYTHONPATH": str(ROOT)}
    report: dict = {"rows": rows, "databases": {}, "commands": {}}
    try:
        for name, size in (("small", None), ("large", rows)):
            db = work / f"{name}_{rows if size else 0}.db"
            if not (args.keep and db.exists()):
                db.unlink(missing_ok=True)
                report["databases"][name] = build(db, size)
            else:
                report["databases"][name] = {"bytes": db.stat().st_size, "reused": True}
            report["commands"][name] = {k: measure(v, env) for k, v in commands(db, work).items()}
        if rows:
            big = work / f"large_{rows}.db"
            report["commands"]["large"]["load_results_sweep"] = measure(
                [sys.executable, "-c", f"from results import load_results; "
                                       f"print(len(load_results('sqlite:///{big}', 'sweep').metrics))"], env)
            report["commands"]["large"]["export_sweep"] = measure(
                [sys.executable, "-m", "cli", "--db", str(big), "export", "sweep", "--out", str(work / "export")], env)
        small, large = report["commands"]["small"], report["commands"]["large"]
        report["floors"] = {
            "status_le_1.5s": large["status"]["s"] <= 1.5,
            "results_le_1.5s": large["results"]["s"] <= 1.5,
            "report_within_1.5x": large["report"]["s"] <= 1.5 * small["report"]["s"],
            "report_le_1GB": large["report"]["peak_mb"] <= 1024,
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
