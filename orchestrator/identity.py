"""Unit identity: the canonical form of a resolved unit config and its content hash.

A unit (data, teacher, logits store, student, baseline) is the same unit, in any study and on
any day, exactly when its identity hash is the same; the hash addresses its artifacts and its
row in the results database. The rules live here and nowhere else:

- a resolved config is plain JSON built with ``core.settings.config_dict``: a setting declared
  after identity version 1 is present only when it differs from its default, so adding a setting
  changes no existing hash; settings that change no result sit under ``EXECUTION_KEY`` and never
  enter a hash;
- each kind leaves out the keys that name or schedule a unit without changing what it computes
  (``EXCLUDED``);
- ``CONFIG_VERSION`` is part of every config: bump it only when the meaning of a config changes
  without its keys changing (every hash moves).

``tests/orchestrator/golden/unit_hashes.json`` pins the hash of every unit of every shipped study.
"""
from __future__ import annotations

from typing import Any, Mapping

from core.settings import identity_dict
from core.utils import stable_hash

__all__ = ["CONFIG_VERSION", "EXCLUDED", "unit_hash", "logits_unit_hash"]

CONFIG_VERSION = 1
"""Bump when the meaning of a resolved config changes without its keys changing: every hash moves."""

EXCLUDED: dict[str, tuple[str, ...]] = {
    "data": (),
    # The teacher's identity is in teacher_hash; a study-local teacher name must not split a run
    # shared across studies. baseline_hash is derived from the config itself.
    "student": ("teacher", "baseline_hash"),
    "baseline": ("teacher", "baseline_hash"),
    # A teacher's study-local name, and how it is evaluated (the costliest unit is never
    # retrained because an evaluation setting changed).
    "teacher": ("name", "eval"),
    # How far a store extends (it grows resumably) is not what it is; see logits_unit_hash.
    "logits": ("teacher", "num_tokens"),
}


def unit_hash(kind: str, config: Mapping[str, Any]) -> str:
    """The identity hash of a resolved ``config`` of a unit of ``kind``."""
    excluded = EXCLUDED[kind]
    return stable_hash(identity_dict({k: v for k, v in config.items() if k not in excluded}))


def logits_unit_hash(store_hash: str, num_tokens: int | None) -> str:
    """A logits unit: its store's identity and the tokens it is extracted for. A study needing
    more tokens gets its own (longer) store rather than reading past the end of a shorter one."""
    return stable_hash({"store": store_hash, "num_tokens": num_tokens})
