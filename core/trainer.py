"""The one training loop for teachers and students: AdamW, schedules, KD, checkpoints, export.

A run is a pure function of (TrainConfig, model init, data, teacher signal): the data order is a
seeded permutation per epoch, the data position is the step counter, and a checkpoint holds
everything needed to continue exactly (model, optimizer, step, RNG states). Metrics leave
through a ``report(kind, payload)`` callback; the trainer writes no log format of its own.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from core.config import FUSED_LOSS_ABOVE_BYTES, LM_ONLY_ALPHA, KDConfig, TrainConfig  # noqa: F401 - TrainConfig re-exported
from core.losses import distillation_loss
from core.types import TeacherSignal

Report = Callable[[str, dict[str, Any]], None]
# evaluator(model, step, tokens) -> (scalar metrics such as val_loss, list of eval records)
Evaluator = Callable[[torch.nn.Module, int, int], tuple[dict[str, float], list[dict[str, Any]]]]


class NonFiniteLossError(RuntimeError):
    """Raised when a run keeps producing non-finite losses or gradients."""


@dataclass
class TrainResult:
    steps: int
    tokens: int
    wall_s: float
    final_metrics: dict[str, float]
    export_dir: Path | None
    resumed_from_step: int


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def example_order(num_examples: int, seed: int, start: int, count: int) -> np.ndarray:
    """Positions (into the example list) of global examples start..start+count.

    The stream is an infinite concatenation of per-epoch permutations, each seeded by
    (seed, epoch), so any position can be computed without replaying the run.
    """
    out = np.empty(count, dtype=np.int64)
    filled, pos = 0, start
    while filled < count:
        epoch, offset = divmod(pos, num_examples)
        perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
        take = min(count - filled, num_examples - offset)
        out[filled : filled + take] = perm[offset : offset + take]
        filled += take
        pos += take
    return out


def _micro_batches(examples: np.ndarray, seed: int, step: int, total_steps: int, batch_size: int,
                   rank: int, local_batch: int, micro: int, alpha_sched: Any):
    """(example positions, sequence ids) of every KD micro-batch from ``step`` on, in call order."""
    for s in range(step, total_steps):
        if alpha_sched.at(s, total_steps) <= 0:
            continue
        pos = example_order(len(examples), seed, s * batch_size, batch_size)
        pos = pos[rank * local_batch : (rank + 1) * local_batch]
        for m in range(0, local_batch, micro):
            yield pos[m : m + micro], examples[pos[m : m + micro]]


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain numbers, so a checkpoint loads with
    ``torch.load(weights_only=True)``: a checkpoint is data, never code to unpickle."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fused_loss(hidden: torch.Tensor, lm_head: torch.Tensor, labels: torch.Tensor, teacher: Any, alpha: float,
                kd: KDConfig, *, num_tokens: float):
    """core.fused_loss.linear_distillation_loss on a (B, T, D) micro-batch and its (B, T) labels."""
    from core.fused_loss import linear_distillation_loss

    k = teacher.indices.shape[-1] if teacher is not None else 0
    return linear_distillation_loss(
        hidden.reshape(-1, hidden.shape[-1]), lm_head, labels.reshape(-1),
        teacher.indices.reshape(-1, k) if teacher is not None else None,
        teacher.logprobs.reshape(-1, k) if teacher is not None else None,
        alpha=alpha, kd=kd, num_tokens=num_tokens,
        teacher_stats={n: v.reshape(-1) for n, v in teacher.stats.items()} if teacher is not None else None,
        teacher_sampled=teacher is not None and teacher.sampled,
    )


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    step: int, extra: dict[str, Any]) -> None:
    """Write a checkpoint directory atomically (temp dir, then rename over the old one)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
         "rng": _rng_state(), "extra": extra},
        tmp / "state.pt",
    )
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (or its ``.old`` twin left by a crash mid-swap), else None."""
    for candidate in (path, path.with_name(path.name + ".old")):
        f = candidate / "state.pt"
        if f.exists():
            return torch.load(f, map_location="cpu", weights_only=True)
    return None


def export_model(model: torch.nn.Module, tokenizer: Any, out_dir: Path) -> Path:
    """save_pretrained (safetensors) plus the tokenizer, atomically, loadable by lm_eval --model hf."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def train(
    cfg: TrainConfig,
    model: torch.nn.Module,
    data: Any,
    *,
    run_dir: str | os.PathLike,
    teacher: TeacherSignal | None = None,
    report: Report | None = None,
    evaluator: Evaluator | None = None,
    online_capture: Any | None = None,
    examples: np.ndarray | None = None,
    export: bool = True,
) -> TrainResult:
    """Train ``model`` on ``data`` ("train" split) as ``cfg`` says; resume from run_dir if possible.

    data: a core.data.PackedData (``.seq_len``, ``.sequences(split, ids)``, ``.tokenizer``).
    teacher: the KD signal; required when the alpha schedule is ever > 0.
    examples: sequence ids the run draws from (default: every training sequence); an online
        logits window passes the sequences its teacher steps saw.
    online_capture: a callable ``(step, sequence_ids, logits)`` given every training batch's
        detached logits (core.logits.OnlineCapture: a teacher writing online logits); its
        ``flush()`` runs at each checkpoint and ``close()`` at the end. A resumed run repeats
        the steps after its checkpoint; the capture ignores steps it already stored.
    Under torch.distributed each rank trains on its share of every global batch (DDP); only
    rank 0 reports, checkpoints and exports.
    """
    t_start = time.time()
    run_dir = Path(run_dir)
    rank, world = _world()
    device = torch.device(cfg.device)
    seq_len = int(data.seq_len)
    if examples is None:
        examples = np.arange(data.num_sequences("train"), dtype=np.int64)
    examples = np.asarray(examples, dtype=np.int64)
    if len(examples) == 0:
        raise ValueError("the training data holds no sequences; use a larger corpus or a shorter seq_len")
    if cfg.batch_size % world != 0:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} workers")
    local_batch = cfg.batch_size // world
    micro = min(cfg.micro_batch_size or local_batch, local_batch)
    if local_batch % micro != 0:
        raise ValueError(f"micro_batch_size {micro} does not divide the per-worker batch {local_batch}")
    tokens_per_step = cfg.batch_size * seq_len
    total_steps = max(1, cfg.tokens // tokens_per_step)
    lr_sched = cfg.lr_schedule
    alpha_sched = cfg.alpha_schedule if cfg.kd is not None else LM_ONLY_ALPHA  # kd None: LM only
    alphas_used = any(alpha_sched.at(s, total_steps) > 0 for s in range(0, total_steps, max(1, total_steps // 97)))
    if alphas_used and teacher is None:
        raise ValueError("the alpha schedule uses the KD loss but no teacher signal was given")
    kd = cfg.kd or KDConfig()
    # The fused LM head + loss (core.fused_loss) unless the run captures online logits, which
    # needs them whole; the unfused path stays for reference and tests.
    logits_bytes = 4 * micro * seq_len * model.get_output_embeddings().weight.shape[0]
    wanted = cfg.fused_loss if cfg.fused_loss is not None else (
        device.type == "cuda" or logits_bytes > FUSED_LOSS_ABOVE_BYTES)
    fused = wanted and online_capture is None
    lm_head = model.get_output_embeddings().weight
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"

    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL's collectives (all_reduce, barrier) use the current device
    model.to(device)
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.optimizer.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.optimizer.lr, betas=cfg.optimizer.betas, eps=cfg.optimizer.eps,
    )
    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    ckpt_path = run_dir / "checkpoint"
    step = 0
    nonfinite = 0
    state = load_checkpoint(ckpt_path)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        nonfinite = int(state["extra"].get("nonfinite", 0))
        _set_rng_state(state["rng"])
    else:
        torch.manual_seed(cfg.seed)
    resumed_from = step
    if teacher is not None and hasattr(teacher, "schedule"):
        # Let a store-backed teacher decode the coming micro-batches on a background thread.
        teacher.schedule(_micro_batches(examples, cfg.seed, step, total_steps, cfg.batch_size,
                                        rank, local_batch, micro, alpha_sched))

    def emit(kind: str, payload: dict[str, Any]) -> None:
        if report is not None and rank == 0:
            report(kind, payload)

    eval_every_steps = None
    if cfg.eval_every_tokens:
        eval_every_steps = max(1, math.ceil(cfg.eval_every_tokens / tokens_per_step))
    final_metrics: dict[str, float] = {}

    def run_eval(at_step: int) -> None:
        nonlocal final_metrics
        if evaluator is None or rank != 0:
            return
        metrics, records = evaluator(model, at_step, at_step * tokens_per_step)
        if metrics:
            emit("metrics", {"step": at_step, "tokens": at_step * tokens_per_step, **metrics})
        for rec in records:
            emit("eval", {"step": at_step, "tokens": at_step * tokens_per_step, **rec})
        final_metrics = dict(metrics)
        model.train()

    if step == 0 and eval_every_steps is not None:
        run_eval(0)

    last_ckpt_time = time.time()
    window_t0, window_tokens = time.time(), 0
    while step < total_steps:
        lr = cfg.optimizer.lr * lr_sched.at(step, total_steps)
        alpha = float(alpha_sched.at(step, total_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        global_pos = example_order(len(examples), cfg.seed, step * cfg.batch_size, cfg.batch_size)
        local_pos = global_pos[rank * local_batch : (rank + 1) * local_batch]
        num_micro = local_batch // micro
        sums = torch.zeros(3, dtype=torch.float64)  # lm_sum, kd_sum, tokens on this rank
        for m in range(num_micro):
            pos = local_pos[m * micro : (m + 1) * micro]
            seq_ids = examples[pos]
            seqs = torch.from_numpy(np.asarray(data.sequences("train", seq_ids), dtype=np.int64))
            input_ids = seqs[:, :-1].to(device, non_blocking=True)
            labels = seqs[:, 1:].to(device, non_blocking=True)
            teacher_batch = None
            if alpha > 0:
                teacher_batch = teacher(pos, seq_ids, input_ids).to(device)
            sync = m == num_micro - 1 or world == 1
            ctx = ddp_model.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                # One global normaliser: every micro-batch's sum is divided by the global
                # token count (times world, since DDP averages gradients over workers).
                global_tokens = cfg.batch_size * seq_len
                if fused:
                    # The model runs through DDP's forward up to its final norm (the LM head on one
                    # position only); the fused loss applies the head chunk by chunk, never holding
                    # (B, T, V) logits or their gradient.
                    # Under bf16 autocast the head's chunk matmuls run in bf16, as the unfused
                    # head does; the loss itself is computed in fp32 (core.fused_loss).
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                        hidden = ddp_model(input_ids=input_ids, output_hidden_states=True,
                                           logits_to_keep=1).hidden_states[-1]
                        parts = _fused_loss(hidden, lm_head, labels, teacher_batch, alpha, kd,
                                            num_tokens=global_tokens / world)
                else:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                        logits = ddp_model(input_ids=input_ids).logits
                    if online_capture is not None:
                        online_capture(step, seq_ids, logits.detach())
                    parts = distillation_loss(
                        logits.float(), labels, teacher_batch, alpha, kd, num_tokens=global_tokens / world
                    )
                loss = parts.loss
                if cfg.nonfinite_from_step is not None and step >= cfg.nonfinite_from_step:
                    loss = loss * float("nan")
                loss.backward()
            sums += torch.tensor(
                [float(parts.lm_sum.detach()), float(parts.kd_sum.detach()), float(parts.num_tokens)],
                dtype=torch.float64,
            )
        if world > 1:
            # NCCL reduces device tensors only (gloo takes both): the sums travel on the run's device.
            reduced = sums.to(device)
            dist.all_reduce(reduced)
            sums = reduced.cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), cfg.optimizer.grad_clip if cfg.optimizer.grad_clip else float("inf")
        )
        lm_mean = float(sums[0] / sums[2])
        kd_mean = float(sums[1] / sums[2]) if alpha > 0 else float("nan")
        total_loss = (1 - alpha) * lm_mean + (alpha * kd_mean if alpha > 0 else 0.0)
        if cfg.nonfinite_from_step is not None and step >= cfg.nonfinite_from_step:
            total_loss = float("nan")
        if not (math.isfinite(total_loss) and torch.isfinite(grad_norm)):
            # Refuse the step: no parameter update, no checkpoint of a poisoned state.
            optimizer.zero_grad(set_to_none=True)
            nonfinite += 1
            emit("warning", {"step": step, "message": f"non-finite loss or gradient at step {step}; step refused"})
            if nonfinite >= cfg.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"training stopped at step {step}: {nonfinite} steps had a non-finite loss or "
                    f"gradient (limit {cfg.max_nonfinite_steps}); the last checkpoint is intact"
                )
            step += 1
            continue
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_tokens += tokens_per_step
        if step % cfg.log_every_steps == 0 or step == total_steps:
            now = time.time()
            emit("metrics", {
                "step": step, "tokens": step * tokens_per_step, "lm_loss": lm_mean,
                "kd_loss": kd_mean if alpha > 0 else None, "loss": total_loss, "lr": lr,
                "alpha": alpha, "grad_norm": float(grad_norm),
                "tokens_per_s": window_tokens / max(now - window_t0, 1e-9),
            })
            window_t0, window_tokens = now, 0
        if eval_every_steps is not None and step % eval_every_steps == 0 and step != total_steps:
            run_eval(step)
        due = step % cfg.checkpoint_every_steps == 0 or time.time() - last_ckpt_time > cfg.checkpoint_every_s
        if due and step != total_steps and rank == 0:
            save_checkpoint(ckpt_path, model, optimizer, step, {"nonfinite": nonfinite})
            if online_capture is not None:
                online_capture.flush()
            last_ckpt_time = time.time()
            emit("checkpoint", {"step": step})

    if online_capture is not None:
        online_capture.close()
    if teacher is not None and hasattr(teacher, "close"):
        teacher.close()
    run_eval(total_steps)
    export_dir = None
    if rank == 0:
        save_checkpoint(ckpt_path, model, optimizer, step, {"nonfinite": nonfinite})
        if export:
            export_dir = export_model(model, getattr(data, "tokenizer", None), run_dir / "export")
    if world > 1:
        dist.barrier()
    return TrainResult(
        steps=step, tokens=step * tokens_per_step, wall_s=time.time() - t_start,
        final_metrics=final_metrics, export_dir=export_dir, resumed_from_step=resumed_from,
    )
