"""core.losses against dense numpy references written here, independently of the sparse code."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.losses import (
    ADAPTIVE_METHODS,
    KD_KINDS,
    NORMALIZATIONS,
    KDConfig,
    adakd_temperature,
    adaptive_kd_loss,
    distillation_loss,
    kd_loss,
    lm_loss,
    log_softmax_gather,
)
import core.losses as losses_module
from core.logits_math import row_stats, truncate_and_stats
from core.config import Truncation
from core.types import SparseTeacherBatch, format_gamma, format_t_norm

torch.set_num_threads(1)

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------
# Dense references (numpy, float64, one position at a time)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _xlogy_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """sum a * log(a / b) with 0 log 0 = 0."""
    m = a > 0
    return float(np.sum(a[m] * np.log(a[m] / b[m])))


def _bucket_div(kind: str, p: np.ndarray, q: np.ndarray) -> float:
    """A divergence between two distributions given as arrays over the same buckets."""
    if kind == "nll":
        m = p > 0
        return float(-np.sum(p[m] * np.log(q[m])))
    if kind == "kld":
        return _xlogy_ratio(p, q)
    if kind == "reverse_kld":
        return _xlogy_ratio(q, p)
    if kind == "mse":
        return float(np.sum((p - q) ** 2))
    if kind == "jsd":
        m = 0.5 * (p + q)
        return 0.5 * _xlogy_ratio(p, m) + 0.5 * _xlogy_ratio(q, m)
    if kind == "tvd":
        return 0.5 * float(np.abs(p - q).sum())
    raise AssertionError(kind)


def ref_position(kind, z, idx, lp, tau, tau_s, normalization, full=None):
    """Reference KD divergence at one position. z: (V,) student logits; idx, lp: (K,) teacher;
    full: (V,) the teacher's full-vocabulary logits (tail at tau != 1 tempers the WHOLE
    distribution, then buckets it into the kept ids and the rest)."""
    keep = np.isfinite(lp)
    idx, lp = idx[keep], lp[keep]
    q = _softmax(z / tau_s)  # full-vocabulary student
    V = z.shape[0]
    if normalization == "renormalize":
        p_s = _softmax(lp / tau) if len(lp) else np.zeros(0)
        if kind == "mse":  # over the kept entries only (documented choice)
            return float(np.sum((p_s - q[idx]) ** 2))
        if kind == "reverse_kld":  # student renormalised over the support (documented choice)
            q_s = q[idx] / q[idx].sum()
            return _xlogy_ratio(q_s, p_s)
        p = np.zeros(V)
        p[idx] = p_s
        return _bucket_div(kind, p, q)  # the full-vocabulary divergence
    if full is None:
        assert tau == 1.0, "tail at tau != 1: pass the full teacher"
        p_kept = np.exp(lp)
    else:
        p_kept = _softmax(full / tau)[idx]
    p = np.append(p_kept, 1.0 - p_kept.sum())
    qb = np.append(q[idx], 1.0 - q[idx].sum())
    return _bucket_div(kind, p, qb)


def ref_kd(kind, z, idx, lp, tau=1.0, tau_s=1.0, normalization="renormalize", full=None):
    """(B, T) reference; tau, tau_s may be floats or (B, T) arrays; full: (B, T, V) teacher logits."""
    B, T, _ = z.shape
    out = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            tb = tau[b, t] if isinstance(tau, np.ndarray) else tau
            ts = tau_s[b, t] if isinstance(tau_s, np.ndarray) else tau_s
            out[b, t] = ref_position(kind, z[b, t], idx[b, t], lp[b, t], tb, ts, normalization,
                                     None if full is None else full[b, t])
    return out


# ----------------------------------------------------------------------------------------------
# Inputs


def make_teacher(B=2, T=3, V=40, K=6, seed=0, pad=True, scale=2.0, dtype=torch.float64):
    """Full teacher logits (B, T, V) and its sorted top-K (indices, logprobs), some slots padded.

    Padded slots get index = the position's top id (a duplicate), which must not count twice.
    """
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(B, T, V, generator=g, dtype=dtype) * scale
    full_lp = torch.log_softmax(full, dim=-1)
    lp, idx = full_lp.topk(K, dim=-1)
    if pad:
        lp[0, 0, K - 2 :] = NEG_INF
        idx[0, 0, K - 2 :] = idx[0, 0, 0]
        lp[-1, -1, 1:] = NEG_INF
        idx[-1, -1, 1:] = 0
    return full, full_lp, idx, lp


def make_student(B=2, T=3, V=40, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, V, generator=g, dtype=dtype) * 1.5


def make_stats(full_logits: torch.Tensor, gammas=(0.8,), t_norms=()) -> dict[str, torch.Tensor]:
    lp = torch.log_softmax(full_logits, dim=-1)
    stats = {
        "entropy": -(lp.exp() * lp).sum(-1),
        "std": full_logits.std(dim=-1),
    }
    for gm in gammas:
        stats[format_gamma(gm)] = torch.logsumexp(gm * lp, dim=-1)
    for t in t_norms:
        stats[format_t_norm(t)] = torch.logsumexp(lp / (t * stats["std"]).unsqueeze(-1), dim=-1)
    return stats


def log_u(full_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """log sum_v p_v^(1/tau) over the full vocabulary (what a store keeps as log_u_<1/tau>)."""
    return torch.logsumexp(torch.log_softmax(full_logits, dim=-1) / tau, dim=-1)


# ----------------------------------------------------------------------------------------------
# kd_loss


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kind", KD_KINDS)
@pytest.mark.parametrize("tau,tau_s", [(1.0, 1.0), (2.0, 1.0), (0.5, 2.0)])
def test_kd_matches_dense_reference(kind, normalization, tau, tau_s):
    full, _, idx, lp = make_teacher()
    z = make_student()
    got = kd_loss(z, idx, lp, kind=kind, temperature=tau, student_temperature=tau_s, normalization=normalization,
                  teacher_log_u=log_u(full, tau))
    want = ref_kd(kind, z.numpy(), idx.numpy(), lp.numpy(), tau, tau_s, normalization, full.numpy())
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kind", KD_KINDS)
def test_float32_close_to_reference(kind, normalization):
    full, _, idx, lp = make_teacher(dtype=torch.float32, V=300, K=20)
    z = make_student(dtype=torch.float32, V=300)
    got = kd_loss(z, idx, lp, kind=kind, normalization=normalization, temperature=0.7,
                  teacher_log_u=log_u(full, 0.7))
    want = ref_kd(kind, z.double().numpy(), idx.numpy(), lp.double().numpy(), 0.7, 1.0, normalization,
                  full.double().numpy())
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kind", KD_KINDS)
def test_identical_distributions_give_zero(kind, normalization):
    # A full teacher (K = V) equal to the student: every divergence is 0, nll is the entropy.
    full, full_lp, _, _ = make_teacher(K=1)
    V = full.shape[-1]
    lp, idx = full_lp.topk(V, dim=-1)
    got = kd_loss(full, idx, lp, kind=kind, normalization=normalization)
    if kind == "nll":
        want = -(full_lp.exp() * full_lp).sum(-1)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    else:
        assert got.abs().max() < 1e-6


@pytest.mark.parametrize("kind", ["kld", "nll"])
def test_one_hot_teacher_is_cross_entropy(kind):
    z = make_student()
    labels = torch.randint(0, z.shape[-1], z.shape[:2], generator=torch.Generator().manual_seed(3))
    got = kd_loss(z, labels.unsqueeze(-1), torch.zeros(*labels.shape, 1, dtype=z.dtype), kind=kind)
    want = F.cross_entropy(z.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    torch.testing.assert_close(got, want)
    # The tail view agrees: a one-hot teacher has no dropped mass (up to the documented floor).
    got_tail = kd_loss(z, labels.unsqueeze(-1), torch.zeros(*labels.shape, 1, dtype=z.dtype), kind=kind,
                       normalization="tail")
    torch.testing.assert_close(got_tail, want, rtol=0, atol=1e-12)


def _dense_torch(kind, p, logq):
    """Full-vocabulary divergences with plain torch ops (K = V reference)."""
    q = logq.exp()
    logp = torch.where(p > 0, p.log(), torch.zeros_like(p))
    if kind == "nll":
        return -(p * logq).sum(-1)
    if kind == "kld":
        return F.kl_div(logq, p, reduction="none").sum(-1)
    if kind == "reverse_kld":
        return (q * (logq - p.log())).sum(-1)
    if kind == "mse":
        return ((p - q) ** 2).sum(-1)
    if kind == "jsd":
        m = (p + q) / 2
        return 0.5 * (p * (logp - m.log())).sum(-1) + 0.5 * (q * (logq - m.log())).sum(-1)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    raise AssertionError(kind)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kind", KD_KINDS)
def test_full_teacher_equals_dense_loss(kind, normalization):
    full, full_lp, _, _ = make_teacher(K=1)
    V = full.shape[-1]
    lp, idx = full_lp.topk(V, dim=-1)
    z = make_student()
    tau, tau_s = 1.7, 1.3
    got = kd_loss(z, idx, lp, kind=kind, temperature=tau, student_temperature=tau_s, normalization=normalization,
                  teacher_log_u=log_u(full, tau))
    want = _dense_torch(kind, torch.softmax(full / tau, -1), torch.log_softmax(z / tau_s, -1))
    # tail: the empty tail bucket is floored at ~1e-15 in float64.
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kind", KD_KINDS)
def test_padding_is_ignored(kind, normalization):
    full, _, idx, lp = make_teacher(pad=False, K=4)
    z = make_student()
    u = log_u(full, 0.8)
    base = kd_loss(z, idx, lp, kind=kind, normalization=normalization, temperature=0.8, teacher_log_u=u)
    # Append padded slots whose ids collide with kept ids or are arbitrary.
    pad_idx = torch.cat([idx, idx[..., :2], torch.zeros_like(idx[..., :1])], dim=-1)
    pad_lp = torch.cat([lp, torch.full_like(lp[..., :3], NEG_INF)], dim=-1)
    padded = kd_loss(z, pad_idx, pad_lp, kind=kind, normalization=normalization, temperature=0.8, teacher_log_u=u)
    torch.testing.assert_close(padded, base, rtol=1e-12, atol=1e-12)


def test_position_without_kept_entries():
    _, _, idx, lp = make_teacher(pad=False, K=3)
    lp[0, 0] = NEG_INF
    z = make_student().requires_grad_(True)
    for kind in KD_KINDS:
        ren = kd_loss(z, idx, lp, kind=kind)
        assert ren[0, 0] == 0 and torch.isfinite(ren).all()
        tail = kd_loss(z, idx, lp, kind=kind, normalization="tail")
        assert torch.isfinite(tail).all()
        (ren.sum() + tail.sum()).backward()
        assert torch.isfinite(z.grad).all()
        z.grad = None
    # tail: the teacher is all tail (mass 1), the student's tail bucket holds everything: KL = 0.
    assert kd_loss(z, idx, lp, kind="kld", normalization="tail")[0, 0].abs() < 1e-9


def test_tail_vs_renormalize_with_teacher_as_student():
    # Student = the full teacher: its buckets match the teacher's exactly under "tail" (KL 0),
    # while against the renormalised teacher KL = -log(kept mass) at tau = 1.
    full, full_lp, idx, lp = make_teacher(pad=False, K=5)
    tail = kd_loss(full, idx, lp, kind="kld", normalization="tail")
    ren = kd_loss(full, idx, lp, kind="kld", normalization="renormalize")
    kept = lp.exp().sum(-1)
    assert tail.abs().max() < 1e-9
    torch.testing.assert_close(ren, -kept.log())


@pytest.mark.parametrize("tau", [0.5, 2.0])
@pytest.mark.parametrize("kind", KD_KINDS)
def test_tail_at_temperature_is_the_tempered_full_teacher(kind, tau):
    # Issue 15: tail at tau != 1 uses the true off-support mass of the tempered FULL teacher, from
    # the statistic a store keeps (row_stats at extraction), and equals the dense computation:
    # temper the whole V-token teacher, then bucket it into the kept ids and everything else.
    g = torch.Generator().manual_seed(11)
    V = 30
    full = torch.randn(2, 3, V, generator=g, dtype=torch.float64) * 2.0
    idx, lp, _, stats = truncate_and_stats(full, Truncation(0.9, 6), gammas=[1.0 / tau])
    idx, lp = idx.reshape(2, 3, -1), lp.reshape(2, 3, -1)
    stats = {k: v.reshape(2, 3).double() for k, v in stats.items()}
    z = make_student(V=V)
    got = losses_module.kd_loss_from_config(z, SparseTeacherBatch(idx, lp.double(), stats),
                                            KDConfig(kind=kind, normalization="tail", temperature=tau))
    p_dense = torch.softmax(full / tau, -1)
    q = torch.softmax(z, -1)
    for b in range(2):
        for t in range(3):
            keep = torch.isfinite(lp[b, t])
            ids = idx[b, t][keep]
            p = torch.cat([p_dense[b, t, ids], 1 - p_dense[b, t, ids].sum(0, keepdim=True)])
            qb = torch.cat([q[b, t, ids], 1 - q[b, t, ids].sum(0, keepdim=True)])
            want = _bucket_div(kind, p.numpy(), qb.numpy())
            np.testing.assert_allclose(got[b, t].item(), want, rtol=2e-5, atol=1e-6)
    if kind == "nll":
        return  # a cross-entropy: not 0 at the teacher
    # the student equal to the teacher (at the student's tau = 1: q = the tempered teacher) scores 0
    same = losses_module.kd_loss_from_config(
        (full / tau).to(torch.float64), SparseTeacherBatch(idx, lp.double(), stats),
        KDConfig(kind=kind, normalization="tail", temperature=tau))
    assert same.abs().max() < 1e-5


def test_tail_bucket_is_the_true_off_support_mass():
    # The review's counter-example: at tau = 2 the pseudo-token tail gave 0.042 where the true
    # off-support mass was 0.64. Ours is the true mass.
    g = torch.Generator().manual_seed(3)
    full = torch.randn(1, 1, 200, generator=g, dtype=torch.float64) * 3.0
    idx, lp, _, stats = truncate_and_stats(full, Truncation(0.95, 10), gammas=[0.5])
    valid = torch.isfinite(lp)
    _, tail = losses_module.tempered_tail(lp.double(), valid, 0.5, stats["log_u_0.5"].double())
    p2 = torch.softmax(full.reshape(-1) / 2.0, -1)
    true_off = 1 - p2[idx.reshape(-1)[valid.reshape(-1)]].sum()
    np.testing.assert_allclose(tail.exp().item(), true_off.item(), rtol=1e-6)
    assert true_off > 0.3


def test_tail_at_temperature_without_the_statistic_is_refused():
    _, _, idx, lp = make_teacher()
    with pytest.raises(ValueError, match="log_u_2"):
        losses_module.kd_loss_from_config(make_student(), SparseTeacherBatch(idx, lp, {}),
                                          KDConfig(normalization="tail", temperature=0.5))
    with pytest.raises(ValueError, match="1/tau"):
        kd_loss(make_student(), idx, lp, kind="kld", normalization="tail", temperature=0.5)


def test_student_logprobs_are_reused():
    _, _, idx, lp = make_teacher()
    z = make_student()
    logq = torch.log_softmax(z, -1)
    a = kd_loss(z, idx, lp, kind="kld", student_logprobs=logq)
    # A marker: pass logprobs of other logits; with tau_s == 1 they are used as given.
    b = kd_loss(z, idx, lp, kind="kld", student_logprobs=torch.log_softmax(2 * z, -1))
    c = kd_loss(2 * z, idx, lp, kind="kld")
    torch.testing.assert_close(a, kd_loss(z, idx, lp, kind="kld"))
    torch.testing.assert_close(b, c)
    # ... and ignored when the student is tempered (a fresh log-softmax of z / tau_s is needed).
    d = kd_loss(z, idx, lp, kind="kld", student_temperature=2.0, student_logprobs=torch.zeros_like(z))
    torch.testing.assert_close(d, kd_loss(z, idx, lp, kind="kld", student_temperature=2.0))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kind", KD_KINDS)
def test_gradients_match_finite_differences(kind, normalization):
    _, _, idx, lp = make_teacher(B=1, T=2, V=9, K=4, seed=7)
    z = make_student(B=1, T=2, V=9, seed=8).requires_grad_(True)

    full = make_teacher(B=1, T=2, V=9, K=4, seed=7)[0]

    def fn(x):
        return kd_loss(x, idx, lp, kind=kind, normalization=normalization, temperature=1.5,
                       student_temperature=0.8, teacher_log_u=log_u(full, 1.5))

    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_adaptive_gradients_match_finite_differences(method):
    full, _, idx, lp = make_teacher(B=1, T=2, V=9, K=4, seed=7)
    teacher = SparseTeacherBatch(idx, lp, make_stats(full))
    z = make_student(B=1, T=2, V=9, seed=8).requires_grad_(True)
    kd = KDConfig(adaptive=method, adakd_sd_ref=2.0 if method == "adakd_sd" else None)
    assert torch.autograd.gradcheck(lambda x: adaptive_kd_loss(x, teacher, kd), (z,), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Adaptive temperatures


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_normkd_formula(normalization):
    full, full_lp, idx, lp = make_teacher(V=50, K=7)
    stats = make_stats(full, t_norms=(1.5,))
    z = make_student(V=50)
    kd = KDConfig(adaptive="normkd", t_norm=1.5, normalization=normalization)
    got = adaptive_kd_loss(z, SparseTeacherBatch(idx, lp, stats), kd)
    tau_t = 1.5 * full.numpy().std(axis=-1, ddof=1)
    tau_s = 1.5 * z.numpy().std(axis=-1, ddof=1)
    want = tau_t**2 * ref_kd("kld", z.numpy(), idx.numpy(), lp.numpy(), tau_t, tau_s, normalization, full.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)


def test_normkd_tail_with_the_stores_statistic_is_exact():
    # Issue 15: NormKD's teacher at tau_T = t_norm * std(z_T) with the TRUE off-support mass, from
    # the statistic the extraction computes (row_stats), equals the dense computation; a student
    # equal to the teacher scores 0, where the renormalised composition puts its minimum elsewhere.
    g = torch.Generator().manual_seed(5)
    V = 40
    full = torch.randn(2, 3, V, generator=g, dtype=torch.float64) * 2.0
    idx, lp, _, stats = truncate_and_stats(full, Truncation(0.95, 8), gammas=[], t_norms=[2.0])
    idx, lp = idx.reshape(2, 3, -1), lp.reshape(2, 3, -1).double()
    stats = {k: v.reshape(2, 3).double() for k, v in stats.items()}
    teacher = SparseTeacherBatch(idx, lp, stats)
    z = make_student(V=V)
    kd = KDConfig(adaptive="normkd", t_norm=2.0, normalization="tail")
    got = adaptive_kd_loss(z, teacher, kd)
    tau_t = 2.0 * full.std(-1)
    tau_s = 2.0 * z.std(-1)
    want = np.zeros((2, 3))
    for b in range(2):
        for t in range(3):
            p_dense = torch.softmax(full[b, t] / tau_t[b, t], -1)
            q = torch.softmax(z[b, t] / tau_s[b, t], -1)
            ids = idx[b, t][torch.isfinite(lp[b, t])]
            p = torch.cat([p_dense[ids], 1 - p_dense[ids].sum(0, keepdim=True)])
            qb = torch.cat([q[ids], 1 - q[ids].sum(0, keepdim=True)])
            want[b, t] = tau_t[b, t].item() ** 2 * _xlogy_ratio(p.numpy(), qb.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    # the teacher itself as the student: 0 with the exact tail, far from 0 renormalised
    assert adaptive_kd_loss(full, teacher, kd).abs().max() < 1e-4
    renorm = adaptive_kd_loss(full, teacher, KDConfig(adaptive="normkd", t_norm=2.0))
    assert renorm.min() > 1.0


def test_row_stats_normkd_normaliser():
    full = torch.randn(5, 64, generator=torch.Generator().manual_seed(2)) * 3
    stats = row_stats(full, [], t_norms=[2.0, 0.5])
    lp = torch.log_softmax(full.double(), -1)
    for t in (2.0, 0.5):
        want = torch.logsumexp(lp / (t * full.double().std(-1, keepdim=True)), -1)
        torch.testing.assert_close(stats[format_t_norm(t)].double(), want, rtol=1e-5, atol=1e-5)


def test_normkd_full_teacher_is_published_formula():
    # K = V: tau_T^2 * KL(softmax(z_T / tau_T) || softmax(z_S / tau_S)), Chi et al. 2023.
    full, full_lp, _, _ = make_teacher(K=1)
    lp, idx = full_lp.topk(full.shape[-1], dim=-1)
    z = make_student()
    got = adaptive_kd_loss(z, SparseTeacherBatch(idx, lp, make_stats(full)), KDConfig(adaptive="normkd"))
    tt = 2.0 * full.std(-1, keepdim=True)
    ts = 2.0 * z.std(-1, keepdim=True)
    want = F.kl_div(torch.log_softmax(z / ts, -1), torch.softmax(full / tt, -1), reduction="none").sum(-1)
    torch.testing.assert_close(got, tt.squeeze(-1) ** 2 * want)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_wttm_formula(normalization):
    full, full_lp, idx, lp = make_teacher(V=50, K=7)
    gamma, beta = 0.7, 2.5
    stats = make_stats(full, gammas=(gamma,))
    z = make_student(V=50)
    kd = KDConfig(adaptive="wttm", wttm_gamma=gamma, wttm_beta=beta, normalization=normalization)
    got = adaptive_kd_loss(z, SparseTeacherBatch(idx, lp, stats), kd)
    zn, idxn, lpn, fulln = z.numpy(), idx.numpy(), lp.numpy(), full_lp.numpy()
    want = np.zeros((2, 3))
    for b in range(2):
        for t in range(3):
            keep = np.isfinite(lpn[b, t])
            ids, l = idxn[b, t][keep], lpn[b, t][keep]
            u = np.exp(gamma * fulln[b, t]).sum()  # U_gamma over the full vocabulary
            q = _softmax(zn[b, t])
            if normalization == "renormalize":
                p = np.zeros(50)
                p[ids] = _softmax(gamma * l)
                kl = _xlogy_ratio(p, q)
            else:
                p_hat = np.exp(gamma * l) / u  # exact p^gamma / sum p^gamma on S
                kl = _xlogy_ratio(np.append(p_hat, 1 - p_hat.sum()), np.append(q[ids], 1 - q[ids].sum()))
            want[b, t] = beta * u * kl
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)


def test_wttm_full_teacher_is_published_formula():
    # K = V: beta * U_gamma * KL(p^gamma / U_gamma || q), Zheng & Yang 2024.
    full, full_lp, _, _ = make_teacher(K=1)
    lp, idx = full_lp.topk(full.shape[-1], dim=-1)
    z = make_student()
    for normalization in NORMALIZATIONS:
        kd = KDConfig(adaptive="wttm", wttm_gamma=0.8, wttm_beta=1.6, normalization=normalization)
        got = adaptive_kd_loss(z, SparseTeacherBatch(idx, lp, make_stats(full)), kd)
        u = (0.8 * full_lp).exp().sum(-1)
        p_hat = torch.softmax(0.8 * full_lp, -1)
        want = 1.6 * u * F.kl_div(torch.log_softmax(z, -1), p_hat, reduction="none").sum(-1)
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("scale", [False, True])
def test_adakd_sd_formula(scale):
    full, _, idx, lp = make_teacher(V=50, K=7)
    stats = make_stats(full)
    z = make_student(V=50)
    kd = KDConfig(adaptive="adakd_sd", temperature=1.2, adakd_tau_min=0.6, adakd_tau_max=1.8,
                  scale_by_temperature_sq=scale)
    teacher = SparseTeacherBatch(idx, lp, stats)
    s = full.numpy().std(axis=-1, ddof=1)
    tau = np.clip(1.2 * s / s.mean(), 0.6, 1.8)  # every position has kept entries here
    np.testing.assert_allclose(adakd_temperature(teacher, kd, 50).numpy(), tau, rtol=1e-12)
    want = ref_kd("kld", z.numpy(), idx.numpy(), lp.numpy(), tau, 1.0, "renormalize")
    if scale:
        want = want * tau**2
    np.testing.assert_allclose(adaptive_kd_loss(z, teacher, kd).numpy(), want, rtol=1e-9)
    # A fixed reference std.
    kd_ref = KDConfig(adaptive="adakd_sd", adakd_sd_ref=4.0, adakd_tau_min=0.1, adakd_tau_max=10.0)
    np.testing.assert_allclose(adakd_temperature(teacher, kd_ref, 50).numpy(), s / 4.0, rtol=1e-12)


def test_adakd_h_formula():
    full, _, idx, lp = make_teacher(V=50, K=7, scale=3.0)
    stats = make_stats(full)
    z = make_student(V=50)
    kd = KDConfig(adaptive="adakd_h", adakd_tau_min=0.5, adakd_tau_max=2.0,
                  kind="jsd", student_temperature=1.5)
    teacher = SparseTeacherBatch(idx, lp, stats)
    h = stats["entropy"].numpy()
    tau = np.clip(2.0 - 1.5 * h / math.log(50), 0.5, 2.0)
    np.testing.assert_allclose(adakd_temperature(teacher, kd, 50).numpy(), tau, rtol=1e-12)
    want = ref_kd("jsd", z.numpy(), idx.numpy(), lp.numpy(), tau, 1.5, "renormalize")
    np.testing.assert_allclose(adaptive_kd_loss(z, teacher, kd).numpy(), want, rtol=1e-9)
    # The ends of the map: one-hot teacher -> tau_max, uniform -> tau_min.
    ends = SparseTeacherBatch(idx[:1, :2], lp[:1, :2], {"entropy": torch.tensor([[0.0, math.log(50)]])})
    np.testing.assert_allclose(adakd_temperature(ends, kd, 50).numpy(), [[2.0, 0.5]])


@pytest.mark.parametrize("method,key", [("normkd", "std"), ("wttm", "log_u_0.8"), ("adakd_sd", "std"),
                                        ("adakd_h", "entropy")])
def test_adaptive_needs_its_statistic(method, key):
    _, _, idx, lp = make_teacher()
    with pytest.raises(ValueError, match=key):
        adaptive_kd_loss(make_student(), SparseTeacherBatch(idx, lp, {}), KDConfig(adaptive=method))


# ----------------------------------------------------------------------------------------------
# KDConfig


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": 0}, "temperature must be > 0 \\(got 0\\)"),
    ({"student_temperature": -1.0}, "student_temperature must be > 0"),
    ({"kind": "kl"}, "nll, kld, mse, reverse_kld, jsd, tvd"),
    ({"normalization": "full"}, "renormalize, tail"),
    ({"adaptive": "ctkd"}, "normkd, wttm, adakd_sd, adakd_h"),
    ({"t_norm": 0.0}, "t_norm must be > 0"),
    ({"wttm_gamma": float("nan")}, "wttm_gamma must be > 0"),
    ({"adakd_tau_min": 2.0, "adakd_tau_max": 1.0}, "adakd_tau_max must be >= adakd_tau_min"),
    ({"adaptive": "normkd", "temperature": 2.0}, "temperature is not used"),
    ({"adaptive": "wttm", "student_temperature": 2.0}, "student_temperature is not used"),
    ({"adaptive": "normkd", "scale_by_temperature_sq": True}, "scale_by_temperature_sq"),
    ({"adaptive": "adakd_h", "normalization": "tail"}, "per-position τ"),
    ({"adaptive": "adakd_sd", "normalization": "tail"}, "use renormalize"),
])
def test_kd_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KDConfig(**kwargs)


def test_kd_loss_argument_validation():
    _, _, idx, lp = make_teacher()
    with pytest.raises(ValueError, match="kld"):
        kd_loss(make_student(), idx, lp, kind="kl")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kd_loss(make_student(), idx, lp, kind="kld", temperature=0.0)


# ----------------------------------------------------------------------------------------------
# The fused log-softmax + gather


@pytest.mark.parametrize("scale", [1.0, 0.4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_softmax_gather_matches_unfused(scale, dtype):
    g = torch.Generator().manual_seed(0)
    N, V, M = 300, 1000, 7  # 1000-wide rows: 131 rows per CPU chunk, so 3 chunks
    z = (torch.randn(N, V, generator=g, dtype=dtype) * 3).requires_grad_(True)
    index = torch.randint(0, V, (N, M), generator=g)
    index[:, 1] = index[:, 0]  # duplicates accumulate like gather's backward
    upstream = torch.randn(N, M, generator=g, dtype=dtype)
    got = log_softmax_gather(z, index, scale)
    (got * upstream).sum().backward()
    grad_got = z.grad.clone()
    z.grad = None
    want = torch.log_softmax(z * scale, -1).gather(-1, index)
    (want * upstream).sum().backward()
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(grad_got, z.grad, **tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_log_softmax_gather_cuda():
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(64, 5000, generator=g) * 3).cuda().requires_grad_(True)
    index = torch.randint(0, 5000, (64, 11), generator=g).cuda()
    out = log_softmax_gather(z, index, 0.5)
    out.square().sum().backward()
    zr = z.detach().clone().requires_grad_(True)
    ref = torch.log_softmax(zr * 0.5, -1).gather(-1, index)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(z.grad, zr.grad)


def test_log_softmax_gather_gradcheck(monkeypatch):
    monkeypatch.setattr(losses_module, "_CPU_CHUNK_ELEMENTS", 10)  # one row per chunk
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    index = torch.randint(0, 6, (2, 3, 4), generator=g)
    for scale in (1.0, 1.7):
        assert torch.autograd.gradcheck(lambda x: log_softmax_gather(x, index, scale), (z,))


def test_log_softmax_gather_bf16_logits():
    g = torch.Generator().manual_seed(2)
    z = (torch.randn(4, 50, 300, generator=g) * 4).to(torch.bfloat16).requires_grad_(True)
    index = torch.randint(0, 300, (4, 50, 9), generator=g)
    out = log_softmax_gather(z, index)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert z.grad.dtype == torch.bfloat16
    zf = z.detach().float().requires_grad_(True)
    torch.log_softmax(zf, -1).gather(-1, index).sum().backward()
    torch.testing.assert_close(out, torch.log_softmax(z.detach().float(), -1).gather(-1, index))
    torch.testing.assert_close(z.grad.float(), zf.grad, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------------------------
# lm_loss and distillation_loss


def _labels(B=2, T=3, V=40, seed=4):
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))
    labels[0, 1] = -100
    return labels


def test_lm_loss_is_cross_entropy():
    z = make_student()
    labels = _labels()
    got = lm_loss(torch.log_softmax(z, -1), labels)
    want = F.cross_entropy(z.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    torch.testing.assert_close(got, want)
    assert got[0, 1] == 0


@pytest.mark.parametrize("kd", [
    KDConfig(),
    KDConfig(kind="nll", temperature=2.0, scale_by_temperature_sq=True),
    KDConfig(kind="jsd", normalization="tail", student_temperature=2.0),
    KDConfig(adaptive="wttm"),
    KDConfig(adaptive="normkd", kind="tvd"),
    KDConfig(adaptive="adakd_h", scale_by_temperature_sq=True),
])
def test_distillation_loss_combines_sums(kd):
    full, _, idx, lp = make_teacher()
    teacher = SparseTeacherBatch(idx, lp, make_stats(full))
    z = make_student()
    labels = _labels()
    alpha = 0.7
    parts = distillation_loss(z, labels, teacher, alpha, kd)
    keep = (labels != -100).double()
    lm = lm_loss(torch.log_softmax(z, -1), labels)
    if kd.adaptive is None:
        kd_pos = kd_loss(z, idx, lp, kind=kd.kind, temperature=kd.temperature,
                         student_temperature=kd.student_temperature, normalization=kd.normalization)
        if kd.scale_by_temperature_sq:
            kd_pos = kd_pos * kd.temperature**2
    else:
        kd_pos = adaptive_kd_loss(z, teacher, kd)
    assert int(parts.num_tokens) == 5
    torch.testing.assert_close(parts.lm_sum, lm.sum())
    torch.testing.assert_close(parts.kd_sum, (kd_pos * keep).sum())
    torch.testing.assert_close(parts.loss, ((1 - alpha) * lm.sum() + alpha * (kd_pos * keep).sum()) / 5)


def test_kd_skipped_without_teacher_or_alpha():
    z = make_student()
    labels = _labels()
    lm = lm_loss(torch.log_softmax(z, -1), labels).sum()
    _, _, idx, lp = make_teacher()
    # A teacher whose content would make the KD term nan: alpha == 0 never looks at it.
    bad = SparseTeacherBatch(idx, torch.full_like(lp, float("nan")))
    for teacher, alpha in [(None, 0.0), (None, 0.5), (bad, 0.0)]:
        parts = distillation_loss(z, labels, teacher, alpha, KDConfig())
        torch.testing.assert_close(parts.loss, lm / 5)
        assert parts.kd_sum == 0
    with pytest.raises(ValueError, match="alpha must be in"):
        distillation_loss(z, labels, None, 1.5, KDConfig())


@pytest.mark.parametrize("kd", [KDConfig(), KDConfig(kind="tvd", normalization="tail"),
                                KDConfig(adaptive="adakd_sd", adakd_sd_ref=3.0)])
def test_loss_independent_of_micro_batch_split(kd):
    B, T, V = 4, 5, 30
    full, _, idx, lp = make_teacher(B=B, T=T, V=V, K=5)
    stats = make_stats(full)
    labels = _labels(B, T, V)
    labels[3, :2] = -100
    z = make_student(B=B, T=T, V=V).requires_grad_(True)
    teacher = SparseTeacherBatch(idx, lp, stats)
    whole = distillation_loss(z, labels, teacher, 0.6, kd)
    whole.loss.backward()
    grad_whole = z.grad.clone()
    z.grad = None
    total_tokens = int((labels != -100).sum())
    split_loss = 0.0
    for sl in (slice(0, 1), slice(1, 3), slice(3, 4)):
        part_teacher = SparseTeacherBatch(idx[sl], lp[sl], {k: v[sl] for k, v in stats.items()})
        parts = distillation_loss(z[sl], labels[sl], part_teacher, 0.6, kd, num_tokens=total_tokens)
        parts.loss.backward()
        split_loss = split_loss + parts.loss.detach()
    torch.testing.assert_close(split_loss, whole.loss.detach())
    torch.testing.assert_close(z.grad, grad_whole)


def test_distillation_loss_gradcheck():
    full, _, idx, lp = make_teacher(B=1, T=3, V=8, K=3, seed=11)
    labels = _labels(B=1, T=3, V=8)
    z = make_student(B=1, T=3, V=8, seed=12).requires_grad_(True)
    teacher = SparseTeacherBatch(idx, lp)
    fn = lambda x: distillation_loss(x, labels, teacher, 0.4, KDConfig(temperature=2.0)).loss  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-6)


def test_float32_logits_and_realistic_sizes_are_finite():
    # Heavy-tailed teacher, bf16-like extremes in student logits: values and gradients stay finite.
    g = torch.Generator().manual_seed(0)
    V, K = 4096, 100
    t_logits = torch.randn(2, 16, V, generator=g) * 3 + torch.randn(V, generator=g).abs() ** 2
    lp, idx = torch.log_softmax(t_logits, -1).topk(K, -1)
    lp[:, :, 60:] = NEG_INF
    z = (torch.randn(2, 16, V, generator=g) * 30).requires_grad_(True)
    labels = torch.randint(0, V, (2, 16), generator=g)
    for kind in KD_KINDS:
        for normalization in NORMALIZATIONS:
            stats = {format_gamma(1 / 0.05): torch.logsumexp(torch.log_softmax(t_logits, -1) / 0.05, -1)}
            parts = distillation_loss(z, labels, SparseTeacherBatch(idx, lp, stats), 0.9,
                                      KDConfig(kind=kind, normalization=normalization, temperature=0.05))
            parts.loss.backward()
            assert torch.isfinite(parts.loss) and torch.isfinite(z.grad).all(), (kind, normalization)
            z.grad = None


# ----------------------------------------------------------------------------------------------
# The divergence registry


def test_every_declared_kd_kind_is_registered_once():
    from core.config import KD_KINDS

    assert sorted(losses_module.DIVERGENCES) == sorted(KD_KINDS)
    with pytest.raises(ValueError, match="registered twice"):
        losses_module.divergence("kld")(lambda s: s.p.sum(-1))


def test_a_new_divergence_is_one_registered_function(monkeypatch):
    """What adding a KD loss takes: one registered function (plus its name in core.config's
    KDKind so that studies may choose it). Squared Hellinger, tail buckets, against a dense sum."""
    monkeypatch.setattr(losses_module, "DIVERGENCES", dict(losses_module.DIVERGENCES))

    @losses_module.divergence("hellinger")
    def _hellinger(s):
        return 0.5 * ((s.p.sqrt() - s.q.sqrt()) ** 2).sum(-1)

    torch.manual_seed(0)
    V, K = 40, 6
    z = torch.randn(2, 3, V)
    t = torch.randn(2, 3, V).log_softmax(-1)
    t_lp, t_idx = t.topk(K, dim=-1)
    got = losses_module.kd_loss(z, t_idx, t_lp, kind="hellinger", normalization="tail")
    q = z.softmax(-1)
    q_kept = q.gather(-1, t_idx)
    p_kept = t_lp.exp()
    p_all = torch.cat([p_kept, (1 - p_kept.sum(-1, keepdim=True))], -1)
    q_all = torch.cat([q_kept, (1 - q_kept.sum(-1, keepdim=True))], -1)
    want = 0.5 * ((p_all.sqrt() - q_all.sqrt()) ** 2).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_every_declared_adaptive_method_is_registered():
    from core.config import ADAPTIVE_METHODS

    assert sorted(losses_module.ADAPTIVE) == sorted(ADAPTIVE_METHODS)
    with pytest.raises(ValueError, match="registered twice"):
        losses_module.adaptive("wttm", student_temperature=lambda kd: 1.0)(lambda *a: None)
