"""Sampled KD (RS-KD; Anshumann et al., ACL 2025, "Sparse Logit Sampling"): the teacher's
next-token distribution is stored as a few importance-weighted samples instead of its top-p/top-k
head, so that the KD loss computed from the store is an unbiased estimate of the full-vocabulary
one.

Sampling (per row, i.e. per token position; p = softmax(l) the teacher at τ = 1 over the FULL
vocabulary V, π = softmax(l / τp) the proposal, N = ``samples``):

    draw x_1..x_N i.i.d. ~ π (with replacement); for each distinct id v with count c_v keep
    w_v = c_v · p_v / (N · π_v)                          (τp = 1: w_v = c_v / N, Σ_v w_v = 1)

so that E[Σ_v w_v f(v)] = Σ_v p_v f(v) for every f. A row keeps at most N entries (its distinct
ids, by descending weight, ties by lower id), in the store's row layout: ids and values
concatenated, ``counts`` = distinct ids per row. Draws use inverse-CDF sampling with uniforms from
a CPU ``torch.Generator`` (float64 CDF), so they are deterministic given the generator and the
logits; the extraction seeds one generator per batch from (seed, first row) (``batch_generator``),
so a resumed extraction rewrites the same bytes.

Storage: a sampled store is an ordinary offline logits store (format 1 only) whose entry values
are log w_v instead of log p_v; its manifest has ``sampling: {samples, proposal_temperature,
seed, log_weight_offset}``. Format 1 codes values <= 0, and for τp >= 1
    w_v <= p_v / π_v = p_v^(1 - 1/τp) · Σ_u p_u^(1/τp) <= V^(1 - 1/τp)
(Σ_u p_u^a <= V^(1-a) for a = 1/τp in (0, 1]), so the store holds log w_v - B with
B = log_weight_offset = (1 - 1/τp) · log V (0 at τp = 1, where log w = log(c/N) <= 0 is stored as
is) and the reader adds B back. Values are exact to 2^-12 nats (relative weight error <= 2.4e-4);
a shifted value below -32 nats (a weight below ~e^-32 · V^(1-1/τp), only for draws of ids with
p_v < ~1e-10 at τp > 1) is stored as -32. Format 2 (which codes renormalised probabilities) is
refused for sampled stores.

Loss on a sampled row (q = the student's FULL-vocabulary softmax at τ_s = 1, gathered at the kept
ids, not renormalised; H(p) = the row's exact entropy, the store's ``entropy`` statistic):

    kld:  KL^ = Σ_v w_v (−log q_v) − H(p)      E[KL^] = Σ_v p_v (−log q_v) − H(p) = KL(p ‖ q)
    nll:  CE^ = Σ_v w_v (−log q_v)             E[CE^] = H(p, q)

Both are linear in the weights, so the gradient w.r.t. the student logits z,
∂KL^/∂z = (Σ_v w_v) q − w (w scattered over V), has expectation q − p = ∂KL/∂z: unbiased too.
Any other divergence (mse, reverse_kld, jsd, tvd), τ ≠ 1, τ_s ≠ 1, the ``tail`` normalisation and
the adaptive methods are not linear in p and are refused (``core.config.check_sampled_kd``).
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch

from core.config import SAMPLED_KD_KINDS, SAMPLING_SEED, Truncation, check_sampled_kd
from core.logits_math import row_stats
from core.settings import ConfigError

__all__ = ["DEFAULT_SEED", "log_weight_offset", "batch_generator", "sample_rows", "sample_and_stats",
           "sampled_kd_term", "sampling_header", "store_keeps", "check_store_format", "check_sampled_kd"]

DEFAULT_SEED = SAMPLING_SEED
"""Seed of a sampled store's draws (recorded in its manifest's ``sampling``)."""

_CHUNK_ELEMENTS = 1 << 22
"""Rows per sampling chunk: about this many vocabulary entries (a float64 CDF of 32 MiB)."""


def log_weight_offset(vocab_size: int, proposal_temperature: float) -> float:
    """B = (1 - 1/τp) · log V: an upper bound on log w_v, subtracted before storing (module doc)."""
    return (1.0 - 1.0 / float(proposal_temperature)) * math.log(int(vocab_size))


def batch_generator(seed: int, first_row: int) -> torch.Generator:
    """A CPU generator seeded from (seed, first_row): the draws of the rows from ``first_row`` on
    depend on nothing else (a resumed extraction redoes the same batches: same bytes)."""
    digest = hashlib.sha256(f"pdspace-sampled-kd:{int(seed)}:{int(first_row)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _sample_chunk(logp: torch.Tensor, u: torch.Tensor, samples: int, tau_p: float):
    """One chunk: logp (r, V) τ = 1 log-probs, u (r, N) float64 uniforms in [0, 1) -> flat
    (row, id, log w) of the distinct draws, rows ascending, weights descending, ties lower id."""
    r, vocab = logp.shape
    log_pi = logp if tau_p == 1.0 else torch.log_softmax(logp / tau_p, dim=-1)
    cdf = torch.cumsum(log_pi.exp(), dim=-1, dtype=torch.float64)
    target = u.to(cdf.device) * cdf[:, -1:]
    # first id whose CDF exceeds the target: an id of positive proposal mass
    ids = torch.searchsorted(cdf, target, right=True).clamp_(max=vocab - 1)
    del cdf
    keys = (torch.arange(r, device=ids.device).unsqueeze(1) * vocab + ids).reshape(-1)
    uniq, counts = torch.unique(keys, sorted=True, return_counts=True)
    rows, vid = uniq // vocab, uniq % vocab
    log_w = (counts.double().log() - math.log(samples)
             + logp[rows, vid].double() - log_pi[rows, vid].double())
    order = torch.argsort(-log_w, stable=True)  # ids ascending within equal weights
    order = order[torch.argsort(rows[order], stable=True)]
    return rows[order], vid[order], log_w[order]


def sample_rows(logprobs_full: torch.Tensor, samples: int, proposal_temperature: float = 1.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Importance-sampled rows of a teacher (module docstring for the formulas).

    logprobs_full: (R, V) float τ = 1 log-probabilities over the full vocabulary. Draws N =
    ``samples`` ids per row from π = softmax(logprobs / proposal_temperature) with replacement.
    Returns, in the store's row layout: indices (E,) int64 (each row's DISTINCT ids, by descending
    weight), log_weights (E,) float32 (log w_v = log(c_v p_v / (N π_v))) and counts (R,) int64
    (distinct ids per row; E = counts.sum()). Deterministic given ``generator`` (a CPU generator:
    all R·N uniforms are drawn from it first, so row chunking does not change the draws). Rows are
    processed in chunks of about 4M vocabulary entries.
    """
    indices, log_w, counts, _ = _sample(logprobs_full, samples, proposal_temperature, generator)
    return indices, log_w, counts


