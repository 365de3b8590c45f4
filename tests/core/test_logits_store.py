"""The logits store in both formats: round trip (format 1 exact up to 16 bits, format 2 within
its declared bound and reported distortion), derived truncations, refusal of mismatched or corrupt
stores, format-1 bytes pinned, conversion 1 -> 2, kept statistics, and the store-backed teacher."""
import hashlib
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
from core.logits_codec import row_kl
from core.logits_math import kept_counts
from core.logits_store import DEFAULT_FORMAT_VERSION, convert_store

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
                sequence_ids=None, format_version=None, **options):
    header = dict(kind=kind, seq_len=T, vocab_size=V, p_max=p_max, k_max=k_max, gammas=GAMMAS, **IDENTITY)
    writer = LogitsStoreWriter(path, header, format_version=format_version, **options)
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


@pytest.fixture(params=[1, 2], ids=["format1", "format2"])
def store(request, tmp_path, logits):
    return LogitsStore.open(write_store(tmp_path / "store", logits, format_version=request.param))


@pytest.fixture()
def store1(tmp_path, logits):
    return LogitsStore.open(write_store(tmp_path / "store1", logits, format_version=1))


@pytest.fixture()
def store2(tmp_path, logits):
    return LogitsStore.open(write_store(tmp_path / "store2", logits, format_version=2))


def test_round_trip_exact_up_to_16_bit_values(store1, logits):
    store = store1
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


def exact_rows(logits, ids, truncation=Truncation(0.95, 50)):
    """The exact truncated teacher of items ids: indices, logprobs (n*T, K) and counts (n*T,)."""
    idx, lp, cnt, _ = truncate_and_stats(logits[ids], truncation, GAMMAS)
    return idx.numpy(), lp.numpy(), cnt.numpy()


def shard_scale(store, item):
    """The value scale S of the shard holding item (format 2)."""
    return next(s["value_scale"] for s in store.manifest["shards"]
                if s["first_item"] <= item < s["first_item"] + s["num_items"])


def declared_values(lp, scale):
    """What format 2 stores for one row's exact log-probabilities lp (float64): the row
    renormalised, sqrt(p) coded in steps of 1 / S and read at the step's middle, then rescaled
    to the kept mass, coded in steps of 2**-8 in its logit. Also returns the kept mass."""
    mass = np.exp(lp).sum()
    root = np.exp((lp - np.log(mass)) / 2)
    codes = np.minimum(np.floor(root * scale), scale - 1)
    coded = (codes + 0.5) / scale
    assert np.abs(coded - root).max() <= 0.5 / scale + 1e-9  # the declared bound, on the renormalised row
    logit = np.rint((np.log(mass) - np.log1p(-min(mass, 1 - 1e-16))) / 2.0**-8) * 2.0**-8
    stored_mass = 1 / (1 + np.exp(-logit))
    return np.log(coded**2 / (coded**2).sum() * stored_mass), mass


