"""The shipped study files: each loads, validates, expands and plans; the mini suite shares its
data, teachers and logits stores across files and fits its CPU budget.

Units are content-addressed (a unit's identity is the hash of its resolved config), so a unit
that several mini studies plan runs once: the suite's cost is the sum over *distinct* units.
Budget (studies/mini/*.yaml headers, CPU_SCALE.md): the whole mini suite within 90 minutes and
each file within 20 minutes on 2 CPU cores, two trials at a time, by `pdspace plan`'s estimates.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path

import pytest

from orchestrator.plan import build_plan, format_plan
from orchestrator.study import load_study

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ROOT / "studies"
SHIPPED = sorted(p for p in STUDIES.rglob("*.yaml") if not p.name.startswith("_"))
MINI = [p for p in SHIPPED if p.parent == STUDIES / "mini"]
SMOKE = STUDIES / "paper" / "smoke.yaml"
PAPER = [p for p in SHIPPED if p.parent == STUDIES / "paper" and p != SMOKE]

SLOTS = 2  # trials at once on the 2-core machine the mini suite is sized for
SUITE_LIMIT_S = 90 * 60
FILE_LIMIT_S = 20 * 60


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@functools.lru_cache(maxsize=None)
def _plan(path: Path):
    return build_plan(load_study(path))


def test_the_shipped_folders_hold_studies():
    assert len(MINI) >= 12 and len(PAPER) >= 12
    assert (STUDIES / "mini" / "_base.yaml").is_file() and (STUDIES / "paper" / "_base.yaml").is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=[_id(p) for p in SHIPPED])
def test_study_loads_validates_and_plans(path):
    plan = _plan(path)
    trials = plan.study.trials()
    ids = [t.trial_id for t in trials]
    assert trials and len(ids) == len(set(ids)), "trial ids must be unique within a study"
    by_hash = plan.by_hash()
    for t in trials:
        assert t.config_hash in by_hash
        if t.role == "student":
            assert t.baseline_hash in by_hash, f"{t.trial_id}: its LM-only baseline is not planned"
    for unit in plan.units:
        assert all(dep in by_hash for dep in unit.deps), unit.trial_id
        if unit.kind in ("teacher", "student", "baseline"):
            assert unit.estimate["seconds"] > 0 and unit.estimate["flops"] > 0, unit.trial_id
    text = format_plan(plan)
    assert "FLOPs" in text and "logits store on disk" in text


def test_study_names_are_unique():
    names = [load_study(p).name for p in SHIPPED]
    assert len(names) == len(set(names)), "the results database keys studies by name"


# --------------------------------------------------------------------------------------------
# Paper scale

@pytest.mark.parametrize("path", PAPER, ids=[_id(p) for p in PAPER])
def test_paper_studies_run_at_paper_scale(path):
    plan = _plan(path)
    study = plan.study
    assert study.data.seq_len == 4096 and study.data.tokenizer
    assert study.resources.gpus_per_trial >= 1 and study.resources.workers_per_trial >= 2
    trials = [u for u in plan.units if u.kind in ("student", "baseline")]
    assert all(u.config["batch_size"] == 2048 and u.config["tokens"] >= 100_000_000_000 for u in trials)
    assert all(u.estimate["gpu_hours"] > 0 for u in trials)
    assert "GPU-hours" in format_plan(plan)


def test_the_smoke_study_runs_every_stage_at_paper_shapes_in_minutes(tmp_path):
    """studies/paper/smoke.yaml: the 330M student at T = 4096 from a pretrained teacher given by
    --set, a few hundred steps, logits, KD student, baseline and evaluation, on GPUs, with a
    memory estimate per GPU that fits the GPU it declares."""
    plan = _plan(SMOKE)
    study = plan.study
    assert {u.kind for u in plan.units} == {"data", "logits", "student", "baseline"}
    assert study.teachers["glm4_9b"].pretrained and study.data.tokenizer and study.data.seq_len == 4096
    assert study.resources.gpus_per_trial == 1 and study.resources.gpu_memory_gb
    trained = [u for u in plan.units if u.kind in ("student", "baseline")]
    for u in trained:
        assert u.config["student"] == "330M"
        assert 100 <= u.config["tokens"] // (u.config["batch_size"] * 4096) <= 1000
        assert u.estimate["memory_bytes"] <= study.resources.gpu_memory_gb * 1e9
        assert u.estimate["seconds"] < 10 * 60
    assert not study.eval.tasks, "no standard lm-eval task: their datasets may not be on the cluster"
    assert "every unit fits" in format_plan(plan)
    # the teacher comes from --set, its config read for the memory per GPU
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(
        '{"hidden_size": 4096, "num_hidden_layers": 40, "intermediate_size": 13696, "num_attention_heads": 32,'
        ' "num_key_value_heads": 2, "head_dim": 128, "vocab_size": 151552, "torch_dtype": "bfloat16"}')
    mine = build_plan(load_study(SMOKE, overrides=[f"teachers.glm4_9b.pretrained={teacher}",
                                                  f"data.tokenizer={teacher}"]))
    units = {u.kind: u for u in mine.units}
    assert units["logits"].config["pretrained"] == str(teacher)
    assert units["student"].estimate["memory_parts"]["teacher"] > 18e9
    assert units["student"].estimate["memory_bytes"] <= study.resources.gpu_memory_gb * 1e9
    assert "+?" not in format_plan(mine)


def test_paper_evaluation_tasks_are_known_to_lm_eval(monkeypatch):
    """Names only: with offline mode off, the check does not look for the datasets themselves
    (`pdspace validate` does, where they must be cached or downloadable)."""
    lmeval = pytest.importorskip("core.lmeval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    tasks = sorted({task for p in PAPER for task in load_study(p).eval.tasks})
    assert tasks
    lmeval.check_tasks_available(tasks)


# --------------------------------------------------------------------------------------------
# The mini suite shares its expensive units

def test_mini_studies_share_the_quickstart_data():
    specs = {repr(sorted(load_study(p).data_spec().items())) for p in MINI + [STUDIES / "quickstart.yaml"]}
    assert len(specs) == 1, "one data artifact for the quickstart and every mini study"


def test_mini_studies_share_one_teacher_per_name():
    hashes: dict[str, set[str]] = defaultdict(set)
    for p in MINI:
        for name, spec in load_study(p).teacher_specs(used_only=False).items():
            hashes[name].add(spec.config_hash)
    assert hashes
    assert {n: h for n, h in hashes.items() if len(h) > 1} == {}, "define teachers only in _base.yaml"
    names_of: dict[str, list[str]] = defaultdict(list)
    for name, h in hashes.items():
        names_of[h.pop()].append(name)
    assert all(len(names) == 1 for names in names_of.values()), "one teacher under two names"


def test_mini_offline_logits_stores_are_shared():
    """A store's identity includes the tokens it covers (the largest offline student budget of a
    study), so every mini study distilling offline from a teacher must use the same budget. (A
    sampled store, orchestrator.sampling, serves one sampling only: it is not the shared one.)"""
    import json

    stores: dict[str, set[tuple]] = defaultdict(set)
    units: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for p in MINI:
        study = _plan(p).study
        for unit in _plan(p).units:
            if unit.kind == "logits" and not unit.config.get("sampling"):
                teacher = unit.config["teacher"]
                spec = study.logits_spec(teacher)
                # the per-row statistics a study's students read (issue 15: NormKD with its exact
                # tail) are added to that study's store; everything else must be shared
                core = {k: v for k, v in spec.config.items() if k not in ("gammas", "t_norms")}
                stores[teacher].add((json.dumps(core, sort_keys=True), spec.config["num_tokens"]))
                units[teacher][unit.config_hash].add(p.name)
    assert "t1" in stores
    assert {t: s for t, s in stores.items() if len(s) > 1} == {}
    # one store per teacher, plus the adaptive-temperature study's own (it keeps NormKD's normaliser)
    assert all(len(h) == 1 for t, h in units.items() if t != "t1")
    assert sorted(map(sorted, units["t1"].values()), key=len)[:-1] == [["adaptive_temperature.yaml"]]
    t1_users = sum(any(u.kind == "logits" and u.config["teacher"] == "t1" for u in _plan(p).units) for p in MINI)
    assert t1_users >= len(MINI) - 2, "nearly every mini study reads the one t1 store"


def _seconds(units) -> float:
    return sum(u.estimate.get("seconds", 0.0) for u in units)


def test_mini_suite_fits_its_cpu_budget():
    distinct = {}
    for p in MINI:
        for unit in _plan(p).units:
            distinct.setdefault(unit.config_hash, unit)
    total = _seconds(distinct.values()) / SLOTS
    assert total <= SUITE_LIMIT_S, f"mini suite ~{total / 60:.0f} min with {SLOTS} slots"
    assert all(u.resources["gpus"] == 0 for u in distinct.values())
    too_long = {_id(p): round(_seconds(_plan(p).units) / SLOTS / 60, 1) for p in MINI
                if _seconds(_plan(p).units) / SLOTS > FILE_LIMIT_S}
    assert too_long == {}, f"over {FILE_LIMIT_S // 60} min with {SLOTS} slots"
