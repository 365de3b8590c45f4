"""Teacher-logit truncation (top-p, then top-k) and the full-vocabulary row statistics.

Both run on whatever device the logits live on (torch ops only), so an extraction on a GPU
truncates there and moves only the (N, K) result to the host.

Truncation rule (PAPER.md, "top-p-k"): sort the tau = 1 distribution, keep the smallest prefix
whose cumulative probability reaches p, then cap that prefix at k entries. p = 1 means no top-p
step (plain top-k). Sort order: by logit (as float32), descending; equal logits are ordered by
vocabulary index, lower index first (``torch.topk`` is not stable, so ties are resolved
explicitly, see ``_topk_stable``). Log-probabilities are ``logit - logsumexp(logits)`` in
float32; the cumulative mass of the top-p step is summed in float64 over the kept prefix.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from core.config import Truncation
from core.types import NORMKD_MIN_STD, format_gamma, format_t_norm

#: Statistic keys always present, in storage order; ``log_u_<gamma>`` keys follow, then
#: ``log_u_normkd_<t_norm>`` keys.
BASE_STAT_KEYS = ("entropy", "std")


def stat_keys(gammas: Sequence[float], t_norms: Sequence[float] = ()) -> list[str]:
    """Storage-ordered statistic names: entropy, std, log_u_<gamma>..., log_u_normkd_<t>..."""
    return [*BASE_STAT_KEYS, *(format_gamma(g) for g in gammas), *(format_t_norm(t) for t in t_norms)]


def truncate(logits: torch.Tensor, truncation: Truncation) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-p-k truncation of a teacher's logits (``truncation``: core.config.Truncation).

    logits: (..., V) float (any float dtype; computed in float32).
    Returns ``(indices, logprobs)``, each (..., K) with K = min(top_k, V): int64 vocabulary ids
    sorted by probability (ties: lower id first) and float32 log-probabilities normalised over
    the FULL vocabulary at tau = 1. Entries beyond a row's kept count are padding: logprob -inf,
    index 0.
    """
    indices, logprobs, _ = truncate_with_counts(logits, truncation)
    return indices, logprobs


