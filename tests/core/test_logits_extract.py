"""Offline extraction (incl. crash and resume), online capture and the live teacher, with a tiny
Llama built here (no dependency on core.models / core.data)."""
import numpy as np
import pytest
import torch

from tests.core.tiny import tiny_llama
from core.config import Truncation
from core.logits import (
    VALUE_MAX_ABS_ERROR,
    LiveTeacher,
    LogitsStore,
    OnlineCapture,
    StoreError,
    StoreMismatchError,
    StoreTeacher,
    extract_logits,
    truncate,
    truncate_and_stats,
)

torch.set_num_threads(1)

V, T, N = 384, 16, 22
HASHES = dict(teacher_id="tiny", teacher_hash="th", tokenizer_hash="kh", data_hash="dh")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_llama(V, T)


class FakePackedData:
    """The slice of core.data.PackedData that extraction uses."""

    seq_len = T
    hash = "fake-data"
    tokenizer_hash = "fake-tok"

    def __init__(self, seed=0):
        self.stream = np.random.default_rng(seed).integers(0, V, N * T + 1)

    def num_sequences(self, split):
        return N

    def sequences(self, split, ids):
        ids = np.asarray(ids)
        return np.stack([self.stream[i * T : i * T + T + 1] for i in ids]).astype(np.int64)


def teacher_logits(model, seqs):
    with torch.no_grad():
        return model(torch.from_numpy(seqs[:, :-1])).logits


def test_extraction_equals_truncating_the_forward(tmp_path, model):
    data = FakePackedData()
    # batch_size=1: the reference below runs the same forward calls, so bits agree exactly
    path = extract_logits(model, data, tmp_path / "s", keeps=Truncation(0.9, 40), gammas=[0.7],
                          batch_size=1, shard_tokens=5 * T, teacher_id="tiny", teacher_hash="th")
    store = LogitsStore.open(path, expect={"data_hash": "fake-data", "tokenizer_hash": "fake-tok",
                                           "teacher_hash": "th", "seq_len": T, "vocab_size": V,
                                           "split": "train", "num_sequences": N})
    store.verify()
    assert [s["num_items"] for s in store.manifest["shards"]] == [5, 5, 5, 5, 2]
    ids = np.array([21, 0, 6])
    logits = torch.cat([teacher_logits(model, data.sequences("train", [i])) for i in ids])
    idx, lp, _, stats = truncate_and_stats(logits, Truncation(0.9, 40), [0.7])
    batch = store.batch(ids)
    assert torch.equal(batch.indices, idx.reshape(3, T, 40))
    finite = torch.isfinite(lp.reshape(3, T, 40))
    assert torch.equal(torch.isfinite(batch.logprobs), finite)
    assert (batch.logprobs[finite] - lp.reshape(3, T, 40)[finite]).abs().max() <= VALUE_MAX_ABS_ERROR * 1.0001
    for key, value in stats.items():
        torch.testing.assert_close(batch.stats[key], value.reshape(3, T))
    # sequence i owns rows [i*T, (i+1)*T): the fourth shard starts at row 15*T
    assert store.manifest["shards"][3]["first_row"] == 15 * T


def test_extraction_from_an_array_of_sequences(tmp_path, model):
    seqs = FakePackedData(seed=3).sequences("train", np.arange(6))
    path = extract_logits(model, seqs, tmp_path / "a", keeps=Truncation(1.0, 8), gammas=[],
                          batch_size=5, shard_tokens=1 << 20, num_sequences=4, **HASHES)
    store = LogitsStore.open(path, expect={"num_sequences": 4, **{k: v for k, v in HASHES.items()}})
    assert store.num_items == 4 and store.stat_keys == ["entropy", "std"]
    idx, _ = truncate(teacher_logits(model, seqs[:4]), Truncation(1.0, 8))
    assert torch.equal(store.batch(np.arange(4)).indices, idx)
    # a complete store is returned at once
    assert extract_logits(model, seqs, tmp_path / "a", keeps=Truncation(1.0, 8), gammas=[],
                          batch_size=5, shard_tokens=1 << 20, num_sequences=4, **HASHES) == path


