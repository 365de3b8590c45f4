"""Truncation, row statistics and the store's codecs, against references written here."""
import numpy as np
import pytest
import torch

from core.config import Truncation
from core.logits import (
    VALUE_MAX_ABS_ERROR,
    IndexCodec,
    decode_values,
    encode_values,
    row_stats,
    truncate,
    truncate_and_stats,
    truncate_with_counts,
)
from core.types import format_gamma

torch.set_num_threads(1)


def grid_logits(shape, seed, scale=3.0, grid=64.0):
    """Random logits on a 1/grid lattice: values are equal (a tie) or >= 1/grid apart, so the
    float32 log-softmax keeps exactly the order and ties of the logits."""
    rng = np.random.default_rng(seed)
    return (np.round(rng.standard_t(3.0, size=shape) * scale * grid) / grid).astype(np.float32)


def reference_truncate(x: np.ndarray, top_p: float, top_k: int):
    """Full sort in numpy (float64): value descending, ties by lower index first."""
    rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
    vocab = rows.shape[1]
    k = min(top_k, vocab)
    out_idx = np.zeros((rows.shape[0], k), dtype=np.int64)
    out_lp = np.full((rows.shape[0], k), -np.inf)
    counts = np.zeros(rows.shape[0], dtype=np.int64)
    margin = np.full(rows.shape[0], np.inf)
    for r, row in enumerate(rows):
        m = row.max()
        lse = m + np.log(np.exp(row - m).sum())
        order = np.lexsort((np.arange(vocab), -row))  # last key is primary
        lp = row[order] - lse
        cum = np.cumsum(np.exp(lp))
        n = k if top_p >= 1 else min(k, int(np.searchsorted(cum, top_p, side="left")) + 1)
        if top_p < 1:
            margin[r] = np.abs(cum[:k] - top_p).min()
        counts[r] = n
        out_idx[r, :n] = order[:n]
        out_lp[r, :n] = lp[:n]
    shape = x.shape[:-1]
    return out_idx.reshape(*shape, k), out_lp.reshape(*shape, k), counts.reshape(shape), margin.reshape(shape)


def assert_matches_reference(x, top_p, top_k, margin_tol=1e-6):
    idx, lp, cnt = truncate_with_counts(torch.from_numpy(x), Truncation(top_p, top_k))
    ref_idx, ref_lp, ref_cnt, margin = reference_truncate(x, top_p, top_k)
    ok = margin > margin_tol  # rows whose cumulative mass touches p are ambiguous in float32
    assert ok.mean() > 0.95
    assert idx.shape == ref_idx.shape and lp.dtype == torch.float32 and idx.dtype == torch.int64
    np.testing.assert_array_equal(cnt.numpy()[ok], ref_cnt[ok])
    np.testing.assert_array_equal(idx.numpy()[ok], ref_idx[ok])
    np.testing.assert_allclose(lp.numpy()[ok], ref_lp[ok], atol=2e-5, rtol=0)
    # padding: index 0, -inf
    k = idx.shape[-1]
    pad = np.arange(k) >= cnt.numpy()[..., None]
    assert (idx.numpy()[pad] == 0).all() and np.isneginf(lp.numpy()[pad]).all()
    assert np.isfinite(lp.numpy()[~pad]).all()
    return idx, lp, cnt


@pytest.mark.parametrize("top_p,top_k", [(0.9, 20), (0.5, 100), (1.0, 7), (0.99, 1), (0.3, 3)])
def test_truncate_matches_full_sort_reference(top_p, top_k):
    assert_matches_reference(grid_logits((3, 20, 257), seed=1), top_p, top_k)


@pytest.mark.parametrize("top_k", [257, 300])
def test_truncate_k_at_least_vocab_keeps_everything_sorted(top_k):
    x = grid_logits((40, 257), seed=2)
    idx, lp, cnt = assert_matches_reference(x, 1.0, top_k)
    assert idx.shape == (40, 257) and (cnt == 257).all()
    assert (np.sort(idx.numpy(), axis=1) == np.arange(257)).all()
    np.testing.assert_allclose(torch.logsumexp(lp, -1).numpy(), 0, atol=1e-5)


