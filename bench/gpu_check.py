"""GPU check: the CUDA path of pdspace on one GPU in under 5 minutes, as one JSON object.

Not a test (CI has no GPU): run it on the GPU you mean to train on, before a paper-scale study.

    python bench/gpu_check.py                 # prints JSON
    python bench/gpu_check.py --out check.json

Sized for ~2-3 minutes on an H100/H200 (--budget-s guards the 5-minute limit); not yet run on a
GPU: no GPU was available when it was written. Its logic was exercised on CPU with the sizes
shrunk and CUDA mapped to the CPU, and its no-CUDA path is what a CPU machine prints.

Sections (each reports its own error, if any, and the others still run; a section that would
start after --budget-s seconds is skipped with that reason):

- ``loss_agreement``: core.losses.distillation_loss on the same inputs (N = 512 positions,
  V = 151,552, a top-0.95-100 teacher with its full-vocabulary statistics) on CUDA and on CPU,
  fp32, for every KD kind x normalisation, τ = 2, and the four adaptive temperatures: the largest
  relative difference of the loss and of the logits' gradient (to its largest entry).
- ``fused_loss``: forward + backward of the training loss from the final hidden states (N = 8192,
  D = 1024: the 330M student's head, V = 151,552, K = 100, kld, α = 0.5): unfused (hidden @ W.T
  then distillation_loss) against core.fused_loss.linear_distillation_loss, in fp32 (as the
  trainer calls it) and under bf16 autocast: peak allocated memory above the inputs, median time,
  and the fused loss's agreement with the unfused one. Skipped with the reason when
  core.fused_loss is not importable.
- ``extraction``: core.logits_extract.extract_logits of a random bf16 Qwen2 model (hidden 512,
  4 layers, V = 151,552) over 64 sequences of 1024 tokens (top-0.95-100; a random model keeps all
  100 entries: the most the writer ever does) against the plain forward of the same batches and
  the forward + GPU truncation: tokens/s of each and the ratio.
- ``student_step``: core.trainer.train of the 330M student (core.models.build_model("330M",
  151552, 4096)), bf16 autocast, batch 8 x 4096 tokens in micro-batches of 4, LM-only and KD
  (a synthetic top-100 teacher, α = 0.9): tokens/s (median over steps after 3 of warm-up), MFU
  and the peak allocated memory next to core.memory's estimate of the same step.
  MFU = 6·N·tokens/s / peak with N = every parameter (the tied LM head is a matmul per token);
  ``mfu_with_attention`` adds the attention FLOPs 6·L·T·d per token (PaLM's appendix B). The
  peak is the GPU's dense bf16 rate from PEAK_BF16 (H100/H200: 989 TFLOP/s), named in the JSON.

Without CUDA it prints ``{"cuda": false, ...}`` and exits 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

V = 151_552
# Dense bf16 tensor-core peaks (vendor datasheets, without sparsity), by device-name substring.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12,
             "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
DEFAULT_PEAK = ("H100 (device not in PEAK_BF16)", 989e12)


def peak_flops(name: str) -> tuple[str, float]:
    for key, value in PEAK_BF16.items():
        if key in name:
            return key, value
    return DEFAULT_PEAK


def sync() -> None:
    torch.cuda.synchronize()


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def sparse_teacher(num_tokens: int, top_k: int, generator: torch.Generator, *, gammas=(0.8,)):
    """A top-0.95-100 teacher from random full-vocabulary logits, with its row statistics."""
    from core.config import Truncation
    from core.logits_math import truncate_and_stats
    from core.types import SparseTeacherBatch

    logits = torch.randn(num_tokens, V, generator=generator) * 3.0
    indices, logprobs, _, stats = truncate_and_stats(logits, Truncation(0.95, top_k), list(gammas))
    return logits, SparseTeacherBatch(indices, logprobs, stats)


# --------------------------------------------------------------------------------------------

def loss_agreement() -> dict:
    from core.config import KD_KINDS, NORMALIZATIONS, KDConfig
    from core.losses import distillation_loss

    g = torch.Generator().manual_seed(0)
    n = 512
    _, teacher = sparse_teacher(n, 100, g)
    student = torch.randn(n, V, generator=g) * 2.0
    labels = torch.randint(0, V, (n,), generator=g)
    labels[::61] = -100
    configs = [KDConfig(kind=k, normalization=norm) for k in KD_KINDS for norm in NORMALIZATIONS]
    configs += [KDConfig(kind="kld", temperature=2.0), KDConfig(kind="kld", adaptive="normkd"),
                KDConfig(kind="kld", adaptive="wttm", wttm_gamma=0.8), KDConfig(kind="kld", adaptive="adakd_sd"),
                KDConfig(kind="kld", adaptive="adakd_h")]

    def run(kd, device):
        x = student.to(device).clone().requires_grad_(True)  # a fresh leaf: no gradient carried over
        parts = distillation_loss(x, labels.to(device), teacher.to(device), 0.5, kd)
        parts.loss.backward()
        return parts.loss.detach().double().cpu(), x.grad.double().cpu()

    rows, worst_loss, worst_grad = [], 0.0, 0.0
    for kd in configs:
        loss_cpu, grad_cpu = run(kd, "cpu")
        loss_gpu, grad_gpu = run(kd, "cuda")
        rel = float((loss_gpu - loss_cpu).abs() / loss_cpu.abs().clamp_min(1e-12))
        grad = float((grad_gpu - grad_cpu).abs().max() / grad_cpu.abs().max().clamp_min(1e-30))
        worst_loss, worst_grad = max(worst_loss, rel), max(worst_grad, grad)
        label = kd.kind + ("" if kd.normalization == "renormalize" else f",{kd.normalization}") + (
            f",tau={kd.temperature:g}" if kd.temperature != 1 else "") + (f",{kd.adaptive}" if kd.adaptive else "")
        rows.append({"kd": label, "loss_cpu": float(loss_cpu), "loss_rel_diff": rel, "grad_rel_diff": grad})
    return {"positions": n, "vocab_size": V, "alpha": 0.5, "dtype": "float32",
            "max_loss_rel_diff": worst_loss, "max_grad_rel_diff": worst_grad, "configs": rows}


def fused_loss() -> dict:
    try:
        from core.fused_loss import linear_distillation_loss
    except ImportError as exc:
        return {"skipped": f"core.fused_loss is not importable: {exc}"}
    from core.config import KDConfig
    from core.losses import distillation_loss

    n, d, k = 8192, 1024, 100
    kd = KDConfig(kind="kld")
    g = torch.Generator().manual_seed(1)
    hidden0 = torch.randn(n, d, generator=g).cuda()
    weight0 = (torch.randn(V, d, generator=g) * d**-0.5).cuda()
    labels = torch.randint(0, V, (n,), generator=g).cuda()
    logits = (torch.randn(n, k, generator=g) * 2).sort(-1, descending=True).values
    logprobs = (torch.log_softmax(logits, -1) + torch.tensor(0.9).log()).cuda()
    indices = ((torch.randint(0, V, (n, 1), generator=g) + torch.arange(k) * (V // k)) % V).cuda()
    from core.types import SparseTeacherBatch

    teacher = SparseTeacherBatch(indices, logprobs)

    def step(variant: str, autocast: bool):
        hidden = hidden0.clone().requires_grad_(True)
        weight = weight0.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            if variant == "unfused":
                parts = distillation_loss((hidden @ weight.T).float(), labels, teacher, 0.5, kd)
            else:
                parts = linear_distillation_loss(hidden, weight, labels, indices, logprobs, alpha=0.5, kd=kd)
        parts.loss.backward()
        return parts.loss.detach().double(), hidden.grad, weight.grad

    out = {"positions": n, "hidden": d, "vocab_size": V, "top_k": k, "kd": "kld", "alpha": 0.5}
    reference = step("unfused", False)
    for variant in ("unfused", "fused"):
        for autocast in (False, True):
            name = f"{variant}_{'bf16_autocast' if autocast else 'fp32'}"
            try:
                step(variant, autocast)  # warm-up (kernels, allocator)
                torch.cuda.empty_cache()
                sync()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                loss, gh, gw = step(variant, autocast)
                sync()
                peak = torch.cuda.max_memory_allocated() - base
                times = timed(lambda: step(variant, autocast), 5)
                out[name] = {
                    "peak_mib": peak / 2**20, "time_ms": 1e3 * statistics.median(times),
                    "loss_rel_diff_vs_unfused_fp32": float((loss - reference[0]).abs() / reference[0].abs()),
                    "hidden_grad_rel_diff": float((gh - reference[1]).abs().max() / reference[1].abs().max()),
                    "weight_grad_rel_diff": float((gw - reference[2]).abs().max() / reference[2].abs().max()),
                }
                del gh, gw
            except Exception as exc:  # noqa: BLE001 - reported, the other variants still run
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    if "peak_mib" in out.get("fused_fp32", {}) and "peak_mib" in out.get("unfused_fp32", {}):
        out["fused_over_unfused_fp32"] = {
            "peak": out["fused_fp32"]["peak_mib"] / out["unfused_fp32"]["peak_mib"],
            "time": out["fused_fp32"]["time_ms"] / out["unfused_fp32"]["time_ms"]}
    return out


def extraction() -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from core.config import Truncation
    from core.logits_extract import extract_logits
    from core.logits_math import truncate_and_stats

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=V, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config).to(device="cuda", dtype=torch.bfloat16).eval()
    n, T, batch = 64, 1024, 8
    sequences = torch.randint(0, V, (n, T + 1)).numpy()
    keeps = Truncation(0.95, 100)

    def forward(truncate: bool):
        with torch.no_grad():
            for start in range(0, n, batch):
                ids = torch.from_numpy(sequences[start : start + batch, :-1]).cuda()
                logits = model(input_ids=ids, use_cache=False).logits
                if truncate:
                    result = truncate_and_stats(logits, keeps, [])
                    _ = [r.cpu() for r in result[:3]]

    forward(True)  # warm-up
    plain = statistics.median(timed(lambda: forward(False), 3))
    truncated = statistics.median(timed(lambda: forward(True), 3))
    walls = []
    for i in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            sync()
            t0 = time.perf_counter()
            extract_logits(model, sequences, Path(tmp) / f"store{i}", keeps=keeps, batch_size=batch,
                           device="cuda", shard_tokens=16 * T)
            walls.append(time.perf_counter() - t0)
    tokens = n * T
    wall = min(walls)
    return {"model": "random Qwen2 (hidden 512, 4 layers, bf16)", "sequences": n, "seq_len": T,
            "batch_size": batch, "truncation": "top-0.95-100",
            "forward_tokens_per_s": tokens / plain, "forward_and_gpu_truncation_tokens_per_s": tokens / truncated,
            "extract_logits_tokens_per_s": tokens / wall, "extract_over_forward_time": wall / plain}


class SyntheticTeacher:
    """A TeacherSignal: random top-k entries with a realistic sorted log-prob profile."""

    def __init__(self, top_k: int = 100):
        self.top_k = top_k
        self.g = torch.Generator().manual_seed(2)

    def __call__(self, example_ids, sequence_ids, input_ids):
        from core.types import SparseTeacherBatch

        b, t = input_ids.shape
        logits = (torch.randn(b, t, self.top_k, generator=self.g) * 2).sort(-1, descending=True).values
        logprobs = torch.log_softmax(logits, -1) + torch.tensor(0.9).log()
        indices = torch.randint(0, V, (b, t, self.top_k), generator=self.g)
        return SparseTeacherBatch(indices, logprobs)


class RandomData:
    """PackedData's interface over random token ids: T = 4096, 64 training sequences."""

    seq_len = 4096
    tokenizer = None

    def __init__(self):
        self.stream = torch.randint(0, V, (64 * self.seq_len + 1,), generator=torch.Generator().manual_seed(3))

    def num_sequences(self, split):
        return 64

    def sequences(self, split, ids):
        ids = torch.as_tensor(ids).reshape(-1, 1)
        return self.stream[ids * self.seq_len + torch.arange(self.seq_len + 1)].numpy()


