"""A live view of a running study, read from the database: units done/running/failed, the
latest loss of each running unit, and an ETA from the plan's time estimates."""
from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import Any

import results


def snapshot(db_url: str, hashes: dict[str, str]) -> dict[str, Any]:
    """Status counts and per-running-unit latest metrics for the units in ``hashes`` (hash -> label)."""
    counts = {"pending": 0, "running": 0, "completed": 0, "failed": 0}
    running = []
    for h, status, last in results.unit_progress(db_url, hashes, metric="loss"):
        counts[status] = counts.get(status, 0) + 1
        if status == "running":
            running.append((hashes[h], last))
    return {"counts": counts, "running": running}


class LiveView:
    """Redraws one status line every ``interval_s`` on a terminal; silent otherwise."""

    def __init__(self, db_url: str, hashes: dict[str, str], est_seconds: dict[str, float], interval_s: float = 2.0):
        self.db_url, self.hashes, self.est = db_url, hashes, est_seconds
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.time()

    def __enter__(self) -> "LiveView":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        sys.stdout.write("\r" + " " * (shutil.get_terminal_size().columns - 1) + "\r")
        sys.stdout.flush()

    def line(self) -> str:
        snap = snapshot(self.db_url, self.hashes)
        c = snap["counts"]
        total = sum(c.values())
        elapsed = time.time() - self.t0
        left = sum(self.est.get(h, 0.0) for h in self.hashes) * (1 - c["completed"] / max(total, 1))
        parts = [f"[{elapsed:5.0f}s] {c['completed']}/{total} done, {c['running']} running, {c['failed']} failed,"
                 f" ETA ~{left / 60:.0f} min"]
        for label, last in snap["running"][:3]:
            parts.append(f"{label}: " + (f"step {last[0]} loss {last[2]:.3f}" if last else "starting"))
        return " | ".join(parts)

    def _loop(self) -> None:
        width = shutil.get_terminal_size().columns - 1
        while not self._stop.wait(self.interval_s):
            try:
                text = self.line()[:width]
            except Exception:  # noqa: BLE001 - a busy database must not kill the view
                continue
            sys.stdout.write("\r" + text.ljust(width))
            sys.stdout.flush()