def test_truncate_p_one_is_plain_top_k():
    x = grid_logits((50, 300), seed=3)
    idx, lp = truncate(torch.from_numpy(x), Truncation(1.0, 13))
    assert torch.isfinite(lp).all()
    ref_idx, _, _, _ = reference_truncate(x, 1.0, 13)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)


def test_truncate_cumulative_mass_rule():
    # probabilities 0.5, 0.3, 0.15, 0.05: p = 0.8 keeps 2 (0.5+0.3 reaches 0.8), p = 0.81 keeps 3
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]], dtype=torch.float64)).float()
    for p, n in [(0.4, 1), (0.5 - 1e-4, 1), (0.79, 2), (0.81, 3), (0.96, 4), (1.0, 4)]:
        idx, lp = truncate(logits, Truncation(p, 4))
        assert torch.isfinite(lp).sum() == n, p
        assert idx[0, :n].tolist() == [1, 3, 2, 0][:n]
    idx, lp = truncate(logits, Truncation(0.99, 2))  # the k cap wins
    assert idx[0].tolist() == [1, 3] and torch.isfinite(lp).all()


def test_truncate_ties_lower_index_first():
    # many exact ties inside the kept set and across the k boundary
    x = np.zeros((4, 64), dtype=np.float32)
    x[0, [40, 3, 17]] = 2.0
    x[1, :] = 1.0  # all tied: top-5 must be ids 0..4
    x[2, [63, 62, 1]] = 5.0
    x[2, [10, 50, 20, 30]] = 4.0
    x[3] = np.arange(64) % 4
    idx, lp, cnt = assert_matches_reference(x, 1.0, 5)
    assert idx[0, :3].tolist() == [3, 17, 40]
    assert idx[1].tolist() == [0, 1, 2, 3, 4]
    assert idx[2].tolist() == [1, 62, 63, 10, 20]
    assert idx[3].tolist() == [3, 7, 11, 15, 19]


def test_truncate_integer_logits_with_many_ties():
    x = np.random.default_rng(4).integers(-3, 4, size=(200, 128)).astype(np.float32)
    for p, k in [(1.0, 10), (0.7, 30), (0.2, 128)]:
        assert_matches_reference(x, p, k)


def test_truncate_large_vocab_block_path_matches_reference():
    # V >= 128 (k + 1) uses the two-level (block maxima) top-k on CPU; include boundary ties
    x = grid_logits((6, 20_000), seed=5, grid=4.0)
    x[0, [7, 19_999, 12_345]] = 100.0  # three-way tie at the top
    x[1, :] = 0.0
    x[1, [5000, 9, 17_000]] = 1.0
    assert_matches_reference(x, 1.0, 2)
    assert_matches_reference(x, 0.9, 100)
    assert_matches_reference(x[:, :20_001 - 2], 1.0, 100)  # V not a multiple of the block
    # V = 4,096, k = 100: blocks of 8; coarse grid = many ties, also across the k boundary
    y = grid_logits((40, 4096), seed=8, grid=2.0)
    assert_matches_reference(y, 1.0, 100)
    assert_matches_reference(y, 0.95, 100)


def test_truncate_leading_shape_and_dtypes():
    x = torch.from_numpy(grid_logits((2, 3, 5, 50), seed=6))
    idx, lp = truncate(x.to(torch.bfloat16), Truncation(0.8, 10))
    assert idx.shape == (2, 3, 5, 10) and lp.shape == (2, 3, 5, 10)
    assert lp.dtype == torch.float32


def test_truncate_rejects_bad_arguments():
    x = torch.zeros(2, 10)
    for p, k in [(0.0, 5), (1.5, 5), (0.9, 0), (0.9, 2.5)]:
        with pytest.raises(ValueError):
            truncate(x, Truncation(p, k))
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        truncate(x, Truncation(0.9, 5))


