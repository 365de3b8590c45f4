"""A validated study resolved into units: every trial's full config (core's settings with their
defaults filled in), the LM-only baselines the KD trials need, the teachers and logits stores.

Resolution builds core's config objects from the study's sections (``schema.to_core``) and
writes them with ``core.settings.config_dict``; nothing here copies a setting by hand.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping

from core.config import LM_ONLY_ALPHA, EvalConfig, KDConfig, LogitsStoreConfig, TrainConfig, Truncation
from core.settings import build, config_dict, study_excluded
from core.utils import DATA_FORMAT_VERSION
from orchestrator.errors import StudyError
from orchestrator.identity import CONFIG_VERSION, unit_hash
from orchestrator.overrides import apply_to_run, short_name
from orchestrator.schema import (KD_ONLY_FIELDS, NOT_FOR_TEACHERS, RunConfig, Study, TeacherConfig, did_you_mean,
                                 fmt, to_core)

__all__ = ["TrialSpec", "TeacherSpec", "LogitsSpec", "expand", "teacher_spec", "teacher_specs", "logits_spec",
           "data_config", "train_config", "is_lm_only", "online_keeps"]


@dataclass(frozen=True)
class TrialSpec:
    """One student or baseline run of a study, fully resolved.

    trial_id:      readable and stable within the study ("base", "top_k=50,seed=1",
                   "baseline:student=d64l3,seed=0"); unique in the study.
    factor:        the varied field(s) ("kd.top_k"; grid/zipped: "student,kd.temperature"); None for
                   base and auto baselines.
    value:         the value(s) as text ("50"; "d32l2,2"); None when factor is None.
    role:          "student" (distils from a teacher) or "baseline" (LM-only).
    config:        the resolved run config (plain JSON-able dict; do not mutate).
    config_hash:   identity.unit_hash of config; several trial ids may share one (e.g. a sweep
                   value equal to base): run each hash once.
    baseline_hash: config_hash of the matching LM-only run (None for a baseline, or when auto
                   baselines are off and the study has no such run).
    """

    trial_id: str
    factor: str | None
    value: str | None
    role: Literal["student", "baseline"]
    config: dict
    config_hash: str
    baseline_hash: str | None

    def __hash__(self) -> int:
        return hash((self.trial_id, self.config_hash))


@dataclass(frozen=True)
class TeacherSpec:
    """A resolved teacher: config (JSON-able) and its content hash."""

    name: str
    config: dict
    config_hash: str

    def __hash__(self) -> int:
        return hash((self.name, self.config_hash))


@dataclass(frozen=True)
class LogitsSpec:
    """A resolved offline logits store: config (JSON-able) and its identity hash."""

    teacher: str
    config: dict
    config_hash: str

    def __hash__(self) -> int:
        return hash((self.teacher, self.config_hash))


def data_config(study: Study) -> dict:
    """core.config.DataSpec's resolved fields."""
    return config_dict(to_core(study.data))


def train_config(section: RunConfig | TeacherConfig, *, lm_only: bool = False) -> TrainConfig:
    """The core TrainConfig a run or teacher section declares (an LM-only run has no kd)."""
    train = to_core(section, TrainConfig)
    if isinstance(section, TeacherConfig) or lm_only:  # the next-token loss alone
        train = replace(train, kd=None, alpha_schedule=LM_ONLY_ALPHA)
    else:
        train = replace(train, kd=to_core(section.kd, KDConfig))
    return train.resolved()


def _training_dict(train: TrainConfig, study: Study, *, drop: tuple[str, ...] = ()) -> dict:
    """A run's data, training and evaluation settings as its unit config holds them."""
    trained = config_dict(train)
    for name in study_excluded(TrainConfig) + drop:  # set by the eval section / the worker
        trained.pop(name, None)
    return {
        "data": data_config(study),
        "data_format": DATA_FORMAT_VERSION,
        **trained,
        "eval": config_dict(to_core(study.eval, EvalConfig).resolved(train.tokens)),
    }


def is_lm_only(run: RunConfig) -> bool:
    return run.teacher is None or to_core(run.alpha).is_zero


