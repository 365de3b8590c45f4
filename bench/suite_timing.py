"""Wall time of a suite run, read from the results database, and each study's stand-alone time.

    python bench/suite_timing.py --db /path/suite.db studies/mini/ [--slots 2]

Prints JSON:
- suite: first unit start to last unit finish over every unit of the suite's studies, and the sum
  of unit durations (single-slot seconds);
- per study: its planned units, their summed measured duration, and `standalone_s`: the wall time
  of a `pdspace run` of that study alone on a fresh database, replayed from the measured unit
  durations: the plan's dependency stages as `pdspace run` executes them (each unit one stage after
  its deepest dependency; the data unit alone), in each stage the units longest-first to the first
  free of `slots` slots, each unit followed by the idle gap a slot showed between units in the
  run (`unit_gap_s`, the median measured; `--gap` sets it), plus `--startup` seconds per stage for
  Ray and the stage's trial start-up.
"""
from __future__ import annotations

import argparse
import heapq
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import resolve_db_url, status_rows  # noqa: E402



def _makespan(durations: list[float], slots: int) -> float:
    free = [0.0] * slots
    for d in sorted(durations, reverse=True):
        t = heapq.heappop(free)
        heapq.heappush(free, t + d)
    return max(free) if durations else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--db", required=True)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--startup", type=float, default=None, help="seconds per stage (default 15)")
    ap.add_argument("--gap", type=float, default=None,
                    help="idle seconds of a slot between units, added to each unit (default: the median measured)")
    ap.add_argument("--calibrate", action="store_true",
                    help="the suite was run one study after the other: calibrate the per-stage start-up on it")
    ap.add_argument("--since", type=float, default=None,
                    help="epoch seconds: also replay, merged, only the units started after it, next to their wall time")
    args = ap.parse_args()
    from cli.main import study_files
    from orchestrator.plan import build_plan
    from orchestrator.study import load_study

    studies = [load_study(f) for f in study_files(args.folder)]
    names = [s.name for s in studies]
    units = status_rows(resolve_db_url(args.db))[["study", "trial_id", "config_hash", "kind", "status", "started_at",
                                                  "finished_at", "duration_s"]]
    units = units[units["study"].isin(names)]
    done = units[units["status"] == "completed"].copy()
    for c in ("started_at", "finished_at"):
        done[c] = pd.to_datetime(done[c])
    distinct = done.drop_duplicates("config_hash")
    wall = (distinct["finished_at"].max() - distinct["started_at"].min()).total_seconds()
    # start-up per stage: what the suite's wall time holds beyond the replayed stage makespans
    startup = 15.0 if args.startup is None else args.startup
    # The gap a slot stands idle between one unit's end and the next unit's start (a new trial
    # process without actor reuse, a few ms with it): measured as each unit's start minus the last
    # finish before it, median over the suite (the median leaves out the waits at stage barriers).
    ordered = distinct.sort_values("started_at")
    finishes = np.sort(ordered["finished_at"].to_numpy())
    gaps = []
    for t in ordered["started_at"].to_numpy():
        i = np.searchsorted(finishes, t, side="right")
        if i:
            gaps.append((t - finishes[i - 1]) / np.timedelta64(1, "s"))
    gap = float(np.median(gaps)) if args.gap is None and gaps else float(args.gap or 0.0)
    durations = distinct.set_index("config_hash")["duration_s"].astype(float)
    measured = durations + gap
    out = {"studies": len(names), "units_completed": int(len(distinct)),
           "units_not_completed": int((units.drop_duplicates("config_hash")["status"] != "completed").sum()),
           "suite_wall_s": round(wall, 1), "suite_wall_min": round(wall / 60, 1),
           "suite_unit_seconds": round(float(distinct["duration_s"].sum()), 1),
           "slots": args.slots, "startup_per_stage_s": startup, "unit_gap_s": round(gap, 2),
           "per_study": {}}
    # Stage depth of every unit: one stage after its deepest dependency (a unit's dependencies
    # are the same in every plan that holds it, and each plan lists them before their dependants).
    plans = [build_plan(study, Path("/nonexistent-artifacts")) for study in studies]
    depth: dict[str, int] = {}
    for plan in plans:
        for unit in plan.units:
            depth.setdefault(unit.config_hash, 1 + max((depth[d] for d in unit.deps), default=-1))

    def stages(hashes) -> dict[int, list[float]]:
        """The measured durations of these units by dependency stage, in stage order."""
        by: dict[int, list[float]] = {}
        for h in hashes:
            if h in measured.index:
                by.setdefault(depth[h], []).append(float(measured[h]))
        return dict(sorted(by.items()))

    def spans(hashes) -> list[float]:
        """Makespan of each dependency stage of these (measured) units, in stage order."""
        return [_makespan(d, 1 if s == 0 else args.slots) for s, d in stages(hashes).items()]

    for study, plan in zip(studies, plans):
        hashes = [u.config_hash for u in plan.units]
        alone = sum(x + startup for x in spans(hashes))
        out["per_study"][study.name] = {
            "units": len(plan.units), "units_without_a_measurement": sum(h not in measured.index for h in hashes),
            "unit_seconds": round(float(sum(durations[h] for h in hashes if h in durations.index)), 1),
            "standalone_s": round(alone, 1), "standalone_min": round(alone / 60, 1)}
    # The whole folder, replayed both ways from the same measured durations: one study after the
    # other (what `pdspace run <folder>` did before it merged studies; shared units run in the
    # first study that needs them) and merged into one schedule. The per-stage start-up is
    # calibrated so that the one-after-the-other replay equals the measured suite wall time when
    # the suite was run that way (--calibrate).
    seen: set[str] = set()
    sequential_stages = []
    for plan in plans:
        new = [u.config_hash for u in plan.units if u.config_hash not in seen]
        seen.update(new)
        sequential_stages += spans(new)
    merged_spans = spans(depth)
    if args.calibrate:
        startup = max(0.0, (wall - sum(sequential_stages)) / max(1, len(sequential_stages)))
    out["calibrated_startup_per_stage_s"] = round(startup, 1) if args.calibrate else None
    out["one_after_the_other_replay_min"] = round((sum(sequential_stages) + startup * len(sequential_stages)) / 60, 1)
    out["merged_replay_min"] = round((sum(merged_spans) + startup * len(merged_spans)) / 60, 1)
    out["merged_stages"] = {str(k): {"units": len(v), "makespan_min": round(_makespan(v, 1 if k == 0 else args.slots) / 60, 1)}
                            for k, v in stages(depth).items()}
    if args.since is not None:  # check the merged replay against a merged run that did these units
        t0 = pd.Timestamp.fromtimestamp(args.since, "UTC").tz_localize(None)  # the database stores naive UTC
        part = distinct[distinct["started_at"] >= t0]
        part_spans = spans([h for h in part["config_hash"] if h in depth])
        out["since"] = {"units": int(len(part)),
                        "measured_wall_min": round((part["finished_at"].max() - part["started_at"].min())
                                                   .total_seconds() / 60, 1),
                        "merged_replay_min": round((sum(part_spans) + startup * len(part_spans)) / 60, 1)}
    out["max_standalone_min"] = max((v["standalone_min"] for v in out["per_study"].values()), default=0.0)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
