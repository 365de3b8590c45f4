"""Study validation: every problem of a study file, each named by its dotted path.

Types and bounds come from the generated schema (pydantic over core's declarations); the rules
between fields are core's own (``__post_init__`` and ``TrainConfig.check`` raise a ConfigError
naming the field), mapped here to the path where the study sets it. What only a study can get
wrong (undefined teachers, stores that cannot serve a truncation, online windows) is checked here.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ValidationError

from core.config import KDConfig, LogitsStoreConfig, TrainConfig, Truncation
from core.settings import ConfigError, unwrap, yaml_name
from orchestrator.errors import StudyError
from orchestrator.expand import is_lm_only, online_keeps
from orchestrator.sampling import sampled_run_problems
from orchestrator.overrides import apply_to_run, check_run_path, model_at, short_name, suggest_field
from orchestrator.schema import (SCRATCH_TEACHER_FIELDS, RunConfig, Study, TeacherConfig, did_you_mean, fmt, show,
                                 size_problem, to_core)

__all__ = ["check", "Problem"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _unknown_key(root: type[BaseModel], parent_loc: Sequence[Any], key: Any) -> str:
    cls = model_at(root, parent_loc)
    return "unknown key" + (suggest_field(cls, key) if cls is not None else "")


Problem = tuple[str, str]


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


def _loc_path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            out = _join(out, str(part))
    return out


def _pydantic_problems(exc: ValidationError, root: type[BaseModel], prefix: str = "") -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc, kind, given = tuple(err["loc"]), err["type"], err.get("input")
        if kind == "missing" and loc and isinstance(loc[-1], int):
            # a fixed-length tuple with too few items
            problems.append((_join(prefix, _loc_path(loc[:-1])), f"must have {loc[-1] + 1} items, got {show(given)}"))
            continue
        if loc and loc[-1] == "[key]":  # a mapping key of the wrong type: name the mapping
            problems.append((_join(prefix, _loc_path(loc[:-2])), f"keys must be strings, got {show(given)}"))
            continue
        path = _join(prefix, _loc_path(loc))
        if kind == "pdspace":
            message = err["ctx"]["message"]
        elif kind == "extra_forbidden":
            message = _unknown_key(root, loc[:-1], loc[-1])
        elif kind == "missing":
            message = "is required"
        elif kind in ("int_type", "int_parsing", "int_from_float"):
            message = f"must be a whole number, got {show(given)}"
        elif kind in ("float_type", "float_parsing", "finite_number"):
            message = f"must be a number, got {show(given)}"
        elif kind in ("bool_type", "bool_parsing"):
            message = f"must be true or false, got {show(given)}"
        elif kind == "string_type":
            message = f"must be a string, got {show(given)}"
        elif kind == "literal_error":
            options = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
            message = (f"must be one of {', '.join(options)}, got {show(given)}"
                       + (did_you_mean(given, options) if isinstance(given, str) else ""))
        elif kind in ("dict_type", "model_type", "model_attributes_type"):
            message = f"must be a mapping, got {show(given)}"
        elif kind in ("list_type", "tuple_type", "set_type"):
            message = f"must be a list, got {show(given)}"
        elif kind in ("too_long", "too_short"):
            ctx = err.get("ctx", {})
            want = ctx.get("max_length") if kind == "too_long" else ctx.get("min_length")
            message = f"must have {'at most' if kind == 'too_long' else 'at least'} {want} items, got {ctx.get('actual_length')}"
        elif kind == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            msg = err["msg"]
            message = msg[:1].lower() + msg[1:]
        problems.append((path, message))
    return problems


def _yaml_path(cls: type, field_path: str) -> str:
    """A ConfigError's core field path as the study spells it (``alpha_schedule`` -> ``alpha``)."""
    out = []
    for part in field_path.split(".") if field_path else []:
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        f = fields.get(part)
        out.append(yaml_name(f) if f else part)
        if f is not None:
            tp = unwrap(typing.get_type_hints(cls)[part])[0]
            args = [a for a in getattr(tp, "__args__", ()) if a is not type(None)]
            cls = tp if dataclasses.is_dataclass(tp) else (args[0] if len(args) == 1 else None)
    return ".".join(out)


def _core_problems(section: Any, prefix: str = "") -> list[Problem]:
    """Core's cross-field rules for a generated section and the sections in it, as problems."""
    out: list[Problem] = []
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, BaseModel) and type(value).core:
            out += _core_problems(value, _join(prefix, name))
    if out or not type(section).core:
        return out
    for cls in type(section).core:
        try:
            to_core(section, cls)
        except ConfigError as exc:
            out.append((_join(prefix, _yaml_path(cls, exc.field)), exc.problem))
    return out


def _training_problems(section: RunConfig | TeacherConfig, seq_len: int) -> list[Problem]:
    """Core's rules of a run or a teacher: its sections, then TrainConfig.check at this seq_len."""
    out = _core_problems(section)
    if out:
        return out
    try:
        train = to_core(section, TrainConfig)
        if isinstance(section, TeacherConfig):
            train = dataclasses.replace(train, kd=None)
        train.check(seq_len)
    except ConfigError as exc:
        out.append((_yaml_path(TrainConfig, exc.field), exc.problem))
    return out


def _run_problems(study: Study, run: RunConfig) -> tuple[list[Problem], list[Problem]]:
    """Cross-field checks of one run: (problems at run-relative paths, problems at study paths)."""
    rel: list[Problem] = []
    absolute: list[Problem] = []
    seq_len = study.data.seq_len
    problem = size_problem(run.student)
    if problem:
        rel.append(("student", problem))
    rel += _training_problems(run, seq_len)
    if rel:
        return rel, absolute
    if run.teacher is None:
        return rel, absolute
    teacher = study.teachers.get(run.teacher)
    if teacher is None:
        defined = ", ".join(study.teachers) or "none"
        rel.append(("teacher", f"{run.teacher!r} is not defined under teachers: (defined: {defined})"
                               + did_you_mean(run.teacher, study.teachers)))
        return rel, absolute
    if is_lm_only(run):
        return rel, absolute  # LM-only: nothing below applies
    if teacher.pretrained is not None and study.data.tokenizer is None:
        absolute.append(("data.tokenizer", f"must be set when a student distils from the pretrained "
                                           f"teacher {run.teacher!r} (use its tokenizer, e.g. "
                                           f"{teacher.pretrained!r})"))
    kd, src = run.kd, run.logits_source
    if kd.samples is not None:  # sampled KD reads its own offline store (orchestrator.sampling)
        return rel + sampled_run_problems(study, run), absolute
    if src.kind == "online":
        if teacher.pretrained is not None:
            rel.append(("logits_source", f"online logits need a teacher trained from scratch with "
                                         f"online.capture: true; {run.teacher!r} is pretrained"))
            return rel, absolute
        if not teacher.online.capture:
            rel.append(("logits_source", f"online logits need a teacher trained from scratch with "
                                         f"online.capture: true; {run.teacher!r} has online.capture: false"))
            return rel, absolute
        if src.steps is not None:
            if src.tokens is not None or "window" in src.model_fields_set:
                rel.append(("logits_source", "set steps or window/tokens, not both"))
            start, end = src.steps
            teacher_steps = to_core(teacher, TrainConfig).total_steps(seq_len)
            if start >= end:
                rel.append(("logits_source.steps", f"must be [start, end) with start < end, got {fmt(list(src.steps))}"))
            elif end > teacher_steps:
                rel.append(("logits_source.steps", f"end must be <= {teacher_steps}, the steps teacher {run.teacher!r} trains for; got {end}"))
        else:
            window = src.tokens if src.tokens is not None else run.tokens
            if src.tokens is not None and src.tokens > teacher.tokens:
                rel.append(("logits_source.tokens", f"must be <= {teacher.tokens}, the tokens teacher "
                                                    f"{run.teacher!r} trains on; got {src.tokens}"))
            elif src.tokens is None and window > teacher.tokens:
                rel.append(("tokens", f"online logits from {run.teacher!r} cover at most its {teacher.tokens} "
                                      f"training tokens, got {run.tokens}"))
            if run.tokens > window:
                rel.append(("tokens", f"must be <= the online window of {window} tokens, got {run.tokens}"))
        keeps, store = online_keeps(study, teacher), f"teachers.{run.teacher}.online"
    else:
        keeps, store = to_core(study.logits, LogitsStoreConfig).keeps, "logits"
    try:
        to_core(kd, Truncation).check_covered_by(keeps, where="the store")
    except ConfigError as exc:
        suffix = "" if store != "logits" else "_max"
        rel.append((f"kd.{exc.field}", f"must be <= {store}.{exc.field}{suffix} ({fmt(getattr(keeps, exc.field))}), "
                                       f"the truncation the store keeps; got {fmt(getattr(kd, exc.field))}"))
    if store != "logits":
        # an offline store gets every statistic its students read (expand.logits_spec); an online
        # capture keeps the declared ones only, so a student that needs another is refused here
        try:
            missing = to_core(study.logits, LogitsStoreConfig).missing_stats(to_core(kd, KDConfig))
        except ConfigError:
            missing = []  # an invalid kd section is reported on its own
        if missing:
            rel.append(("kd", f"reads full-vocabulary statistics that {store}'s capture does not keep; add "
                              f"{', '.join(missing)} to the study (the teacher then captures them)"))
    return rel, absolute


def _validate_run(study: Study, run_dict: Mapping, prefix: str) -> list[Problem]:
    """Validate one run dict (base with changes applied); problems carry `prefix`."""
    try:
        run = RunConfig.model_validate(run_dict)
    except ValidationError as exc:
        return _pydantic_problems(exc, RunConfig, prefix)
    rel, absolute = _run_problems(study, run)
    return [(_join(prefix, p), m) for p, m in rel] + absolute


def _varied_key_problem(study: Study, key: str, values: list) -> tuple[str | None, bool]:
    """(the problem of a key a sweep or the grid varies, whether its runs cannot be checked)."""
    problem = check_run_path(key)
    if problem:
        return problem, True
    if not values:
        return "must list at least one value", True
    if key == "seed" and study.seeds is not None:
        return "cannot vary seed when seeds: is set", False
    return None, False


