"""Tests of core.evaluation.heldout_metrics: held-out loss and agreement with a teacher."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.evaluation import heldout_metrics
from core.types import SparseTeacherBatch

torch.set_num_threads(1)
V, T = 48, 12


class RandomData:
    """A stand-in for PackedData: a fixed random validation stream, recording what is read."""

    def __init__(self, num_sequences=10, seed=0):
        rng = np.random.default_rng(seed)
        self.stream = rng.integers(0, V, size=num_sequences * T + 1)
        self.requested: list[int] = []

    def num_sequences(self, split):
        assert split == "val"
        return (len(self.stream) - 1) // T

    def sequences(self, split, ids):
        assert split == "val"
        ids = np.asarray(ids, dtype=np.int64)
        self.requested += ids.tolist()
        return self.stream[ids[:, None] * T + np.arange(T + 1)].astype(np.int64)


def tiny_model(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=T,
                      initializer_range=0.5)  # a peaked, far-from-uniform random model
    return LlamaForCausalLM(cfg)


def reference(model, data, n):
    """(logits (n, T, V), labels (n, T)) of the n evaluated sequences, computed directly."""
    from core.evaluation import evaluation_ids

    seqs = torch.as_tensor(data.sequences("val", evaluation_ids(data.num_sequences("val"), n)))
    with torch.no_grad():
        logits = model(input_ids=seqs[:, :-1]).logits.float()
    return logits, seqs[:, 1:]


class ModelTeacher:
    """A teacher built from a model's full softmax, optionally truncated to its top-k."""

    def __init__(self, model, k=V, keep_mass=None):
        self.model, self.k, self.keep_mass = model, k, keep_mass
        self.calls = []

    def __call__(self, example_ids, sequence_ids, input_ids):
        self.calls.append((np.asarray(example_ids).copy(), np.asarray(sequence_ids).copy(),
                           input_ids.clone()))
        with torch.no_grad():
            logp = torch.log_softmax(self.model(input_ids=input_ids).logits.float(), -1)
        values, indices = logp.topk(self.k, dim=-1)
        return SparseTeacherBatch(indices, values)


def test_val_loss_is_cross_entropy_whatever_the_batch_size():
    model, data = tiny_model(), RandomData()
    logits, labels = reference(model, data, 7)
    expected = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1)).item()
    for batch_size in (1, 3, 16):
        out = heldout_metrics(model, data, max_sequences=7, batch_size=batch_size)
        assert set(out) == {"val_loss"}
        assert out["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_evaluates_sequences_spread_over_the_split():
    model = tiny_model()
    data = RandomData(num_sequences=10)
    heldout_metrics(model, data, max_sequences=4, batch_size=3)
    assert data.requested == [0, 3, 6, 9]
    data.requested.clear()
    heldout_metrics(model, data, max_sequences=1000, batch_size=4)  # clamps to what exists
    assert data.requested == list(range(10))


@pytest.mark.parametrize("training", [True, False])
def test_restores_mode_and_computes_no_gradients(training):
    model = tiny_model()
    model.train(training)
    heldout_metrics(model, RandomData(), max_sequences=2, teacher=ModelTeacher(tiny_model(1)))
    assert model.training is training
    assert all(p.grad is None for p in model.parameters())


def test_model_as_its_own_full_teacher_gives_zero_kl_and_full_agreement():
    model = tiny_model()
    out = heldout_metrics(model, RandomData(), teacher=ModelTeacher(model), max_sequences=5,
                          batch_size=2)
    assert out["teacher_kl"] == pytest.approx(0.0, abs=1e-5)
    assert out["top1_agreement"] == 1.0


def test_one_hot_teacher_on_the_data_gives_kl_equal_to_the_loss():
    model, data = tiny_model(), RandomData()
    logits, labels = reference(model, data, 6)

    def one_hot(example_ids, sequence_ids, input_ids):
        seqs = torch.as_tensor(data.sequences("val", sequence_ids))
        idx = torch.cat([seqs[:, 1:, None], torch.zeros_like(seqs[:, 1:, None])], -1)
        vals = torch.tensor([0.0, float("-inf")]).expand(*idx.shape).clone()  # second entry: padding
        return SparseTeacherBatch(idx, vals)

    out = heldout_metrics(model, data, teacher=one_hot, max_sequences=6, batch_size=4)
    assert out["teacher_kl"] == pytest.approx(out["val_loss"], rel=1e-5)
    expected_agreement = (logits.argmax(-1) == labels).float().mean().item()
    assert out["top1_agreement"] == pytest.approx(expected_agreement)


def test_truncated_teacher_is_renormalised_over_its_kept_entries():
    student, teacher_model, data = tiny_model(0), tiny_model(1), RandomData()
    k = 5
    teacher = ModelTeacher(teacher_model, k=k)
    out = heldout_metrics(student, data, teacher=teacher, max_sequences=5, batch_size=2)

    logits, _ = reference(student, data, 5)
    s_logp = torch.log_softmax(logits, -1)
    from core.evaluation import evaluation_ids

    seqs = torch.as_tensor(data.sequences("val", evaluation_ids(data.num_sequences("val"), 5)))
    with torch.no_grad():
        t_logp = torch.log_softmax(teacher_model(input_ids=seqs[:, :-1]).logits.float(), -1)
    top, idx = t_logp.topk(k, -1)
    p = torch.softmax(top, -1)  # renormalised over the kept k
    kl = (p * (p.log() - s_logp.gather(-1, idx))).sum(-1).mean().item()
    assert out["teacher_kl"] == pytest.approx(kl, rel=1e-4)
    assert out["top1_agreement"] == pytest.approx(
        (logits.argmax(-1) == idx[..., 0]).float().mean().item())
    # The teacher saw the sequence ids (as example ids too) and the student's inputs.
    ex, seq, inputs = teacher.calls[0]
    assert ex.tolist() == seq.tolist() == [0, 2]
    assert torch.equal(inputs, seqs[:2, :-1])


def test_bad_arguments_raise():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_sequences"):
        heldout_metrics(model, RandomData(), max_sequences=0)
    empty = RandomData(num_sequences=0)
    with pytest.raises(ValueError, match="no sequences"):
        heldout_metrics(model, empty)


def test_a_logits_budget_splits_the_batch_without_changing_the_numbers():
    """At paper scale 16 sequences of 4096 x 151,552 fp32 logits are 40 GB: a forward holds at most
    max_logits_bytes of them (at least one sequence); the metrics do not depend on the split."""
    student, data = tiny_model(0), RandomData()
    teacher = ModelTeacher(tiny_model(1), k=5)
    whole = heldout_metrics(student, data, teacher=teacher, max_sequences=7, batch_size=4)
    assert [len(c[0]) for c in teacher.calls] == [4, 3]
    teacher.calls.clear()
    per_sequence = T * V * 4
    split = heldout_metrics(student, data, teacher=teacher, max_sequences=7, batch_size=4,
                            max_logits_bytes=2 * per_sequence + 1)
    assert [len(c[0]) for c in teacher.calls] == [2, 2, 2, 1]
    for key, value in whole.items():
        assert split[key] == pytest.approx(value, rel=1e-6)
    teacher.calls.clear()
    heldout_metrics(student, data, teacher=teacher, max_sequences=3, batch_size=4, max_logits_bytes=1)
    assert [len(c[0]) for c in teacher.calls] == [1, 1, 1]
