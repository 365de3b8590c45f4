"""How a setting is declared: one dataclass field carrying its default, bounds, docstring and
identity rule; the checks, the study schema and the unit identity are all read from it.

A config class is a frozen stdlib dataclass whose fields are written as

    temperature: Annotated[float, Gt(0)] = setting(1.0, since=1)
    \"\"\"Teacher-side τ (the field's docstring: shown by `pdspace validate --explain`).\"\"\"

- the type (``int``, ``float``, ``str``, ``bool``, a ``Literal``, ``X | None``, ``tuple``/``list`` of
  those, or another config dataclass) and its bounds (``annotated_types`` ``Gt/Ge/Lt/Le``, which
  pydantic also understands) are checked by ``check_fields`` in ``__post_init__``;
- ``setting(default, *, yaml=None, since=2, identity=True)`` records how the field is named in a
  study file (``yaml``: only where the study name differs, e.g. ``kd.loss`` for ``KDConfig.kind``),
  and how it enters a unit's identity hash (``orchestrator.identity``): a field of identity
  version 1 (``since=1``) is always hashed, as it always was; a field added later (``since>=2``,
  the default) is hashed only when its value differs from its default, so adding a setting never
  changes an existing unit's hash; ``identity=False`` never hashes it (how often to log or
  checkpoint changes no result).

This module imports neither torch nor pydantic: the orchestrator and analysis read it cheaply.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from functools import lru_cache
from typing import Any, Literal, Mapping, Union, get_args, get_origin

import annotated_types as at

__all__ = ["ConfigError", "setting", "check_fields", "build", "build_from", "study_excluded", "config_dict", "identity_dict", "field_docs", "in_bounds",
           "bounds_text", "show_value", "unwrap", "yaml_name", "fmt_value", "EXECUTION_KEY"]

EXECUTION_KEY = "execution"
"""Where a config dict keeps the settings that change no result (``identity=False``): left out
of every identity hash."""

_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A setting with a bad value: ``field`` is its (dotted, relative) name, ``problem`` the rule."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}" if field else problem)

    def under(self, prefix: str) -> "ConfigError":
        """The same problem one level down: ``kd`` + ``temperature`` -> ``kd.temperature``."""
        return ConfigError(f"{prefix}.{self.field}" if self.field else prefix, self.problem)


def setting(default: Any = _MISSING, *, default_factory: Any = _MISSING, yaml: str | None = None,
            since: int = 2, identity: bool = True, in_study: bool = True) -> Any:
    """A dataclass field with the metadata described in the module docstring; ``in_study=False``
    for a field the study does not set in this section (the worker or another section does)."""
    meta = {"yaml": yaml, "since": since, "identity": identity, "in_study": in_study}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def yaml_name(f: dataclasses.Field) -> str:
    return f.metadata.get("yaml") or f.name


def fmt_value(value: Any) -> str:
    """Compact, stable rendering of a value (trial ids, messages): 0.0005, 2, true, null, [1,2]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{fmt_value(v)}" for k, v in value.items()) + "}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Types and bounds

def unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """(the type without Annotated, its annotated_types bounds)."""
    bounds: list[Any] = []
    while get_origin(annotation) is typing.Annotated:
        annotation, *meta = get_args(annotation)
        bounds += [m for m in meta if isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le))]
    return annotation, bounds


def bounds_text(bounds: list[Any]) -> str:
    """'must be in (0, 1]', 'must be >= 1', ... for a list of Gt/Ge/Lt/Le."""
    lo = next(((b.gt, True) for b in bounds if isinstance(b, at.Gt)), None) or \
        next(((b.ge, False) for b in bounds if isinstance(b, at.Ge)), None)
    hi = next(((b.lt, True) for b in bounds if isinstance(b, at.Lt)), None) or \
        next(((b.le, False) for b in bounds if isinstance(b, at.Le)), None)
    if lo and hi:
        return f"must be in {'(' if lo[1] else '['}{lo[0]}, {hi[0]}{')' if hi[1] else ']'}"
    if lo:
        return f"must be {'>' if lo[1] else '>='} {lo[0]}"
    if hi:
        return f"must be {'<' if hi[1] else '<='} {hi[0]}"
    return ""


def in_bounds(value: Any, bounds: list[Any]) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    for b in bounds:
        if isinstance(b, at.Gt) and not value > b.gt:
            return False
        if isinstance(b, at.Ge) and not value >= b.ge:
            return False
        if isinstance(b, at.Lt) and not value < b.lt:
            return False
        if isinstance(b, at.Le) and not value <= b.le:
            return False
    return True


