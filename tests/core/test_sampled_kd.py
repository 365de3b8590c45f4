"""Sampled KD (core.sampled_kd): unbiasedness of the loss and its gradient, the draws' counts and
weights, the sampled store (round trip, reproducibility, what it serves), the refused settings, and
a tiny run of the real trainer on a sampled store (fused and reference loss paths)."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from tests.core.tiny import tiny_llama
from core.config import KDConfig, Truncation, check_sampled_kd
from core.fused_loss import linear_distillation_loss
from core.logits import LogitsStore, StoreMismatchError, StoreTeacher, extract_logits
from core.logits_codec import VALUE_MAX_ABS_ERROR
from core.losses import distillation_loss
from core.sampled_kd import (batch_generator, log_weight_offset, sample_and_stats, sample_rows,
                             sampled_kd_term)
from core.settings import ConfigError
from core.types import SparseTeacherBatch

torch.set_num_threads(1)

V_SMALL = 20


def _teacher_student(seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher_logits = torch.randn(V_SMALL, generator=g, dtype=torch.float64) * 2.0
    student_logits = torch.randn(V_SMALL, generator=g, dtype=torch.float64)
    return teacher_logits, student_logits


def _sampled_batch(teacher_logits, rows, samples, tau_p, seed):
    """`rows` independent sampled rows of one teacher, as a (1, rows, K) sampled SparseTeacherBatch."""
    logits = teacher_logits.float().expand(rows, -1).contiguous()
    keeps = Truncation(samples=samples, proposal_temperature=tau_p)
    idx, vals, counts, stats = sample_and_stats(logits, keeps, [], generator=torch.Generator().manual_seed(seed))
    log_w = vals + log_weight_offset(logits.shape[-1], tau_p)
    return SparseTeacherBatch(idx[None], log_w[None], {k: v[None] for k, v in stats.items()}, sampled=True), counts


@pytest.mark.parametrize("tau_p", [1.0, 2.0])
def test_sampled_kl_and_its_gradient_are_unbiased(tau_p):
    """Over 20,000 independent draws the mean estimate of KL(p || q) and of its gradient w.r.t. the
    student logits match the dense full-vocabulary values within 4 Monte Carlo standard errors."""
    t, z = _teacher_student()
    p, logq = torch.softmax(t, -1), torch.log_softmax(z, -1)
    dense_kl = float((p * (p.log() - logq)).sum())
    dense_grad = torch.softmax(z, -1) - p  # d KL / d z
    rows, samples = 20_000, 4
    teacher, _ = _sampled_batch(t, rows, samples, tau_p, seed=1)
    student = z.expand(1, rows, -1).clone().requires_grad_(True)
    labels = torch.zeros(1, rows, dtype=torch.int64)
    # through the real loss: alpha = 1, normaliser 1, so the loss is the sum of the per-row estimates
    parts = distillation_loss(student, labels, teacher, 1.0, KDConfig(kind="kld"), num_tokens=1)
    parts.loss.backward()
    per_row = sampled_kd_term(torch.log_softmax(student.detach().double(), -1).gather(-1, teacher.indices),
                              teacher.logprobs.double(), teacher.stats["entropy"].double(), "kld")[0]
    assert float(parts.kd_sum.detach()) == pytest.approx(float(per_row.sum()), rel=1e-4)
    mean, se = float(per_row.mean()), float(per_row.std() / math.sqrt(rows))
    assert abs(mean - dense_kl) < 4 * se, (mean, dense_kl, se)
    grads = student.grad[0].double()  # (rows, V): one independent gradient estimate per row
    g_mean, g_se = grads.mean(0), grads.std(0) / math.sqrt(rows)
    assert torch.all((g_mean - dense_grad).abs() < 4 * g_se + 1e-9), (g_mean - dense_grad) / g_se
    # the estimator is not trivially exact: draws differ
    assert float(per_row.std()) > 1e-3


def test_nll_estimates_the_cross_entropy():
    t, z = _teacher_student(seed=3)
    p, logq = torch.softmax(t, -1), torch.log_softmax(z, -1)
    teacher, _ = _sampled_batch(t, 20_000, 12, 1.0, seed=2)
    s_logq = logq.float()[teacher.indices]
    est = sampled_kd_term(s_logq, teacher.logprobs, teacher.stats["entropy"], "nll")[0].double()
    assert abs(float(est.mean()) + float((p * logq).sum())) < 4 * float(est.std()) / math.sqrt(est.numel())


@pytest.mark.parametrize("tau_p", [1.0, 2.0])
def test_counts_and_weights(tau_p):
    """Distinct ids per row; the counts c_v = w_v N π_v / p_v are integers summing to N; at
    τp = 1 the weights are c / N exactly (so they sum to 1)."""
    t, _ = _teacher_student(seed=5)
    lp = torch.log_softmax(t.float(), -1).expand(500, -1).contiguous()
    samples = 12
    idx, log_w, counts = sample_rows(lp, samples, tau_p, torch.Generator().manual_seed(0))
    assert idx.numel() == log_w.numel() == int(counts.sum())
    log_pi = torch.log_softmax(lp[0] / tau_p, -1)
    c = (log_w.double().exp() * samples * log_pi.double().exp()[idx] / lp[0].double().exp()[idx])
    assert torch.allclose(c, c.round(), atol=1e-3) and c.round().min() >= 1
    start = 0
    for r, n in enumerate(counts.tolist()):
        ids = idx[start: start + n]
        assert ids.unique().numel() == n  # distinct
        assert int(c[start: start + n].round().sum()) == samples  # Σ c_v = N
        w = log_w[start: start + n].double().exp()
        assert torch.all(w[:-1] >= w[1:])  # by descending weight
        if tau_p == 1.0:
            assert torch.allclose(w * samples, c[start: start + n].round(), atol=1e-5)
            assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
        start += n
    # deterministic given the generator; another seed draws otherwise
    again = sample_rows(lp, samples, tau_p, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], idx) and torch.equal(again[1], log_w)
    other = sample_rows(lp, samples, tau_p, torch.Generator().manual_seed(1))
    assert not (other[0].numel() == idx.numel() and torch.equal(other[0], idx))


def test_weights_above_one_are_stored_shifted():
    """At τp > 1 a weight can exceed 1 (log w > 0); the stored value log w - B is <= 0 and the
    16-bit code gives log w back to 2^-12 nats."""
    from core.logits_codec import decode_values, encode_values

    logits = torch.full((64, V_SMALL), -3.0)
    logits[:, 0] = 3.0  # p_0 ~ 0.96, π_0 ~ 0.5 at τp = 2: w_0 ~ c_0 / N · 1.9
    keeps = Truncation(samples=4, proposal_temperature=2.0)
    idx, vals, counts, _ = sample_and_stats(logits, keeps, [], generator=torch.Generator().manual_seed(0))
    log_w = vals + log_weight_offset(V_SMALL, 2.0)
    assert float(log_w.max()) > 0 and float(vals.max()) <= 0
    finite = torch.isfinite(vals)
    back = torch.from_numpy(decode_values(encode_values(vals[finite].numpy()))) + log_weight_offset(V_SMALL, 2.0)
    assert torch.allclose(back, log_w[finite], atol=VALUE_MAX_ABS_ERROR + 1e-6)


def test_refused_kd_settings():
    for kd, field in [(KDConfig(kind="mse"), "kind"), (KDConfig(kind="reverse_kld"), "kind"),
                      (KDConfig(temperature=2.0), "temperature"), (KDConfig(student_temperature=2.0), "student_temperature"),
                      (KDConfig(normalization="tail"), "normalization"), (KDConfig(adaptive="adakd_h"), "adaptive")]:
        with pytest.raises(ConfigError) as exc:
            check_sampled_kd(kd)
        assert exc.value.field == field
    t, z = _teacher_student()
    teacher, _ = _sampled_batch(t, 3, 4, 1.0, seed=0)
    student = z.float().expand(1, 3, -1).clone()
    with pytest.raises(ConfigError, match="kld or nll"):
        distillation_loss(student, torch.zeros(1, 3, dtype=torch.int64), teacher, 0.5, KDConfig(kind="jsd"))
    with pytest.raises(ConfigError, match="samples"):
        Truncation(top_k=10, samples=4)
    with pytest.raises(ConfigError, match="only with samples"):
        Truncation(proposal_temperature=2.0)


def test_fused_path_computes_the_sampled_loss():
    """The fused LM head + loss gives the sampled loss (not the truncated one) and its gradient."""
    torch.manual_seed(0)
    n, d = 24, 8
    hidden = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V_SMALL, d, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, V_SMALL) * 2
    idx, vals, _, stats = sample_and_stats(t, Truncation(samples=6, proposal_temperature=2.0), [],
                                           generator=torch.Generator().manual_seed(0))
    log_w = vals + log_weight_offset(V_SMALL, 2.0)
    labels = torch.randint(0, V_SMALL, (n,))
    kd = KDConfig()
    ref = distillation_loss((hidden @ weight.T)[None], labels[None],
                            SparseTeacherBatch(idx[None], log_w[None], {k: v[None] for k, v in stats.items()},
                                               sampled=True), 0.7, kd)
    ref.loss.backward()
    want = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    fused = linear_distillation_loss(hidden, weight, labels, idx, log_w, alpha=0.7, kd=kd, teacher_stats=stats,
                                     teacher_sampled=True, chunk_size=5)
    fused.loss.backward()
    assert float(fused.kd_sum) == pytest.approx(float(ref.kd_sum.detach()), rel=1e-5)
    assert torch.allclose(hidden.grad, want[0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(weight.grad, want[1], rtol=1e-5, atol=1e-6)
    # without the flag the same numbers would be read as truncated log-probs: a different loss
    plain = linear_distillation_loss(hidden.detach(), weight.detach(), labels, idx, log_w, alpha=0.7, kd=kd,
                                     teacher_stats=stats, chunk_size=5)
    assert float(plain.kd_sum) != pytest.approx(float(ref.kd_sum.detach()), rel=1e-3)


# -- the store -------------------------------------------------------------------------------

V, T, NSEQ = 384, 16, 12
HASHES = dict(teacher_id="tiny", teacher_hash="th", tokenizer_hash="kh", data_hash="dh")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_llama(V, T)


def _sequences():
    return np.random.default_rng(0).integers(0, V, (NSEQ, T + 1)).astype(np.int64)


def _shard_hashes(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.glob("shard-*.bin"))}


@pytest.mark.parametrize("tau_p", [1.0, 2.0])
def test_sampled_store_round_trips_and_reproduces(tmp_path, model, tau_p):
    seqs = _sequences()
    keeps = Truncation(samples=8, proposal_temperature=tau_p)
    kw = dict(keeps=keeps, batch_size=4, shard_tokens=4 * T, sampling_seed=7, **HASHES)
    path = extract_logits(model, seqs, tmp_path / "a", **kw)
    store = LogitsStore.open(path, expect={"truncation": keeps, "teacher_hash": "th"})
    assert store.keeps == keeps and store.manifest["sampling"]["seed"] == 7
    assert store.manifest["sampling"]["log_weight_offset"] == pytest.approx(log_weight_offset(V, tau_p))
    batch = store.batch(np.arange(NSEQ), keeps)
    assert batch.sampled and batch.indices.shape == (NSEQ, T, 8)
    # the rows are exactly what sampling the teacher's logits with the batch seeds gives
    with torch.no_grad():
        logits = model(torch.from_numpy(seqs[:, :-1])).logits
    for start in range(0, NSEQ, 4):
        idx, vals, counts, stats = sample_and_stats(logits[start: start + 4], keeps, [],
                                                    generator=batch_generator(7, start * T))
        got = batch.logprobs[start: start + 4].reshape(-1, 8)
        want = vals + log_weight_offset(V, tau_p)
        assert torch.equal(batch.indices[start: start + 4].reshape(-1, 8), idx)
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got))
        assert torch.allclose(got[finite], want[finite], atol=VALUE_MAX_ABS_ERROR + 1e-6)
        assert torch.allclose(batch.stats["entropy"][start: start + 4].reshape(-1), stats["entropy"])
    if tau_p == 1.0:  # Σ w = 1 per row, up to the 16-bit codes
        w = batch.logprobs.exp().sum(-1)
        assert torch.allclose(w, torch.ones_like(w), atol=2e-3)
    # reproducible: a second extraction, and one resumed after a crash, give the same bytes
    again = extract_logits(model, seqs, tmp_path / "b", **kw)
    assert _shard_hashes(again) == _shard_hashes(path)

    def crash(done, total):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_logits(model, seqs, tmp_path / "c", progress=crash, **kw)
    resumed = extract_logits(model, seqs, tmp_path / "c", **kw)
    assert _shard_hashes(resumed) == _shard_hashes(path)
    # another seed, other draws
    other = extract_logits(model, seqs, tmp_path / "d", **{**kw, "sampling_seed": 8})
    assert _shard_hashes(other) != _shard_hashes(path)


def test_stores_serve_only_their_own_rule(tmp_path, model):
    seqs = _sequences()
    sampled = LogitsStore.open(extract_logits(model, seqs, tmp_path / "s", keeps=Truncation(samples=4), **HASHES))
    truncated = LogitsStore.open(extract_logits(model, seqs, tmp_path / "t", keeps=Truncation(1.0, 10), **HASHES))
    for store, rule in [(sampled, Truncation(1.0, 4)), (sampled, Truncation(samples=8)),
                        (sampled, Truncation(samples=4, proposal_temperature=2.0)), (truncated, Truncation(samples=4))]:
        with pytest.raises(StoreMismatchError, match="cannot serve"):
            store.batch([0], rule)
    with pytest.raises(StoreMismatchError, match="sample-4"):
        LogitsStore.open(tmp_path / "t", expect={"truncation": Truncation(samples=4)})
    assert not truncated.batch([0]).sampled and sampled.batch([0]).sampled
    with pytest.raises(ConfigError, match="format_version"):
        extract_logits(model, seqs, tmp_path / "v2", keeps=Truncation(samples=4), format_version=2, **HASHES)


def test_trainer_distils_from_a_sampled_store(tmp_path, model):
    """The real trainer reads a sampled store through StoreTeacher; the fused and reference loss
    paths give the same losses."""
    from core.config import TrainConfig
    from core.schedules import AlphaScheduleConfig
    from core.trainer import train

    class Data:  # the slice of PackedData the trainer reads
        seq_len, vocab_size = T, V
        hash, tokenizer_hash = "dh", "kh"
        eos_token_id = None

        def __init__(self):
            self.seqs = _sequences()

        def num_sequences(self, split):
            return NSEQ

        def num_tokens(self, split):
            return NSEQ * T

        def sequences(self, split, ids):
            return self.seqs[np.asarray(ids)]

    data = Data()
    rule = Truncation(samples=4)
    store = LogitsStore.open(extract_logits(model, data.seqs, tmp_path / "store", keeps=rule, **HASHES))
    losses = {}
    for fused in (True, False):
        cfg = TrainConfig(tokens=3 * 4 * T, batch_size=4, log_every_steps=1, kd=KDConfig(),
                          alpha_schedule=AlphaScheduleConfig(alpha=0.5), fused_loss=fused)
        torch.manual_seed(1)
        student = tiny_llama(V, T).train()
        rows = []
        train(cfg, student, data, teacher=StoreTeacher(store, rule), run_dir=tmp_path / f"run{fused}", export=False,
              report=lambda kind, row: rows.append(row) if kind == "metrics" and "kd_loss" in row else None)
        losses[fused] = [(r["loss"], r["kd_loss"]) for r in rows]
    assert len(losses[True]) == 3 and all(math.isfinite(x) for r in losses[True] for x in r)
    for a, b in zip(losses[True], losses[False]):
        assert a == pytest.approx(b, rel=1e-4)