def teacher_spec(study: Study, name: str) -> TeacherSpec:
    t = study.teachers[name]
    if t.pretrained is not None:
        config = {"config_version": CONFIG_VERSION, "kind": "teacher", "origin": "pretrained",
                  "name": name, "pretrained": t.pretrained}
    else:
        online = {"capture": False, "top_p": None, "top_k": None, "gammas": []}
        if t.online.capture:
            keeps = online_keeps(study, t)
            online = {"capture": True, **config_dict(keeps), "gammas": sorted(set(study.logits.gammas))}
            if study.logits.t_norms:  # absent at its default: older teacher hashes stay
                online["t_norms"] = sorted(set(study.logits.t_norms))
        config = {"config_version": CONFIG_VERSION, "kind": "teacher", "origin": "scratch", "name": name,
                  "size": t.size, **_training_dict(train_config(t), study, drop=NOT_FOR_TEACHERS), "online": online}
    return TeacherSpec(name=name, config=config, config_hash=unit_hash("teacher", config))


def teacher_specs(study: Study, used_only: bool = True) -> dict[str, TeacherSpec]:
    """Resolved teachers by name; with used_only, only those a student trial distils from."""
    used = {t.config["teacher"] for t in expand(study)} if used_only else set(study.teachers)
    return {name: teacher_spec(study, name) for name in study.teachers if name in used}


def online_keeps(study: Study, teacher: TeacherConfig) -> Truncation:
    """The truncation a teacher's online store keeps (the study's store maximum by default)."""
    keeps = to_core(study.logits, LogitsStoreConfig).keeps
    return Truncation(teacher.online.top_p if teacher.online.top_p is not None else keeps.top_p,
                      teacher.online.top_k if teacher.online.top_k is not None else keeps.top_k)


def logits_spec(study: Study, teacher: str) -> LogitsSpec:
    """The offline logits store of ``teacher`` over the study's data."""
    if teacher not in study.teachers:
        raise StudyError([("teacher", f"{teacher!r} is not defined under teachers:"
                                      + did_you_mean(teacher, study.teachers))])
    t = teacher_spec(study, teacher)
    readers = [trial.config for trial in expand(study)
               if trial.config["teacher"] == teacher and trial.config["logits"]["source"] == "offline"
               and trial.config["logits"].get("samples") is None]  # sampled readers: orchestrator.sampling
    offline = [cfg["tokens"] for cfg in readers]
    # every full-vocabulary statistic its students read (WTTM's γ, 1/τ for an exact tail, NormKD's
    # t_norm with tail) is added; a store that needs none keeps the declared lists, and its hash
    store = to_core(study.logits, LogitsStoreConfig).with_stats_for(
        [build(KDConfig, cfg["kd"]) for cfg in readers if cfg.get("kd") is not None])
    config = {
        "config_version": CONFIG_VERSION,
        "kind": "logits",
        "teacher": teacher,
        "teacher_hash": t.config_hash,
        "pretrained": t.config.get("pretrained"),
        "data": data_config(study),
        "data_format": DATA_FORMAT_VERSION,
        **config_dict(store),
        "num_tokens": max(offline) if offline else None,
    }
    return LogitsSpec(teacher=teacher, config=config, config_hash=unit_hash("logits", config))


def _vocab_of(study: Study, teacher: str | None) -> str | None:
    """The pretrained model whose vocabulary (padded rows included: core.models.model_vocab_size)
    a run's model is built with: a student's pretrained teacher, or, for any run of a study whose
    data uses a pretrained teacher's tokenizer, that teacher (so LM-only runs match the students
    they are compared with). None: the tokenizer's own size."""
    if teacher is not None and study.teachers[teacher].pretrained is not None:
        return study.teachers[teacher].pretrained
    tokenizer = study.data.tokenizer
    if tokenizer is not None and any(t.pretrained == tokenizer for t in study.teachers.values()):
        return tokenizer
    return None


def _resolve_run(study: Study, run: RunConfig) -> dict:
    """The fully resolved config of one student or baseline run (see TrialSpec.config)."""
    lm_only = is_lm_only(run)
    config: dict[str, Any] = {
        "config_version": CONFIG_VERSION,
        "kind": "baseline" if lm_only else "student",
        "student": run.student,
        "teacher": None if lm_only else run.teacher,
        "teacher_hash": None if lm_only else teacher_spec(study, run.teacher).config_hash,
        **_training_dict(train_config(run, lm_only=lm_only), study),
    }
    vocab_of = _vocab_of(study, None if lm_only else run.teacher)
    if vocab_of is not None:
        config["vocab_of"] = vocab_of
    if lm_only:
        config["logits"] = None
    else:
        src = run.logits_source
        online = src.kind == "online"
        config["logits"] = {
            "source": src.kind,
            **config_dict(to_core(run.kd, Truncation)),
            "window": src.window if online and src.steps is None else None,
            "tokens": (src.tokens or run.tokens) if online and src.steps is None else None,
            "steps": list(src.steps) if online and src.steps is not None else None,
        }
    config["baseline_hash"] = None
    return config


