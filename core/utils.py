"""Small helpers shared across core: stable hashing, atomic writes, artifact locations."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

DATA_FORMAT_VERSION = 2
"""Version of core.data's packed format (2: documents packed in a hash-shuffled order). Part of
every unit's identity, so units built on an older format are never reused."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the input of every content hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Content hash of a JSON-able object (sha256 of its canonical JSON, hex, truncated)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file under a temporary name, fsync it and rename it into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def artifacts_root(explicit: str | os.PathLike | None = None, *, create: bool = True) -> Path:
    """Root of all artifacts: explicit argument, else $PDSPACE_HOME, else ./artifacts (created
    unless ``create`` is False: a reader that only looks)."""
    root = Path(explicit or os.environ.get("PDSPACE_HOME") or "artifacts")
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return root
