"""A study: load a file (includes, `--set` overrides), validate it, and expand it into trials.

The work is split by job: ``yaml_io`` reads the YAML and its includes, ``schema`` is the schema
(generated from core's config dataclasses), ``overrides`` sets values at dotted paths,
``validation`` finds every problem (each named by its dotted path, raised as one ``StudyError``),
``expand`` resolves trials, teachers and logits stores, ``identity`` hashes them. This module is
the entry point the rest of pdspace uses.

It must stay cheap to import (``pdspace validate`` / ``plan``): no torch, no ray.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from pydantic import PrivateAttr

from core.config import Truncation
from core.utils import stable_hash
from orchestrator import expand as _expand
from orchestrator.errors import StudyError
from orchestrator.expand import LogitsSpec, TeacherSpec, TrialSpec, expand
from orchestrator.overrides import apply_overrides
from orchestrator.sampling import sampled_logits_specs
from orchestrator.schema import RunConfig
from orchestrator.schema import Study as _StudySchema
from orchestrator.validation import check
from orchestrator.yaml_io import load_study_dict, parse_yaml

__all__ = [
    "Study", "TrialSpec", "TeacherSpec", "LogitsSpec", "StudyError", "RunConfig", "load_study",
    "load_study_dict", "validate_study", "apply_overrides", "expand", "parse_yaml",
]


class Study(_StudySchema):
    """A validated study. Build it with load_study / validate_study, expand it with expand()."""

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The study file this was loaded from (None when validated from a dict)."""
        return self._source

    def to_dict(self) -> dict:
        """The fully resolved study (every default filled in), JSON-able: the DB's `studies.spec`."""
        return self.model_dump(mode="json")

    @property
    def spec_hash(self) -> str:
        return stable_hash(self.to_dict())

    def data_spec(self) -> dict:
        """Keyword arguments of core.config.DataSpec."""
        return _expand.data_config(self)

    def teacher_specs(self, used_only: bool = True) -> dict[str, TeacherSpec]:
        """Resolved teachers by name; with used_only, only those a student trial distils from."""
        return _expand.teacher_specs(self, used_only)

    def logits_spec(self, teacher: str) -> LogitsSpec:
        """The offline logits store of `teacher` over this study's data."""
        return _expand.logits_spec(self, teacher)

    def sampled_logits_specs(self, teacher: str) -> list[tuple[Truncation, LogitsSpec]]:
        """The sampled offline stores of `teacher` (orchestrator.sampling), one per sampling."""
        return sampled_logits_specs(self, teacher)

    def trials(self) -> list[TrialSpec]:
        return expand(self)


def validate_study(data: Mapping, *, name: str | None = None, source: str | os.PathLike | None = None) -> Study:
    """Validate a raw study dict (includes already merged). Raises StudyError listing every problem."""
    data = {k: v for k, v in data.items() if v is not None}  # an empty section means the defaults
    shown = str(source) if source is not None else None
    if "include" in data:
        raise StudyError([("include", "is resolved when loading a file; use load_study or load_study_dict")],
                         source=shown)
    data.setdefault("name", name or (Path(source).stem if source is not None else "study"))
    try:
        study = check(data, Study)
    except StudyError as exc:
        raise StudyError(exc.errors, source=shown) from None
    study._source = Path(source) if source is not None else None
    return study


def load_study(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Study:
    """Load, merge includes, apply `--set key=value` overrides, validate. Raises StudyError."""
    data = load_study_dict(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate_study(data, source=path)