def show_value(value: Any) -> str:
    """A value as it reads in an error message: strings quoted, long values cut."""
    text = repr(value) if isinstance(value, str) else fmt_value(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _check_value(value: Any, annotation: Any, where: str) -> None:
    """Raise ConfigError unless ``value`` has the declared type and is within its bounds."""
    tp, bounds = unwrap(annotation)
    if _is_union(tp):
        options = get_args(tp)
        if value is None and type(None) in options:
            return
        rest = [o for o in options if o is not type(None)]
        if len(rest) == 1:
            return _check_value(value, rest[0], where)
        raise ConfigError(where, "has an unsupported union type")  # pragma: no cover - declaration bug
    if tp is Any:
        return
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(where, f"must be one of {', '.join(map(str, get_args(tp)))} (got {show_value(value)})")
        return
    if origin in (tuple, list):
        expected = tuple if origin is tuple else list
        if not isinstance(value, (tuple, list)):
            raise ConfigError(where, f"must be a {expected.__name__} (got {show_value(value)})")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(where, f"must hold {len(args)} values (got {show_value(value)})")
            for i, (v, a) in enumerate(zip(value, args)):
                _check_value(v, a, f"{where}[{i}]")
        elif args:
            for i, v in enumerate(value):
                _check_value(v, args[0], f"{where}[{i}]")
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, tp):
            raise ConfigError(where, f"must be a {tp.__name__} (got {show_value(value)})")
        return
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ConfigError(where, f"must be {getattr(tp, '__name__', tp)} (got {show_value(value)})")
    if bounds and not in_bounds(value, bounds):
        raise ConfigError(where, f"{bounds_text(bounds)} (got {show_value(value)})")


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def check_fields(obj: Any) -> None:
    """Check every field of a config dataclass against its declared type and bounds."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        _check_value(getattr(obj, f.name), hints[f.name], f.name)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_dict(value)
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def config_dict(obj: Any) -> dict[str, Any]:
    """The JSON form of a config dataclass as a unit stores it: every identity-version-1 field;
    a later field only when it differs from its default (so it leaves old hashes alone); the
    fields that change no result, when set, under ``EXECUTION_KEY``. ``build`` reads it back."""
    out: dict[str, Any] = {}
    execution: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        at_default = value == _default(f)
        if not f.metadata.get("identity", True):
            if not at_default:
                execution[f.name] = _to_json(value)
        elif f.metadata.get("since", 2) <= 1 or not at_default:
            out[f.name] = _to_json(value)
    if execution:
        out[EXECUTION_KEY] = execution
    return out


def identity_dict(config: Any) -> Any:
    """A config (dict, list or dataclass) without its ``EXECUTION_KEY`` parts, at any depth."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = config_dict(config)
    if isinstance(config, Mapping):
        return {k: identity_dict(v) for k, v in config.items() if k != EXECUTION_KEY}
    if isinstance(config, (list, tuple)):
        return [identity_dict(v) for v in config]
    return config


def build(cls: type, data: Mapping[str, Any] | Any) -> Any:
    """``cls`` from a plain dict (a resolved config, a YAML section): nested config dataclasses are
    built from their dicts, lists become tuples where the field is a tuple. Unknown keys are an
    error; a ConfigError names the dotted field."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{cls.__name__} must be given as a mapping (got {show_value(data)})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if EXECUTION_KEY in data:
        data = {**{k: v for k, v in data.items() if k != EXECUTION_KEY}, **data[EXECUTION_KEY]}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(unknown[0], f"is not a setting of {cls.__name__} (expected one of {', '.join(fields)})")
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError("", f"{cls.__name__}: {exc}") from None


def build_from(cls: type, mapping: Mapping[str, Any]) -> Any:
    """``cls`` from the keys of a larger config dict that name its fields (and its
    ``EXECUTION_KEY`` part): a unit config holds several configs side by side."""
    names = {f.name for f in dataclasses.fields(cls)} | {EXECUTION_KEY}
    return build(cls, {k: v for k, v in mapping.items() if k in names})


def study_excluded(cls: type) -> tuple[str, ...]:
    """The fields of ``cls`` a study does not set in its section (``in_study=False``)."""
    return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata.get("in_study", True))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    tp, _ = unwrap(annotation)
    if _is_union(tp):
        if value is None:
            return None
        rest = [o for o in get_args(tp) if o is not type(None)]
        tp = unwrap(rest[0])[0] if len(rest) == 1 else tp
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        try:
            return build(tp, value)
        except ConfigError as exc:
            raise exc.under(where) from None
    if get_origin(tp) is tuple and isinstance(value, list):
        return tuple(value)
    return value


# ---------------------------------------------------------------------------------------------
# Docstrings

@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), read from the class's source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # pragma: no cover - source not available
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) \
                    and isinstance(nxt.value.value, str):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs
