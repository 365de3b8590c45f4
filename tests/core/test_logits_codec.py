"""Format 2's entry codec: gap symbols and bit fields round trip, the value and kept-mass codes
keep their declared bounds, the KL it reports is the KL, the value scale is the smallest meeting
its target, and a shard's entries round trip whatever the ids (ranked or not, any vocabulary)."""
import numpy as np
import pytest

from core import logits_codec as C

T = 4


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def test_gap_symbols_round_trip():
    rng = np.random.default_rng(1)
    gaps = np.concatenate([np.arange(5000), rng.integers(0, C.MAX_GAP_VOCAB, 20000), [C.MAX_GAP_VOCAB - 1]])
    symbols, extra = C.gap_symbols(gaps)
    assert symbols.dtype == np.uint8
    np.testing.assert_array_equal(C.GAP_BASE[symbols] + extra.astype(np.int64), gaps)
    assert (extra < (np.uint64(1) << C.GAP_EXTRA_BITS[symbols].astype(np.uint64))).all()
    assert (np.diff(C.gap_symbols(np.arange(1 << 16))[0].astype(int)) >= 0).all()  # monotone
    assert (C.GAP_EXTRA_BITS[symbols[gaps < 128]] == 0).all()


def test_bit_fields_round_trip(rng):
    widths = rng.integers(0, 31, 5000)
    values = (rng.integers(0, 1 << 62, 5000).astype(np.uint64)
              & ((np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1)))
    stream, bitpos = C.write_bits(values, widths)
    assert stream.size % 8 == 0 and stream.size * 8 >= widths.sum() + 64
    np.testing.assert_array_equal(C.read_bits(stream, bitpos, widths), values)
    masks = (np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1)
    np.testing.assert_array_equal(C.read_bits(stream, bitpos, masks=masks), values)
    wide = rng.integers(0, 1 << 57, 100).astype(np.uint64)
    stream, bitpos = C.write_bits(wide, np.full(100, 57))
    np.testing.assert_array_equal(C.read_bits(stream, bitpos, 57), wide)


@pytest.mark.parametrize("scale", [8, 64, 255])
def test_sqrt_value_code_bound(scale):
    p = np.concatenate([np.linspace(0, 1, 100_001), np.exp(-np.linspace(0, 40, 1000))])
    with np.errstate(divide="ignore"):
        codes = C.sqrt_codes(np.log(p), scale)
    assert codes.dtype == np.uint8 and codes.max() == scale - 1
    read = np.exp(C.sqrt_code_logprobs(scale).astype(np.float64)[codes])
    assert np.abs(np.sqrt(read) - np.sqrt(p)).max() <= 0.5 / scale + 1e-7
    assert (np.diff(C.sqrt_codes(np.log(np.linspace(1e-9, 1, 5000)), scale).astype(int)) >= 0).all()


def test_kept_mass_code_bound():
    mass = np.concatenate([np.exp(-np.linspace(0.01, 20, 5000)), 1 - np.exp(-np.linspace(0.01, 20, 5000))])
    read = C.kept_mass_of_codes(C.mass_codes(mass))
    # the kept mass and the dropped mass both to a relative 2**-9
    assert np.abs(np.log(read) - np.log(mass)).max() <= 2.0**-9 * 1.01
    assert np.abs(np.log1p(-read) - np.log1p(-mass)).max() <= 2.0**-9 * 1.01
    assert 1 - C.kept_mass_of_codes(C.mass_codes(np.array([1.0, 1 + 1e-12])))[0] < 1e-13