def truncate_with_counts(
    logits: torch.Tensor, truncation: Truncation, lse: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``truncate`` plus the kept count of every row, (...,) int64.

    ``lse`` (N, 1): the rows' logsumexp, when the caller already has it.
    """
    shape = logits.shape
    vocab_size = shape[-1]
    k = min(truncation.top_k, vocab_size)
    x = logits.reshape(-1, vocab_size).float()
    if lse is None:
        lse = torch.logsumexp(x, dim=-1, keepdim=True)
    values, indices = _topk_stable(x, k)
    return _finish_truncation(values, indices, lse.reshape(-1, 1), truncation, shape)


def _finish_truncation(values, indices, lse, truncation, shape):
    # A NaN anywhere in a row makes its normaliser NaN (so does a row of -inf or a +inf logit).
    if torch.isnan(lse).any():
        raise ValueError("logits contain NaN; refusing to truncate them")
    k = values.shape[-1]
    logprobs = values - lse
    if truncation.top_p >= 1.0:
        counts = torch.full((values.shape[0],), k, dtype=torch.int64, device=values.device)
    else:
        counts = kept_counts(logprobs, truncation)
        pad = torch.arange(k, device=values.device) >= counts[:, None]
        logprobs = logprobs.masked_fill(pad, float("-inf"))
        indices = indices.masked_fill(pad, 0)
    return (
        indices.reshape(*shape[:-1], k),
        logprobs.reshape(*shape[:-1], k),
        counts.reshape(shape[:-1]),
    )


def kept_counts(logprobs, truncation: Truncation):
    """Entries each row keeps under ``truncation`` (beyond its top_k cap, which the caller's
    width already applies): the length of the smallest prefix whose cumulative probability
    reaches ``top_p``. THE truncation rule, for torch tensors (extraction, capture, live teachers)
    and numpy arrays (a store deriving a smaller rule) alike: a new rule (min-p, ...) is a field
    of core.config.Truncation plus its lines here.

    logprobs: (N, K) sorted descending (padding -inf), torch or numpy. Returns (N,) int64 in
    [1, K] of the same kind; a row whose K entries never reach ``top_p`` keeps all K. The sum
    runs in float64.
    """
    top_p = truncation.top_p
    if isinstance(logprobs, torch.Tensor):
        cum = logprobs.double().exp().cumsum(dim=-1)
    else:
        cum = np.cumsum(np.exp(np.asarray(logprobs, dtype=np.float64)), axis=-1)
    return ((cum < top_p).sum(-1) + 1).clip(max=logprobs.shape[-1])


#: exp() arguments are clamped here (see row_stats).
_EXP_FLOOR = -80.0


def _block_size(vocab_size: int, k: int) -> int:
    """Block width for the two-level top-k: the widest of 32, 16, 8, 4 that leaves at least
    4 (k + 1) blocks (so the k + 1 blocks kept hold at most a quarter of the row); 0 = none."""
    for block in (32, 16, 8, 4):
        if -(-vocab_size // block) >= 4 * (k + 1):
            return block
    return 0


def _topk_stable(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of x (N, V), by value descending, ties by index ascending.

    One ``topk(k + 1)``. On CPU, when the row has at least 4 (k + 1) blocks of ``_block_size``
    entries, it runs over the k + 1 blocks with the largest maxima only (the k + 1 largest entries
    always lie in those blocks): 1.6x faster at V = 4,096, k = 100, 2x at V = 151,552. Only rows
    whose kept values contain a tie are reordered (tiny sorts of k entries), and only rows whose
    k-th and (k+1)-th values tie (so a lower index outside the candidates may be owed a place)
    are recomputed exactly over the full row. A tie between block maxima at the block cut implies
    such a tie at the entry cut, so it is covered too.
    """
    num_rows, vocab_size = x.shape
    if k >= vocab_size:
        return torch.sort(x, dim=-1, descending=True, stable=True)
    block = 0 if x.is_cuda else _block_size(vocab_size, k)
    if block:
        num_blocks = -(-vocab_size // block)
        xp = x
        if vocab_size % block:
            xp = torch.nn.functional.pad(x, (0, num_blocks * block - vocab_size), value=float("-inf"))
        block_max = xp.view(num_rows, num_blocks, block).amax(dim=-1)
        blocks = torch.topk(block_max, k + 1, dim=-1, sorted=False).indices
        cols = (blocks.unsqueeze(-1) * block + torch.arange(block)).reshape(num_rows, -1)
        values, pos = torch.topk(xp.gather(1, cols), k + 1, dim=-1, largest=True, sorted=True)
        indices = cols.gather(1, pos)
    else:
        values, indices = torch.topk(x, k + 1, dim=-1, largest=True, sorted=True)
    boundary = values[:, k - 1] == values[:, k]
    values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
    if k > 1:
        tied = (values[:, 1:] == values[:, :-1]).any(dim=-1) & ~boundary
        if tied.any():
            rows = tied.nonzero().squeeze(1)
            values[rows], indices[rows] = _sort_by_value_then_index(values[rows], indices[rows])
    if boundary.any():
        rows = boundary.nonzero().squeeze(1)
        xr = x[rows]
        threshold = values[rows, k - 1 : k]
        above = xr > threshold
        equal = xr == threshold
        owed = k - above.sum(dim=-1, keepdim=True)
        keep = above | (equal & (equal.cumsum(dim=-1) <= owed))
        # nonzero() lists each row's kept columns in ascending order: exactly k per row.
        kept_idx = keep.nonzero()[:, 1].reshape(-1, k)
        values[rows], indices[rows] = _sort_by_value_then_index(xr.gather(1, kept_idx), kept_idx)
    return values, indices


def _sort_by_value_then_index(values: torch.Tensor, indices: torch.Tensor):
    order = indices.argsort(dim=-1)
    values, indices = values.gather(1, order), indices.gather(1, order)
    values, order = values.sort(dim=-1, descending=True, stable=True)
    return values, indices.gather(1, order)


def row_stats(
    logits: torch.Tensor, gammas: Sequence[float], lse: torch.Tensor | None = None,
    probs: torch.Tensor | None = None, t_norms: Sequence[float] = (),
) -> dict[str, torch.Tensor]:
    """Full-vocabulary statistics of each row, for adaptive temperatures (PAPER.md).

    logits: (N, V) float32, finite; ``lse`` (N, 1) and ``probs`` = softmax(logits) when the
    caller has them. Returns {key: (N,) float32} with
      entropy      = -sum_v p_v log p_v = lse - sum_v p_v z_v (nats),
      std          = std of the logits over the vocabulary, Bessel-corrected (torch.std's
                     default, as NormKD's code); it equals the std of the log-probabilities,
      log_u_<g>    = log sum_v p_v^g = logsumexp(g * log p), for each gamma g (WTTM's, and
                     1/tau for an exact tempered tail at a static tau: core.losses),
      log_u_normkd_<t> = log sum_v p_v^(1/tau_T) with the row's tau_T = t * std (NormKD's teacher
                     temperature), for each t_norm t: the exact normaliser of the tempered teacher.
    """
    num_rows, vocab_size = logits.shape
    if lse is None:
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    if probs is None:
        probs = torch.softmax(logits, dim=-1)
    lse = lse.reshape(-1, 1)
    out = {"entropy": lse.squeeze(1) - (probs * logits).sum(dim=-1)}
    centred = logits - logits.mean(dim=-1, keepdim=True)
    # two-pass std: as exact as torch.std, several times cheaper on CPU
    out["std"] = torch.linalg.vector_norm(centred, dim=-1) / max(vocab_size - 1, 1) ** 0.5
    if gammas:
        logp = logits - lse
        # exp() of arguments below -87 gives float32 subnormals (~25x slower on x86); their
        # terms (< 1e-35) vanish in the sums, so clamp only when a row reaches that low.
        low = float((logits.amin(dim=-1, keepdim=True) - lse).min())
        for gamma in gammas:
            scaled = logp * float(gamma)
            if low * gamma < _EXP_FLOOR:
                scaled.clamp_(min=_EXP_FLOOR)
            # log p <= 0, so exp(g * log p) <= 1: no max-shift is needed.
            out[format_gamma(gamma)] = scaled.exp_().sum(dim=-1).log_()
    if t_norms:
        logp = logits - lse
        for t_norm in t_norms:
            # a per-row gamma that can be large (a flat row has a small std): a shifted logsumexp
            gamma = 1.0 / (float(t_norm) * out["std"].clamp_min(NORMKD_MIN_STD)).unsqueeze(1)
            out[format_t_norm(t_norm)] = torch.logsumexp(logp * gamma, dim=-1)
    return out


@torch.no_grad()
def truncate_and_stats(
    logits: torch.Tensor,
    truncation: Truncation,
    gammas: Sequence[float],
    chunk_rows: int | None = None,
    t_norms: Sequence[float] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Truncation and row statistics, over row chunks (keeps temporaries in cache on CPU).

    logits: (..., V) any float dtype. Returns indices (N, K) int64, logprobs (N, K) float32,
    counts (N,) int64 and stats {key: (N,) float32}, all on the logits' device, N = rows.
    """
    x_all = logits.reshape(-1, logits.shape[-1])
    num_rows, vocab_size = x_all.shape
    k = min(truncation.top_k, vocab_size)
    if chunk_rows is None:
        # ~1 MB of float32 per chunk on CPU (temporaries stay in cache); ~1 GB on a GPU (a few
        # float32 temporaries of that size, whatever the batch)
        chunk_rows = max(1, (1 << (28 if x_all.is_cuda else 18)) // vocab_size)
    parts = []
    for start in range(0, max(num_rows, 1), chunk_rows):
        x = x_all[start : start + chunk_rows].float()
        probs = torch.softmax(x, dim=-1)
        values, indices = _topk_stable(x, k)
        # logsumexp from the softmax: p(argmax) = exp(max - lse)
        lse = values[:, :1] - probs.gather(1, indices[:, :1]).log()
        idx, lp, cnt = _finish_truncation(values, indices, lse, truncation, x.shape)
        parts.append((idx, lp, cnt, row_stats(x, gammas, lse=lse, probs=probs, t_norms=t_norms)))
    if len(parts) == 1:
        return parts[0]
    return (
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]),
        {key: torch.cat([p[3][key] for p in parts]) for key in parts[0][3]},
    )
