"""Executes one unit of work (data, teacher, logits, student, baseline) and records it.

Called inside Ray tasks/trials (orchestrator.execute) but free of ray itself, so tests and
debugging can run a unit in-process. The unit dict is orchestrator.plan.Unit.as_dict().
"""
from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

from orchestrator.recorder import RunRecorder


def record_failure(db_url: str, config_hash: str, error: str) -> None:
    RunRecorder.for_unit(db_url, config_hash).finish("failed", error)


def unit_dir(artifacts: str | os.PathLike, unit: dict[str, Any]) -> Path:
    """Where a unit keeps its files: artifacts/<kind>/<config hash>/."""
    kind = "runs" if unit["kind"] in ("teacher", "student", "baseline") else unit["kind"]
    return Path(artifacts) / kind / unit["config_hash"]


def execute_unit(unit: dict[str, Any], db_url: str, artifacts: str, *, threads: int = 1,
                 device: str | None = None) -> None:
    """Run ``unit`` to completion (resuming if it has a checkpoint) and record it.

    Raises on failure after recording the error, so Ray can retry within its bound.
    """
    import torch

    torch.set_num_threads(max(1, int(threads)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    recorder = RunRecorder.for_unit(db_url, unit["config_hash"])
    out_dir = unit_dir(artifacts, unit)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        recorder.start(str(out_dir))
    device = device or ("cuda" if unit["resources"]["gpus"] > 0 and torch.cuda.is_available() else "cpu")
    try:
        from orchestrator import units as impl

        impl.RUNNERS[unit["kind"]](unit, out_dir, artifacts, recorder, device)
    except BaseException as exc:
        if rank == 0:
            recorder.finish("failed", _error_sentence(exc))
            (out_dir / "error.log").write_text(traceback.format_exc())
        raise
    if rank == 0:
        recorder.finish("completed")


def _error_sentence(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    text = msg[0] if msg else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