def random_rows(rng, num_rows, vocab_size, k_max, *, skew=None):
    """Rows of distinct ids with heavy-tailed log-probabilities, in probability order.
    skew: draw ids from a Zipf-like prior over ``skew`` ids scattered over the vocabulary (a
    teacher's frequent tokens), else uniformly."""
    counts = np.minimum(rng.geometric(0.08, num_rows), min(k_max, vocab_size))
    ids, lps = [], []
    for n in counts:
        if skew is None:
            row = rng.choice(vocab_size, n, replace=False)
        else:
            weights = 1 / np.arange(1, skew + 1)
            hot = np.random.default_rng(7).permutation(vocab_size)[:skew]
            row = hot[rng.choice(skew, n, replace=False, p=weights / weights.sum())]
        logits = -rng.uniform(1.2, 3.0) * np.log(np.arange(1, n + 1)) + 0.5 * rng.normal(size=n)
        lp = np.sort(logits)[::-1] - np.log(np.exp(logits).sum() * rng.uniform(1.02, 1.5))
        ids.append(row)
        lps.append(lp)
    return counts, np.concatenate(ids), np.concatenate(lps).astype(np.float32)


def test_row_kl_is_the_renormalised_kl(rng):
    counts, _, lp = random_rows(rng, 50, 1000, 20)
    lq = lp + rng.normal(0, 0.1, lp.size).astype(np.float32)
    got = C.row_kl(counts, lp, lq)
    begin = np.concatenate([[0], np.cumsum(counts)])
    for r in range(counts.size):
        p = np.exp(lp[begin[r]:begin[r + 1]].astype(np.float64))
        q = np.exp(lq[begin[r]:begin[r + 1]].astype(np.float64))
        p, q = p / p.sum(), q / q.sum()
        assert got[r] == pytest.approx((p * np.log(p / q)).sum(), abs=1e-12, rel=1e-9)
    np.testing.assert_allclose(C.row_kl(counts, lp, lp + 3.0), 0, atol=1e-12)  # a row's scale is free
    lp_inf = lp.copy()
    lp_inf[(begin[1:] - 1)[counts > 1]] = -np.inf  # p = 0 entries add nothing
    assert np.isfinite(C.row_kl(counts, lp_inf, lq)).all()


@pytest.mark.parametrize("target", [1e-3, 1e-4])
def test_value_scale_is_the_smallest_meeting_the_target(rng, target):
    counts, _, lp = random_rows(rng, 400, 1000, 60)
    scale, codes, kl = C.choose_scale(counts, lp, target)
    assert kl.mean() <= target
    smaller = max(C.MIN_VALUE_SCALE, int(scale / 1.1))
    if smaller < scale:
        assert C.choose_scale(counts, lp, 1.0)[0] <= smaller
        table = C.sqrt_code_logprobs(smaller)
        assert C.row_kl(counts, lp, table[C.sqrt_codes(lp, smaller)]).mean() > target
    np.testing.assert_array_equal(codes, C.sqrt_codes(lp, scale))
    # chunking the rows changes nothing
    again = C.choose_scale(counts, lp, target, chunk_entries=37)
    assert again[0] == scale and np.array_equal(again[1], codes) and np.allclose(again[2], kl)


def encode(counts, ids, lp, vocab_size, k_max, **options):
    pad = (-counts.size) % T
    counts = np.concatenate([counts, np.ones(pad, dtype=counts.dtype)])
    ids = np.concatenate([ids, np.zeros(pad, dtype=ids.dtype)])
    lp = np.concatenate([lp, np.zeros(pad, dtype=lp.dtype)])
    enc = C.encode_entries(counts, ids, lp, vocab_size=vocab_size, seq_len=T, k_max=k_max, **options)
    dec = C.EntryDecoder(dict(enc.sections), enc.meta, vocab_size=vocab_size, seq_len=T, k_max=k_max)
    return counts, ids, lp, enc, dec


