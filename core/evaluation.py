"""Held-out metrics of a model during and after training: loss against the data, agreement with a teacher.

Three numbers, all over ``max_sequences`` packed sequences spread evenly over the validation split
(``evaluation_ids``: a fixed, deterministic set, so evaluation points of one run and runs of one study
are comparable, and many held-out documents are represented rather than the first few):

- ``val_loss``: mean next-token cross-entropy against the data, in nats per token (the number the
  scaling laws are fitted to).
- ``teacher_kl`` (with a teacher): mean over positions of KL(p_T || p_S), where p_T is the teacher's
  truncated distribution renormalised over its kept entries (the paper's F(z) at tau = 1) and p_S the
  student's full softmax:  sum_k p_T,k (log p_T,k - log p_S(i_k)).
- ``top1_agreement`` (with a teacher): fraction of positions where the student's argmax equals the
  teacher's top-1 token (the first kept entry, since entries are sorted by probability).
"""
from __future__ import annotations

import numpy as np
import torch

from core.config import EvalConfig
from core.memory import EVAL_LOGITS_BYTES
from core.models import inference_autocast, output_vocab_size
from core.types import SparseTeacherBatch, TeacherSignal


def evaluation_ids(available: int, num_sequences: int) -> np.ndarray:
    """``num_sequences`` sequence ids spread evenly over ``available`` (all of them if fewer)."""
    if num_sequences >= available:
        return np.arange(available, dtype=np.int64)
    return np.unique(np.linspace(0, available - 1, num_sequences).round().astype(np.int64))

#: Name of the validation split in ``PackedData.sequences`` / ``num_sequences``.
VAL_SPLIT = "val"


@torch.no_grad()
def heldout_metrics(
    model: torch.nn.Module,
    data,
    *,
    teacher: TeacherSignal | None = None,
    max_sequences: int = EvalConfig.heldout_sequences,
    batch_size: int = EvalConfig.batch_size,
    device: str | torch.device = "cpu",
    split: str = VAL_SPLIT,
    max_logits_bytes: int = EVAL_LOGITS_BYTES,
) -> dict[str, float]:
    """Held-out loss (and teacher agreement) of a causal LM on the first sequences of a split.

    model:   a Hugging Face causal LM already on ``device``; returns ``.logits`` (B, T, V).
    data:    a ``PackedData`` (``num_sequences(split)``, ``sequences(split, ids) -> (n, T+1) int64``).
    teacher: optional ``TeacherSignal``; called as ``teacher(ids, ids, input_ids)`` with the
             sequence ids as example ids (held-out sequences are not part of any example list).
    Returns ``{"val_loss"}`` and, with a teacher, ``{"teacher_kl", "top1_agreement"}``; every value
    is a mean over all evaluated target positions (each position counts once, whatever the batch).
    The model is put in eval mode for the call and its previous mode is restored.
    A forward pass holds at most ``max_logits_bytes`` of fp32 logits (but at least one sequence):
    16 sequences of 4096 x 151,552 would be 40 GB. On CUDA an fp32 model runs under bf16 autocast
    (core.models.inference_autocast); the loss is computed in fp32.
    """
    if max_sequences < 1 or batch_size < 1:
        raise ValueError(
            f"max_sequences and batch_size must be >= 1, got {max_sequences} and {batch_size}"
        )
    available = int(data.num_sequences(split))
    num_sequences = min(max_sequences, available)
    if num_sequences == 0:
        raise ValueError(f"the {split!r} split has no sequences to evaluate on")
    device = torch.device(device)

    was_training = model.training
    model.eval()
    # Sums over positions, kept as float64 tensors on the device: one host sync at the end.
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    kl_sum = torch.zeros((), dtype=torch.float64, device=device)
    agree_sum = torch.zeros((), dtype=torch.float64, device=device)
    num_tokens = 0
    vocab_size = output_vocab_size(model)
    try:
        chosen = evaluation_ids(available, num_sequences)
        for start in range(0, num_sequences, batch_size):
            batch_ids = chosen[start : start + batch_size]
            batch_tokens = torch.as_tensor(data.sequences(split, batch_ids), dtype=torch.long, device=device)
            rows = len(batch_ids)
            if vocab_size:  # sequences per forward within the logits budget
                per_sequence = (batch_tokens.shape[1] - 1) * vocab_size * 4
                rows = max(1, min(rows, max_logits_bytes // per_sequence))
            for first in range(0, len(batch_ids), rows):
                ids, tokens = batch_ids[first : first + rows], batch_tokens[first : first + rows]
                inputs, labels = tokens[:, :-1], tokens[:, 1:]
                with inference_autocast(model, device):
                    logits = model(input_ids=inputs).logits
                logits = logits.float()  # (B, T, V)
                # log p_S(v) = logits_v - logZ; no (B, T, V) log-softmax copy is materialised.
                log_z = torch.logsumexp(logits, dim=-1)  # (B, T)
                nll_sum += (log_z - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)).sum().double()
                num_tokens += labels.numel()
                if teacher is not None:
                    batch = teacher(ids, ids, inputs).to(device)
                    kl, agree = _teacher_agreement(logits, log_z, batch)
                    kl_sum += kl.double()
                    agree_sum += agree.double()
                del logits
    finally:
        model.train(was_training)

    out = {"val_loss": float(nll_sum) / num_tokens}
    if teacher is not None:
        out["teacher_kl"] = float(kl_sum) / num_tokens
        out["top1_agreement"] = float(agree_sum) / num_tokens
    return out


def _teacher_agreement(
    logits: torch.Tensor, log_z: torch.Tensor, teacher: SparseTeacherBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed KL(renormalised truncated teacher || student) and top-1 matches over a batch.

    logits: (B, T, V) float student logits; log_z: (B, T) their logsumexp.
    teacher.indices / .logprobs: (B, T, K), logprobs over the full vocabulary, -inf on padding.
    """
    if teacher.sampled:
        raise ValueError("held-out teacher metrics need a truncated teacher, not sampled rows (their values are "
                         "importance weights): evaluate against a LiveTeacher")
    if teacher.indices.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"teacher batch covers {tuple(teacher.indices.shape[:2])} positions, "
            f"the student {tuple(logits.shape[:2])}"
        )
    t_logprobs = teacher.logprobs.float()
    kept = torch.isfinite(t_logprobs)
    # Renormalise over the kept entries: log p_T,k = l_k - logsumexp(l_kept).
    t_logp = t_logprobs - torch.logsumexp(t_logprobs, dim=-1, keepdim=True)
    t_p = torch.where(kept, t_logp.exp(), torch.zeros_like(t_logp))
    s_logp = logits.gather(-1, teacher.indices.clamp_min(0)) - log_z.unsqueeze(-1)  # (B, T, K)
    kl = torch.where(kept, t_p * (t_logp - s_logp), torch.zeros_like(t_p)).sum()
    agree = (logits.argmax(dim=-1) == teacher.indices[..., 0]).sum()
    return kl, agree
