"""Benchmark of sampled KD (core.sampled_kd, RS-KD) against top-k truncation; prints JSON.

Three parts:
- ``synthetic_v151552``: the Zipf-shaped synthetic teacher of bench/logits_store.py (its
  generator, imported) at V = 151,552, written through the real extraction (``extract_logits``
  over a stand-in model that returns those logits) as sampled stores with N = 4, 12, 32 draws
  (proposal temperature 1) and as top-1.0-k stores with k = 10, 50, 100 (pure top-k: every row
  keeps exactly k), all format 1. Per store: stored entries per token, bytes per token of the
  entries (ids, values, counts, item offsets) and in total (plus the per-row statistics), and the
  extraction rate (tokens/s, CPU, one thread).
- ``real_v4096``: the same six stores from a small Llama teacher (d128 L4, V = 4,096 byte-level
  BPE) trained from scratch here for ``--teacher-seconds`` on the Python standard library's
  sources (bench/logits_store.py's recipe).
- ``loss_overhead``: CPU time of one forward + backward of ``core.losses.distillation_loss``
  (kind kld, α = 0.9) on (B, T, V) student logits with a sampled teacher batch (N = 12, 32) against
  a top-100 one, at V = 4,096 and V = 151,552; medians over repetitions, interleaved.

    python bench/sampled_kd.py [--quick] [--teacher-seconds 30]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import KDConfig, Truncation  # noqa: E402
from core.logits import LogitsStore, extract_logits  # noqa: E402
from core.losses import distillation_loss  # noqa: E402
from core.sampled_kd import log_weight_offset, sample_and_stats  # noqa: E402
from core.types import SparseTeacherBatch  # noqa: E402


def _bench_logits_store():
    """bench/logits_store.py as a module (its synthetic generator and small-teacher recipe)."""
    spec = importlib.util.spec_from_file_location("bench_logits_store", Path(__file__).parent / "logits_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LS = _bench_logits_store()
T = LS.T
SAMPLES = (4, 12, 32)
TOP_K = (10, 50, 100)


class SyntheticTeacher(torch.nn.Module):
    """Returns bench/logits_store.py's Zipf logits for a batch; sequence i's rows are seeded by i
    (its first input token is i), so every store sees the same teacher."""

    def __init__(self, vocab: int):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter: extraction reads its device
        gen = torch.Generator().manual_seed(0)
        self.perms = torch.stack([torch.randperm(vocab, generator=gen) for _ in range(8)])

    def forward(self, input_ids, use_cache=False):
        out = []
        for seq in input_ids:
            gen = torch.Generator().manual_seed(int(seq[0]))
            out.append(LS.synthetic_logits(input_ids.shape[1], self.config.vocab_size, gen, self.perms))
        return SimpleNamespace(logits=torch.stack(out))


def store_sizes(model, data, root: Path, name: str) -> dict:
    """The six stores of one teacher: sizes per token and extraction rates."""
    out = {}
    rules = [(f"sample-{n}", Truncation(samples=n)) for n in SAMPLES] + [(f"top-1-{k}", Truncation(1.0, k)) for k in TOP_K]
    for label, rule in rules:
        t0 = time.process_time()
        path = extract_logits(model, data, root / f"{name}-{label}", keeps=rule, batch_size=1, background=False,
                              teacher_id=name, teacher_hash=name)
        cpu = time.process_time() - t0
        store = LogitsStore.open(path)
        size = store.storage()
        out[label] = {
            "entries_per_token": size["mean_entries_per_token"],
            "bytes_per_entry": size["bytes_per_entry"],
            "entry_bytes_per_token": size["bytes_per_token"],
            "total_bytes_per_token": size["bytes_per_token"] + size["stats_bytes_per_token"],
            "extraction_tokens_per_s_cpu": store.num_rows / cpu,
        }
    return out


def _median_cpu(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def loss_overhead(vocab: int, rows: int, reps: int) -> dict:
    """CPU seconds of distillation_loss forward + backward: sampled N = 12, 32 vs top-100."""
    gen = torch.Generator().manual_seed(0)
    perms = torch.stack([torch.randperm(vocab, generator=gen) for _ in range(8)])
    teacher_logits = LS.synthetic_logits(rows, vocab, gen, perms)
    student = torch.randn(1, rows, vocab, generator=gen)
    labels = torch.randint(0, vocab, (1, rows), generator=gen)
    from core.logits_math import truncate_and_stats

    idx, lp, _, stats = truncate_and_stats(teacher_logits, Truncation(1.0, 100), [])
    batches = {"top-100": SparseTeacherBatch(idx[None], lp[None], {k: v[None] for k, v in stats.items()})}
    for n in (12, 32):
        i, v, _, st = sample_and_stats(teacher_logits, Truncation(samples=n), [],
                                       generator=torch.Generator().manual_seed(n))
        batches[f"sample-{n}"] = SparseTeacherBatch(i[None], (v + log_weight_offset(vocab, 1.0))[None],
                                                    {k: s[None] for k, s in st.items()}, sampled=True)
    kd = KDConfig(kind="kld")

    def step(batch):
        logits = student.clone().requires_grad_(True)
        distillation_loss(logits, labels, batch, 0.9, kd).loss.backward()

    times = {k: [] for k in batches}
    for _ in range(reps):  # interleaved: load on a shared machine hits every variant alike
        for k, b in batches.items():
            times[k].append(_median_cpu(lambda: step(b), 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"vocab_size": vocab, "rows": rows, "cpu_s_per_step": med,
            "ratio_vs_top100": {k: med[k] / med["top-100"] for k in med}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 min)")
    parser.add_argument("--teacher-seconds", type=float, default=30.0)
    parser.add_argument("--synthetic-seqs", type=int, default=16, help="128-token sequences at V = 151,552")
    parser.add_argument("--real-seqs", type=int, default=64, help="128-token sequences of the small teacher")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.teacher_seconds, args.synthetic_seqs, args.real_seqs, args.reps = 4, 1, 8, 3
    torch.set_num_threads(1)
    started, load_at_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pdspace-bench-sampled-") as tmp:
        root = Path(tmp)
        vocab = 151_552
        seqs = np.repeat(np.arange(args.synthetic_seqs, dtype=np.int64)[:, None], T + 1, axis=1)
        synthetic = store_sizes(SyntheticTeacher(vocab), seqs, root, "synthetic")
        texts = LS.stdlib_text(500_000 if args.quick else 3_000_000)
        stream = LS.tokenize(texts, 4096)
        num = (len(stream) - 1) // T
        # the teacher learns on the second half, the stores read the first (as the orchestrator does)
        model, trained = LS.train_teacher(stream[(num // 2) * T:], 4096, args.teacher_seconds)
        real = store_sizes(model, LS.Packed(stream, min(args.real_seqs, num // 2)), root, "real")
        real["teacher"] = trained
    overhead = {"v4096": loss_overhead(4096, 4 * T, args.reps),
                "v151552": loss_overhead(vocab, T if args.quick else 2 * T, args.reps)}
    result = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": 1, "torch": torch.__version__,
                    "python": platform.python_version(), "load_avg_at_start": load_at_start,
                    "load_avg_at_end": os.getloadavg()},
        "summary": {name: {label: round(part[label]["total_bytes_per_token"], 1)
                           for label in part if label != "teacher"}
                    for name, part in (("synthetic_v151552", synthetic), ("real_v4096", real))},
        "synthetic_v151552": {"tokens": args.synthetic_seqs * T, **synthetic},
        "real_v4096": real,
        "loss_overhead": overhead,
        "bench_seconds": time.perf_counter() - started,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
