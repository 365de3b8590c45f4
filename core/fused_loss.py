"""Fused LM head + training loss: distillation_loss of ``hidden @ weight.T`` without (N, V) logits.

The unfused step materialises the student's (N, V) logits, keeps them for backward and then
allocates their (N, V) gradient: at N = 4096 tokens and V = 151,552 that is 2 x 2.5 GB in fp32,
far more than the model. ``linear_distillation_loss`` walks the N rows in chunks of
``chunk_size``: per chunk it computes the logits, evaluates ``core.losses.distillation_loss`` on
them (the same code, not a copy: every KD kind, normalisation and temperature comes from there),
takes the gradient with respect to the chunk's logits, and folds it straight into the gradients of
``hidden`` (d hidden_c = g_c @ weight) and ``weight`` (d weight += g_c^T @ hidden_c). The chunk
is then freed, so at most (chunk_size, V) logits and their gradient exist at once. The gradients
are computed during the forward pass (the same trick as Liger-Kernel's FusedLinearCrossEntropy);
backward only scales them by the incoming gradient. Costs: the two (N, D) / (V, D) gradient
buffers are held from forward to backward, and the loss cannot be differentiated twice.

One global normaliser: every chunk's loss is divided by the token count of the whole call (or the
``num_tokens`` passed in, for gradient accumulation), so the chunk losses sum to the loss of the
whole batch. The only batch-level quantity in the loss, AdaKD_SD's default reference std
(``kd.adakd_sd_ref`` None), is computed once over all N positions before chunking, so the result
equals ``distillation_loss(hidden @ weight.T, ...)`` up to floating-point summation order.

Precision: each chunk's logits are ``hidden_c @ weight.T`` as the caller's autocast makes them
(bf16 under bf16 autocast, like an autocast LM head), the loss is computed in float32 by
distillation_loss, and the weight gradient is accumulated in float32 (float64 for float64).
"""
from __future__ import annotations

import contextlib

import torch

from core.losses import KDConfig, LossParts, adakd_sd_reference, distillation_loss
from core.types import SparseTeacherBatch

DEFAULT_CHUNK_LOGITS = 128 * 151_552
"""Logits per chunk when chunk_size is None: rows = max(1, DEFAULT_CHUNK_LOGITS // V), i.e. 128
rows at V = 151,552 (74 MiB of fp32 logits; the chunk's gradient doubles it). bench/fused_loss.py
(CPU, fp32, N = 4096, D = 512, V = 151,552) measured rows 64 / 128 / 256: peak 8.2 / 9.75 / 12.9 %
of the unfused loss's, CPU time 1.10 / 0.94 / 0.94 x (numbers in its docstring): 128 meets the
issue's floors (<= 10 %, <= 1.0x); smaller chunks lose matrix-product efficiency. A smaller V gets
proportionally more rows (fewer, larger matrix products for the same memory)."""


def default_chunk_size(vocab_size: int) -> int:
    """Rows per chunk for a vocabulary of ``vocab_size``: about DEFAULT_CHUNK_LOGITS logits."""
    return max(1, DEFAULT_CHUNK_LOGITS // max(1, vocab_size))


def linear_distillation_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    teacher_indices: torch.Tensor | None,
    teacher_logprobs: torch.Tensor | None,
    *,
    alpha: float,
    kd: KDConfig,
    teacher_stats: dict[str, torch.Tensor] | None = None,
    teacher_sampled: bool = False,
    chunk_size: int | None = None,
    num_tokens: int | float | torch.Tensor | None = None,
    ignore_index: int = -100,
) -> LossParts:
    """``distillation_loss(hidden @ weight.T, labels, teacher, alpha, kd)``, chunked over rows.

    hidden: (N, D) float, the student's final (normed) hidden states; any leading shape (B, T, D)
    is flattened to N = B * T rows. weight: (V, D) float, the LM head (tied to the embeddings or
    not; V may include padding ids). labels: (N,) int64 target ids, ``ignore_index`` = no target.
    teacher_indices: (N, K) int64 and teacher_logprobs: (N, K) float, the sparse teacher as the
    logits store gives it (tau = 1 log-probs over the full vocabulary, -inf = padding), or both
    None for LM only. teacher_stats: {name: (N,) float}, the full-distribution statistics of
    SparseTeacherBatch.stats, needed by kd.adaptive (entropy, std, log_u_<gamma>).
    teacher_sampled: the rows are importance samples (SparseTeacherBatch.sampled, core.sampled_kd:
    teacher_logprobs are log-weights; needs the ``entropy`` statistic); the loss is then the
    sampled estimate, as in distillation_loss.
    alpha, kd, num_tokens, ignore_index: as in ``core.losses.distillation_loss`` (num_tokens is the
    normaliser; default the non-ignored positions of this call).
    chunk_size: rows per chunk; None = ``default_chunk_size(V)`` (128 rows at V = 151,552). Peak
    extra memory is about 2 * chunk_size * V floats (a chunk's logits and their gradient) plus the
    (N, D) and (V, D) gradients.

    Returns LossParts: ``loss`` is the 0-d scalar ((1 - alpha) * lm_sum + alpha * kd_sum) / N
    (lm_sum / N without KD) and is differentiable w.r.t. ``hidden`` and ``weight`` (once);
    ``lm_sum`` and ``kd_sum`` (nats, summed over non-ignored positions) are detached, for logging;
    ``num_tokens`` is the count of non-ignored positions (int64 tensor).
    """
    if (teacher_indices is None) != (teacher_logprobs is None):
        raise ValueError("teacher_indices and teacher_logprobs must both be given or both be None")
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if hidden.dim() < 1 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"expected hidden (N, D) and weight (V, D) with the same D; got hidden "
            f"{tuple(hidden.shape)} and weight {tuple(weight.shape)}"
        )
    lead = hidden.shape[:-1]
    if labels.shape != lead:
        raise ValueError(f"labels must have hidden's leading shape {tuple(lead)}, got {tuple(labels.shape)}")
    teacher = None
    if teacher_indices is not None:
        if teacher_indices.shape != teacher_logprobs.shape or teacher_indices.shape[:-1] != lead:
            raise ValueError(
                f"teacher_indices and teacher_logprobs must both be {tuple(lead)} + (K,); got "
                f"{tuple(teacher_indices.shape)} and {tuple(teacher_logprobs.shape)}"
            )
        stats = teacher_stats or {}
        for name, stat in stats.items():
            if stat.shape != lead:
                raise ValueError(f"teacher_stats[{name!r}] must be {tuple(lead)}, got {tuple(stat.shape)}")
        k = teacher_indices.shape[-1]
        teacher = SparseTeacherBatch(
            teacher_indices.reshape(-1, k), teacher_logprobs.reshape(-1, k),
            {name: stat.reshape(-1) for name, stat in stats.items()}, sampled=teacher_sampled,
        )
    labels = labels.reshape(-1)
    count = (labels != ignore_index).sum()
    norm = count.clamp_min(1) if num_tokens is None else num_tokens
    # The one batch-level statistic, over all N positions (only read by adakd_sd with no fixed ref).
    sd_ref = None
    if teacher is not None and float(alpha) > 0.0 and kd.adaptive == "adakd_sd" and kd.adakd_sd_ref is None:
        sd_ref = adakd_sd_reference(teacher)
    loss, lm_sum, kd_sum = _FusedLinearLoss.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, labels, teacher, alpha, kd, norm, sd_ref,
        chunk_size, ignore_index,
    )
    return LossParts(loss=loss, lm_sum=lm_sum, kd_sum=kd_sum, num_tokens=count)


