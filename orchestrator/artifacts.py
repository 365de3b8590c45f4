"""A unit's artifact on disk: whether a completed unit's is still usable before it is reused
(`heal`: a missing or corrupt one makes the unit run again), and which artifacts no study needs
any more (`collect_garbage`, `pdspace gc`).

What each kind leaves (orchestrator.worker.unit_dir):
    data      artifacts/data/<data hash>/ with manifest.json (core.data.prepare_data)
    teacher, student, baseline
              artifacts/runs/<config hash>/export/ (config.json and safetensors weights), beside
              its checkpoint/; a rerun resumes from that checkpoint, so re-exporting is cheap
    logits    artifacts/logits/<config hash>/store/ (its manifest's checksums must agree: verify())
"""
from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import results
from orchestrator.plan import Unit
from orchestrator.worker import unit_dir

TRAINING_KINDS = ("teacher", "student", "baseline")
"""Kinds whose artifact (an exported model) is an output of its own, checked even when no unit to
run reads it; data and logits stores are checked only when a unit to run needs them."""


def export_problem(export: Path) -> str | None:
    """Why an exported Hugging Face model folder cannot be loaded (None when it looks whole)."""
    if not export.is_dir():
        return f"its exported model {export} is missing"
    if not (export / "config.json").is_file():
        return f"its exported model {export} has no config.json"
    weights = [p for p in export.iterdir() if p.suffix in (".safetensors", ".bin") and p.stat().st_size > 0]
    if not weights:
        return f"its exported model {export} has no weights"
    return None


def artifact_problem(unit: Unit, artifacts: Path) -> str | None:
    """Why a completed unit's artifact cannot be reused, in a few words; None when it can."""
    if unit.kind == "data":
        from core.data import DataSpec, data_hash

        path = Path(artifacts) / "data" / data_hash(DataSpec.from_dict(unit.config["data"]))
        return None if (path / "manifest.json").is_file() else f"its data {path} is missing"
    if unit.kind == "logits":
        store = unit_dir(artifacts, unit.as_dict()) / "store"
        if not store.exists():
            return f"its logits store {store} is missing"
        from core.logits import LogitsStore

        try:
            LogitsStore.open(store).verify()
        except (OSError, ValueError) as exc:  # StoreError is a ValueError; a vanished shard an OSError
            return f"its logits store is unusable ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc})"
        return None
    if unit.kind in TRAINING_KINDS:
        return export_problem(unit_dir(artifacts, unit.as_dict()) / "export")
    return None


def _deps_closure(hashes: Iterable[str], units: dict[str, Unit]) -> set[str]:
    out: set[str] = set()
    stack = list(hashes)
    while stack:
        u = units.get(stack.pop())
        for d in u.deps if u else ():
            if d not in out:
                out.add(d)
                stack.append(d)
    return out


def heal(units: dict[str, Unit], status: dict[str, str], todo: list[Unit], artifacts: Path,
         say: Callable[[str], None] = print) -> list[Unit]:
    """``todo`` plus the completed units whose artifact is missing or corrupt, in ``units``' order.

    A completed training unit is checked always (its exported model is an output); a completed data
    or logits unit only when a unit to run needs it (so a store `pdspace gc` removed after its
    students finished is not rebuilt for nothing). A unit that runs again makes its own
    dependencies needed, which are then checked in turn; units that depend on it run again only if
    their own artifacts fail the same check. A corrupt logits store is removed first (extraction
    would resume onto it). One line per unit says why it runs again.
    """
    to_run = {u.config_hash for u in todo}
    checked: set[str] = set()
    while True:
        needed = _deps_closure(to_run, units)
        candidates = [u for h, u in units.items() if h not in to_run and h not in checked
                      and status.get(h) == "completed" and (u.kind in TRAINING_KINDS or h in needed)]
        if not candidates:
            break
        for u in candidates:
            checked.add(u.config_hash)
            problem = artifact_problem(u, artifacts)
            if problem is None:
                continue
            if u.kind == "logits":
                store = unit_dir(artifacts, u.as_dict()) / "store"
                if store.exists():
                    shutil.rmtree(store)
                    problem += "; removed it"
            say(f"{u.trial_id}: {problem}; running it again")
            to_run.add(u.config_hash)
    return [u for h, u in units.items() if h in to_run]


# ------------------------------------------------------------------------------------------------
# pdspace gc
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Garbage:
    """An artifact folder that may go: its path, its size and why."""

    path: Path
    num_bytes: int
    why: str


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed)."""
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                continue
    return total


def collect_garbage(db_url: str, artifacts: Path) -> list[Garbage]:
    """What `pdspace gc` would remove under ``artifacts``:

    - a unit folder (runs/, logits/, data/) that no study in the database uses: no run of any
      study has its name as config hash or records an artifact inside it (a leftover of a study
      whose plan changed, or of a database started afresh);
    - the logits store of a completed logits unit whose students (the runs that read it) are all
      completed. A later student that needs it gets it rebuilt (`heal`).
    """
    artifacts = Path(artifacts)
    inventory = results.artifact_inventory(db_url)
    used = [r for r in inventory if r["in_study"]]
    used_hashes = {r["config_hash"] for r in used}
    used_paths = [Path(p).resolve() for r in used for p in r["paths"]]
    out: list[Garbage] = []
    for sub in ("runs", "logits", "data"):
        folder = artifacts / sub
        if not folder.is_dir():
            continue
        for d in sorted(folder.iterdir()):
            if not d.is_dir() or d.name.startswith("."):
                continue
            resolved = d.resolve()
            if d.name in used_hashes or any(p == resolved or resolved in p.parents for p in used_paths):
                continue
            out.append(Garbage(d, tree_bytes(d), "no study in the database uses it"))
    for r in used:
        if r["kind"] != "logits" or r["status"] != "completed":
            continue
        readers = [x for x in inventory if x["logits_hash"] == r["config_hash"]]
        store = artifacts / "logits" / r["config_hash"] / "store"
        if readers and all(x["status"] == "completed" for x in readers) and store.exists():
            out.append(Garbage(store, tree_bytes(store),
                               f"the {len(readers)} run(s) that read this logits store are all done"))
    return out


def remove_garbage(garbage: Iterable[Garbage], artifacts: Path) -> int:
    """Delete the listed folders while holding the artifacts' run lock (a `pdspace run` in progress
    makes this refuse); returns the bytes freed."""
    artifacts = Path(artifacts)
    with open(artifacts / ".run.lock", "w") as lock:  # the lock orchestrator.run holds while running
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"a `pdspace run` is using {artifacts}; run gc when it has finished") from None
        freed = 0
        for g in garbage:
            if g.path.exists():
                shutil.rmtree(g.path) if g.path.is_dir() else g.path.unlink()
                freed += g.num_bytes
        return freed


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