def test_store_keeps_the_exact_tempered_normalisers_a_study_needs(tmp_path, model):
    # issue 15: log U_(1/tau) for tail at tau = 2 and NormKD's per-row normaliser at t_norm = 2,
    # from the full logits at extraction; a store without them is refused when a run needs them
    import math

    from core.config import KDConfig
    from core.losses import kd_loss_from_config
    from core.types import SparseTeacherBatch

    seqs = FakePackedData(seed=4).sequences("train", np.arange(3))
    path = extract_logits(model, seqs, tmp_path / "t", keeps=Truncation(0.9, 12), gammas=[0.5], t_norms=[2.0],
                          batch_size=3, shard_tokens=1 << 20, **HASHES)
    store = LogitsStore.open(path, expect={"gammas": [0.5], "t_norms": [2.0]})
    assert store.t_norms == [2.0] and store.stat_keys == ["entropy", "std", "log_u_0.5", "log_u_normkd_2"]
    full = teacher_logits(model, seqs).double()
    lp = torch.log_softmax(full, -1)
    batch = store.batch(np.arange(3))
    torch.testing.assert_close(batch.stats["log_u_0.5"].double(), torch.logsumexp(0.5 * lp, -1), rtol=1e-5, atol=1e-5)
    tau_t = 2.0 * full.std(-1, keepdim=True)
    torch.testing.assert_close(batch.stats["log_u_normkd_2"].double(), torch.logsumexp(lp / tau_t, -1),
                               rtol=1e-4, atol=1e-4)
    # the stored statistics make the tempered tail exact: a student equal to the tempered teacher
    # scores (almost) 0 at tau = 2 (16-bit stored log-probs: ~1e-4)
    teacher = SparseTeacherBatch(batch.indices, batch.logprobs, batch.stats)
    kl = kd_loss_from_config((full / 2.0).float(), teacher, KDConfig(normalization="tail", temperature=2.0))
    assert kl.abs().max() < 1e-3
    kl = kd_loss_from_config(full.float(), teacher, KDConfig(adaptive="normkd", normalization="tail"))
    assert kl.abs().max() / (tau_t.max().item() ** 2) < 1e-3 and math.isfinite(kl.sum().item())
    plain = extract_logits(model, seqs, tmp_path / "p", keeps=Truncation(0.9, 12), gammas=[],
                           batch_size=3, shard_tokens=1 << 20, **HASHES)
    with pytest.raises(StoreMismatchError, match=r"NormKD t_norms \[2.0\] are not stored"):
        LogitsStore.open(plain, expect={"t_norms": [2.0]})
    assert "t_norms" not in LogitsStore.open(plain).manifest  # a store without them is as before


class Interrupt(Exception):
    pass


def test_interrupted_extraction_resumes_to_a_byte_identical_store(tmp_path, model):
    data = FakePackedData(seed=1)
    kwargs = dict(keeps=Truncation(0.95, 30), gammas=[0.7, 0.8], batch_size=3,
                  shard_tokens=7 * T, **HASHES)
    clean = extract_logits(model, data, tmp_path / "clean", **kwargs)

    def crash_after(limit):
        def progress(done, total):
            assert total == N
            if done >= limit:
                raise Interrupt
        return progress

    broken = tmp_path / "broken"
    with pytest.raises(Interrupt):
        extract_logits(model, data, broken, progress=crash_after(16), **kwargs)
    # shards 0 and 1 (sequences 0..13) were complete when sequence 16 was done
    assert sorted(p.name for p in broken.glob("shard-*")) == ["shard-00000.bin", "shard-00001.bin"]
    with pytest.raises(StoreError, match="incomplete"):
        LogitsStore.open(broken)
    (broken / "shard-00002.bin.tmp").write_bytes(b"half a shard")  # a crash mid-write
    (broken / "shard-00003.bin").write_bytes(b"orphan")  # renamed, manifest not yet updated
    seen = []
    extract_logits(model, data, broken, progress=lambda d, t: seen.append(d), **kwargs)
    assert seen[0] == 14 + 3  # resumed at the first sequence of shard 2
    clean_files = sorted(p.name for p in clean.iterdir())
    assert clean_files == sorted(p.name for p in broken.iterdir())
    for name in clean_files:
        assert (clean / name).read_bytes() == (broken / name).read_bytes(), name
    # resuming with other settings is refused
    with pytest.raises(Interrupt):
        extract_logits(model, data, tmp_path / "b2", progress=crash_after(3), **kwargs)
    with pytest.raises(StoreMismatchError, match="k_max"):
        extract_logits(model, data, tmp_path / "b2", **{**kwargs, "keeps": Truncation(0.95, 20)})


