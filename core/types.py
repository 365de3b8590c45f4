"""Shared value types that pass between core's parts (data, logits, losses, trainer)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch


@dataclass
class SparseTeacherBatch:
    """A truncated teacher distribution for a batch of positions.

    indices:  (B, T, K) int64 vocabulary ids, sorted by teacher probability (descending).
    logprobs: (B, T, K) float32 log-probabilities at tau = 1, normalised over the FULL
              vocabulary (so their exp sums to the kept mass <= 1); -inf marks padding.
    stats:    per-position full-distribution statistics, each (B, T) float32. Keys used:
              "entropy" (nats), "std" (std of the logits over the vocabulary) and
              "log_u_<gamma>" (log sum_v p_v^gamma, gamma formatted with format_gamma).
    """

    indices: torch.Tensor
    logprobs: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    sampled: bool = False
    """True: rows are importance samples (core.sampled_kd): ``logprobs`` holds log-weights log w_v,
    not log-probabilities, and the KD loss is the sampled estimate."""

    def to(self, device: torch.device | str) -> "SparseTeacherBatch":
        return SparseTeacherBatch(
            self.indices.to(device, non_blocking=True),
            self.logprobs.to(device, non_blocking=True),
            {k: v.to(device, non_blocking=True) for k, v in self.stats.items()},
            self.sampled,
        )


def format_gamma(gamma: float) -> str:
    """Stable key for a WTTM gamma: 0.7 -> 'log_u_0.7'."""
    return f"log_u_{float(gamma):g}"


#: NormKD's tau_T = t_norm * std is floored at t_norm * this (a constant row has std 0); the store's
#: normaliser (core.logits_math.row_stats) and the loss (core.losses) use the same floor.
NORMKD_MIN_STD = 1e-6


def format_t_norm(t_norm: float) -> str:
    """Stable key for NormKD's exact tempered normaliser at t_norm: 2 -> 'log_u_normkd_2'.

    The statistic is log sum_v p_v^(1 / tau_T) with the row's own tau_T = t_norm * std(z)."""
    return f"log_u_normkd_{float(t_norm):g}"


class TeacherSignal(Protocol):
    """Where a student's teacher distribution comes from (a logits store or a live model).

    The trainer calls it once per micro-batch. ``example_ids`` are the positions of the batch's
    examples in the trainer's example list (an offline store keys rows by sequence id, an online
    store by capture entry); ``sequence_ids`` are the packed-sequence ids; ``input_ids`` (B, T)
    are the tokens the student sees. Returns the truncated teacher for every position.
    """

    def __call__(
        self, example_ids: np.ndarray, sequence_ids: np.ndarray, input_ids: torch.Tensor
    ) -> SparseTeacherBatch: ...