def student_step(name: str) -> dict:
    from core.config import KDConfig, TrainConfig
    from core.memory import RUNTIME_BYTES, training_memory
    from core.models import build_model
    from core.schedules import AlphaScheduleConfig
    from core.sizes import param_counts
    from core.trainer import train

    T, batch, micro, steps = 4096, 8, 4, 12
    kd = name == "kd"
    cfg = TrainConfig(tokens=steps * batch * T, batch_size=batch, micro_batch_size=micro, device="cuda", bf16=True,
                      kd=KDConfig(kind="kld") if kd else None,
                      alpha_schedule=AlphaScheduleConfig(kind="constant", alpha=0.9),
                      log_every_steps=1, checkpoint_every_steps=10**6, checkpoint_every_s=1e9)
    model = build_model("330M", V, T, seed=0)
    rows = []
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, model, RandomData(), run_dir=tmp, teacher=SyntheticTeacher() if kd else None, export=False,
              report=lambda kind, row: rows.append(row) if kind == "metrics" and "tokens_per_s" in row else None)
    peak = torch.cuda.max_memory_allocated()
    del model
    torch.cuda.empty_cache()
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in rows[3:])
    counts = param_counts("330M", V, T)
    device_name = torch.cuda.get_device_name()
    peak_name, peak_rate = peak_flops(device_name)
    attention = counts.flops_per_token - 6 * counts.num_non_embedding_params
    estimate = training_memory("330M", V, T, micro, workers=1, bf16=True, on_gpu=True, fused=cfg.fused_loss)
    return {"size": "330M", "num_params": counts.num_params, "seq_len": T, "batch": batch, "micro_batch": micro,
            "kd": "kld, alpha 0.9, synthetic top-100 teacher" if kd else None,
            "fused_loss": "automatic (fused on a GPU)" if cfg.fused_loss is None else cfg.fused_loss,
            "steps": len(rows), "tokens_per_s": tokens_per_s,
            "mfu": 6 * counts.num_params * tokens_per_s / peak_rate,
            "mfu_with_attention": (6 * counts.num_params + attention) * tokens_per_s / peak_rate,
            "peak_flops": peak_rate, "peak_flops_of": peak_name,
            "max_memory_allocated_gb": peak / 1e9,
            "core_memory_estimate_gb": (estimate.peak_bytes - RUNTIME_BYTES) / 1e9,
            "core_memory_estimate_phase": estimate.phase,
            "loss_first_last": [rows[0].get("loss"), rows[-1].get("loss")]}


