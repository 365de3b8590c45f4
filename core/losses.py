"""Training losses: next-token LM loss, sparse-teacher KD divergences, adaptive temperatures.

Notation (per position; PAPER.md): S = the teacher's kept vocabulary ids (top-p-k), l_v = the
teacher's tau=1 log-probabilities over the FULL vocabulary (what a logits store holds), z = the
student's logits, q = softmax(z / tau_s) over the full vocabulary, tau = teacher temperature.

Teacher side, ``normalization``:

- ``"renormalize"`` (the paper): p_v = softmax_{v in S}(l_v / tau), zero outside S.
- ``"tail"``: the dropped mass is kept as one extra bucket, exactly. At tau = 1 the K+1 bucket
  masses are exp(l_v) (v in S) and t = 1 - sum_S exp(l_v). At tau != 1 they are those of the
  full-vocabulary tempered teacher: p_v = exp(l_v / tau) / U (v in S) and t = 1 - sum_S p_v, with
  U = sum over the WHOLE vocabulary of exp(l_u / tau) = sum_u p_u^(1/tau), which the store keeps per
  row (its statistic log_u_<1/tau>; the planner adds 1/tau to the store's gammas). Without it the
  loss refuses (a tail tempered as one pseudo-token moves mass the wrong way: at tau = 2 it gave
  0.042 where the true off-support mass was 0.64). NormKD's per-position tau_T uses the store's
  log_u_normkd_<t_norm>; AdaKD's per-position tau cannot be served exactly and is refused with
  ``tail`` (core.config.KDConfig).

Student side: q_v is the student's FULL-vocabulary probability gathered at v in S; it is NOT
renormalised over S. Its off-support mass is r = 1 - sum_S q_v. With ``"tail"`` the student gets
the matching bucket q_tail = r. With ``"renormalize"`` every divergence is the full-vocabulary
divergence between the renormalised truncated teacher (zero off S) and the full student softmax,
which needs only the K kept entries and r (no extra pass over the vocabulary):

====================  =============================================  ==========================
kind                  renormalize                                    tail (sums over K+1 buckets)
====================  =============================================  ==========================
nll                   -sum_S p log q                                 -sum p log q
kld                   sum_S p (log p - log q)   (= KL(p||q) exactly) sum p (log p - log q)
mse                   sum_S (p - q)^2           (see note 1)         sum (p - q)^2
reverse_kld           sum_S q~ (log q~ - log p) (see note 2)         sum q (log q - log p)
jsd                   JSD over S + r/2 * log 2  (= full-vocab JSD)   1/2 KL(p||m) + 1/2 KL(q||m)
tvd                   1/2 sum_S |p - q| + r/2   (= full-vocab TVD)   1/2 sum |p - q|
====================  =============================================  ==========================

1. mse with renormalize sums over the kept entries only. The full-vocabulary squared error would
   add sum_{v not in S} q_v^2, which needs a pass over the vocabulary; it is <= r^2 and usually
   negligible (the student's off-support mass is spread over ~V tokens).
2. reverse KL against a teacher that is zero off S is infinite whenever r > 0, so reverse_kld with
   renormalize uses the student renormalised over S, q~_v = q_v / sum_S q, i.e. it only matches the
   shape of the student inside the teacher's support and puts no pressure on r.

m = (p + q) / 2. Every kind is 0 when the student equals the teacher (for renormalize: q = p on
S and r = 0). ``kd_loss`` returns the raw divergence: no tau^2 factor (Hinton et al. multiply by
tau^2 to keep gradient scales comparable across temperatures; ``KDConfig.scale_by_temperature_sq``
turns it on). Padding: teacher entries whose logprob is -inf contribute nothing, whatever their
index. A position without any kept entry gives 0. The teacher is a constant: no gradient flows
to it.

Memory and speed: the student's log-softmax is computed once per micro-batch and shared by the LM
and KD losses, fused with the gathers of [label, kept ids] (``log_softmax_gather``): no (B, T, V)
log-probabilities, no zero-filled (B, T, V) gradient buffer; everything else is (B, T, K). A
student temperature != 1 needs one more pass over the vocabulary (log-softmax of z / tau_s, also
fused); NormKD's per-position student temperature one more plain log-softmax. Both are
unavoidable: the student's normaliser changes with tau_s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from core.config import ADAPTIVE_METHODS, KD_KINDS, NORMALIZATIONS, KDConfig  # noqa: F401 - re-exported
from core.sampled_kd import check_sampled_kd, sampled_teacher_term
from core.types import NORMKD_MIN_STD, SparseTeacherBatch, format_gamma, format_t_norm

_LOG2 = math.log(2.0)


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0, got {value}")


@dataclass
class LossParts:
    """What one micro-batch contributes. ``loss`` is ready for ``backward()``.

    loss:       ((1 - alpha) * lm_sum + alpha * kd_sum) / normaliser, a scalar tensor.
    lm_sum:     sum over non-ignored positions of the LM NLL (nats), scalar tensor.
    kd_sum:     sum over non-ignored positions of the KD term as it enters the loss (including
                tau^2 / WTTM weights); a zero tensor when KD was skipped (alpha == 0 or no teacher).
    num_tokens: number of non-ignored positions in this micro-batch (tensor; not the normaliser).
    """

    loss: torch.Tensor
    lm_sum: torch.Tensor
    kd_sum: torch.Tensor
    num_tokens: torch.Tensor


# ----------------------------------------------------------------------------------------------
# LM loss


def lm_loss(student_logprobs: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Per-position next-token NLL.

    student_logprobs: (B, T, V) float log-softmax of the student's logits.
    labels: (B, T) int64 target ids; ``ignore_index`` marks positions without a target.
    Returns (B, T) float NLL in nats, 0 at ignored positions.
    """
    keep = labels != ignore_index
    safe = torch.where(keep, labels, torch.zeros_like(labels))
    nll = -student_logprobs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return nll * keep.to(nll.dtype)