def _sample(x: torch.Tensor, samples: int, proposal_temperature: float, generator: torch.Generator | None,
            *, logits: bool = False, gammas: Sequence[float] | None = None, t_norms: Sequence[float] = ()):
    """sample_rows over row chunks of x (log-probs, or logits when ``logits``), with the row
    statistics of core.logits_math.row_stats when ``gammas`` is not None."""
    if x.dim() != 2:
        raise ValueError(f"expected (R, V) rows, got shape {tuple(x.shape)}")
    if not (isinstance(samples, int) and samples >= 1):
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    if not proposal_temperature >= 1.0:
        raise ValueError(f"proposal_temperature must be >= 1, got {proposal_temperature}")
    num_rows, vocab = x.shape
    u = torch.rand(num_rows, samples, generator=generator, dtype=torch.float64)
    chunk = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    parts, stats = [], []
    with torch.no_grad():
        for start in range(0, num_rows, chunk):
            xc = x[start: start + chunk].float()
            lse = torch.logsumexp(xc, dim=-1, keepdim=True) if logits else None
            if gammas is not None:
                stats.append(row_stats(xc, gammas, lse=lse, t_norms=t_norms) if logits
                             else row_stats(xc, gammas, t_norms=t_norms))
            lp = xc - lse if logits else xc
            rows, vid, log_w = _sample_chunk(lp, u[start: start + chunk], samples, float(proposal_temperature))
            parts.append((rows + start, vid, log_w))
            del xc, lp
    stats_out = {key: torch.cat([s[key] for s in stats]) for key in stats[0]} if stats else {}
    if not parts:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, torch.zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.int64), stats_out
    rows = torch.cat([p[0] for p in parts])
    counts = torch.bincount(rows, minlength=num_rows)
    return torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]).float(), counts, stats_out


