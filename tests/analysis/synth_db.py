"""A small synthetic study in a SQLite file, in the results package's schema (no training involved).

Study "synth": 5 student sizes × 3 seeds, each an LM-only baseline and a vanilla PD student
(teacher "t8m"), plus a top-k sweep on the smallest-but-one size, and the teacher's logits run
with kept-logits statistics (KEPT) for the top-k grid at p = 0.95. Held-out losses follow a planted
Chinchilla law (PD 2% lower); benchmark scores are fractions in [0, 1] like lm-eval's, evaluated at
two steps (EVAL_STEPS). Known values let the tests check Δs by hand.
"""
from __future__ import annotations

import math

from analysis.results import stable_hash
from results.engine import make_engine, session_scope
from results.schema import Base, Eval, KeptStat, Metric, Run, Study, StudyRun

SIZES = {"d32l2": 2.0e5, "d64l3": 6.0e5, "d96l3": 1.4e6, "d128l4": 3.0e6, "d192l6": 8.0e6}
SEEDS = (0, 1, 2)
TOKENS = 4_000_000
STEPS = tuple(range(1, 7))
EVAL_STEPS = (3, 6)  # benchmark evaluations: half-way and final
PLANTED = {"E": 1.9, "A": 400.0, "B": 150.0, "alpha": 0.36, "beta": 0.33}
PD_LOSS_FACTOR = 0.98
TEACHER_VAL_LOSS = 2.2
TOP_KS = (1, 5, 20)
KEPT = {(0.95, 1): 1.0, (0.95, 5): 4.6, (0.95, 20): 12.5, (0.95, 100): 21.0}
"""(top_p, top_k) -> mean kept logits per token of the logits run."""


def planted_loss(N: float, D: float) -> float:
    p = PLANTED
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def score(size_index: int, seed: int, pd: bool, step: int, k: int | None = None) -> tuple[float, float]:
    """(nextline, cloze) accuracies as fractions. PD adds 0.02 (+0.01 per seed) to both tasks
    of the final step, so per-seed Δ differ; k = 1 hurts."""
    base = 0.30 + 0.03 * size_index + 0.002 * seed + 0.01 * (step / max(STEPS))
    bonus = 0.0
    if pd:
        bonus = 0.02 + 0.01 * seed
        if k == 1:
            bonus = -0.01
    return base + bonus, base + 0.05 + bonus


def _config(kind: str, student: str, seed: int, teacher: str | None, top_k: int | None,
            baseline_hash: str | None) -> dict:
    return {
        "config_version": 1, "kind": kind, "student": student, "teacher": teacher, "seed": seed,
        "tokens": TOKENS, "batch_size": 16, "lr_schedule": {"kind": "cosine"},
        "alpha_schedule": {"kind": "constant", "alpha": 0.0 if kind == "baseline" else 1.0},
        "kd": None if kind == "baseline" else {"kind": "kld", "temperature": 1.0},
        "logits": None if kind == "baseline" else {"source": "offline", "top_p": 0.95, "top_k": top_k or 100},
        "baseline_hash": baseline_hash,
        "num_params": SIZES[student] * 1.5, "num_non_embedding_params": SIZES[student],
        "flops_per_token": 6 * SIZES[student],
    }


def build_synthetic_db(path) -> str:
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    with session_scope(engine) as s:
        study = Study(name="synth", spec={"name": "synth"}, spec_hash="x")
        empty = Study(name="empty", spec={}, spec_hash="y")
        s.add_all([study, empty])
        s.flush()
        teacher = Run(config_hash=stable_hash({"teacher": "t8m"}), kind="teacher", status="completed",
                      config={"kind": "teacher", "name": "t8m", "size": "d256l6"})
        s.add(teacher)
        s.flush()
        s.add(StudyRun(study_id=study.id, run_id=teacher.id, trial_id="teacher:t8m"))
        s.add(Metric(run_id=teacher.id, step=max(STEPS), tokens=TOKENS, name="val_loss", value=TEACHER_VAL_LOSS,
                     wall_time=0.0))
        logits = Run(config_hash=stable_hash({"logits": "t8m"}), kind="logits", status="completed",
                     config={"kind": "logits", "teacher": "t8m", "top_p_max": 0.95, "top_k_max": 100})
        s.add(logits)
        s.flush()
        s.add(StudyRun(study_id=study.id, run_id=logits.id, trial_id="logits:t8m"))
        for (p, k), kept in KEPT.items():
            s.add(KeptStat(run_id=logits.id, top_p=p, top_k=k, num_tokens=TOKENS, mean_kept_per_token=kept,
                           bytes_per_token=kept * 3.25 + 1.0))

        def add_run(trial_id, factor, value, cfg, loss_factor, size_index, seed, pd, k=None):
            h = stable_hash(cfg)
            run = Run(config_hash=h, kind=cfg["kind"], config=cfg, status="completed")
            s.add(run)
            s.flush()
            s.add(StudyRun(study_id=study.id, run_id=run.id, trial_id=trial_id, factor=factor, value=value))
            N = cfg["num_non_embedding_params"]
            for step in STEPS:
                D = TOKENS * step / max(STEPS)
                L = planted_loss(N, D) * loss_factor * (1 + 0.002 * math.sin(7 * step + seed + size_index))
                s.add(Metric(run_id=run.id, step=step, tokens=int(D), name="val_loss", value=L, wall_time=0.0))
                s.add(Metric(run_id=run.id, step=step, tokens=int(D), name="lm_loss", value=L + 0.1, wall_time=0.0))
            for step in EVAL_STEPS:
                tokens = TOKENS * step // max(STEPS)
                nl, cl = score(size_index, seed, pd, step, k)
                for task, v in (("pdspace_nextline", nl), ("pdspace_cloze", cl)):
                    s.add(Eval(run_id=run.id, step=step, tokens=tokens, task=task, metric="acc",
                               value=v, stderr=0.01))
                s.add(Eval(run_id=run.id, step=step, tokens=tokens, task="pdspace_cloze",
                           metric="acc_norm", value=0.99, stderr=0.01))
            return h

        for i, student in enumerate(SIZES):
            for seed in SEEDS:
                bcfg = _config("baseline", student, seed, None, None, None)
                bh = add_run(f"baseline:student={student},seed={seed}", None, None, bcfg, 1.0, i, seed, False)
                pcfg = _config("student", student, seed, "t8m", None, bh)
                add_run(f"student={student},seed={seed}", "student", student, pcfg, PD_LOSS_FACTOR, i, seed, True)
                if student == "d64l3":
                    for k in TOP_KS:
                        kcfg = _config("student", student, seed, "t8m", k, bh)
                        add_run(f"top_k={k},seed={seed}", "kd.top_k", str(k), kcfg, PD_LOSS_FACTOR, i, seed,
                                True, k)
    engine.dispose()
    return url