def _teacher_rows(teacher: SparseTeacherBatch | None, rows: slice) -> SparseTeacherBatch | None:
    if teacher is None:
        return None
    return SparseTeacherBatch(
        teacher.indices[rows], teacher.logprobs[rows], {k: v[rows] for k, v in teacher.stats.items()},
        sampled=teacher.sampled,
    )


class _FusedLinearLoss(torch.autograd.Function):
    """(loss, lm_sum, kd_sum) of distillation_loss(hidden @ weight.T); gradients made in forward.

    Only ``loss`` is differentiable; backward returns the stored gradients times its grad_output.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, teacher, alpha, kd, norm, sd_ref, chunk_size, ignore_index):
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        need_grad = need_hidden or need_weight
        # Accumulate the weight gradient in float32 at least (a bf16 sum over N rows loses bits).
        acc_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_weight else None
        # One logits buffer for every chunk: a fresh (chunk_size, V) tensor per chunk is a fresh
        # mmap on CPU, and its page faults cost ~0.04 s per chunk at V = 151,552 (~4 % of the step).
        # Under autocast the product's dtype is autocast's, and out= is refused: allocate per chunk.
        buffer = None
        if not torch.is_autocast_enabled(hidden.device.type):
            rows_max = min(chunk_size, hidden.shape[0])
            buffer = torch.empty(rows_max, weight.shape[0], dtype=hidden.dtype, device=hidden.device)
        sums = None
        # max(1, N): an empty batch still runs one (empty) chunk, so the arguments are checked and
        # the sums come back as zero tensors of the right dtype.
        for start in range(0, max(1, hidden.shape[0]), chunk_size):
            rows = slice(start, start + chunk_size)
            hidden_c = hidden[rows]
            # forward runs under no_grad: a plain tensor (detach: a fresh leaf over the buffer)
            if buffer is None:
                logits = hidden_c @ weight.T
            else:
                logits = torch.matmul(hidden_c, weight.T, out=buffer[: hidden_c.shape[0]]).detach()
            with torch.enable_grad() if need_grad else contextlib.nullcontext():
                logits.requires_grad_(need_grad)
                parts = distillation_loss(
                    logits, labels[rows], _teacher_rows(teacher, rows), alpha, kd,
                    num_tokens=norm, ignore_index=ignore_index, adakd_sd_batch_ref=sd_ref,
                )
                chunk_sums = torch.stack([parts.loss, parts.lm_sum, parts.kd_sum]).detach()
                grad_logits = torch.autograd.grad(parts.loss, logits)[0] if need_grad else None
            del parts, logits  # the chunk's graph is gone: the buffer is free for the next chunk
            sums = chunk_sums if sums is None else sums + chunk_sums
            if need_hidden:
                grad_hidden[rows] = grad_logits @ weight
            if need_weight:
                grad_weight.addmm_(grad_logits.T.to(acc_dtype), hidden_c.to(acc_dtype))
            del grad_logits
        # Kept on ctx rather than save_for_backward: backward pops them, so the autograd engine
        # holds the only reference and can take the (V, D) buffer as weight.grad without a copy.
        ctx.grads = (grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        loss, lm_sum, kd_sum = (x.clone() for x in sums.unbind())  # three outputs, not views of one
        ctx.mark_non_differentiable(lm_sum, kd_sum)
        return loss, lm_sum, kd_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_lm, _grad_kd):
        if ctx.grads is None:
            raise RuntimeError(
                "linear_distillation_loss: backward was already run through this loss (its "
                "gradients are computed once, in forward, and handed over to the first backward)"
            )
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        # In place: no second (V, D) buffer.
        if grad_hidden is not None:
            grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss.to(grad_weight.dtype)).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None