@pytest.mark.parametrize("vocab_size,k_max,id_ranks,skew", [
    (2, 2, "auto", None), (1000, 50, "never", None), (1000, 50, "always", None),
    (151_552, 100, "auto", None), (151_552, 100, "auto", 3000), (5000, 300, "auto", 400),
])
def test_entries_round_trip(rng, vocab_size, k_max, id_ranks, skew):
    counts, ids, lp = random_rows(rng, 37 * T + 2, vocab_size, k_max, skew=skew)
    if vocab_size > 2:
        lp[5] = -np.inf  # an entry with p = 0 reads back as the smallest code
    counts, ids, lp, enc, dec = encode(counts, ids, lp, vocab_size, k_max, id_ranks=id_ranks)
    assert enc.meta["items_per_frame"] >= 1
    if id_ranks != "auto":
        assert (enc.meta["id_table_size"] > 0) == (id_ranks == "always")
    num_items = counts.size // T
    items = np.array([num_items - 1, 0, 3, 3, num_items // 2])
    rows = (items[:, None] * T + np.arange(T)).reshape(-1)
    begin = np.concatenate([[0], np.cumsum(counts)])
    got_counts, got_ids, got_lp = dec.decode(items)  # stored order: ascending id or rank
    np.testing.assert_array_equal(got_counts, counts[rows])
    got_begin = np.concatenate([[0], np.cumsum(got_counts)])
    for i, r in enumerate(rows):
        assert sorted(got_ids[got_begin[i]:got_begin[i + 1]]) == sorted(ids[begin[r]:begin[r + 1]])
    counts2, block_ids, block_lp = dec.decode_rows(items)
    np.testing.assert_array_equal(counts2, counts[rows])
    scale = enc.meta["value_scale"]
    for i, r in enumerate(rows):
        n = counts[r]
        row_ids, row_lp = block_ids[i, :n], block_lp[i, :n].astype(np.float64)
        assert sorted(row_ids) == sorted(ids[begin[r]:begin[r + 1]])
        assert (block_ids[i, n:] == 0).all() and np.isneginf(block_lp[i, n:]).all()
        assert (np.diff(row_lp) <= 1e-6).all()
        tie = np.abs(np.diff(row_lp)) <= 1e-6
        assert (np.diff(row_ids)[tie] > 0).all()
        # the row is the codes of the renormalised exact row, |sqrt(p') - sqrt(p)| <= 1/(2S) ...
        exact = dict(zip(ids[begin[r]:begin[r + 1]], lp[begin[r]:begin[r + 1]].astype(np.float64)))
        p = np.exp(np.array([exact[j] for j in row_ids]))
        q = np.exp(row_lp)
        with np.errstate(divide="ignore"):
            codes = C.sqrt_codes(np.log(p / p.sum()), scale)
        coded = np.exp(C.sqrt_code_logprobs(scale)[codes].astype(np.float64))
        assert np.abs(np.sqrt(coded) - np.sqrt(p / p.sum())).max() <= 0.5 / scale + 1e-6
        np.testing.assert_allclose(q / q.sum(), coded / coded.sum(), rtol=2e-5)
        # ... and the row is read back at its kept mass (and dropped mass) to a relative 2**-9
        assert abs(np.log(q.sum()) - np.log(p.sum())) <= 2.0**-9 + 1e-5
        if 1 - p.sum() > 1e-4:
            assert abs(np.log1p(-q.sum()) - np.log1p(-p.sum())) <= 2.0**-9 + 1e-3
    assert enc.kl.shape == (counts.size,) and enc.kl.mean() <= C.DEFAULT_TARGET_KL
    assert (enc.kl_tail >= 0).all()


def test_ranked_ids_when_they_pay(rng):
    """A per-shard frequency table is used when ids concentrate (real teachers' frequent tokens)
    and not when they are uniform; format 2 is well below format 1's 4.17 bytes per entry."""
    V = 151_552
    sizes = {}
    for name, skew in [("uniform", None), ("skewed", 300)]:
        counts, ids, lp = random_rows(rng, 64 * T, V, 100, skew=skew)
        counts, ids, lp, enc, _ = encode(counts, ids, lp, V, 100)
        sizes[name] = sum(a.nbytes for _, a in enc.sections) / counts.sum()
        assert (enc.meta["id_table_size"] > 0) == (skew is not None)
    assert sizes["skewed"] < 0.8 * sizes["uniform"] and sizes["uniform"] < 0.75 * 4.17