def test_row_stats_match_float64_reference():
    x = grid_logits((30, 500), seed=7) * 2
    gammas = [0.7, 0.8, 1.5]
    stats = row_stats(torch.from_numpy(x), gammas)
    shifted = row_stats(torch.log_softmax(torch.from_numpy(x), -1), gammas)  # logits + constant
    for key in stats:
        torch.testing.assert_close(shifted[key], stats[key], rtol=1e-5, atol=1e-5)
    x64 = x.astype(np.float64)
    lse = np.log(np.exp(x64 - x64.max(1, keepdims=True)).sum(1, keepdims=True)) + x64.max(1, keepdims=True)
    logp = x64 - lse
    np.testing.assert_allclose(stats["entropy"].numpy(), -(np.exp(logp) * logp).sum(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["std"].numpy(), x64.std(1, ddof=1), rtol=1e-5)
    for g in gammas:
        ref = np.log(np.exp(g * logp).sum(1))
        np.testing.assert_allclose(stats[format_gamma(g)].numpy(), ref, rtol=1e-5, atol=1e-5)
    # chunked truncation + stats equals the pieces
    idx, lpk, cnt, st = truncate_and_stats(torch.from_numpy(x), Truncation(0.9, 20), gammas, chunk_rows=7)
    idx2, lpk2, cnt2 = truncate_with_counts(torch.from_numpy(x), Truncation(0.9, 20))
    assert torch.equal(idx, idx2) and torch.equal(cnt, cnt2)
    torch.testing.assert_close(lpk, lpk2, rtol=1e-6, atol=1e-5)  # lse via softmax vs logsumexp
    for key in stats:
        torch.testing.assert_close(st[key], stats[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vocab_size", [1, 2, 3, 5, 7, 100, 4096, 50_257, 151_552, 2**20 + 3])
def test_index_codec_round_trip(vocab_size):
    codec = IndexCodec.for_vocab(vocab_size)
    assert codec.group_bits <= 57
    assert codec.bits_per_index <= max(1, np.ceil(np.log2(vocab_size)))
    rng = np.random.default_rng(vocab_size)
    ids = rng.integers(0, vocab_size, 3001)
    ids[:3] = vocab_size - 1
    stream = codec.encode(ids)
    assert stream.size == codec.nbytes(ids.size)
    starts = np.array([0, 5, 17, 500, 2999, 1000])
    lengths = np.array([3, 0, 100, 400, 2, 1])
    expected = np.concatenate([ids[s : s + n] for s, n in zip(starts, lengths)])
    np.testing.assert_array_equal(codec.decode_ranges(stream, starts, lengths), expected)
    np.testing.assert_array_equal(codec.decode_ranges(stream, [0], [ids.size]), ids)


def test_index_codec_packs_151552_below_18_bits():
    codec = IndexCodec.for_vocab(151_552)
    assert (codec.per_group, codec.group_bits) == (3, 52)  # 17.33 bits per id
    assert (codec.bits_per_index / 8 + 2) < 4.17


def test_value_code_round_trip_error_bound():
    lp = -np.concatenate([np.linspace(0, 31.99, 200_001), np.random.default_rng(0).exponential(3, 10_000)])
    lp = lp[lp > -31.99].astype(np.float32)
    codes = encode_values(lp)
    assert codes.dtype == np.uint16
    err = np.abs(decode_values(codes).astype(np.float64) - lp)
    assert err.max() <= VALUE_MAX_ABS_ERROR * (1 + 1e-6)
    special = np.array([0.0, 1e-7, -np.inf, -50.0], dtype=np.float32)
    back = decode_values(encode_values(special))
    assert back[0] == 0 and back[1] == 0 and np.isneginf(back[2]) and -32 < back[3] < -31.99
    # monotone: sorted rows stay sorted
    assert (np.diff(encode_values(np.sort(lp)[::-1]).astype(np.int64)) >= 0).all()
    with pytest.raises(ValueError):
        encode_values(np.array([np.nan], dtype=np.float32))
