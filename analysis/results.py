"""A study's results as tidy pandas frames, for notebooks: the results package's reader under
analysis's name, plus the content hash analysis uses for conditions and imported runs.

    from analysis.results import load_results, final_losses
    results = load_results("sqlite:///pdspace.db", "quickstart")

Everything but stable_hash is results.read's (see there); this module never touches the database.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from results import (EVAL_COLUMNS, KEPT_COLUMNS, METRIC_COLUMNS, RUN_COLUMNS, Results, final_losses, flatten_config,
                     list_studies, load_results)

__all__ = ["Results", "load_results", "final_losses", "flatten_config", "list_studies", "stable_hash",
           "RUN_COLUMNS", "METRIC_COLUMNS", "EVAL_COLUMNS", "KEPT_COLUMNS"]


def stable_hash(obj: Any, length: int = 16) -> str:
    """Content hash of a JSON-able object: sha256 of its canonical JSON (sorted keys, no spaces),
    hex, truncated; the same recipe as core.utils.stable_hash (a test pins them equal)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
