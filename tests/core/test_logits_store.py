"""The logits store: round trip, derived truncations, refusal of mismatched or corrupt stores,
kept statistics, and the store-backed teacher."""
import json

import numpy as np
import pytest
import torch

from core.config import Truncation
from core.logits import (
    VALUE_MAX_ABS_ERROR,
    LogitsStore,
    LogitsStoreWriter,
    StoreCorruptError,
    StoreError,
    StoreLoader,
    StoreMismatchError,
    StoreTeacher,
    kept_stats,
    stat_keys,
    truncate,
    truncate_and_stats,
)

torch.set_num_threads(1)

T, V = 16, 1000
GAMMAS = [0.7]
IDENTITY = dict(teacher_id="toy", teacher_hash="t-hash", tokenizer_hash="tok-hash",
                data_hash="d-hash", split="train")


def make_logits(num_items, seed=0):
    """Heavy-tailed logits with a spread of sharpness, (num_items, T, V) float32."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num_items, T, V, generator=g)
    tail = torch.randn(num_items, T, V, generator=g).abs() ** 1.5
    sharp = torch.rand(num_items, T, 1, generator=g) * 4 + 0.5
    return (z * tail * sharp).float()


def write_store(path, logits, p_max=0.95, k_max=50, items_per_shard=3, kind="offline", steps=None,
                sequence_ids=None):
    header = dict(kind=kind, seq_len=T, vocab_size=V, p_max=p_max, k_max=k_max, gammas=GAMMAS, **IDENTITY)
    writer = LogitsStoreWriter(path, header)
    n = logits.shape[0]
    for first in range(0, n, items_per_shard):
        part = logits[first : first + items_per_shard]
        idx, lp, cnt, stats = truncate_and_stats(part, Truncation(p_max, k_max), GAMMAS)
        keep = torch.arange(idx.shape[-1]) < cnt[:, None]
        extra = {}
        if kind == "online":
            extra = dict(sequence_ids=sequence_ids[first : first + items_per_shard],
                         steps=steps[first : first + items_per_shard])
        writer.write_shard(cnt.numpy(), idx[keep].numpy(), lp[keep].numpy(),
                           np.stack([stats[k].numpy() for k in stat_keys(GAMMAS)]), **extra)
    return writer.finalize()


@pytest.fixture(scope="module")
def logits():
    return make_logits(10)


@pytest.fixture()
def store(tmp_path, logits):
    return LogitsStore.open(write_store(tmp_path / "store", logits))


def test_round_trip_exact_up_to_16_bit_values(store, logits):
    assert store.num_items == 10 and store.num_rows == 10 * T
    assert len(store.manifest["shards"]) == 4
    ids = [7, 0, 9, 3, 3]
    batch = store.batch(ids)  # at the stored p_max, k_max
    idx, lp, cnt, stats = truncate_and_stats(logits[ids], Truncation(0.95, 50), GAMMAS)
    idx, lp = idx.reshape(5, T, 50), lp.reshape(5, T, 50)
    assert batch.indices.shape == (5, T, 50) and batch.indices.dtype == torch.int64
    assert batch.logprobs.dtype == torch.float32
    assert torch.equal(batch.indices, idx)
    assert torch.equal(torch.isinf(batch.logprobs), torch.isinf(lp))
    finite = torch.isfinite(lp)
    assert (batch.logprobs[finite] - lp[finite]).abs().max() <= VALUE_MAX_ABS_ERROR * 1.0001
    assert set(batch.stats) == {"entropy", "std", "log_u_0.7"}
    for key, value in stats.items():
        assert torch.equal(batch.stats[key], value.reshape(5, T))
    decoded = store.decode(ids)
    assert decoded.counts.shape == (5, T) and decoded.indices.size == decoded.counts.sum()
    np.testing.assert_array_equal(decoded.counts, cnt.reshape(5, T).numpy())


def test_manifest_records_identity_encoding_and_shards(store):
    m = json.loads((store.path / "manifest.json").read_text())
    for key, value in IDENTITY.items():
        assert m[key] == value
    assert m["format_version"] == 1 and m["complete"] is True
    assert (m["seq_len"], m["vocab_size"], m["p_max"], m["k_max"]) == (T, V, 0.95, 50)
    assert m["gammas"] == GAMMAS and m["stat_keys"] == ["entropy", "std", "log_u_0.7"]
    assert m["encoding"]["value"]["dtype"] == "uint16" and m["encoding"]["counts"] == "uint8"
    assert m["num_entries"] == sum(s["num_entries"] for s in m["shards"])
    rows = [(s["first_row"], s["num_rows"]) for s in m["shards"]]
    assert rows == [(0, 48), (48, 48), (96, 48), (144, 16)]
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in m["shards"])
    assert not list(store.path.glob("*.tmp"))


def ambiguous_rows(logits, top_p, top_k):
    """Rows where one of the first top_k prefixes has an exact cumulative mass within a relative
    VALUE_MAX_ABS_ERROR of top_p: only there may the 16-bit values move the top-p cut (the
    documented edge of LogitsStore.batch)."""
    cum = torch.softmax(logits.double(), -1).sort(-1, descending=True).values.cumsum(-1)[..., :top_k]
    return ((cum - top_p).abs() <= 1.0001 * VALUE_MAX_ABS_ERROR * top_p).any(-1)


@pytest.mark.parametrize("top_p,top_k", [(0.95, 50), (0.95, 5), (0.9, 50), (0.5, 20), (0.3, 1), (0.8, 7)])
def test_derived_truncation_equals_truncating_the_logits(store, logits, top_p, top_k):
    ids = list(range(10))
    batch = store.batch(ids, Truncation(top_p, top_k))
    idx, lp = truncate(logits, Truncation(top_p, top_k))
    ok = ~ambiguous_rows(logits, top_p, top_k) if top_p < store.keeps.top_p else torch.ones(10, T, dtype=torch.bool)
    assert ok.float().mean() > 0.95
    assert batch.indices.shape == (10, T, top_k)
    assert torch.equal(batch.indices[ok], idx[ok])
    assert torch.equal(torch.isinf(batch.logprobs[ok]), torch.isinf(lp[ok]))
    finite = torch.isfinite(lp[ok])
    assert (batch.logprobs[ok][finite] - lp[ok][finite]).abs().max() <= VALUE_MAX_ABS_ERROR * 1.0001


def test_derived_truncation_beyond_the_store_is_refused(store):
    with pytest.raises(StoreMismatchError, match="top-0.95-50"):
        store.batch([0], Truncation(0.99, 10))
    with pytest.raises(StoreMismatchError):
        store.batch([0], Truncation(0.9, 51))
    with pytest.raises(ValueError, match=r"sequence ids must be in \[0, 10\)"):
        store.batch([10])


@pytest.mark.parametrize("key,value", [("teacher_hash", "other"), ("tokenizer_hash", "x"),
                                       ("data_hash", "x"), ("seq_len", 32), ("split", "val"),
                                       ("vocab_size", 4096)])
def test_mismatched_store_is_refused_with_one_clear_sentence(store, key, value):
    with pytest.raises(StoreMismatchError) as info:
        LogitsStore.open(store.path, expect={**IDENTITY, "seq_len": T, "vocab_size": V, key: value})
    message = str(info.value)
    assert key in message and str(store.path) in message and repr(value) in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_expectations_on_truncation_gammas_and_size(store):
    LogitsStore.open(store.path, expect={**IDENTITY, "seq_len": T, "vocab_size": V,
                                         "truncation": Truncation(0.9, 50), "gammas": [0.7], "num_sequences": 10})
    for expect, word in [({"truncation": Truncation(0.95, 100)}, "top-0.95-100"),
                         ({"truncation": Truncation(0.99, 50)}, "top-0.99-50"),
                         ({"gammas": [0.5]}, "gammas"), ({"num_sequences": 11}, "needs 11")]:
        with pytest.raises(StoreMismatchError, match=word):
            LogitsStore.open(store.path, expect=expect)
    with pytest.raises(ValueError, match="unknown store expectation"):
        LogitsStore.open(store.path, expect={"teacher": "x"})


def test_incomplete_store_is_refused(tmp_path, logits):
    header = dict(kind="offline", seq_len=T, vocab_size=V, p_max=0.9, k_max=20, gammas=[], **IDENTITY)
    LogitsStoreWriter(tmp_path / "s", header)
    with pytest.raises(StoreError, match="incomplete"):
        LogitsStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match="not a logits store"):
        LogitsStore.open(tmp_path / "nothing")


def test_altered_shard_is_detected_and_named(store):
    store.verify()
    shard = store.path / "shard-00001.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match="shard-00001.bin.*sha256"):
        store.verify()
    with pytest.raises(StoreCorruptError, match="shard-00001.bin"):
        LogitsStore.open(store.path).verify()


def test_truncated_or_missing_shard_is_detected_and_named(store):
    shard = store.path / "shard-00002.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(StoreCorruptError, match="shard-00002.bin.*truncated"):
        store.verify()
    reopened = LogitsStore.open(store.path)
    with pytest.raises(StoreCorruptError, match="shard-00002.bin"):
        reopened.batch([7])  # items 6..8 live in shard 2
    reopened.batch([0, 9])  # other shards still read
    shard.unlink()
    with pytest.raises(StoreCorruptError, match="shard-00002.bin is missing"):
        store.verify()


def test_writer_refuses_to_mix_stores(store):
    header = dict(kind="offline", seq_len=T, vocab_size=V, p_max=0.9, k_max=50, gammas=GAMMAS, **IDENTITY)
    with pytest.raises(StoreMismatchError, match="p_max"):
        LogitsStoreWriter(store.path, header)


def test_kept_stats_from_store(store, logits):
    _, lp = truncate(logits, Truncation(0.95, 50))
    kept = torch.isfinite(lp).sum(-1).double()
    stats = kept_stats(store)
    assert stats["mean_kept_per_token"] == pytest.approx(kept.mean().item())
    assert stats["sampled_rows"] == 10 * T and stats["sampled_fraction"] == 1.0
    probs = lp.exp().sum(-1)
    assert stats["mean_kept_mass"] == pytest.approx(probs.mean().item(), rel=1e-3)
    capped = ((kept == 50) & (probs < 0.95)).double().mean().item()
    assert stats["capped_frac"] == pytest.approx(capped, abs=0.01)
    # 10 bits per id at V = 1000, 16 bits per value, 1 byte per row, 8 bytes per item of T rows
    expected_bytes = stats["mean_kept_per_token"] * (10 / 8 + 2) + 1 + 8 / T
    assert stats["bytes_per_token"] == pytest.approx(expected_bytes)
    assert stats["dense_fp32_bytes_per_token"] == 4 * V
    # a lower p keeps fewer; sampling a subset is deterministic
    low = kept_stats(store, Truncation(0.5, 10))
    _, lp_low = truncate(logits, Truncation(0.5, 10))
    assert low["mean_kept_per_token"] == pytest.approx(torch.isfinite(lp_low).sum(-1).double().mean().item(), rel=0.01)
    sampled = kept_stats(store, max_rows=3 * T)
    assert sampled["sampled_rows"] == 3 * T and sampled == kept_stats(store, max_rows=3 * T)
    # measured sizes: the real files, i.e. the estimate plus shard headers (large in a toy store)
    storage = store.storage()
    assert storage["bytes"] == sum(f.stat().st_size for f in store.path.glob("shard-*.bin"))
    assert expected_bytes < storage["bytes_per_token"] < expected_bytes + 4 * 1024 / (3 * T)


def test_store_teacher_and_loader(store):
    teacher = StoreTeacher(store, Truncation(0.9, 20))
    ids = np.array([4, 1, 8])
    direct = store.batch(ids, Truncation(0.9, 20))
    got = teacher(np.arange(3), ids, torch.zeros(3, T, dtype=torch.long))
    assert torch.equal(got.indices, direct.indices) and torch.equal(got.logprobs, direct.logprobs)
    with pytest.raises(ValueError, match="16 tokens"):
        teacher(np.arange(3), ids, torch.zeros(3, T + 1, dtype=torch.long))
    plan = [(np.arange(2), np.array([i, i + 1])) for i in range(0, 8, 2)]
    teacher.schedule(plan)
    for example_ids, sequence_ids in plan:
        got = teacher(example_ids, sequence_ids, None)
        assert torch.equal(got.indices, store.batch(sequence_ids, Truncation(0.9, 20)).indices)
    teacher.schedule(plan)
    off_plan = teacher(np.arange(1), np.array([9]), None)  # leaves the schedule: still correct
    assert torch.equal(off_plan.logprobs, store.batch([9], Truncation(0.9, 20)).logprobs)
    teacher.close()
    loader = StoreLoader(store, [[0, 1], [9], [5, 5, 2]], Truncation(0.95, 50), prefetch=1)
    out = list(loader)
    assert [o[0].tolist() for o in out] == [[0, 1], [9], [5, 5, 2]]
    assert torch.equal(out[2][1].indices, store.batch([5, 5, 2]).indices)


def test_online_store_windows(tmp_path, logits):
    steps = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    seq_ids = np.array([11, 12, 13, 14, 15, 16, 17, 18, 11, 12])  # a second epoch repeats 11, 12
    path = write_store(tmp_path / "online", logits, kind="online", items_per_shard=4,
                       steps=steps, sequence_ids=seq_ids)
    store = LogitsStore.open(path, expect={"kind": "online"})
    np.testing.assert_array_equal(store.entry_sequence_ids(), seq_ids)
    np.testing.assert_array_equal(store.entry_steps([9, 0]), [4, 0])
    np.testing.assert_array_equal(store.window(first_tokens=3 * T + 5), [0, 1, 2])
    np.testing.assert_array_equal(store.window(last_tokens=2 * T), [8, 9])
    np.testing.assert_array_equal(store.window(steps=(1, 3)), [2, 3, 4, 5])
    with pytest.raises(ValueError):
        store.window()
    late = store.window(last_tokens=4 * T)
    teacher = StoreTeacher(store, Truncation(0.9, 10), entries=late)
    examples = store.entry_sequence_ids(late)  # what a student trains on: [15, 16, ...]
    got = teacher(np.array([3, 0]), examples[[3, 0]], None)
    assert torch.equal(got.indices, store.batch(late[[3, 0]], Truncation(0.9, 10)).indices)
    assert torch.equal(got.indices, truncate(logits[late[[3, 0]]], Truncation(0.9, 10))[0])
    with pytest.raises(ValueError, match="captured sequences"):
        teacher(np.array([0]), np.array([99]), None)
    with pytest.raises(StoreError, match="offline"):
        LogitsStore.open(write_store(tmp_path / "off", logits[:2])).window(first_tokens=T)
