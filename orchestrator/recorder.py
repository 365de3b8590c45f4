"""The database side of one unit of work, through the results package: its status (with host,
package versions and git revision), the trainer's metrics and evaluations, artifacts, and the
kept-logits statistics of a logits store."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import results

TRACKED_PACKAGES = ("pdspace", "torch", "transformers", "tokenizers", "ray", "lm_eval", "sqlalchemy", "numpy")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return out


def git_revision() -> str | None:
    """The git revision of the pdspace source tree, if it is a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class RunRecorder:
    """Records one run; its ``report`` method is the trainer's callback."""

    def __init__(self, db_url: str, run_id: int):
        self.db_url = db_url
        self.run_id = run_id
        self.last_metrics: dict[str, Any] = {}

    @classmethod
    def for_unit(cls, db_url: str, config_hash: str) -> "RunRecorder":
        """The recorder of the registered run with this config hash."""
        return cls(db_url, results.run_id_for(db_url, config_hash))

    def start(self, artifact_dir: str | None = None) -> None:
        results.start_run(self.db_url, self.run_id, host=socket.gethostname(), versions=package_versions(),
                          git_rev=git_revision(), artifact_dir=artifact_dir)

    def finish(self, status: str, error: str | None = None) -> None:
        results.finish_run(self.db_url, self.run_id, status, error)

    def report(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "metrics":
            self.metrics(payload)
        elif kind == "eval":
            self.evals([payload])

    def metrics(self, payload: Mapping[str, Any]) -> None:
        """payload: step, tokens and any number of named values (None or float)."""
        step, tokens = int(payload["step"]), int(payload["tokens"])
        values = {k: None if v is None else float(v) for k, v in payload.items() if k not in ("step", "tokens")}
        results.record_metrics(self.db_url, self.run_id, step, tokens, values)
        self.last_metrics.update(values, step=step)

    def evals(self, records: Sequence[Mapping[str, Any]]) -> None:
        results.record_evals(self.db_url, self.run_id, records)

    def artifact(self, kind: str, path: str | os.PathLike, checksum: str | None = None) -> None:
        path = Path(path)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else (
            path.stat().st_size if path.exists() else None)
        results.record_artifact(self.db_url, self.run_id, kind, str(path), num_bytes=size, checksum=checksum)

    def kept_stats(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Kept-logits statistics per (top_p, top_k) (see results.write.record_kept_stats)."""
        results.record_kept_stats(self.db_url, self.run_id, rows)
