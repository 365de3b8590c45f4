"""The kept-logits statistics as databases before migration 0002 held them: metric rows of the
logits run named `kept_per_token[p=0.9,k=100]` and `bytes_per_token[p=0.9,k=100]` (step 0, tokens =
the store's token positions). A frozen format: migration 0002 moves such rows into the kept_stats
table (and its downgrade writes them back); results.read reads them from a database not yet
migrated."""
from __future__ import annotations

import re

KEPT_METRICS = {"kept_per_token": "mean_kept_per_token", "bytes_per_token": "bytes_per_token"}
"""Old metric name prefix -> kept_stats column."""
_NAME = re.compile(r"^(kept_per_token|bytes_per_token)\[p=([0-9.eE+-]+),k=(\d+)\]$")


def parse_kept_metric(name: str) -> tuple[str, float, int] | None:
    """'kept_per_token[p=0.9,k=100]' -> ('mean_kept_per_token', 0.9, 100); None for any other name."""
    hit = _NAME.match(str(name))
    if hit is None:
        return None
    return KEPT_METRICS[hit.group(1)], float(hit.group(2)), int(hit.group(3))


def kept_metric_names(top_p: float, top_k: int) -> dict[str, str]:
    """kept_stats column -> the old metric name for one (top_p, top_k)."""
    return {col: f"{prefix}[p={top_p:g},k={top_k}]" for prefix, col in KEPT_METRICS.items()}


def kept_rows_from_metrics(rows) -> list[dict]:
    """(run_id, tokens, name, value) metric rows -> kept_stats rows (run_id, top_p, top_k,
    num_tokens, mean_kept_per_token, bytes_per_token), one per run and truncation that has both."""
    out: dict[tuple, dict] = {}
    for run_id, tokens, name, value in rows:
        parsed = parse_kept_metric(name)
        if parsed is None or value is None:
            continue
        col, p, k = parsed
        row = out.setdefault((run_id, p, k), {"run_id": run_id, "top_p": p, "top_k": k, "num_tokens": int(tokens)})
        row[col] = float(value)
    return [r for r in out.values() if "mean_kept_per_token" in r and "bytes_per_token" in r]
