"""Built-in tasks: a randomly initialised model vs a trained one (e.g. the quickstart teacher).

Prints JSON: per task, acc and acc_mutual_info with their standard errors and 95 % intervals,
for a random model of the given size and for each exported model passed with --export.

    python bench/eval_chance.py --data artifacts/data/<hash> --export artifacts/runs/<hash>/export
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from core.data import PackedData
from core.lmeval import build_builtin_tasks, run_lm_eval
from core.models import build_model, load_pretrained

CHANCE = 0.25


def scores(model, tokenizer, tasks, limit: int) -> dict:
    out = {}
    for r in run_lm_eval(model, tokenizer, tasks.task_names, tasks.include_path, limit=limit):
        if r["metric"] in ("acc", "acc_mutual_info"):
            lo, hi = r["value"] - 1.96 * r["stderr"], r["value"] + 1.96 * r["stderr"]
            out[f"{r['task']}/{r['metric']}"] = {
                "value": r["value"], "stderr": r["stderr"], "ci95": [round(lo, 4), round(hi, 4)],
                "interval_includes_chance": lo <= CHANCE <= hi}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared data artifact folder")
    ap.add_argument("--export", action="append", default=[], help="exported model folder(s)")
    ap.add_argument("--size", default="d128l4", help="size of the random model")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--examples", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = PackedData.open(args.data)
    tasks = build_builtin_tasks(data, Path(args.data).parent.parent / "tasks", seed=0, num_examples=args.examples)
    result = {"chance": CHANCE, "limit": args.limit, "data_hash": tasks.data_hash,
              f"random_{args.size}": scores(build_model(args.size, data.vocab_size, data.seq_len, seed=0),
                                            data.tokenizer, tasks, args.limit)}
    for export in args.export:
        model, _ = load_pretrained(export)
        result[export] = scores(model, data.tokenizer, tasks, args.limit)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