def _baseline_config(study: Study, config: Mapping) -> dict:
    """The LM-only twin of a student config: same everything but the teacher and the KD loss
    (and the vocabulary, which is the study's, not a particular teacher's: see _vocab_of)."""
    out = copy.deepcopy(dict(config))
    out.pop("nonfinite_from_step", None)
    out.pop("vocab_of", None)
    if _vocab_of(study, None) is not None:
        out["vocab_of"] = _vocab_of(study, None)
    out.update(kind="baseline", teacher=None, teacher_hash=None, kd=None, logits=None, baseline_hash=None,
               alpha_schedule=config_dict(LM_ONLY_ALPHA.resolved()))
    return out


@dataclass
class _Point:
    changes: list[tuple[str, Any]]
    factor: str | None
    value: str | None


def expand(study: Study) -> list[TrialSpec]:
    """All trials of a study: base (when there is no grid), grid points, sweep points, each
    repeated per seed, then the LM-only baselines the KD trials need (deduplicated).

    Order: base/grid points, then sweeps in file order, seeds innermost, baselines last.
    """
    base = study.base.model_dump(exclude_unset=True)
    points: list[_Point] = []
    if study.grid:
        keys = list(study.grid)
        for combo in itertools.product(*study.grid.values()):
            points.append(_Point(list(zip(keys, combo)), ",".join(keys), ",".join(fmt(v) for v in combo)))
    else:
        points.append(_Point([], None, None))
    for sweep in study.sweeps:
        keys = list(sweep)
        for j in range(len(sweep[keys[0]])):
            values = [sweep[k][j] for k in keys]
            points.append(_Point(list(zip(keys, values)), ",".join(keys), ",".join(fmt(v) for v in values)))

    seeds: list[int | None] = list(study.seeds) if study.seeds is not None else [None]
    trials: list[TrialSpec] = []
    by_id: dict[str, TrialSpec] = {}
    origin: dict[str, list[tuple[str, Any]]] = {}  # trial id -> its changes from base
    for point in points:
        for seed in seeds:
            changes = point.changes + ([("seed", seed)] if seed is not None else [])
            run = RunConfig.model_validate(apply_to_run(base, changes))
            config = _resolve_run(study, run)
            trial_id = ",".join(f"{short_name(k)}={fmt(v)}" for k, v in changes) if point.changes else (
                "base" + (f",seed={seed}" if seed is not None else ""))
            trial = TrialSpec(trial_id=trial_id, factor=point.factor, value=point.value, role=config["kind"],
                              config=config, config_hash=unit_hash(config["kind"], config), baseline_hash=None)
            if trial_id in by_id:
                if by_id[trial_id].config_hash != trial.config_hash:  # pragma: no cover - ids encode changes
                    raise StudyError([("sweeps", f"trial id {trial_id!r} names two different runs")])
                continue
            by_id[trial_id] = trial
            origin[trial_id] = changes
            trials.append(trial)

    existing = {t.config_hash for t in trials}
    baselines: list[TrialSpec] = []
    baseline_of: dict[str, str | None] = {}
    for trial in trials:
        if trial.role != "student":
            continue
        config = _baseline_config(study, trial.config)
        bhash = unit_hash("baseline", config)
        baseline_of[trial.trial_id] = bhash if (study.baselines.auto or bhash in existing) else None
        if not study.baselines.auto or bhash in existing:
            continue
        existing.add(bhash)
        changes = origin[trial.trial_id]
        kept = [(k, v) for k, v in changes
                if k.split(".")[0] not in KD_ONLY_FIELDS and k not in ("student", "seed")]
        varies_seed = study.seeds is not None or any(k == "seed" for k, _ in changes)
        seed = [("seed", trial.config["seed"])] if varies_seed else []
        parts = [("student", trial.config["student"])] + kept + seed
        trial_id = "baseline:" + ",".join(f"{short_name(k)}={fmt(v)}" for k, v in parts)
        if trial_id in by_id:
            trial_id += f",cfg={bhash[:8]}"
        baseline = TrialSpec(trial_id=trial_id, factor=None, value=None, role="baseline",
                             config=config, config_hash=bhash, baseline_hash=None)
        by_id[trial_id] = baseline
        baselines.append(baseline)

    out: list[TrialSpec] = []
    for trial in trials:
        bhash = baseline_of.get(trial.trial_id)
        if bhash is not None:
            trial = replace(trial, config={**trial.config, "baseline_hash": bhash}, baseline_hash=bhash)
        out.append(trial)
    return out + baselines