# ----------------------------------------------------------------------------------------------
# Sparse KD divergences


def _masked_logsumexp(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim of the valid entries; rows without any give a finite dummy.

    The dummy keeps forward and backward free of nan (logsumexp of all -inf has a nan gradient);
    callers multiply such rows by a zero mask.
    """
    x = x.masked_fill(~valid, float("-inf"))
    x = x.masked_fill(~valid.any(-1, keepdim=True), 0.0)
    return torch.logsumexp(x, dim=-1)


def _tail_eps(dtype: torch.dtype) -> float:
    # Bucket masses below a few ulps of 1 are rounding noise (1 - sum of K float probs);
    # flooring them keeps logs finite and gradients bounded. ~1e-6 in fp32, ~2e-15 in fp64.
    return 8.0 * torch.finfo(dtype).eps


def _as_position_tensor(tau: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A per-position temperature (B, T) becomes (B, T, 1) for broadcasting over K."""
    if isinstance(tau, torch.Tensor):
        return tau.to(like.dtype).unsqueeze(-1)
    return float(tau)


def _teacher_logp(
    teacher_logprobs: torch.Tensor, valid: torch.Tensor, tau: float | torch.Tensor, normalization: str,
    log_u: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher log-probabilities over the kept slots (B, T, K), and the tail bucket's (B, T).

    Pads come back as -inf; the tail is None for renormalize. ``log_u`` (B, T): the row's
    log sum_v p_v^(1/tau) over the full vocabulary, needed by ``tail`` at tau != 1.
    """
    lp = teacher_logprobs.masked_fill(~valid, float("-inf"))
    tau_b = _as_position_tensor(tau, lp)
    if normalization == "renormalize":
        scaled = lp / tau_b
        return scaled - _masked_logsumexp(scaled, valid).unsqueeze(-1), None
    if isinstance(tau_b, torch.Tensor) or tau_b != 1.0:
        if log_u is None:
            raise ValueError("tail normalisation at a temperature other than 1 needs the teacher's "
                             "full-vocabulary normaliser log sum_v p_v^(1/tau) per position (a store "
                             "statistic: its gammas must include 1/tau)")
        return tempered_tail(lp, valid, 1.0 / tau if not isinstance(tau, torch.Tensor) else tau.reciprocal(),
                             log_u)
    # tail at tau = 1: the dropped mass t = 1 - sum_S exp(l_v), floored. log_softmax also fixes
    # kept masses that sum to slightly over 1 (fp16 stores).
    kept = torch.exp(_masked_logsumexp(lp, valid)) * valid.any(-1).to(lp.dtype)
    log_tail = (1.0 - kept).clamp_min(_tail_eps(lp.dtype)).log()
    buckets = torch.log_softmax(torch.cat([lp, log_tail.unsqueeze(-1)], dim=-1), dim=-1)
    return buckets[..., :-1], buckets[..., -1]


def tempered_tail(
    teacher_logprobs: torch.Tensor, valid: torch.Tensor, gamma: float | torch.Tensor, log_u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact full-vocabulary teacher p^gamma / U_gamma on the kept slots, and its tail bucket.

    teacher_logprobs: (B, T, K) tau = 1 log-probs l_v (-inf at pads); gamma: a float or (B, T)
    (gamma = 1 / tau); log_u: (B, T) log U_gamma = log sum_v p_v^gamma over the WHOLE vocabulary.
    Returns log p_v = gamma * l_v - log U_gamma on S (-inf at pads) and the log of the off-support
    mass 1 - sum_S p_v (floored at a few ulps), renormalised together over the K + 1 buckets (which
    only absorbs rounding: the exact masses already sum to 1).
    """
    lp = teacher_logprobs.masked_fill(~valid, float("-inf"))
    scaled = (_as_position_tensor(gamma, lp) * lp - log_u.to(lp.dtype).unsqueeze(-1)).masked_fill(
        ~valid, float("-inf"))
    kept = torch.exp(_masked_logsumexp(scaled, valid)) * valid.any(-1).to(lp.dtype)
    log_tail = (1.0 - kept).clamp_min(_tail_eps(lp.dtype)).log()
    buckets = torch.log_softmax(torch.cat([scaled, log_tail.unsqueeze(-1)], dim=-1), dim=-1)
    return buckets[..., :-1], buckets[..., -1]


def _divergence(
    kind: str,
    t_logp: torch.Tensor,
    t_tail: torch.Tensor | None,
    s_logq: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """The divergence per position (B, T) from teacher and student log-probs on the kept slots.

    t_logp: (B, T, K) teacher log-probs, -inf at pads. t_tail: (B, T) teacher tail log-mass, or
    None for renormalize. s_logq: (B, T, K) the student's full-vocabulary log-probs gathered at
    the kept ids (any value at pads). valid: (B, T, K) bool. (Renormalised nll/kld take the
    faster route in ``_sparse_kd``.)
    """
    vf = valid.to(s_logq.dtype)
    # Finite stand-ins at pads (0) so no -inf - -inf or 0 * inf appears, forward or backward;
    # every pad term is then multiplied by a zero mass.
    tl = t_logp.masked_fill(~valid, 0.0)
    sl = s_logq.masked_fill(~valid, 0.0)
    p = tl.exp() * vf
    q = sl.exp() * vf
    if kind == "reverse_kld" and t_tail is None:
        log_z = _masked_logsumexp(s_logq, valid)
        sl_r = sl - log_z.unsqueeze(-1)
        q_r = sl_r.exp() * vf
        return (q_r * (sl_r - tl)).sum(-1)

    r = (1.0 - q.sum(-1)).clamp_min(0.0)  # the student's mass outside the kept set
    if t_tail is None:
        r = r * valid.any(-1).to(r.dtype)  # no teacher at this position: no off-support term
    if t_tail is not None:
        # Append the tail bucket to both sides; from here on every kind is a plain sum over slots.
        eps = _tail_eps(s_logq.dtype)
        q_tail = r.clamp_min(eps)
        tl = torch.cat([tl, t_tail.unsqueeze(-1)], dim=-1)
        sl = torch.cat([sl, q_tail.log().unsqueeze(-1)], dim=-1)
        p = torch.cat([p, t_tail.exp().unsqueeze(-1)], dim=-1)
        q = torch.cat([q, q_tail.unsqueeze(-1)], dim=-1)
    if kind not in DIVERGENCES:
        raise ValueError(f"kind must be one of {', '.join(DIVERGENCES)}; got {kind!r}")
    return DIVERGENCES[kind](Slots(p, q, tl, sl, None if t_tail is not None else r))


@dataclass
class Slots:
    """A divergence's inputs over the kept slots (B, T, K), or K + 1 with the tail bucket.

    p, q: teacher and student probabilities (0 at pads); tl, sl: their log-probabilities (finite
    stand-ins at pads); off: with ``renormalize``, the student's mass outside the teacher's
    support (B, T), whose exact contribution a full-vocabulary divergence adds; None with ``tail``
    (the bucket already holds it).
    """

    p: torch.Tensor
    q: torch.Tensor
    tl: torch.Tensor
    sl: torch.Tensor
    off: torch.Tensor | None


DIVERGENCES: dict[str, Callable[[Slots], torch.Tensor]] = {}
"""The KD divergences by name (core.config.KDKind lists the names a study may choose)."""


def divergence(name: str):
    """Register a divergence (Slots -> (B, T)) under ``name``; a name is registered once."""

    def register(fn):
        if name in DIVERGENCES:
            raise ValueError(f"divergence {name!r} is registered twice")
        DIVERGENCES[name] = fn
        return fn

    return register


@divergence("nll")
def _nll(s: Slots) -> torch.Tensor:
    return -(s.p * s.sl).sum(-1)


@divergence("kld")
def _kld(s: Slots) -> torch.Tensor:
    return (s.p * (s.tl - s.sl)).sum(-1)


@divergence("reverse_kld")
def _reverse_kld(s: Slots) -> torch.Tensor:  # tail only: renormalize takes the route above
    return (s.q * (s.sl - s.tl)).sum(-1)


@divergence("mse")
def _mse(s: Slots) -> torch.Tensor:
    return (s.p - s.q).square().sum(-1)


@divergence("jsd")
def _jsd(s: Slots) -> torch.Tensor:
    log_m = torch.logaddexp(s.tl, s.sl) - _LOG2
    js = 0.5 * (s.p * (s.tl - log_m)).sum(-1) + 0.5 * (s.q * (s.sl - log_m)).sum(-1)
    return js if s.off is None else js + 0.5 * _LOG2 * s.off  # off-support: p = 0, m = q / 2


@divergence("tvd")
def _tvd(s: Slots) -> torch.Tensor:
    tv = 0.5 * (s.p - s.q).abs().sum(-1)
    return tv if s.off is None else tv + 0.5 * s.off


@torch.no_grad()
def _renormalized_teacher_probs(
    teacher_logprobs: torch.Tensor, tau: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """p = softmax_S(l / tau) (B, T, K), 0 at pads, and sum_S p log p (B, T).

    The teacher is a constant (no gradient flows to it), so this needs no masking tricks: pads
    are -inf, and a row without kept entries gets lse = -huge, hence p = 0 and no nan.
    """
    scaled = teacher_logprobs / _as_position_tensor(tau, teacher_logprobs) if (
        isinstance(tau, torch.Tensor) or tau != 1.0
    ) else teacher_logprobs
    lse = torch.logsumexp(scaled, dim=-1, keepdim=True).clamp_min(torch.finfo(scaled.dtype).min)
    t_logp = scaled - lse
    p = t_logp.exp()
    p_log_p = (p * t_logp.clamp_min(torch.finfo(t_logp.dtype).min)).sum(-1)  # pads: 0 * -huge = 0
    return p, p_log_p


def _sparse_kd(
    kind: str,
    teacher_logprobs: torch.Tensor,
    tau: float | torch.Tensor,
    normalization: str,
    s_logq: torch.Tensor,
    log_u: torch.Tensor | None = None,
) -> torch.Tensor:
    """Divergence (B, T) from the teacher's kept tau=1 log-probs and the gathered student log-probs.

    log_u: (B, T) log sum_v p_v^(1/tau), for ``tail`` at tau != 1 (``_teacher_logp``)."""
    teacher_logprobs = teacher_logprobs.to(s_logq.dtype)
    if normalization == "renormalize" and kind in ("nll", "kld"):
        # The hot path (the paper's setting): p is a constant, so the loss is a (B, T, K) dot
        # product with the student's gathered log-probs; pads have p = 0 and contribute nothing.
        p, p_log_p = _renormalized_teacher_probs(teacher_logprobs, tau)
        cross = -(p * s_logq).sum(-1)
        return cross if kind == "nll" else cross + p_log_p
    valid = teacher_logprobs > float("-inf")
    t_logp, t_tail = _teacher_logp(teacher_logprobs, valid, tau, normalization, log_u)
    return _divergence(kind, t_logp, t_tail, s_logq, valid)


def _check_kd_args(kind: str, normalization: str, temperature, student_temperature) -> None:
    if kind not in DIVERGENCES:
        raise ValueError(f"kind must be one of {', '.join(DIVERGENCES)}; got {kind!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {normalization!r}")
    for name, tau in (("temperature", temperature), ("student_temperature", student_temperature)):
        if isinstance(tau, torch.Tensor):
            continue  # per-position temperatures are produced (and checked) by adaptive_kd_loss
        _check_positive(name, tau)


def _float_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    """log_softmax over the vocabulary in at least float32 (float64 stays float64)."""
    return torch.log_softmax(x, dim=-1, dtype=_float_dtype(x))


# On CPU the vocabulary pass runs in row chunks of about this many elements (~1 MB in fp32), so
# each chunk's temporaries stay in cache; measured best among 2^16..2^20 at V = 4096 and 151,552
# (bench/kd_overhead.py machine). On accelerators one chunk (no Python loop).
_CPU_CHUNK_ELEMENTS = 1 << 18


def _row_chunks(num_rows: int, vocab_size: int, device: torch.device) -> range:
    rows = num_rows if device.type != "cpu" else max(1, _CPU_CHUNK_ELEMENTS // max(1, vocab_size))
    return range(0, num_rows, max(1, rows))


class _LogSoftmaxGather(torch.autograd.Function):
    """log_softmax(scale * logits)[index] without materialising the (N, V) log-probabilities.

    Forward: one logsumexp per row (chunked on CPU so the gather reads from cache); saves the
    logits and the (N,) normaliser. Backward: d/dz of sum_m g_m * logq_{i_m} is
    scale * (scatter(g) - softmax(scale * z) * sum_m g_m), written straight into the gradient:
    no zero-filled (N, V) buffer, no scatter over DRAM, no separate log_softmax backward.
    Same values as ``torch.log_softmax(scale * logits, -1).gather(-1, index)``.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor, scale: float) -> torch.Tensor:
        num_rows, vocab_size = logits.shape
        dtype = _float_dtype(logits)
        lse = torch.empty(num_rows, dtype=dtype, device=logits.device)
        out = torch.empty(index.shape, dtype=dtype, device=logits.device)
        chunks = _row_chunks(num_rows, vocab_size, logits.device)
        for s in chunks:
            x = logits[s : s + chunks.step].to(dtype)
            if scale != 1.0:
                x = x * scale
            lse_c = torch.logsumexp(x, dim=-1)
            lse[s : s + chunks.step] = lse_c
            torch.sub(x.gather(-1, index[s : s + chunks.step]), lse_c.unsqueeze(-1),
                      out=out[s : s + chunks.step])
        ctx.save_for_backward(logits, index, lse)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        logits, index, lse = ctx.saved_tensors
        scale = ctx.scale
        grad_out = grad_out.to(lse.dtype)
        neg_total = -grad_out.sum(-1, keepdim=True)
        grad = torch.empty_like(logits)
        chunks = _row_chunks(*logits.shape, logits.device)
        for s in chunks:
            rows = slice(s, s + chunks.step)
            x = logits[rows].to(lse.dtype)
            if scale != 1.0:
                x = x * scale
            p = torch.sub(x, lse[rows].unsqueeze(-1), out=grad[rows] if grad.dtype == lse.dtype else None)
            p.exp_().mul_(neg_total[rows]).scatter_add_(-1, index[rows], grad_out[rows])
            if scale != 1.0:
                p.mul_(scale)
            if p.data_ptr() != grad[rows].data_ptr():
                grad[rows] = p
        return grad, None, None


def log_softmax_gather(logits: torch.Tensor, index: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``log_softmax(scale * logits, -1).gather(-1, index)``, fused (see _LogSoftmaxGather).

    logits: (..., V) float; index: (..., M) int64 ids in [0, V); scale: a float (1 / tau_s).
    Returns (..., M) in float32 (float64 for float64 logits). Differentiable once w.r.t. logits.
    """
    lead = logits.shape[:-1]
    out = _LogSoftmaxGather.apply(
        logits.reshape(-1, logits.shape[-1]), index.reshape(-1, index.shape[-1]), float(scale)
    )
    return out.reshape(*lead, index.shape[-1])


def _gathered_student(
    student_logits: torch.Tensor,
    indices: torch.Tensor,
    student_temperature: float | torch.Tensor,
    student_logprobs: torch.Tensor | None,
) -> torch.Tensor:
    """The student's full-vocabulary log-probs at tau_s gathered at ``indices`` (B, T, K)."""
    if isinstance(student_temperature, torch.Tensor):
        # Per-position tau_s (NormKD, whose tau_s carries a gradient through std(z_S)).
        scaled = student_logits / _as_position_tensor(student_temperature, student_logits)
        return _log_softmax(scaled).gather(-1, indices)
    if student_temperature == 1.0 and student_logprobs is not None:
        return student_logprobs.gather(-1, indices)
    return log_softmax_gather(student_logits, indices, 1.0 / student_temperature)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_indices: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    kind: str,
    temperature: float | torch.Tensor = 1.0,
    student_temperature: float | torch.Tensor = 1.0,
    normalization: str = "renormalize",
    student_logprobs: torch.Tensor | None = None,
    teacher_log_u: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-position KD divergence between a sparse teacher and the student (module docstring).

    student_logits: (B, T, V) float. teacher_indices: (B, T, K) int64 vocabulary ids.
    teacher_logprobs: (B, T, K) float tau=1 log-probs over the full vocabulary, -inf = padding.
    temperature / student_temperature: floats, or (B, T) tensors for per-position temperatures.
    student_logprobs: (B, T, V) log_softmax(student_logits) if already computed (gathered from
    when student_temperature == 1); otherwise the student's log-softmax at tau_s is fused with the
    gather and never materialised.
    teacher_log_u: (B, T) log sum_v p_v^(1/temperature) over the full vocabulary (the store's
    log_u_<1/tau>): required by ``tail`` at a temperature other than 1.
    Returns (B, T) float32, the raw divergence in nats (no tau^2 factor).
    """
    _check_kd_args(kind, normalization, temperature, student_temperature)
    s_logq = _gathered_student(student_logits, teacher_indices, student_temperature, student_logprobs)
    return _sparse_kd(kind, teacher_logprobs, temperature, normalization, s_logq, teacher_log_u)


# ----------------------------------------------------------------------------------------------
# Adaptive temperatures


def _stat(teacher: SparseTeacherBatch, key: str, method: str) -> torch.Tensor:
    if key not in teacher.stats:
        have = ", ".join(sorted(teacher.stats)) or "none"
        raise ValueError(
            f"{method} needs the teacher statistic {key!r} (computed over the full vocabulary when "
            f"the logits were extracted); the teacher batch has: {have}"
        )
    stat = teacher.stats[key]
    return stat.to(_float_dtype(stat))


def adakd_sd_reference(teacher: SparseTeacherBatch) -> torch.Tensor:
    """AdaKD_SD's default s_ref (0-d tensor): mean of stats["std"] over positions with a kept entry.

    A batch-level statistic (every other part of the loss is per position): to evaluate a batch in
    pieces with the whole batch's reference, compute it once here and pass it to
    ``distillation_loss(..., adakd_sd_batch_ref=...)`` (core.fused_loss does, per row chunk).
    """
    s = _stat(teacher, "std", "adakd_sd")
    has = (teacher.logprobs > float("-inf")).any(-1).to(s.dtype)
    return (s * has).sum() / has.sum().clamp_min(1.0)


def adakd_temperature(
    teacher: SparseTeacherBatch, kd: KDConfig, vocab_size: int,
    adakd_sd_batch_ref: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-position teacher temperature (B, T) of AdaKD_SD / AdaKD_H (our definitions).

    No published definition of these methods was found (PAPER.md), so pdspace defines them, in
    the spirit of NormKD / logit standardisation: a sharper teacher gets a higher temperature.

    - adakd_sd: tau = clip(temperature * s / s_ref, adakd_tau_min, adakd_tau_max), with s the std
      of the teacher's full-vocabulary logits (stats["std"]) and s_ref = adakd_sd_ref, or the mean
      of s over the batch's positions with any kept entry when None (``adakd_sd_reference``;
      ``adakd_sd_batch_ref``, if given, replaces that mean). Dividing the logits by tau
      standardises their spread: z / tau = (z / s) * (s_ref / temperature).
    - adakd_h: tau = clip(adakd_tau_max - (adakd_tau_max - adakd_tau_min) * H / log V, min, max),
      with H the teacher's full-distribution entropy in nats (stats["entropy"]): a one-hot teacher
      gets adakd_tau_max, a uniform one adakd_tau_min, linear in the normalised entropy.
    """
    if kd.adaptive == "adakd_sd":
        s = _stat(teacher, "std", kd.adaptive)
        if kd.adakd_sd_ref is not None:
            s_ref = torch.as_tensor(kd.adakd_sd_ref, dtype=s.dtype, device=s.device)
        elif adakd_sd_batch_ref is not None:
            s_ref = adakd_sd_batch_ref.to(s.dtype)
        else:
            s_ref = adakd_sd_reference(teacher)
        tau = kd.temperature * s / s_ref.clamp_min(1e-12)
    elif kd.adaptive == "adakd_h":
        h = _stat(teacher, "entropy", kd.adaptive)
        frac = h / math.log(vocab_size)
        tau = kd.adakd_tau_max - (kd.adakd_tau_max - kd.adakd_tau_min) * frac
    else:
        raise ValueError(f"adakd_temperature needs adaptive adakd_sd or adakd_h, got {kd.adaptive!r}")
    return tau.clamp(kd.adakd_tau_min, kd.adakd_tau_max)


def adaptive_kd_loss(
    student_logits: torch.Tensor,
    teacher: SparseTeacherBatch,
    kd: KDConfig,
    student_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-position KD term (B, T) with per-position temperatures (kd.adaptive must be set).

    All four use kd.kind (KL, i.e. "kld", in their papers) and kd.normalization.

    - normkd (Chi et al. 2023): tau_T = t_norm * stats["std"], tau_S = t_norm * std(z_S) (std of
      the student's logits over the vocabulary, unbiased as torch.std, not detached, as in the
      official code). Loss tau_T^2 * D(p at tau_T || softmax(z_S / tau_S)). Costs one extra
      (B, T, V) log-softmax.
    - wttm (Zheng & Yang 2024): p_hat = p^gamma / sum p^gamma over the full vocabulary, student
      unscaled; loss wttm_beta * U_gamma * D(p_hat || q) with U_gamma = exp(stats[log_u_<gamma>]),
      no tau^2. renormalize: p_hat over S = softmax(gamma * l_S) (the truncated teacher at
      tau = 1/gamma). tail: exact, p_hat_v = exp(gamma * l_v) / U_gamma on S and the rest in the
      tail bucket (U_gamma covers the full vocabulary).
    - adakd_sd, adakd_h: the teacher temperature of ``adakd_temperature`` (our definitions); the
      student uses kd.student_temperature; times tau^2 per position if scale_by_temperature_sq.

    student_logprobs: (B, T, V) log_softmax(student_logits) if already computed (wttm and adakd_*
    with student_temperature 1 gather from it).
    """
    method = _adaptive_method(kd.adaptive)
    tau_s = method.student_temperature(kd)
    s_logq = None if tau_s is None else _gathered_student(student_logits, teacher.indices, tau_s, student_logprobs)
    return method.term(student_logits, teacher, kd, s_logq, None)


@dataclass(frozen=True)
class AdaptiveMethod:
    """A per-position temperature method (adaptive_kd_loss documents each).

    term(student_logits, teacher, kd, s_logq, adakd_sd_batch_ref) -> (B, T): the KD term given the
    student's log-probs gathered at the kept ids (s_logq; None for a method that builds its own).
    student_temperature(kd) -> the student temperature s_logq is gathered at, or None.
    """

    term: Callable[..., torch.Tensor]
    student_temperature: Callable[[KDConfig], float | None]


ADAPTIVE: dict[str, AdaptiveMethod] = {}
"""The adaptive temperatures by name (core.config.AdaptiveMethod lists the names a study may choose)."""


def adaptive(name: str, student_temperature: Callable[[KDConfig], float | None]):
    """Register a method's term function under ``name`` (see AdaptiveMethod); once per name."""

    def register(fn):
        if name in ADAPTIVE:
            raise ValueError(f"adaptive temperature {name!r} is registered twice")
        ADAPTIVE[name] = AdaptiveMethod(fn, student_temperature)
        return fn

    return register


def _adaptive_method(name: str | None) -> AdaptiveMethod:
    if name not in ADAPTIVE:
        raise ValueError(f"adaptive must be one of {', '.join(ADAPTIVE)}; got {name!r}")
    return ADAPTIVE[name]


def _student_temperature(kd: KDConfig) -> float | None:
    """The student temperature the KD term gathers at (None: the adaptive method builds its own)."""
    return kd.student_temperature if kd.adaptive is None else _adaptive_method(kd.adaptive).student_temperature(kd)


@adaptive("normkd", student_temperature=lambda kd: None)
def _normkd(student_logits, teacher, kd, s_logq, adakd_sd_batch_ref):
    tau_t = kd.t_norm * _stat(teacher, "std", "normkd").clamp_min(NORMKD_MIN_STD)
    tau_s = kd.t_norm * student_logits.to(_float_dtype(student_logits)).std(dim=-1)
    s_logq = _gathered_student(student_logits, teacher.indices, tau_s, None)
    log_u = _stat(teacher, format_t_norm(kd.t_norm), "normkd") if kd.normalization == "tail" else None
    return tau_t.square() * _sparse_kd(kd.kind, teacher.logprobs, tau_t, kd.normalization, s_logq, log_u)


@adaptive("wttm", student_temperature=lambda kd: 1.0)
def _wttm(student_logits, teacher, kd, s_logq, adakd_sd_batch_ref):
    log_u = _stat(teacher, format_gamma(kd.wttm_gamma), "wttm")
    if kd.normalization == "renormalize":
        div = _sparse_kd(kd.kind, teacher.logprobs, 1.0 / kd.wttm_gamma, "renormalize", s_logq)
    else:
        lp = teacher.logprobs.to(s_logq.dtype)
        valid = lp > float("-inf")
        t_logp, t_tail = tempered_tail(lp, valid, kd.wttm_gamma, log_u)
        div = _divergence(kd.kind, t_logp, t_tail, s_logq, valid)
    return kd.wttm_beta * log_u.exp() * div


@adaptive("adakd_sd", student_temperature=lambda kd: kd.student_temperature)
@adaptive("adakd_h", student_temperature=lambda kd: kd.student_temperature)
def _adakd(student_logits, teacher, kd, s_logq, adakd_sd_batch_ref):
    tau = adakd_temperature(teacher, kd, student_logits.shape[-1], adakd_sd_batch_ref)
    div = _sparse_kd(kd.kind, teacher.logprobs, tau, kd.normalization, s_logq)
    return tau.square() * div if kd.scale_by_temperature_sq else div


def _adaptive_term(
    student_logits: torch.Tensor,
    teacher: SparseTeacherBatch,
    kd: KDConfig,
    s_logq: torch.Tensor | None,
    adakd_sd_batch_ref: torch.Tensor | None = None,
) -> torch.Tensor:
    """adaptive_kd_loss given the student's gathered log-probs (None for a method that makes its own)."""
    return _adaptive_method(kd.adaptive).term(student_logits, teacher, kd, s_logq, adakd_sd_batch_ref)


def kd_loss_from_config(
    student_logits: torch.Tensor,
    teacher: SparseTeacherBatch,
    kd: KDConfig,
    student_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """The KD term (B, T) as it enters the loss: kd_loss or adaptive_kd_loss, tau^2 if asked."""
    if teacher.sampled:  # importance-sampled rows: core.sampled_kd's unbiased estimate (it checks kd)
        return sampled_teacher_term(teacher, kd, _gathered_student(student_logits, teacher.indices, 1.0,
                                                                    student_logprobs))
    if kd.adaptive is not None:
        return adaptive_kd_loss(student_logits, teacher, kd, student_logprobs)
    s_logq = _gathered_student(student_logits, teacher.indices, kd.student_temperature, student_logprobs)
    return _static_term(teacher, kd, s_logq)


def _static_term(teacher: SparseTeacherBatch, kd: KDConfig, s_logq: torch.Tensor) -> torch.Tensor:
    log_u = None
    if kd.normalization == "tail" and kd.temperature != 1.0:
        log_u = _stat(teacher, format_gamma(1.0 / kd.temperature), f"tail at temperature {kd.temperature:g}")
    div = _sparse_kd(kd.kind, teacher.logprobs, kd.temperature, kd.normalization, s_logq, log_u)
    return div * kd.temperature**2 if kd.scale_by_temperature_sq else div


# ----------------------------------------------------------------------------------------------
# The training loss


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: SparseTeacherBatch | None,
    alpha: float,
    kd: KDConfig,
    *,
    num_tokens: int | float | torch.Tensor | None = None,
    ignore_index: int = -100,
    adakd_sd_batch_ref: torch.Tensor | None = None,
) -> LossParts:
    """L = ((1 - alpha) * sum LM + alpha * sum KD) / N over non-ignored positions.

    student_logits: (B, T, V) float; labels: (B, T) int64 (``ignore_index`` = no target).
    teacher: the sparse teacher for the same positions, or None. alpha in [0, 1]. alpha == 0 or
    teacher None skips the KD term entirely (no teacher work): the loss is then sum LM / N
    (alpha is not applied to it), and kd_sum is a zero tensor.
    num_tokens: the normaliser N; default this micro-batch's non-ignored positions. With gradient
    accumulation pass the GLOBAL token count of the optimizer step, so that the sum of the
    micro-batches' losses equals the loss of the whole batch (one global normaliser).
    adakd_sd_batch_ref: 0-d tensor, AdaKD_SD's s_ref when kd.adakd_sd_ref is None (default: over
    these positions, ``adakd_sd_reference``); lets a batch evaluated in pieces use the whole
    batch's reference (core.fused_loss). Ignored by every other setting.
    The student's log-softmax is computed once (float32) and shared by both terms; it is fused
    with the gathers, so no (B, T, V) log-probability tensor is kept.
    """
    if not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    keep = labels != ignore_index
    count = keep.sum()
    norm = count.clamp_min(1) if num_tokens is None else num_tokens
    safe = torch.where(keep, labels, torch.zeros_like(labels)).unsqueeze(-1)
    use_kd = teacher is not None and float(alpha) > 0.0
    if use_kd and teacher.sampled:
        check_sampled_kd(kd)  # importance-sampled rows (core.sampled_kd): kld / nll at τ = 1 only
    # The student's log-softmax is computed once, fused with one gather of [label, kept ids]
    # (log_softmax_gather): the (B, T, V) log-probs are never materialised. Only a tempered or
    # NormKD student needs a second pass over the vocabulary.
    shares = use_kd and _student_temperature(kd) == 1.0
    index = torch.cat([safe, teacher.indices], dim=-1) if shares else safe
    gathered = log_softmax_gather(student_logits, index)
    keep_f = keep.to(gathered.dtype)
    lm_sum = (-gathered[..., 0] * keep_f).sum()
    if not use_kd:
        kd_sum = torch.zeros((), dtype=lm_sum.dtype, device=lm_sum.device)
        return LossParts(loss=lm_sum / norm, lm_sum=lm_sum, kd_sum=kd_sum, num_tokens=count)

    s_logq = gathered[..., 1:] if shares else None
    if kd.adaptive is not None:
        if s_logq is None and _student_temperature(kd) is not None:
            s_logq = _gathered_student(student_logits, teacher.indices, _student_temperature(kd), None)
        kd_pos = _adaptive_term(student_logits, teacher, kd, s_logq, adakd_sd_batch_ref)
    else:
        if s_logq is None:
            s_logq = _gathered_student(student_logits, teacher.indices, kd.student_temperature, None)
        kd_pos = sampled_teacher_term(teacher, kd, s_logq) if teacher.sampled else _static_term(teacher, kd, s_logq)
    kd_sum = (kd_pos * keep_f).sum()
    loss = ((1.0 - alpha) * lm_sum + alpha * kd_sum) / norm
    return LossParts(loss=loss, lm_sum=lm_sum, kd_sum=kd_sum, num_tokens=count)
