"""Study YAML: safe_load with YAML 1.2 numbers and booleans, duplicate keys refused, `include:`."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from orchestrator.errors import StudyError
from orchestrator.schema import show as _show

__all__ = ["parse_yaml", "load_study_dict", "deep_merge"]


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that reads 5e-4 and 1e6 as floats (YAML 1.1 reads them as strings), only
    true/false as booleans (not yes/no/on/off), and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable key: the base class reports it
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str = "<string>") -> Any:
    """Parse YAML text with the study loader; errors become a StudyError naming line and column."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.problem, exc.context if not exc.problem else None) if p)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StudyError([(where, f"invalid YAML{at}: {problem or 'cannot parse'}")]) from None
    except yaml.YAMLError as exc:
        raise StudyError([(where, f"invalid YAML: {str(exc).splitlines()[0]}")]) from None


def _read_yaml(path: Path, shown: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyError([(shown, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise StudyError([(shown, f"cannot read the file ({reason})")]) from None
    data = parse_yaml(text, shown)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StudyError([(shown, f"must be a mapping of sections (name, data, teachers, base, "
                                  f"sweeps, ...), got {_show(data)}")])
    return data


def deep_merge(under: Mapping, over: Mapping) -> dict:
    """Mappings merge key by key; anything else (lists included) in `over` replaces `under`,
    except null over a mapping, which keeps it."""
    out = copy.deepcopy(dict(under))
    for key, value in over.items():
        if value is None and isinstance(out.get(key), Mapping):
            continue  # an empty section (`base:` with everything commented out) adds nothing
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_study_dict(path: str | os.PathLike) -> dict:
    """Read a study file and its includes into one raw dict (not validated).

    `include:` is a path or a list of paths relative to the including file; included files merge
    in order, deep, and the including file wins. An included file's `name` is dropped; `name`
    defaults to the top file's stem.
    """
    path = Path(path)
    top = path.resolve()

    def shown(p: Path) -> str:
        try:
            rel = os.path.relpath(p, top.parent)
        except ValueError:
            return str(p)
        return rel if not rel.startswith("..") else str(p)

    def load(p: Path, chain: tuple[Path, ...]) -> dict:
        if p in chain:
            names = " -> ".join(shown(c) for c in (*chain[chain.index(p):], p))
            raise StudyError([("include cycle", names)])
        data = _read_yaml(p, shown(p) if chain else str(path))
        includes = data.pop("include", None)
        if includes is None:
            return data
        if isinstance(includes, str):
            includes = [includes]
        where = f"{shown(p) if chain else path}: include"
        if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
            raise StudyError([(where, f"must be a file path or a list of paths, got {_show(includes)}")])
        merged: dict = {}
        for rel in includes:
            target = (p.parent / Path(rel).expanduser()).resolve()
            if not target.is_file():
                raise StudyError([(where, f"file not found: {rel} (looked for {target})")])
            sub = load(target, (*chain, p))
            sub.pop("name", None)
            merged = deep_merge(merged, sub)
        return deep_merge(merged, data)

    data = load(top, ())
    data.setdefault("name", path.stem)
    return data
