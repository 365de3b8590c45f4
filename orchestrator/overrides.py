"""Dotted paths into a study: what sweeps, grids and `--set` may name, short names for trial ids,
and setting a value at a path (shorthands expanded, sections merged or replaced)."""
from __future__ import annotations

import copy
import difflib
from functools import lru_cache
from typing import Annotated, Any, Iterable, Mapping, Sequence, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

from orchestrator.errors import StudyError
from orchestrator.schema import RunConfig, Study, TeacherConfig, show as _show, unwrap_model_field
from orchestrator.yaml_io import deep_merge as _deep_merge, parse_yaml

__all__ = ["run_paths", "short_name", "check_run_path", "apply_to_run", "apply_overrides", "suggest_field",
           "model_at", "unwrap_annotation"]


def unwrap_annotation(annotation: Any) -> tuple[str, Any]:
    """('model', cls) | ('dict', value annotation) | ('list', item annotation) | ('leaf', None)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    model = unwrap_model_field(annotation)
    if model is not None:
        return ("model", model)
    origin = get_origin(annotation)
    if origin is dict:
        return ("dict", get_args(annotation)[1])
    if origin is list:
        return ("list", get_args(annotation)[0])
    return ("leaf", None)


def _field_kind(cls: type[BaseModel], name: str) -> tuple[str, Any] | None:
    field = cls.model_fields.get(name)
    return None if field is None else unwrap_annotation(field.annotation)


def suggest_field(cls: type[BaseModel], key: Any) -> str:
    """' (did you mean ...?)' for an unknown key of `cls`: a field one level down with that exact
    name (a teacher's `lr` -> `optimizer.lr`), else a close spelling, else ''."""
    key = str(key)
    candidates = [(name, name) for name in cls.model_fields]  # (suggestion, name compared)
    for name in cls.model_fields:
        kind, inner = unwrap_annotation(cls.model_fields[name].annotation)
        if kind == "model":
            candidates += [(f"{name}.{sub}", sub) for sub in inner.model_fields]
    best, best_score = None, 0.6
    for suggestion, compared in candidates:  # first best wins: this level before the one below
        score = 1.0 if compared == key else difflib.SequenceMatcher(None, key, compared).ratio()
        if score > best_score + 1e-9:
            best, best_score = suggestion, score
    return f" (did you mean {best!r}?)" if best else ""


def model_at(root: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class at a pydantic error location (None when it is not a model)."""
    node: tuple[str, Any] = ("model", root)
    for part in loc:
        kind, inner = node
        if kind == "model" and isinstance(part, str) and part in inner.model_fields:
            node = unwrap_annotation(inner.model_fields[part].annotation)
        elif kind == "dict" or (kind == "list" and isinstance(part, int)):
            node = unwrap_annotation(inner)
        else:
            return None
    return node[1] if node[0] == "model" else None


@lru_cache(maxsize=None)
def run_paths() -> tuple[str, ...]:
    """Every dotted field path of a run (sub-sections and leaves): what sweeps and grids may vary."""
    out: list[str] = []

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, field in cls.model_fields.items():
            path = f"{prefix}{name}"
            out.append(path)
            kind, inner = unwrap_annotation(field.annotation)
            if kind == "model":
                walk(inner, path + ".")

    walk(RunConfig, "")
    return tuple(out)


@lru_cache(maxsize=None)
def short_name(path: str) -> str:
    """Shortest suffix of a run field path that no other run field path ends with:
    kd.top_k -> top_k, optimizer.lr -> lr, but lr_schedule.kind and alpha.alpha stay whole."""
    parts = path.split(".")
    others = [p.split(".") for p in run_paths() if p != path]
    for n in range(1, len(parts)):
        if not any(o[-n:] == parts[-n:] for o in others):
            return ".".join(parts[-n:])
    return path


def check_run_path(path: str) -> str | None:
    """None if `path` names a run field, else the problem (with a suggestion)."""
    if path in run_paths():
        return None
    paths = run_paths()
    close = difflib.get_close_matches(path, paths, n=1, cutoff=0.6)
    if not close:  # try the last component against the short names: `topk` -> kd.top_k
        last = path.split(".")[-1]
        by_short = {short_name(p): p for p in paths}
        hit = difflib.get_close_matches(last, list(by_short), n=1, cutoff=0.6)
        close = [by_short[hit[0]]] if hit else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field{hint}; sweeps and grids vary fields of base"


def _expand_shorthand(cls: Any, value: Any) -> Any:
    if isinstance(cls, type) and hasattr(cls, "from_shorthand"):
        try:
            return cls.from_shorthand(value)
        except PydanticCustomError:
            return value
    return value


def _set_path(root: dict, parts: Sequence[str], value: Any, cls: type[BaseModel]) -> None:
    """Set root[a][b]... = value along model fields, expanding shorthands (alpha: 0.9) on the way.
    A mapping value deep-merges into the section already there, except for sections that are one
    choice as a whole (alpha, logits_source: `sweep_replaces`), which it replaces."""
    node = root
    for i, part in enumerate(parts):
        kind = _field_kind(cls, part)
        inner = kind[1] if kind and kind[0] == "model" else None
        last = i == len(parts) - 1
        current = node.get(part)
        if current is not None and not isinstance(current, dict) and inner is not None:
            current = _expand_shorthand(inner, current)
        if last:
            value = copy.deepcopy(value)
            merges = inner is not None and not getattr(inner, "sweep_replaces", False)
            if merges and isinstance(value, dict) and isinstance(current, dict):
                value = _deep_merge(current, value)
            node[part] = value
            return
        if current is None:
            current = {}
        if not isinstance(current, dict) or inner is None:
            raise StudyError([(".".join(parts[: i + 1]), f"is not a section (got {_show(current)})")])
        node[part] = dict(current)
        node, cls = node[part], inner


def apply_to_run(run: Mapping, changes: Iterable[tuple[str, Any]]) -> dict:
    out = copy.deepcopy(dict(run))
    for path, value in changes:
        _set_path(out, path.split("."), value, RunConfig)
    return out


def apply_overrides(study_dict: Mapping, overrides: Sequence[str]) -> dict:
    """Apply `--set key=value` overrides to a raw study dict (returns a new dict).

    `key` is a dotted path into the study (`base.tokens`, `teachers.t1.tokens`, `seeds`,
    `grid.kd.top_k`); `value` is parsed as YAML (`1e5`, `null`, `[0, 1]`, `{kind: wsd}`).
    An unknown key raises StudyError naming it.
    """
    out = copy.deepcopy(dict(study_dict))
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise StudyError([("--set", f"expected key=value, got {item!r}")])
        value = parse_yaml(raw, f"--set {key}")
        parts = key.split(".")
        head = parts[0]
        if head == "grid" and len(parts) > 1:
            field = ".".join(parts[1:])
            problem = check_run_path(field)
            if problem:
                raise StudyError([(key, problem)])
            grid = out.get("grid")
            out["grid"] = dict(grid) if isinstance(grid, dict) else {}
            out["grid"][field] = value
            continue
        problem = _check_override_path(parts)
        if problem:
            raise StudyError([(key, problem)])
        if head == "teachers" and len(parts) > 1:
            teachers = out.get("teachers") or {}
            if not isinstance(teachers, dict):
                raise StudyError([("teachers", f"must be a mapping, got {_show(teachers)}")])
            out["teachers"] = teachers = dict(teachers)
            if len(parts) == 2:
                teachers[parts[1]] = value
                continue
            teacher = teachers.get(parts[1]) or {}
            if not isinstance(teacher, dict):
                raise StudyError([(f"teachers.{parts[1]}", f"must be a mapping, got {_show(teacher)}")])
            teachers[parts[1]] = teacher = dict(teacher)
            _set_path(teacher, parts[2:], value, TeacherConfig)
        else:
            _set_path(out, parts, value, Study)
    return out


def _check_override_path(parts: Sequence[str]) -> str | None:
    node: tuple[str, Any] = ("model", Study)
    for i, part in enumerate(parts):
        kind, inner = node
        if kind == "model":
            if part not in inner.model_fields:
                which = f" {part!r}" if i < len(parts) - 1 else ""
                return f"unknown key{which}" + suggest_field(inner, part)
            node = unwrap_annotation(inner.model_fields[part].annotation)
        elif kind == "dict":
            node = unwrap_annotation(inner)
        else:
            return f"unknown key ({'.'.join(parts[:i])} has no sub-fields)"
    return None
