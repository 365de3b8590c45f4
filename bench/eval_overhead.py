"""Benchmark: what evaluation adds to a quickstart student's training (CPU, fp32, 1 thread).

The quickstart student is d64l3 (hidden 64, 3 layers, 2 heads, FFN 176, V = 4096, T = 128); it
trains on ~0.5M tokens at ~12k tokens/s, i.e. ~40 s. Its built-in lm-eval tasks (pdspace_nextline
and pdspace_cloze, run once on the final model) must add at most 20 % of that (<= 8 s). Measured
here on the builtin:python-stdlib data artifact (prepared if missing, ~40 s): building the tasks,
one cold run_lm_eval in this process (lm-eval imported and indexed for the first time, as in a
fresh trial process) and a warm one, and heldout_metrics at two sizes (run at every evaluation
point, so multiply by the number of points). A random model is as fast to score as a trained one.
Times are wall and process-CPU seconds; on a shared machine the CPU time is the better estimate of
what an idle core would take.

    python bench/eval_overhead.py                    # 200 examples per task, prints JSON
    python bench/eval_overhead.py --examples 500 --limit 200
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data import DataSpec, prepare_data  # noqa: E402
from core.evaluation import heldout_metrics  # noqa: E402
from core.lmeval import build_builtin_tasks, run_lm_eval  # noqa: E402
from core.models import build_model  # noqa: E402


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - wall, 3),
                 "cpu_s": round(time.process_time() - cpu, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200, help="examples built per task")
    ap.add_argument("--limit", type=int, default=None, help="examples scored per task")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-seconds", type=float, default=40.0,
                    help="the student's training time the overhead is compared with")
    ap.add_argument("--root", default=None, help="artifacts root (default $PDSPACE_HOME or ./artifacts)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    data = prepare_data(DataSpec(vocab_size=4096, seq_len=128), args.root)
    model = build_model("d64l3", data.vocab_size, data.seq_len, seed=0,
                        eos_token_id=data.eos_token_id)
    tokenizer = data.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        builtin, build_t = timed(lambda: build_builtin_tasks(data, tmp, seed=0,
                                                             num_examples=args.examples))
        _, rebuild_t = timed(lambda: build_builtin_tasks(data, tmp, seed=0,
                                                         num_examples=args.examples))

        def evaluate():
            return run_lm_eval(model, tokenizer, list(builtin.task_names), builtin.include_path,
                               device="cpu", limit=args.limit, batch_size=args.batch_size)

        results, cold_t = timed(evaluate)
        _, warm_t = timed(evaluate)
    heldout = {}
    for n in (64, 256):
        _, heldout[f"{n}_sequences"] = timed(
            lambda n=n: heldout_metrics(model, data, max_sequences=n, batch_size=args.batch_size))

    print(json.dumps({
        "model": "d64l3",
        "num_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": data.vocab_size,
        "seq_len": data.seq_len,
        "examples_per_task": dict(zip(builtin.task_names, builtin.num_examples)),
        "limit": args.limit,
        "batch_size": args.batch_size,
        "build_tasks": build_t,
        "build_tasks_again": rebuild_t,
        "builtin_eval_cold": cold_t,
        "builtin_eval_warm": warm_t,
        "heldout_metrics": heldout,
        "train_seconds": args.train_seconds,
        # Building the tasks and one cold run, in CPU seconds (= wall seconds on an idle core).
        "builtin_eval_fraction_of_training": round(
            (build_t["cpu_s"] + cold_t["cpu_s"]) / args.train_seconds, 3),
        "budget_fraction": 0.20,
        "random_model_scores": {f"{r['task']}/{r['metric']}": round(r["value"], 3) for r in results},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }, indent=2))


if __name__ == "__main__":
    main()
