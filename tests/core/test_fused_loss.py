"""core.fused_loss against a dense reference written here and against distillation_loss on dense logits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import core.fused_loss as fused_module
from core.fused_loss import linear_distillation_loss
from core.losses import ADAPTIVE_METHODS, KD_KINDS, NORMALIZATIONS, KDConfig, distillation_loss
from core.types import SparseTeacherBatch, format_gamma, format_t_norm

torch.set_num_threads(1)

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------
# Inputs


def make_inputs(N=23, D=12, V=60, K=7, seed=0, dtype=torch.float32, full=False):
    """hidden (N, D), weight (V, D), labels (N,), a sparse teacher (N, K) with stats (N,) (and,
    with ``full``, the teacher's full (N, V) float64 logits).

    Labels: two ignored positions (one at a chunk edge for chunk_size 7). Teacher: position 0
    keeps 3 entries (the pads repeat the top id, which must not count twice), position 5 keeps
    none, position 9 has an ignored label but a teacher.
    """
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g, dtype=dtype)
    weight = torch.randn(V, D, generator=g, dtype=dtype) * 0.5
    labels = torch.randint(0, V, (N,), generator=g)
    labels[[6, 9]] = -100
    t_logits = torch.randn(N, V, generator=g, dtype=torch.float64) * 2.0
    t_lp = torch.log_softmax(t_logits, dim=-1)
    lp, idx = t_lp.topk(K, dim=-1)
    lp[0, 3:] = NEG_INF
    idx[0, 3:] = idx[0, 0]
    lp[5, :] = NEG_INF
    idx[5, :] = 0
    stats = {
        "entropy": -(t_lp.exp() * t_lp).sum(-1),
        "std": t_logits.std(dim=-1),
        format_gamma(0.8): torch.logsumexp(0.8 * t_lp, dim=-1),
        format_gamma(0.5): torch.logsumexp(0.5 * t_lp, dim=-1),  # tail at tau = 2
        format_t_norm(2.0): torch.logsumexp(t_lp / (2.0 * t_logits.float().std(dim=-1).double()).unsqueeze(-1),
                                            dim=-1),  # NormKD with tail at t_norm = 2
    }
    stats = {k: v.float() for k, v in stats.items()}
    if full:
        return hidden, weight, labels, idx, lp.float(), stats, t_logits
    return hidden, weight, labels, idx, lp.float(), stats


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


# ----------------------------------------------------------------------------------------------
# Independent dense reference: full (N, V) logits, full log-softmax, the truncated teacher built
# per core.losses' docstring (renormalised over S, or S + one tail bucket), float64.


def dense_reference(logits, labels, idx, lp, *, alpha, kind, normalization, tau, tau_s, full):
    """The loss of the module docstring for kind in kld / nll / tvd, written out densely; full:
    the teacher's (N, V) logits (tail tempers the whole teacher, then buckets it)."""
    logits = logits.double()
    lp = lp.double()
    keep = labels != -100
    lm = -torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    logq = torch.log_softmax(logits / tau_s, -1)
    q = logq.exp()
    valid = lp > NEG_INF
    has = valid.any(-1)
    if normalization == "renormalize":
        # p over the full vocabulary: softmax of the kept l / tau, zero elsewhere.
        p_kept = torch.softmax(lp.masked_fill(~valid, NEG_INF) / tau, -1).nan_to_num(0.0) * valid
        p = torch.zeros_like(q).scatter_add(-1, idx, p_kept)
        logp = torch.where(p > 0, p, torch.ones_like(p)).log()
        if kind == "nll":
            div = -(p * logq).sum(-1)
        elif kind == "kld":
            div = (p * (logp - logq)).sum(-1)
        else:  # tvd over the full vocabulary
            div = 0.5 * (p - q).abs().sum(-1)
    else:
        # K + 1 buckets: the tempered full teacher on the kept entries, and the rest of its mass.
        p_kept = torch.softmax(full.double() / tau, -1).gather(-1, idx) * valid
        p = torch.cat([p_kept, (1.0 - p_kept.sum(-1)).unsqueeze(-1)], -1)
        q_kept = q.gather(-1, idx) * valid
        qb = torch.cat([q_kept, (1.0 - q_kept.sum(-1)).unsqueeze(-1)], -1)
        logp = torch.where(p > 0, p, torch.ones_like(p)).log()
        logqb = torch.where(qb > 0, qb, torch.ones_like(qb)).log()
        if kind == "nll":
            div = -(p * logqb).sum(-1)
        elif kind == "kld":
            div = (p * (logp - logqb)).sum(-1)
        else:
            div = 0.5 * (p - qb).abs().sum(-1)
    div = div * has  # a position without kept entries contributes no KD (documented)
    n = keep.sum().clamp_min(1)
    return ((1 - alpha) * (lm * keep).sum() + alpha * (div * keep).sum()) / n


def _tied_hidden(weight, N, seed=5):
    """Hidden states that themselves depend on the (tied) weight: an embedding lookup + mixing."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, weight.shape[0], (N,), generator=g)
    mix = torch.randn(weight.shape[1], weight.shape[1], generator=g, dtype=weight.dtype) / 3
    return torch.tanh(weight[ids] @ mix)


def _check(got_loss, want_loss, got_grads, want_grads):
    torch.testing.assert_close(got_loss.double(), want_loss.double(), rtol=1e-5, atol=1e-6)
    for got, want in zip(got_grads, want_grads):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-4 * scale)


# ----------------------------------------------------------------------------------------------
# Values and gradients


@pytest.mark.parametrize("chunk_size", [7, 64])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("tau,tau_s", [(1.0, 1.0), (2.0, 0.5)])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kind", ["kld", "nll", "tvd"])
def test_matches_dense_reference(kind, normalization, tau, tau_s, tied, chunk_size):
    hidden, weight, labels, idx, lp, stats, full = make_inputs(full=True)
    kd = KDConfig(kind=kind, normalization=normalization, temperature=tau, student_temperature=tau_s)
    grads = []
    losses = []
    for fused in (True, False):
        h, w = _leaves(hidden, weight)
        h_in = _tied_hidden(w, hidden.shape[0]) if tied else h
        if fused:
            loss = linear_distillation_loss(h_in, w, labels, idx, lp, alpha=0.7, kd=kd, chunk_size=chunk_size,
                                            teacher_stats=stats).loss
        else:
            loss = dense_reference(h_in.double() @ w.double().T, labels, idx, lp, alpha=0.7, kind=kind,
                                   normalization=normalization, tau=tau, tau_s=tau_s, full=full)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, [w] if tied else [h, w]))
    _check(losses[0], losses[1], grads[0], grads[1])


STATIC = [
    KDConfig(),
    KDConfig(temperature=2.0, student_temperature=0.5, scale_by_temperature_sq=True),
]
ADAPTIVE = [
    KDConfig(adaptive="normkd"),
    KDConfig(adaptive="wttm", wttm_gamma=0.8, wttm_beta=0.5),
    KDConfig(adaptive="adakd_sd", temperature=1.5),  # s_ref = mean over all N positions
    KDConfig(adaptive="adakd_sd", adakd_sd_ref=4.0, student_temperature=2.0, scale_by_temperature_sq=True),
    KDConfig(adaptive="adakd_h", student_temperature=0.7),
]


@pytest.mark.parametrize("setting", STATIC + ADAPTIVE, ids=lambda kd: f"{kd.adaptive}-{kd.temperature}")
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kind", KD_KINDS)
def test_matches_distillation_loss(kind, normalization, setting):
    import dataclasses

    if setting.adaptive in ("adakd_sd", "adakd_h") and normalization == "tail":
        pytest.skip("refused by KDConfig: AdaKD's per-position τ has no exact tail")
    kd = dataclasses.replace(setting, kind=kind, normalization=normalization)
    hidden, weight, labels, idx, lp, stats = make_inputs(dtype=torch.float64)
    results = []
    for fused in (True, False):
        h, w = _leaves(hidden, weight)
        if fused:
            parts = linear_distillation_loss(h, w, labels, idx, lp, alpha=0.6, kd=kd, teacher_stats=stats,
                                             chunk_size=5)
        else:
            parts = distillation_loss(h @ w.T, labels, SparseTeacherBatch(idx, lp, stats), 0.6, kd)
        results.append((parts, torch.autograd.grad(parts.loss, [h, w])))
    (got, got_grads), (want, want_grads) = results
    _check(got.loss, want.loss, got_grads, want_grads)
    torch.testing.assert_close(got.lm_sum, want.lm_sum.detach())
    torch.testing.assert_close(got.kd_sum, want.kd_sum.detach())
    assert got.num_tokens.item() == want.num_tokens.item() == 21


def test_every_adaptive_method_is_covered():
    assert {kd.adaptive for kd in ADAPTIVE} == set(ADAPTIVE_METHODS)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 100])
def test_chunk_size_does_not_change_the_result(chunk_size):
    hidden, weight, labels, idx, lp, stats = make_inputs(dtype=torch.float64)
    kd = KDConfig(kind="jsd", adaptive="adakd_sd")
    out = []
    for size in (chunk_size, 1000):
        h, w = _leaves(hidden, weight)
        loss = linear_distillation_loss(h, w, labels, idx, lp, alpha=0.5, kd=kd, teacher_stats=stats,
                                        chunk_size=size).loss
        out.append((loss, *torch.autograd.grad(loss, [h, w])))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_never_holds_more_than_a_chunk_of_logits(monkeypatch):
    seen = []

    def spy(student_logits, *args, **kwargs):
        seen.append(tuple(student_logits.shape))
        return distillation_loss(student_logits, *args, **kwargs)

    monkeypatch.setattr(fused_module, "distillation_loss", spy)
    hidden, weight, labels, idx, lp, _ = make_inputs()
    h, w = _leaves(hidden, weight)
    linear_distillation_loss(h, w, labels, idx, lp, alpha=0.5, kd=KDConfig(), chunk_size=7).loss.backward()
    assert seen == [(7, 60), (7, 60), (7, 60), (2, 60)]


def test_default_chunk_size_scales_with_the_vocabulary(monkeypatch):
    assert fused_module.default_chunk_size(151_552) == 128
    assert fused_module.default_chunk_size(10**9) == 1
    monkeypatch.setattr(fused_module, "DEFAULT_CHUNK_LOGITS", 10 * 60)
    seen = []

    def spy(student_logits, *args, **kwargs):
        seen.append(student_logits.shape[0])
        return distillation_loss(student_logits, *args, **kwargs)

    monkeypatch.setattr(fused_module, "distillation_loss", spy)
    hidden, weight, labels, idx, lp, _ = make_inputs()
    linear_distillation_loss(hidden, weight, labels, idx, lp, alpha=0.5, kd=KDConfig())
    assert seen == [10, 10, 3]


# ----------------------------------------------------------------------------------------------
# LM only, ignored positions, normaliser


@pytest.mark.parametrize("alpha,with_teacher", [(0.0, True), (0.5, False), (0.0, False)])
def test_lm_only_is_cross_entropy(alpha, with_teacher):
    hidden, weight, labels, idx, lp, _ = make_inputs()
    h, w = _leaves(hidden, weight)
    # adakd_sd without stats: fine, since KD is skipped entirely.
    kd = KDConfig(adaptive="adakd_sd")
    teacher = (idx, lp) if with_teacher else (None, None)
    parts = linear_distillation_loss(h, w, labels, *teacher, alpha=alpha, kd=kd, chunk_size=6)
    h2, w2 = _leaves(hidden, weight)
    want = F.cross_entropy((h2.double() @ w2.double().T), labels)
    _check(parts.loss, want, torch.autograd.grad(parts.loss, [h, w]), torch.autograd.grad(want, [h2, w2]))
    assert parts.kd_sum.item() == 0.0


def test_ignored_positions_have_no_gradient_and_all_ignored_gives_zero():
    hidden, weight, labels, idx, lp, _ = make_inputs()
    labels = torch.full_like(labels, -7)
    labels[:3] = 2  # only the first chunk (size 7) has targets
    h, w = _leaves(hidden, weight)
    parts = linear_distillation_loss(h, w, labels, idx, lp, alpha=0.5, kd=KDConfig(), chunk_size=7,
                                     ignore_index=-7)
    parts.loss.backward()
    assert h.grad[3:].abs().max() == 0 and h.grad[:3].abs().max() > 0
    assert parts.num_tokens.item() == 3

    h, w = _leaves(hidden, weight)
    parts = linear_distillation_loss(h, w, torch.full_like(labels, -100), idx, lp, alpha=0.5, kd=KDConfig())
    parts.loss.backward()
    assert parts.loss.item() == 0.0 and parts.num_tokens.item() == 0
    assert h.grad.abs().max() == 0 and w.grad.abs().max() == 0


def test_empty_batch_gives_zero():
    _, weight, _, _, _, _ = make_inputs()
    h, w = _leaves(torch.zeros(0, 12), weight)
    parts = linear_distillation_loss(h, w, torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long),
                                     torch.zeros(0, 3), alpha=0.5, kd=KDConfig())
    parts.loss.backward()
    assert parts.loss.item() == 0.0 and h.grad.shape == (0, 12) and w.grad.abs().max() == 0


def test_global_normaliser_makes_micro_batches_add_up():
    hidden, weight, labels, idx, lp, stats = make_inputs(dtype=torch.float64)
    kd = KDConfig(kind="tvd", adaptive="adakd_h")
    h, w = _leaves(hidden, weight)
    whole = linear_distillation_loss(h, w, labels, idx, lp, alpha=0.3, kd=kd, teacher_stats=stats).loss
    total = (labels != -100).sum()
    h2, w2 = _leaves(hidden, weight)
    halves = sum(
        linear_distillation_loss(h2[s], w2, labels[s], idx[s], lp[s], alpha=0.3, kd=kd,
                                 teacher_stats={k: v[s] for k, v in stats.items()}, num_tokens=total).loss
        for s in (slice(0, 10), slice(10, None))
    )
    _check(halves, whole, torch.autograd.grad(halves, [h2, w2]), torch.autograd.grad(whole, [h, w]))


# ----------------------------------------------------------------------------------------------
# Shapes, dtypes, autograd contract


def test_leading_batch_dims_are_flattened():
    hidden, weight, labels, idx, lp, stats = make_inputs(N=24)
    kd = KDConfig(adaptive="normkd")
    flat = linear_distillation_loss(hidden, weight, labels, idx, lp, alpha=0.5, kd=kd, teacher_stats=stats)
    shaped = linear_distillation_loss(
        hidden.view(4, 6, -1), weight, labels.view(4, 6), idx.view(4, 6, -1), lp.view(4, 6, -1), alpha=0.5,
        kd=kd, teacher_stats={k: v.view(4, 6) for k, v in stats.items()},
    )
    torch.testing.assert_close(shaped.loss, flat.loss)


def test_padded_vocabulary_size():
    # Qwen-sized padded head (151,552 rows), a few tokens: the shapes the benchmark uses.
    V = 151_552
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(6, 8, generator=g)
    weight = torch.randn(V, 8, generator=g) * 0.3
    idx = torch.randint(0, V, (6, 5), generator=g)
    lp = torch.log_softmax(torch.randn(6, 5, generator=g), -1) - 0.5
    labels = torch.tensor([0, V - 1, 151_000, -100, 7, 2])
    kd = KDConfig(normalization="tail")
    h, w = _leaves(hidden, weight)
    got = linear_distillation_loss(h, w, labels, idx, lp, alpha=0.5, kd=kd, chunk_size=4)
    got_grads = torch.autograd.grad(got.loss, [h, w])
    h2, w2 = _leaves(hidden, weight)
    want = distillation_loss(h2 @ w2.T, labels, SparseTeacherBatch(idx, lp), 0.5, kd)
    _check(got.loss, want.loss, got_grads, torch.autograd.grad(want.loss, [h2, w2]))


def test_bf16_inputs_accumulate_in_float32():
    hidden, weight, labels, idx, lp, _ = make_inputs()
    h, w = _leaves(hidden.bfloat16(), weight.bfloat16())
    linear_distillation_loss(h, w, labels, idx, lp, alpha=0.5, kd=KDConfig(), chunk_size=4).loss.backward()
    assert h.grad.dtype == w.grad.dtype == torch.bfloat16
    h32, w32 = _leaves(h.float(), w.float())
    linear_distillation_loss(h32, w32, labels, idx, lp, alpha=0.5, kd=KDConfig(), chunk_size=4).loss.backward()
    torch.testing.assert_close(w.grad.float(), w32.grad, rtol=0.05, atol=0.02 * w32.grad.abs().max().item())


def test_bf16_autocast_matches_the_autocast_lm_head():
    # The trainer runs the model under autocast: the fused head must give the loss of the
    # autocast logits (bf16 matmul, then the float32 loss); its weight gradient is accumulated in
    # float32, so it is compared at bf16 precision.
    hidden, weight, labels, idx, lp, _ = make_inputs()
    out = []
    for fused in (True, False):
        h, w = _leaves(hidden, weight)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if fused:
                loss = linear_distillation_loss(h, w, labels, idx, lp, alpha=0.5, kd=KDConfig(), chunk_size=4).loss
            else:
                logits = h @ w.T
        if not fused:
            loss = distillation_loss(logits.float(), labels, SparseTeacherBatch(idx, lp), 0.5, KDConfig()).loss
        out.append((loss, *torch.autograd.grad(loss, [h, w])))
    (loss, gh, gw), (want, want_gh, want_gw) = out
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    assert gh.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(gh, want_gh, rtol=0.02, atol=0.01 * want_gh.abs().max().item())
    torch.testing.assert_close(gw, want_gw, rtol=0.02, atol=0.01 * want_gw.abs().max().item())


def test_grad_output_scales_and_sums_are_detached():
    hidden, weight, labels, idx, lp, _ = make_inputs(dtype=torch.float64)
    grads = []
    for factor in (1.0, -2.5):
        h, w = _leaves(hidden, weight)
        parts = linear_distillation_loss(h, w, labels, idx, lp, alpha=0.5, kd=KDConfig())
        assert parts.loss.requires_grad and not parts.lm_sum.requires_grad and not parts.kd_sum.requires_grad
        (factor * parts.loss).backward()
        grads.append((h.grad / factor, w.grad / factor))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_second_backward_is_refused():
    hidden, weight, labels, idx, lp, _ = make_inputs()
    h, w = _leaves(hidden, weight)
    loss = linear_distillation_loss(h, w, labels, idx, lp, alpha=0.5, kd=KDConfig()).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already run"):
        loss.backward()


def test_without_grad_only_the_value():
    hidden, weight, labels, idx, lp, _ = make_inputs()
    h, w = _leaves(hidden, weight)
    want = linear_distillation_loss(h, w, labels, idx, lp, alpha=0.5, kd=KDConfig()).loss
    with torch.no_grad():
        got = linear_distillation_loss(h, w, labels, idx, lp, alpha=0.5, kd=KDConfig()).loss
    assert not got.requires_grad
    torch.testing.assert_close(got, want.detach())


@pytest.mark.parametrize("change,match", [
    (dict(teacher_logprobs=None), "both be given"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(weight=torch.zeros(60, 5)), "same D"),
    (dict(labels=torch.zeros(22, dtype=torch.long)), "labels"),
    (dict(teacher_indices=torch.zeros(23, 6, dtype=torch.long)), "teacher_indices"),
    (dict(teacher_stats={"std": torch.ones(22)}), "teacher_stats"),
    (dict(alpha=1.5), "alpha"),
])
def test_bad_arguments(change, match):
    hidden, weight, labels, idx, lp, _ = make_inputs()
    args = dict(hidden=hidden, weight=weight, labels=labels, teacher_indices=idx, teacher_logprobs=lp,
                alpha=0.5, kd=KDConfig())
    args.update(change)
    with pytest.raises(ValueError, match=match):
        linear_distillation_loss(**args)