def test_online_capture_windows_select_the_right_sequences(tmp_path, model):
    data = FakePackedData(seed=2)
    captured = {}
    capture = OnlineCapture(tmp_path / "online", vocab_size=V, seq_len=T, keeps=Truncation(0.95, 20),
                             gammas=[0.7], shard_tokens=5 * T, **HASHES)
    rng = np.random.default_rng(0)
    order = []
    for step in range(8):
        for micro in range(2):  # two micro-batches per step
            ids = rng.choice(N, size=2, replace=False)
            logits = teacher_logits(model, data.sequences("train", ids))
            capture(step, ids, logits)
            for i, seq in enumerate(ids):
                captured[len(order)] = logits[i]
                order.append((step, int(seq)))
    path = capture.close()
    store = LogitsStore.open(path, expect={"kind": "online", "seq_len": T})
    store.verify()
    steps = np.array([s for s, _ in order])
    np.testing.assert_array_equal(store.entry_steps(), steps)
    np.testing.assert_array_equal(store.entry_sequence_ids(), [q for _, q in order])
    for shard in store.manifest["shards"]:  # shards hold whole steps
        assert shard["first_step"] == steps[shard["first_item"]]
        assert shard["last_step"] == steps[shard["first_item"] + shard["num_items"] - 1]
        assert shard["first_item"] == 0 or steps[shard["first_item"] - 1] < shard["first_step"]
    early = store.window(first_tokens=3 * 4 * T)
    late = store.window(last_tokens=2 * 4 * T)
    np.testing.assert_array_equal(early, np.flatnonzero(steps < 3))
    np.testing.assert_array_equal(late, np.flatnonzero(steps >= 6))
    np.testing.assert_array_equal(store.window(steps=(2, 4)), np.flatnonzero((steps >= 2) & (steps < 4)))
    # a student trains on the late window's sequences; the teacher reads exactly those entries
    examples = store.entry_sequence_ids(late)
    teacher = StoreTeacher(store, Truncation(0.95, 20), entries=late)
    batch = teacher(np.array([5, 1]), examples[[5, 1]], None)
    expected = torch.stack([captured[late[5]], captured[late[1]]])
    idx, lp = truncate(expected, Truncation(0.95, 20))
    assert torch.equal(batch.indices, idx)