# --------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="skip the sections that would start after this many seconds (default 270)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    report: dict = {"cuda": torch.cuda.is_available(), "torch": torch.__version__}
    if not report["cuda"]:
        report["reason"] = "torch.cuda.is_available() is False: nothing to check on this machine"
        return _emit(report, args.out)
    import transformers

    props = torch.cuda.get_device_properties(0)
    report.update(device=props.name, device_memory_gb=props.total_memory / 1e9, transformers=transformers.__version__,
                  cuda_version=torch.version.cuda, peak_flops_bf16=dict(zip(("of", "flops"), peak_flops(props.name))))
    sections = [("loss_agreement", loss_agreement), ("fused_loss", fused_loss), ("extraction", extraction),
                ("student_step_lm", lambda: student_step("lm")), ("student_step_kd", lambda: student_step("kd"))]
    for name, fn in sections:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            report[name] = {"skipped": f"time budget: {elapsed:.0f} s spent of {args.budget_s:.0f}"}
            continue
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one failing section must not hide the others
            report[name] = {"error": f"{type(exc).__name__}: {exc}",
                            "where": traceback.format_exc().strip().splitlines()[-3:]}
        report[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        torch.cuda.empty_cache()
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    return _emit(report, args.out)


def _emit(report: dict, out: str | None) -> int:
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if out:
        Path(out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