def test_format2_round_trip_within_its_declared_bound(store2, logits):
    store = store2
    ids = [7, 0, 9, 3, 3]  # across shards, one repeated
    batch = store.batch(ids)
    idx, lp, cnt = exact_rows(logits, ids)
    assert batch.indices.shape == (5, T, 50) and batch.indices.dtype == torch.int64
    got_idx = batch.indices.reshape(-1, 50).numpy()
    got_lp = batch.logprobs.reshape(-1, 50).numpy().astype(np.float64)
    for r in range(5 * T):
        n = cnt[r]
        # the kept entries are exactly the truncation's (set and count); padding after them
        assert sorted(got_idx[r, :n]) == sorted(idx[r, :n])
        assert (got_idx[r, n:] == 0).all() and np.isneginf(got_lp[r, n:]).all()
        exact = lp[r, :n].astype(np.float64)
        want, mass = declared_values(exact, shard_scale(store, ids[r // T]))
        by_id = dict(zip(idx[r, :n], want))
        np.testing.assert_allclose(got_lp[r, :n], [by_id[i] for i in got_idx[r, :n]], rtol=0, atol=2e-5)
        # the kept mass and its dropped part to a relative 2**-9
        if 1 - mass > 1e-4:
            assert abs(np.log1p(-np.exp(got_lp[r, :n]).sum()) - np.log1p(-mass)) <= 2.0**-9 + 1e-3
        # sorted by stored probability, ties by lower id; distinct stored values keep the exact order
        exact_by_id = dict(zip(idx[r, :n], exact))
        order = np.array([exact_by_id[i] for i in got_idx[r, :n]])
        step = np.diff(got_lp[r, :n])
        assert (step <= 1e-6).all()
        tie = np.abs(step) <= 1e-6
        assert (np.diff(got_idx[r, :n])[tie] > 0).all()
        assert (np.diff(order)[~tie] < 0).all()
    for key, value in truncate_and_stats(logits[ids], Truncation(0.95, 50), GAMMAS)[3].items():
        assert torch.equal(batch.stats[key], value.reshape(5, T))
    decoded = store.decode(ids)  # the same rows, concatenated
    np.testing.assert_array_equal(decoded.counts.reshape(-1), cnt)
    np.testing.assert_array_equal(decoded.indices, got_idx[np.arange(50) < cnt[:, None]])


def test_format2_reports_the_distortion_it_has(store2, logits):
    store = store2
    m = store.manifest
    all_ids = np.arange(store.num_items)
    idx, lp, cnt = exact_rows(logits, all_ids)
    rows = store.decode(all_ids)
    keep = np.arange(50) < cnt[:, None]
    # KL(exact || stored) per row, both renormalised over the kept entries: the stored values
    # of each row put back in the exact rows' order
    stored = np.empty(int(cnt.sum()))
    begin = np.concatenate([[0], np.cumsum(cnt)])
    for r in range(cnt.size):
        got = dict(zip(rows.indices[begin[r]:begin[r + 1]], rows.logprobs[begin[r]:begin[r + 1]]))
        stored[begin[r]:begin[r + 1]] = [got[i] for i in idx[r, :cnt[r]]]
    kl = row_kl(cnt, lp[keep], stored)
    assert kl.max() > 0
    # with the dropped mass as one more outcome (what a tail-bucket loss sees)
    p, q = np.exp(lp[keep].astype(np.float64)), np.exp(stored)
    mass_p, mass_q = np.add.reduceat(p, begin[:-1]), np.add.reduceat(q, begin[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        tail_term = np.where(mass_p < 1, (1 - mass_p) * np.log((1 - mass_p) / (1 - mass_q)), 0.0)
    kl_tail = np.add.reduceat(p * np.log(p / q), begin[:-1]) + tail_term
    assert store.distortion["mean_kl_tail"] == pytest.approx(kl_tail.mean(), rel=1e-3)
    for shard in m["shards"]:
        part = kl[shard["first_row"] : shard["first_row"] + shard["num_rows"]]
        d = shard["distortion"]
        assert d["mean_kl"] == pytest.approx(part.mean(), rel=1e-4, abs=1e-9)
        assert d["max_kl"] == pytest.approx(part.max(), rel=1e-4, abs=1e-9)
        p999 = np.percentile(part, 99.9, method="inverted_cdf")
        assert d["p999_kl"] == pytest.approx(p999, rel=1e-4, abs=1e-9)
        assert d["mean_kl"] <= m["encoding"]["value"]["target_kl"]
    summary = store.distortion
    assert summary["mean_kl"] == pytest.approx(kl.mean(), rel=1e-4)
    assert summary["max_kl"] == pytest.approx(kl.max(), rel=1e-4)
    assert np.percentile(kl, 99.9, method="inverted_cdf") <= summary["p999_kl"] * (1 + 1e-6)
    assert summary["mean_kl"] <= summary["target_kl"] == 5e-4
    # a tighter target buys a finer scale and a smaller distortion
    fine = LogitsStore.open(write_store(store.path.parent / "fine", logits, format_version=2, target_kl=5e-5))
    assert fine.distortion["mean_kl"] <= 5e-5 < summary["mean_kl"]
    assert fine.distortion["value_scales"][0] > summary["value_scales"][1]


def test_manifest_records_identity_encoding_and_shards(store):
    m = json.loads((store.path / "manifest.json").read_text())
    for key, value in IDENTITY.items():
        assert m[key] == value
    assert m["format_version"] == store.format_version and m["complete"] is True
    assert (m["seq_len"], m["vocab_size"], m["p_max"], m["k_max"]) == (T, V, 0.95, 50)
    assert m["gammas"] == GAMMAS and m["stat_keys"] == ["entropy", "std", "log_u_0.7"]
    assert m["encoding"]["counts"] == "uint8"
    if store.format_version == 1:
        assert m["encoding"]["value"]["dtype"] == "uint16" and store.distortion is None
    else:
        assert m["encoding"]["value"]["dtype"] == "uint8" and m["encoding"]["compression"]["codec"] == "zstd"
        assert all(s["distortion"]["mean_kl"] <= s["distortion"]["p999_kl"] <= s["distortion"]["max_kl"]
                   and 8 <= s["value_scale"] <= 255 for s in m["shards"])
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
def test_derived_truncation_equals_truncating_the_logits(store1, logits, top_p, top_k):
    store = store1
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


@pytest.mark.parametrize("top_p,top_k", [(0.95, 5), (0.9, 50), (0.5, 20), (0.3, 1)])
def test_format2_derived_truncation_is_the_rule_on_the_stored_rows(store2, logits, top_p, top_k):
    """A smaller rule is the top_k prefix of the stored order, cut (below the stored top_p) where
    the stored mass reaches top_p: it keeps the exact truncation's entries except near ties and
    near the top-p cut."""
    rule = Truncation(top_p, top_k)
    batch = store2.batch(range(10), rule)
    full = store2.batch(range(10))
    want_idx = full.indices.reshape(-1, 50)[:, :top_k].clone()
    want_lp = full.logprobs.reshape(-1, 50)[:, :top_k].clone()
    if top_p < store2.keeps.top_p:
        drop = torch.arange(top_k) >= kept_counts(want_lp, rule)[:, None]
        want_idx[drop], want_lp[drop] = 0, -torch.inf
    assert torch.equal(batch.indices.reshape(-1, top_k), want_idx)
    assert torch.equal(batch.logprobs.reshape(-1, top_k), want_lp)
    idx, lp = truncate(logits, rule)
    got = batch.indices.reshape(-1, top_k).numpy()
    kept = torch.isfinite(batch.logprobs.reshape(-1, top_k)).numpy()
    exact, exact_kept = idx.reshape(-1, top_k).numpy(), torch.isfinite(lp.reshape(-1, top_k)).numpy()
    same = [set(got[r][kept[r]]) == set(exact[r][exact_kept[r]]) for r in range(got.shape[0])]
    assert np.mean(same) > 0.85


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
    # measured sizes: the real files; format 1: the estimate plus shard headers (large in a toy
    # store; format 2's sizes are measured in tests/core/test_logits_codec.py and the bench)
    storage = store.storage()
    assert storage["bytes"] == sum(f.stat().st_size for f in store.path.glob("shard-*.bin"))
    if store.format_version == 1:
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


@pytest.mark.parametrize("format_version", [1, 2])
def test_online_store_windows(tmp_path, logits, format_version):
    steps = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    seq_ids = np.array([11, 12, 13, 14, 15, 16, 17, 18, 11, 12])  # a second epoch repeats 11, 12
    path = write_store(tmp_path / "online", logits, kind="online", items_per_shard=4,
                       steps=steps, sequence_ids=seq_ids, format_version=format_version)
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
    exact = truncate(logits[late[[3, 0]]], Truncation(0.9, 10))[0]
    if format_version == 1:
        assert torch.equal(got.indices, exact)
    else:  # the same sequences' rows, up to near-ties at the derived cut
        same = (got.indices.sort(-1).values == exact.sort(-1).values).all(-1)
        assert same.float().mean() > 0.85
    with pytest.raises(ValueError, match="captured sequences"):
        teacher(np.array([0]), np.array([99]), None)
    with pytest.raises(StoreError, match="offline"):
        LogitsStore.open(write_store(tmp_path / "off", logits[:2])).window(first_tokens=T)


# --------------------------------------------------------------------------------------------
# formats: format 1 pinned and readable, the writer's choice, resumption, conversion
# --------------------------------------------------------------------------------------------

GOLDEN_T = 4
#: sha256 of a format-1 store written by pdspace 0.1 (before format 2 existed) from golden_shard
GOLDEN_FORMAT1 = {
    "manifest.json": "c2e5621986a9ef7dab35e23275a8a80d8040d32e1d38fb88d9616e91ee2785f9",
    "shard-00000.bin": "eed6a765b792a6d529b32b9b1cbfaeded089bf769916ab8a9a4a151924969486",
    "shard-00001.bin": "09caff48fb1a86f512de0d546f1fa58aa3083c7333d39ea6e86487320c1d9125",
}


def golden_shard(shard):
    """Deterministic entries of 3 items of GOLDEN_T rows (no RNG: the bytes are pinned)."""
    rows = np.arange(3 * GOLDEN_T)
    counts = 1 + (rows * 5 + shard) % 6
    ids = np.concatenate([(r * 37 + np.arange(c) * 101 + shard * 7) % 1000 for r, c in zip(rows, counts)])
    lp = np.concatenate([-0.25 * np.arange(c) - 0.125 * (r % 3) for r, c in zip(rows, counts)])
    stats = (np.arange(3 * rows.size).reshape(3, rows.size) * 0.5).astype(np.float32)
    return counts, ids, lp.astype(np.float32), stats


def write_golden(path, **options):
    header = dict(kind="offline", seq_len=GOLDEN_T, vocab_size=1000, p_max=0.9, k_max=6, gammas=[0.5],
                  teacher_id="golden", teacher_hash="g", tokenizer_hash="k", data_hash="d", split="train")
    writer = LogitsStoreWriter(path, header, **options)
    for shard in range(2):
        writer.write_shard(*golden_shard(shard))
    return writer.finalize()


def test_format1_bytes_are_those_of_0_1_and_still_read(tmp_path):
    path = write_golden(tmp_path / "golden", format_version=1)
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}
    assert digests == GOLDEN_FORMAT1
    store = LogitsStore.open(path)
    store.verify()
    assert store.format_version == 1 and store.distortion is None
    rows = store.decode([0, 1, 2, 3, 4, 5])
    counts = np.concatenate([golden_shard(0)[0], golden_shard(1)[0]])
    np.testing.assert_array_equal(rows.counts.reshape(-1), counts)
    np.testing.assert_array_equal(rows.indices, np.concatenate([golden_shard(0)[1], golden_shard(1)[1]]))
    np.testing.assert_array_equal(rows.logprobs, np.concatenate([golden_shard(0)[2], golden_shard(1)[2]]))


def test_new_stores_take_the_default_format_and_resumed_ones_keep_theirs(tmp_path, logits):
    header = dict(kind="offline", seq_len=T, vocab_size=V, p_max=0.95, k_max=50, gammas=GAMMAS, **IDENTITY)
    idx, lp, cnt, stats = truncate_and_stats(logits[:2], Truncation(0.95, 50), GAMMAS)
    keep = torch.arange(50) < cnt[:, None]
    shard = (cnt.numpy(), idx[keep].numpy(), lp[keep].numpy(),
             np.stack([stats[k].numpy() for k in stat_keys(GAMMAS)]))
    assert LogitsStoreWriter(tmp_path / "new", header).format_version == DEFAULT_FORMAT_VERSION
    for version in (1, 2):  # an interrupted store resumes in its own format ...
        path = tmp_path / f"v{version}"
        LogitsStoreWriter(path, header, format_version=version).write_shard(*shard)
        resumed = LogitsStoreWriter(path, header)
        assert resumed.format_version == version and resumed.num_shards == 1
        resumed.write_shard(*shard)
        store = LogitsStore.open(resumed.finalize())
        assert store.format_version == version and store.num_items == 4
        other = 3 - version  # ... and is refused in another one
        with pytest.raises(StoreMismatchError, match="format_version"):
            LogitsStoreWriter(tmp_path / f"v{version}", header, format_version=other)
    with pytest.raises(StoreMismatchError, match="encoding"):  # another distortion target
        LogitsStoreWriter(tmp_path / "v2", header, target_kl=1e-5)
    with pytest.raises(ValueError, match="format_version"):
        LogitsStoreWriter(tmp_path / "v3", header, format_version=3)


def test_format2_refuses_repeated_ids_in_a_row(tmp_path):
    header = dict(kind="offline", seq_len=2, vocab_size=50, p_max=0.9, k_max=4, gammas=[], **IDENTITY)
    writer = LogitsStoreWriter(tmp_path / "s", header, format_version=2)
    with pytest.raises(ValueError, match="distinct"):
        writer.write_shard(np.array([2, 1]), np.array([7, 7, 3]), np.log([0.5, 0.4, 0.9]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 50\)"):
        writer.write_shard(np.array([2, 1]), np.array([7, 50, 3]), np.log([0.5, 0.4, 0.9]), np.zeros((2, 2)))


@pytest.mark.parametrize("kind", ["offline", "online"])
def test_format1_store_converts_to_format2(tmp_path, logits, kind):
    online = dict(steps=np.arange(10) // 2, sequence_ids=np.arange(10) + 100) if kind == "online" else {}
    src = LogitsStore.open(write_store(tmp_path / "v1", logits, format_version=1, kind=kind, **online))
    path = convert_store(src.path, tmp_path / "v2")
    dst = LogitsStore.open(path, expect={**IDENTITY, "seq_len": T, "vocab_size": V, "kind": kind,
                                         "truncation": Truncation(0.95, 50), "gammas": GAMMAS})
    dst.verify()
    assert dst.format_version == 2 and dst.num_items == src.num_items == 10
    shard_items = [s["num_items"] for s in src.manifest["shards"]]
    assert [s["num_items"] for s in dst.manifest["shards"]] == shard_items
    assert dst.distortion["mean_kl"] <= 5e-4
    assert all(s["distortion"]["reference"].startswith("format-1") for s in dst.manifest["shards"])
    ids = np.arange(10)
    a, b = src.decode(ids), dst.decode(ids)
    np.testing.assert_array_equal(a.counts, b.counts)
    for key in src.stat_keys:
        np.testing.assert_array_equal(a.stats[key], b.stats[key])
    begin = np.concatenate([[0], np.cumsum(a.counts.reshape(-1))])
    for r in range(begin.size - 1):
        assert sorted(a.indices[begin[r]:begin[r + 1]]) == sorted(b.indices[begin[r]:begin[r + 1]])
    if kind == "online":
        np.testing.assert_array_equal(dst.entry_sequence_ids(), src.entry_sequence_ids())
        np.testing.assert_array_equal(dst.entry_steps(), src.entry_steps())
    # a finished conversion is returned as is; one cut short continues after its last shard
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    assert convert_store(src.path, path) == path
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["complete"], manifest["shards"] = False, manifest["shards"][:2]
    (path / "manifest.json").write_text(json.dumps(manifest))
    convert_store(src.path, path)
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