@torch.no_grad()
def sample_and_stats(logits: torch.Tensor, keeps: Truncation, gammas: Sequence[float], *,
                     generator: torch.Generator, t_norms: Sequence[float] = ()):
    """What a sampled store's extraction writes for a batch of logits (..., V): (indices (R, W),
    stored values (R, W) = log w - log_weight_offset, counts (R,), stats {key: (R,)}), W =
    min(N, V), padded like ``core.logits_math.truncate_and_stats`` (index 0, value -inf), on the
    CPU. Works over row chunks (no full-batch float32 or log-prob copy)."""
    x = logits.reshape(-1, logits.shape[-1])
    num_rows, vocab = x.shape
    indices, log_w, counts, stats = _sample(x, keeps.samples, keeps.proposal_temperature, generator,
                                            logits=True, gammas=list(gammas), t_norms=t_norms)
    indices, log_w, counts = indices.cpu(), log_w.cpu(), counts.cpu()
    width = min(keeps.samples, vocab)
    pos = torch.arange(indices.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rows = torch.repeat_interleave(torch.arange(num_rows), counts)
    out_idx = torch.zeros(num_rows, width, dtype=torch.int64)
    out_val = torch.full((num_rows, width), float("-inf"), dtype=torch.float32)
    out_idx[rows, pos] = indices
    out_val[rows, pos] = log_w - log_weight_offset(vocab, keeps.proposal_temperature)
    return out_idx, out_val, counts, {k: v.cpu() for k, v in stats.items()}


def sampling_header(keeps: Truncation, vocab_size: int, seed: int = DEFAULT_SEED) -> dict:
    """The store-header fields of a sampled store: its row width and ``sampling`` record."""
    return {"p_max": 1.0, "k_max": min(int(keeps.samples), int(vocab_size)),
            "sampling": {"samples": int(keeps.samples), "proposal_temperature": float(keeps.proposal_temperature),
                         "seed": int(seed),
                         "log_weight_offset": log_weight_offset(vocab_size, keeps.proposal_temperature)}}


def store_keeps(manifest: dict) -> Truncation:
    """The rule a store serves, from its manifest: its sampling, else Truncation(p_max, k_max)."""
    sampling = manifest.get("sampling")
    if sampling:
        return Truncation(samples=int(sampling["samples"]),
                          proposal_temperature=float(sampling["proposal_temperature"]))
    return Truncation(float(manifest["p_max"]), int(manifest["k_max"]))


def check_store_format(format_version: int) -> None:
    """ConfigError unless a sampled store can be written in ``format_version`` (format 1 only)."""
    if int(format_version) != 1:
        raise ConfigError("format_version", f"must be 1 for a sampled store (format 2 codes renormalised "
                                            f"probabilities, not importance weights), got {format_version}")


def sampled_kd_term(s_logq: torch.Tensor, log_weights: torch.Tensor, entropy: torch.Tensor,
                    kind: str) -> torch.Tensor:
    """The KD term of sampled rows, (B, T): kld Σ_v w_v (−log q_v) − H(p), nll Σ_v w_v (−log q_v).

    s_logq: (B, T, K) the student's full-vocabulary log-softmax (τ_s = 1) at the kept ids;
    log_weights: (B, T, K) log w_v, -inf on padding; entropy: (B, T) the teacher's exact H(p).
    """
    if kind not in SAMPLED_KD_KINDS:
        raise ConfigError("kind", f"must be one of {', '.join(SAMPLED_KD_KINDS)} with samples, got {kind}")
    valid = log_weights > float("-inf")
    w = torch.where(valid, log_weights.to(s_logq.dtype).exp(), torch.zeros((), dtype=s_logq.dtype,
                                                                           device=s_logq.device))
    ce = -(w * s_logq.masked_fill(~valid, 0.0)).sum(-1)
    return ce - entropy.to(ce.dtype) if kind == "kld" else ce


def sampled_teacher_term(teacher, kd, s_logq: torch.Tensor) -> torch.Tensor:
    """The KD term (B, T) of a sampled SparseTeacherBatch (``teacher.sampled``) under KDConfig
    ``kd``: ``sampled_kd_term`` with the row entropies the store keeps; ConfigError for a KD setting
    the estimate does not support (``check_sampled_kd``)."""
    check_sampled_kd(kd)
    if "entropy" not in teacher.stats:
        raise ValueError("a sampled teacher batch needs the rows' entropy statistic (stats['entropy'])")
    return sampled_kd_term(s_logq, teacher.logprobs, teacher.stats["entropy"], kd.kind)