def _study_problems(study: Study) -> list[Problem]:
    out: list[Problem] = []
    if not _NAME_RE.match(study.name) or len(study.name) > 200:
        out.append(("name", f"must start with a letter or digit and hold only letters, digits and "
                            f"'_.+-' (got {study.name!r})"))
    for name, teacher in study.teachers.items():
        where = f"teachers.{name}"
        if not _NAME_RE.match(name):
            out.append((where, "teacher names hold only letters, digits and '_.+-'"))
        if teacher.pretrained is not None:
            for field in SCRATCH_TEACHER_FIELDS:
                if field in teacher.model_fields_set:
                    out.append((f"{where}.{field}", "does not apply to a pretrained teacher "
                                                    "(remove it, or remove pretrained)"))
            continue
        problem = size_problem(teacher.size)
        if problem:
            out.append((f"{where}.size", problem))
        out += [(f"{where}.{p}", m) for p, m in _training_problems(teacher, study.data.seq_len)]
    out += _core_problems(study.data, "data") + _core_problems(study.logits, "logits") \
        + _core_problems(study.eval, "eval") + _resource_problems(study)
    if study.seeds is not None:
        if not study.seeds:
            out.append(("seeds", "must list at least one seed (or be removed)"))
        dupes = sorted({s for s in study.seeds if study.seeds.count(s) > 1})
        if dupes:
            out.append(("seeds", f"must not repeat a seed, got {fmt(dupes[0])} twice"))

    base_rel, base_abs = _run_problems(study, study.base)
    out += [(_join("base", p), m) for p, m in base_rel] + base_abs
    base = study.base.model_dump(exclude_unset=True)
    base_ok = not base_rel and not base_abs

    for i, sweep in enumerate(study.sweeps):
        where = f"sweeps[{i}]"
        if not sweep:
            out.append((where, "must name a field to vary, e.g. {kd.top_k: [1, 5, 50]}"))
            continue
        lengths = {len(v) for v in sweep.values()}
        bad_keys = False
        for key, values in sweep.items():
            problem, fatal = _varied_key_problem(study, key, values)
            if problem:
                out.append((f"{where}.{key}", problem))
                bad_keys = bad_keys or fatal
        if len(lengths) > 1:
            counts = ", ".join(f"{k} has {len(v)}" for k, v in sweep.items())
            out.append((where, f"fields varied together need as many values each ({counts}); "
                               f"use grid: for a cartesian product"))
            continue
        if bad_keys or not base_ok:
            continue
        for j in range(lengths.pop()):
            run = apply_to_run(base, [(k, v[j]) for k, v in sweep.items()])
            out += _validate_run(study, run, where)

    grid_ok = True
    for key, values in study.grid.items():
        problem, fatal = _varied_key_problem(study, key, values)
        if problem:
            out.append((f"grid.{key}", problem))
            grid_ok = grid_ok and not fatal
        elif base_ok:
            for value in values:
                problems = _validate_run(study, apply_to_run(base, [(key, value)]), "grid")
                grid_ok = grid_ok and not problems
                out += problems
    if grid_ok and base_ok and study.grid:
        keys = list(study.grid)
        for combo in itertools.product(*study.grid.values()):
            changes = list(zip(keys, combo))
            label = ",".join(f"{short_name(k)}={fmt(v)}" for k, v in changes)
            out += _validate_run(study, apply_to_run(base, changes), f"grid[{label}]")
    return out




def _resource_problems(study: Study) -> list[Problem]:
    """A worker trains on one device: more than one GPU per worker would sit idle, and NCCL
    cannot put two ranks of one trial on one GPU."""
    res, out = study.resources, []
    if res.gpus_per_trial > 1:
        out.append(("resources.gpus_per_trial", f"must be at most 1: each worker trains on one GPU; use "
                                                f"workers_per_trial for more GPUs per trial (got {fmt(res.gpus_per_trial)})"))
    elif 0 < res.gpus_per_trial < 1 and res.workers_per_trial > 1:
        out.append(("resources.gpus_per_trial", f"must be 1 with several workers (NCCL needs a GPU per worker), "
                                                f"got {fmt(res.gpus_per_trial)} with workers_per_trial "
                                                f"{res.workers_per_trial}"))
    if res.gpu_memory_gb is not None and res.gpus_per_trial == 0:
        out.append(("resources.gpu_memory_gb", "applies to GPU trials only: set gpus_per_trial, or remove it"))
    return out


def check(data: Mapping, cls: type[Study] = Study) -> Study:
    """Validate a raw study dict (includes merged, `name` set) into ``cls`` (Study or a subclass);
    raises StudyError listing every problem."""
    try:
        study = cls.model_validate(data)
    except ValidationError as exc:
        raise StudyError(_pydantic_problems(exc, Study)) from None
    problems = _study_problems(study)
    if problems:
        raise StudyError(problems)
    return study