def test_online_capture_resume_skips_stored_steps(tmp_path, model):
    data = FakePackedData(seed=4)
    kwargs = dict(vocab_size=V, seq_len=T, keeps=Truncation(0.9, 10), gammas=[],
                  shard_tokens=2 * T, **HASHES)
    ids = [np.array([i, i + 1]) for i in range(0, 12, 2)]
    logits = [teacher_logits(model, data.sequences("train", i)) for i in ids]
    capture = OnlineCapture(tmp_path / "o", **kwargs)
    for step in range(3):
        capture(step, ids[step], logits[step])
    capture.flush()  # the trainer checkpoints after step 2
    capture(3, ids[3], logits[3])
    capture.abort()  # crash: step 3 was buffered, not written
    resumed = OnlineCapture(tmp_path / "o", **kwargs)
    assert resumed.last_stored_step == 2
    for step in range(1, 6):  # the resumed trainer re-runs from its checkpoint
        resumed(step, ids[step], logits[step])
    store = LogitsStore.open(resumed.close())
    np.testing.assert_array_equal(store.entry_steps(), np.repeat(np.arange(6), 2))
    np.testing.assert_array_equal(store.entry_sequence_ids(), np.concatenate(ids))
    with pytest.raises(StoreError, match="complete"):
        OnlineCapture(tmp_path / "o", **kwargs)
    with pytest.raises(ValueError, match="expected logits"):
        OnlineCapture(tmp_path / "o2", **kwargs)(0, [0], torch.zeros(1, T, V + 1))


def test_live_teacher_matches_truncation(model):
    seqs = FakePackedData(seed=5).sequences("train", np.arange(3))
    teacher = LiveTeacher(model, Truncation(0.8, 12), gammas=[0.7])
    inputs = torch.from_numpy(seqs[:, :-1])
    batch = teacher(np.arange(3), np.arange(3), inputs)
    idx, lp, _, stats = truncate_and_stats(teacher_logits(model, seqs), Truncation(0.8, 12), [0.7])
    assert torch.equal(batch.indices, idx.reshape(3, T, 12))
    assert torch.equal(batch.logprobs, lp.reshape(3, T, 12))
    assert set(batch.stats) == {"entropy", "std", "log_u_0.7"}
    assert batch.stats["entropy"].shape == (3, T)


def test_live_teacher_memoize_runs_each_batch_once(model):
    seqs = FakePackedData(seed=5).sequences("train", np.arange(4))
    inputs = torch.from_numpy(seqs[:, :-1])
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        plain = LiveTeacher(model, Truncation(0.8, 12), gammas=[0.7])
        memo = LiveTeacher(model, Truncation(0.8, 12), gammas=[0.7], memoize=True)
        ref = plain(np.arange(2), np.arange(2), inputs[:2])
        first = memo(np.arange(2), np.arange(2), inputs[:2])
        calls.clear()
        again = memo(np.arange(2), np.arange(2), inputs[:2])
        assert calls == []  # no forward pass: the held-out batch came back unchanged
        other = memo(np.arange(2), np.arange(2, 4), inputs[2:])
        changed = memo(np.arange(2), np.arange(2), inputs[2:])  # same ids, other tokens: recomputed
        assert len(calls) == 2
    finally:
        hook.remove()
    for batch in (first, again):
        assert torch.equal(batch.indices, ref.indices) and torch.equal(batch.logprobs, ref.logprobs)
        assert all(torch.equal(batch.stats[k], ref.stats[k]) for k in ref.stats)
    assert torch.equal(changed.indices, other.indices) and torch.equal(changed.logprobs, other.logprobs)


def test_extraction_writes_a_compact_store_with_its_distortion(tmp_path, model):
    seqs = FakePackedData(seed=5).sequences("train", np.arange(6))
    exact = extract_logits(model, seqs, tmp_path / "v1", keeps=Truncation(0.95, 30), gammas=[], batch_size=3,
                           num_sequences=6, **HASHES)
    compact = extract_logits(model, seqs, tmp_path / "v2", keeps=Truncation(0.95, 30), gammas=[], batch_size=3,
                             num_sequences=6, format_version=2, target_kl=1e-3, **HASHES)
    v1, v2 = LogitsStore.open(exact), LogitsStore.open(compact)
    v2.verify()
    assert v1.distortion is None and 0 <= v2.distortion["mean_kl"] <= 1e-3
    a, b = v1.batch(np.arange(6)), v2.batch(np.arange(6))
    assert torch.equal(a.indices.sort(-1).values, b.indices.sort(-1).values)  # the same kept id sets
    assert v2.storage()["bytes"] < v1.storage()["bytes"]
