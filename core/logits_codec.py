"""Entry codecs of the logits store: format 1's fixed-width codes and format 2's entropy-coded ones.

Format 1 (exact): each entry is a 16-bit log-probability code (step 2**-11 nats) and a token id
bit-packed at ~log2 V bits (``IndexCodec``), rows in probability order: 4.17 bytes per entry at
V = 151,552.

Format 2 (compact, lossy with a declared bound), per shard:

- **values**: each row is renormalised over its kept entries (p' = p / M, M the row's kept
  mass); ``c = min(floor(sqrt(p') * S), S - 1)`` (one byte, ``S <= 255`` the shard's *value
  scale*) reads back as ``((c + 0.5) / S)**2``, so ``|sqrt(read) - sqrt(p')| <= 1 / (2 S)``.
  Uniform steps in sqrt(p) spread the KL evenly over a row's entries (a log-probability error e
  on an entry of probability p costs ~p e**2 / 2 nats of KL; a sqrt step of d gives
  e ~ 2 d / sqrt(p)): the entropy-coded optimum for KL (Gersho's companding rule, point density
  ~ sqrt(weight)). The writer picks the smallest S whose mean KL over the shard's rows stays
  within a target (``DEFAULT_TARGET_KL``) and records the measured KL (``row_kl``).
- **kept mass**: M per row as a uint16 logit (``mass_codes``); rows are read back rescaled to
  it, so the dropped mass 1 - M (a tail-bucket loss's extra outcome) is kept to 0.2 %.
- **token ids**: each row's ids are sorted ascending (the values travel with them), optionally
  after mapping every id to its *rank* by frequency in the shard (a per-shard table, used when
  it makes the shard smaller: real teachers keep a few thousand frequent tokens over and over).
  Gaps between consecutive sorted ids (``id_j - id_{j-1} - 1``, from -1) are one-byte symbols:
  the gap itself below 128, else its bit length and the 3 bits below its top bit, followed by
  raw extra bits (``gap_symbols``). A sorted set carries no order, which is what brings the index
  cost near log2 C(V, n) / n bits instead of log2 V: the order comes back from the values on
  reading (rows sorted by stored probability, ties by lower id).
- **coding**: per group of whole items (about ``FRAME_ENTRIES`` entries), the row counts, mass
  codes, gap symbols and value codes are four zstd frames (Huffman-coded bytes); the extra bits
  are one raw little-endian bit stream per shard, with a bit offset per item.

Reading restores format 1's contract except the order *within* a value step: entries whose
stored probabilities are equal come lower id first, whatever their exact order was.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

try:
    import zstandard
except ImportError:  # pragma: no cover - a declared dependency; format 1 works without it
    zstandard = None

# --------------------------------------------------------------------------------------------
# format 1: uint16 value code, linear in the log-probability
# --------------------------------------------------------------------------------------------

#: Quantisation step of the stored log-probabilities (nats). A power of two: scaling is exact.
VALUE_STEP = 2.0**-11
#: The largest code for a finite value; code 65535 is -inf (probability exactly 0).
MAX_FINITE_CODE = 65534
NEG_INF_CODE = 65535
#: The smallest storable log-probability, -31.999 (p = 1.3e-14); smaller ones are stored as it.
MIN_LOGPROB = -MAX_FINITE_CODE * VALUE_STEP
#: Largest round-trip error of a log-probability in [MIN_LOGPROB, 0]: half a step, 2.44e-4
#: nats, i.e. every kept probability is exact to a relative 2.44e-4.
VALUE_MAX_ABS_ERROR = VALUE_STEP / 2


def encode_values(logprobs: np.ndarray) -> np.ndarray:
    """Log-probabilities (<= 0) -> uint16 codes round(-logprob / VALUE_STEP).

    Codes are monotone, so a row sorted by probability stays sorted. Values above 0 (float
    rounding of a near-certain token) are stored as 0; values below MIN_LOGPROB as MIN_LOGPROB.
    """
    lp = np.asarray(logprobs, dtype=np.float32)
    if np.isnan(lp).any():
        raise ValueError("cannot store NaN log-probabilities")
    codes = np.rint(np.clip(lp * np.float32(-1.0 / VALUE_STEP), 0, MAX_FINITE_CODE))
    codes = codes.astype(np.uint16)
    codes[np.isneginf(lp)] = NEG_INF_CODE
    return codes


def decode_values(codes: np.ndarray) -> np.ndarray:
    """uint16 codes -> float32 log-probabilities (exact: code * 2**-11 is a float32)."""
    out = codes.astype(np.float32)
    out *= np.float32(-VALUE_STEP)
    neg_inf = codes == NEG_INF_CODE
    if neg_inf.any():
        out[neg_inf] = -np.inf
    return out


# --------------------------------------------------------------------------------------------
# format 1: index code, mixed-radix groups of token ids, bit-packed
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexCodec:
    """Token ids packed ``per_group`` at a time as one base-V number of ``group_bits`` bits.

    Group g holds ids ``e = g*n + j`` (j = 0..n-1) as ``sum_j id_e * V**j`` and sits at bit
    ``g * group_bits`` of a little-endian bit stream (bit b of the stream is bit b % 8 of byte
    b // 8). ``per_group`` is chosen in 1..3 to minimise bits per id with groups of at most 57
    bits (n = 3 at V = 151,552: 52 bits per 3 ids; n = 1 when V is a power of two). The stream
    is whole little-endian 64-bit words plus one zero word: a group is read with two aligned
    word loads and shifts, written with one unaligned 8-byte read-modify-write.
    """

    vocab_size: int
    per_group: int
    group_bits: int

    @classmethod
    def for_vocab(cls, vocab_size: int) -> "IndexCodec":
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        best = None
        for n in (1, 2, 3):
            bits = max(1, (vocab_size**n - 1).bit_length())
            if bits <= 57 and (best is None or bits / n < best[1] / best[0] - 1e-12):
                best = (n, bits)
        if best is None:
            raise ValueError(f"vocab_size {vocab_size} is too large to store (max 2**57)")
        return cls(vocab_size, best[0], best[1])

    @property
    def bits_per_index(self) -> float:
        return self.group_bits / self.per_group

    def nbytes(self, num_entries: int) -> int:
        """Stream size: whole 64-bit words, plus one zero word so that reads never run past."""
        num_groups = -(-num_entries // self.per_group)
        return (-(-num_groups * self.group_bits // 64) + 1) * 8

    def encode(self, indices: np.ndarray) -> np.ndarray:
        """(E,) ids in [0, V) -> packed uint8 stream of ``nbytes(E)`` bytes."""
        ids = np.asarray(indices)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        n, bits = self.per_group, self.group_bits
        num_groups = -(-ids.size // n)
        digits = np.zeros(num_groups * n, dtype=np.uint64)
        digits[: ids.size] = ids
        digits = digits.reshape(num_groups, n)
        words = digits[:, n - 1].copy()
        for j in range(n - 2, -1, -1):
            words = words * np.uint64(self.vocab_size) + digits[:, j]
        out = np.zeros(self.nbytes(ids.size), dtype=np.uint8)
        window = _unaligned_u64(out)
        bitpos = np.arange(num_groups, dtype=np.uint64) * np.uint64(bits)
        byte = (bitpos >> np.uint64(3)).astype(np.intp)
        shifted = words << (bitpos & np.uint64(7))
        # Groups `phases` apart never share a byte of their 8-byte windows, so each phase is
        # written with one vectorised read-modify-write.
        phases = -(-64 // bits)
        for m in range(phases):
            window[byte[m::phases]] |= shifted[m::phases]
        return out

    def decode_ranges(self, stream: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                      entries: np.ndarray | None = None) -> np.ndarray:
        """Ids of entries [starts[i], starts[i] + lengths[i]) for every i, concatenated, int64.

        ``entries``: ``concat_ranges(starts, lengths)`` when the caller already has it.
        """
        n = self.per_group
        if n == 1:
            if entries is None:
                entries = concat_ranges(starts, lengths)
            return self._groups(stream, entries).astype(np.int64)
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        nonempty = lengths > 0
        starts, lengths = starts[nonempty], lengths[nonempty]
        if starts.size == 0:
            return np.zeros(0, dtype=np.int64)
        first_group = starts // n
        num_groups = (starts + lengths - 1) // n + 1 - first_group
        words = self._groups(stream, concat_ranges(first_group, num_groups))
        digits = np.empty((words.size, n), dtype=np.uint64)
        vocab = np.uint64(self.vocab_size)
        for j in range(n - 1):
            words, digits[:, j] = np.divmod(words, vocab)
        digits[:, n - 1] = words
        # position of each range's first entry inside the decoded digits
        group_offset = np.cumsum(num_groups) - num_groups
        first = group_offset * n + (starts - first_group * n)
        return digits.reshape(-1)[concat_ranges(first, lengths)].astype(np.int64)

    def _groups(self, stream: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """The group_bits-bit words of groups ``groups`` (int64), as uint64."""
        bitpos = np.asarray(groups, dtype=np.int64) * self.group_bits
        return read_bits(stream, bitpos, self.group_bits)


def _unaligned_u64(buf: np.ndarray) -> np.ndarray:
    """A uint64 view starting at every byte of ``buf`` (len(buf) - 7 overlapping words)."""
    return np.ndarray((buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))


def read_bits(stream: np.ndarray, bitpos: np.ndarray, widths=None, *, masks=None) -> np.ndarray:
    """The ``widths``-bit (int or per-position array, each <= 57) little-endian fields starting
    at bits ``bitpos`` (int64) of ``stream`` (uint8, whole 64-bit words plus one zero word), as
    uint64. ``masks`` (uint64, ``2**width - 1`` per position) may replace ``widths``.

    A field of <= 57 bits lies within the 8 bytes from its first byte: one unaligned 8-byte
    gather, a shift by ``bitpos % 8`` and a mask.
    """
    out = _unaligned_u64(stream)[bitpos >> 3]
    out >>= (bitpos & 7).astype(np.uint64)
    if masks is not None:
        out &= masks
    elif np.isscalar(widths):
        out &= np.uint64((1 << int(widths)) - 1)
    else:
        out &= (np.uint64(1) << np.asarray(widths, dtype=np.uint64)) - np.uint64(1)
    return out


def write_bits(values: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pack ``values`` (uint64) at ``widths`` bits each (<= 57), back to back, little-endian.

    Returns (stream, bitpos): the uint8 stream (whole 64-bit words plus one zero word, the
    layout ``read_bits`` reads) and each field's first bit (int64).
    """
    widths = np.asarray(widths, dtype=np.int64)
    ends = np.cumsum(widths)
    bitpos = ends - widths
    total = int(ends[-1]) if ends.size else 0
    words = np.zeros(-(-total // 64) + 1, dtype="<u8")
    live = widths > 0
    if live.any():
        pos, val = bitpos[live], np.asarray(values, dtype=np.uint64)[live]
        index = pos >> 6
        shift = (pos & 63).astype(np.uint64)
        np.bitwise_or.at(words, index, val << shift)
        spill = shift + widths[live].astype(np.uint64) > np.uint64(64)
        if spill.any():
            np.bitwise_or.at(words, index[spill] + 1,
                             val[spill] >> (np.uint64(64) - shift[spill]))
    return words.view(np.uint8), bitpos


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concatenate(arange(s, s + l) for s, l in zip(starts, lengths)), vectorised, int64."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    begins = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(starts - begins, lengths)


def count_dtype(k_max: int) -> np.dtype:
    return np.dtype(np.uint8 if k_max <= 255 else np.uint16 if k_max <= 65535 else np.uint32)


# --------------------------------------------------------------------------------------------
# format 2: values in sqrt-probability steps, and the distortion they cause
# --------------------------------------------------------------------------------------------

#: Largest value scale S (codes are bytes).
MAX_VALUE_SCALE = 255
#: Smallest value scale the writer tries.
MIN_VALUE_SCALE = 8
#: Default bound on a shard's mean KL(exact || stored) per position (nats), see ``choose_scale``.
DEFAULT_TARGET_KL = 5e-4


def distortion_summary(records: list[dict]) -> dict | None:
    """A format-2 store's distortion from its manifest's shard records (those with ``distortion``):
    mean_kl and mean_kl_tail weighted by rows, p999_kl and max_kl the largest shard's (an upper
    bound), value_scales [smallest, largest S]; None when no shard has been measured."""
    records = [r for r in records if "distortion" in r]
    rows = sum(r["num_rows"] for r in records)
    if not records or not rows:
        return None
    return {
        "mean_kl": sum(r["distortion"]["mean_kl"] * r["num_rows"] for r in records) / rows,
        "p999_kl": max(r["distortion"]["p999_kl"] for r in records),
        "max_kl": max(r["distortion"]["max_kl"] for r in records),
        "mean_kl_tail": sum(r["distortion"]["mean_kl_tail"] * r["num_rows"] for r in records) / rows,
        "value_scales": [min(r["value_scale"] for r in records), max(r["value_scale"] for r in records)],
    }
#: zstd level of format 2's frames (5: within ~2 % of level 9's size at about half its time).
DEFAULT_ZSTD_LEVEL = 5
#: Entries per zstd frame group (whole items; a reader decompresses the groups it touches).
FRAME_ENTRIES = 1 << 14
#: zstd frames per group: row counts, kept-mass codes, gap symbols, value codes.
FRAME_STREAMS = 4


def sqrt_codes(logprobs: np.ndarray, scale: int) -> np.ndarray:
    """Log-probabilities (<= 0; -inf is p = 0) -> uint8 codes
    ``min(floor(sqrt(p) * scale), scale - 1)``."""
    root = np.exp(np.asarray(logprobs, dtype=np.float64) * 0.5)
    return np.minimum(root * scale, scale - 1).astype(np.uint8)  # truncation = floor (>= 0)


def sqrt_code_logprobs(scale: int) -> np.ndarray:
    """(scale,) float32: the log-probability code c reads back as, ``2 log((c + 0.5) / scale)``."""
    return (2.0 * np.log((np.arange(scale) + 0.5) / scale)).astype(np.float32)


#: A row's kept mass M is a uint16: its logit log(M / (1 - M)) in steps of MASS_STEP, offset by
#: 2**15, i.e. M and its dropped part 1 - M both to a relative 2**-9 (0.2 %), over all masses
#: (logits within +-128). Rows are read back rescaled to this kept mass, so a KD loss that keeps
#: the dropped mass as one tail bucket sees it as it was, and a derived top-p cut sums true masses.
MASS_STEP = 2.0**-8


def mass_codes(kept_mass: np.ndarray) -> np.ndarray:
    """Rows' kept masses (float64, in (0, 1]) -> uint16 codes of their logits."""
    m = np.clip(np.asarray(kept_mass, dtype=np.float64), 1e-300, 1.0)
    logit = np.log(m) - np.log1p(-np.minimum(m, 1 - 1e-16))
    return np.clip(np.rint(logit / MASS_STEP) + 32768, 0, 65535).astype(np.uint16)


def kept_mass_of_codes(codes: np.ndarray) -> np.ndarray:
    """uint16 mass codes -> the kept masses they stand for, float64."""
    logit = (np.asarray(codes, dtype=np.float64) - 32768) * MASS_STEP
    return 1.0 / (1.0 + np.exp(-logit))


def binary_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL((p, 1 - p) || (q, 1 - q)) elementwise (nats; 0 log 0 = 0)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, p * np.log(p / q), 0.0)
        b = np.where(p < 1, (1 - p) * np.log((1 - p) / (1 - q)), 0.0)
    return np.maximum(a + b, 0.0)


def row_kl(counts: np.ndarray, exact: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """KL(exact || stored) of every row, each renormalised over its kept entries (nats).

    counts: (R,) entries per row (>= 1); exact, stored: (E,) log-probabilities of the same
    entries (-inf allowed in ``exact``), rows concatenated. Returns (R,) float64:
    sum_i (p_i / P) (log p_i - log q_i) - log P + log Q, with P, Q the rows' kept masses.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 0:
        return np.zeros(0)
    starts = np.cumsum(counts) - counts
    lp = np.asarray(exact, dtype=np.float64)
    lq = np.asarray(stored, dtype=np.float64)
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):  # p = 0 entries add nothing
        terms = np.where(p > 0, p * (lp - lq), 0.0)
    mass_p = np.add.reduceat(p, starts)
    mass_q = np.add.reduceat(np.exp(lq), starts)
    kl = np.add.reduceat(terms, starts) / mass_p - np.log(mass_p) + np.log(mass_q)
    return np.maximum(kl, 0.0)  # rounding can leave -1e-17 on exact rows


def _row_chunks(counts: np.ndarray, max_entries: int) -> list[tuple[int, int, int, int]]:
    """(first row, end row, first entry, end entry) of consecutive row ranges of at most
    ``max_entries`` entries each (at least one row): bounds the writer's temporaries."""
    ends = np.cumsum(counts)
    chunks, row, entry = [], 0, 0
    while row < counts.size:
        stop = max(int(np.searchsorted(ends, entry + max_entries, side="right")), row + 1)
        chunks.append((row, stop, entry, int(ends[stop - 1])))
        row, entry = stop, int(ends[stop - 1])
    return chunks


def choose_scale(counts: np.ndarray, logprobs: np.ndarray, target_kl: float, *,
                 row_shift: np.ndarray | None = None, chunk_entries: int = 1 << 22
                 ) -> tuple[int, np.ndarray, np.ndarray]:
    """The smallest value scale S whose mean row KL is <= ``target_kl`` (MAX_VALUE_SCALE if
    none is), coding ``logprobs - row_shift`` (per row; e.g. the log kept mass, so that the
    codes describe the renormalised rows). The KL falls like 1 / S**2: one probe at S = 64
    predicts S, which is then raised by ~10 % steps until the target holds (and lowered while a
    smaller S still holds it). Returns (S, codes (E,) uint8, row KL (R,) float64), rows'
    entries concatenated; deterministic in its inputs.
    """
    if not target_kl > 0:
        raise ValueError(f"target_kl must be > 0, got {target_kl}")
    counts = np.asarray(counts, dtype=np.int64)
    logprobs = np.asarray(logprobs)
    chunks = _row_chunks(counts, chunk_entries)
    tried: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def at(scale: int) -> tuple[np.ndarray, np.ndarray]:
        if scale not in tried:
            codes = np.empty(logprobs.size, dtype=np.uint8)
            kl = np.empty(counts.size)
            table = sqrt_code_logprobs(scale).astype(np.float64)
            for r0, r1, e0, e1 in chunks:
                lp = np.asarray(logprobs[e0:e1], dtype=np.float64)
                if row_shift is not None:
                    lp = lp - np.repeat(row_shift[r0:r1], counts[r0:r1])
                codes[e0:e1] = sqrt_codes(lp, scale)
                kl[r0:r1] = row_kl(counts[r0:r1], lp, table[codes[e0:e1]])
            tried[scale] = codes, kl
        return tried[scale]

    probe = 64
    mean = float(at(probe)[1].mean()) if counts.size else 0.0
    guess = np.ceil(probe * np.sqrt(mean / target_kl)) if mean > 0 else MIN_VALUE_SCALE
    scale = int(np.clip(guess, MIN_VALUE_SCALE, MAX_VALUE_SCALE))
    while scale < MAX_VALUE_SCALE and at(scale)[1].mean() > target_kl:
        scale = min(MAX_VALUE_SCALE, int(np.ceil(scale * 1.1)))
    while scale > MIN_VALUE_SCALE:
        smaller = max(MIN_VALUE_SCALE, int(scale / 1.1))
        if at(smaller)[1].mean() > target_kl:
            break
        scale = smaller
    codes, kl = at(scale)
    return scale, codes, kl


# --------------------------------------------------------------------------------------------
# format 2: gaps between sorted ids as DEFLATE-style symbols plus extra bits
# --------------------------------------------------------------------------------------------

#: Gap symbols (one byte): a gap g < 128 is its own symbol (no extra bits); a larger one, of bit
#: length e (8..23), is 128 + 8 (e - 8) + (the 3 bits below its top bit), followed by its e - 4
#: low bits. Symbols cover gaps < 2**23, i.e. vocabularies of up to 8,388,608 tokens.
NUM_GAP_SYMBOLS = 256
DIRECT_GAPS = 128
MAX_GAP_VOCAB = 1 << 23
_SYM = np.arange(NUM_GAP_SYMBOLS)
_SYM_E = 8 + (_SYM - DIRECT_GAPS) // 8
GAP_EXTRA_BITS = np.where(_SYM < DIRECT_GAPS, 0, _SYM_E - 4).astype(np.int64)
GAP_BASE = np.where(_SYM < DIRECT_GAPS, _SYM,
                    (8 + (_SYM & 7)) << np.maximum(_SYM_E - 4, 0)).astype(np.int64)


def gap_symbols(gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaps (int64, 0 <= g < 2**23) -> (symbols uint8, extra-bit values uint64)."""
    gaps = np.asarray(gaps, dtype=np.int64)
    # bit_length from the float64 exponent field (exact below 2**53): for g >= 1 it is
    # (exponent bits) - 1022
    e = (gaps.astype(np.float64).view(np.int64) >> 52) - 1022
    top = (gaps >> np.maximum(e - 4, 0)) & 7
    sym = np.where(gaps < DIRECT_GAPS, gaps, DIRECT_GAPS + 8 * (e - 8) + top).astype(np.uint8)
    return sym, (gaps - GAP_BASE[sym]).astype(np.uint64)


# --------------------------------------------------------------------------------------------
# format 2: a shard's entries
# --------------------------------------------------------------------------------------------

_local = threading.local()


def _require_zstd() -> None:
    if zstandard is None:
        raise ImportError("logits store format 2 needs the 'zstandard' package (pip install zstandard)")


def _compressor(level: int):
    _require_zstd()
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=False,
                                                write_checksum=False, write_dict_id=False)
    return cache[level]


def _decompressor():
    _require_zstd()
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def _uint_for_bits(bits: int) -> np.dtype:
    return np.dtype(np.uint32 if bits <= 32 else np.uint64)


def sorted_block(counts: np.ndarray, keys: np.ndarray, pad) -> np.ndarray:
    """Rows' keys (rows concatenated, an unsigned int array) in a (rows, max count) block, each
    row sorted ascending after padding with ``pad`` (numpy's SIMD sorts of short rows: ~10x a
    flat argsort)."""
    counts = np.asarray(counts)
    width = int(counts.max()) if counts.size else 0
    block = np.full((counts.size, width), pad, dtype=keys.dtype)
    block[np.arange(width) < counts[:, None]] = keys
    block.sort(axis=1)
    return block


def sort_within_rows(counts: np.ndarray, keys: np.ndarray, *, chunk_rows: int = 1 << 15) -> np.ndarray:
    """Every row's keys sorted ascending (rows concatenated; keys an unsigned int array),
    ``chunk_rows`` rows at a time (bounds the padded block's memory)."""
    counts = np.asarray(counts, dtype=np.int64)
    out = np.empty_like(keys)
    starts = np.cumsum(counts) - counts
    pad = np.iinfo(keys.dtype).max
    for first in range(0, counts.size, chunk_rows):
        c = counts[first : first + chunk_rows]
        lo, hi = starts[first], starts[first] + int(c.sum())
        if hi > lo:
            block = sorted_block(c, keys[lo:hi], pad)
            out[lo:hi] = block[np.arange(block.shape[1]) < c[:, None]]
    return out


def sort_by_id(counts: np.ndarray, ids: np.ndarray, codes: np.ndarray, id_limit: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Rows' (id, code) entries by ascending id (ids < id_limit, distinct within a row)."""
    dtype = _uint_for_bits(_id_bits(id_limit) + 8)
    keys = (np.asarray(ids).astype(dtype) << dtype.type(8)) | np.asarray(codes).astype(dtype)
    keys = sort_within_rows(counts, keys)
    return (keys >> dtype.type(8)).astype(np.int64), (keys & dtype.type(255)).astype(np.uint8)


def _id_bits(limit: int) -> int:
    return max(1, int(limit - 1).bit_length())


@dataclass
class EncodedEntries:
    """A shard's entries in format 2: named sections (arrays), header metadata, and each row's
    KL(exact || stored), renormalised over the kept entries (``kl``) and with the dropped mass
    as one more outcome (``kl_tail``)."""

    sections: list[tuple[str, np.ndarray]]
    meta: dict
    kl: np.ndarray
    kl_tail: np.ndarray


def encode_entries(counts: np.ndarray, indices: np.ndarray, logprobs: np.ndarray, *,
                   vocab_size: int, seq_len: int, k_max: int, target_kl: float = DEFAULT_TARGET_KL,
                   level: int = DEFAULT_ZSTD_LEVEL, id_ranks: str = "auto") -> EncodedEntries:
    """Format-2 sections of one shard's entries.

    counts: (R,) entries per row (R a multiple of seq_len); indices: (E,) token ids, distinct
    within a row, and logprobs: (E,) float log-probabilities (<= 0; -inf is read back as the
    smallest code), rows concatenated, any order within a row. id_ranks: "auto" (a per-shard
    frequency-rank table where it makes the shard smaller), "always" or "never".
    """
    if id_ranks not in ("auto", "always", "never"):
        raise ValueError(f"id_ranks must be 'auto', 'always' or 'never', got {id_ranks!r}")
    counts = np.asarray(counts, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    logprobs = np.asarray(logprobs)
    if np.isnan(logprobs).any():
        raise ValueError("cannot store NaN log-probabilities")
    if counts.size == 0 or counts.min() < 1:
        raise ValueError("every row keeps at least one entry")
    num_rows = counts.size
    num_items = num_rows // seq_len
    starts = np.cumsum(counts) - counts
    mass = np.add.reduceat(np.exp(logprobs.astype(np.float64)), starts)
    masses = mass_codes(mass)
    scale, codes, kl = choose_scale(counts, logprobs, target_kl, row_shift=np.log(mass))
    # with the dropped mass as one more outcome: mass * KL(renormalised) + the masses' own KL
    kl_tail = mass * kl + binary_kl(mass, kept_mass_of_codes(masses))

    table = None
    if id_ranks != "always":
        codes_sorted, symbols, extra = _id_layout(counts, indices, codes, vocab_size)
    if id_ranks != "never" and indices.size:
        freq = np.bincount(indices, minlength=vocab_size)
        distinct = np.flatnonzero(freq)
        by_rank = distinct[np.lexsort((distinct, -freq[distinct]))]
        rank_of = np.empty(vocab_size, dtype=np.int64)
        rank_of[by_rank] = np.arange(by_rank.size)
        ranked = _id_layout(counts, rank_of[indices], codes, by_rank.size)
        table_bits = by_rank.size * IndexCodec.for_vocab(vocab_size).bits_per_index
        if id_ranks == "always" or _estimated_bits(ranked[1]) + table_bits < _estimated_bits(symbols):
            (codes_sorted, symbols, extra), table = ranked, by_rank
    codes = codes_sorted
    extra_stream, bitpos = write_bits(extra, GAP_EXTRA_BITS[symbols])

    item_counts = counts.reshape(num_items, seq_len).sum(axis=1)
    entry_offsets = np.concatenate([[0], np.cumsum(item_counts)]).astype(np.int64)
    total_bits = int(bitpos[-1] + GAP_EXTRA_BITS[symbols[-1]]) if symbols.size else 0
    extra_offsets = np.append(bitpos, total_bits)[entry_offsets].astype(np.int64)

    per_item = max(entry_offsets[-1] / max(num_items, 1), 1.0)
    items_per_frame = int(np.clip(round(FRAME_ENTRIES / per_item), 1, max(num_items, 1)))
    cdtype = count_dtype(k_max)
    count_bytes = counts.astype(cdtype)
    compress = _compressor(level).compress
    blobs, frame_offsets = [], [0]
    for first in range(0, num_items, items_per_frame):
        last = min(first + items_per_frame, num_items)
        e0, e1 = entry_offsets[first], entry_offsets[last]
        rows = slice(first * seq_len, last * seq_len)
        for part in (count_bytes[rows], masses[rows], symbols[e0:e1], codes[e0:e1]):
            blob = compress(np.ascontiguousarray(part).tobytes())
            blobs.append(blob)
            frame_offsets.append(frame_offsets[-1] + len(blob))
    frames = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    sections = [
        ("item_entry_offsets", entry_offsets),
        ("item_extra_bit_offsets", extra_offsets),
        ("frame_offsets", np.asarray(frame_offsets, dtype=np.int64)),
        ("frames", frames),
        ("extra_bits", extra_stream),
    ]
    if table is not None:
        sections.append(("id_table", IndexCodec.for_vocab(vocab_size).encode(table)))
    meta = {
        "value_scale": scale,
        "items_per_frame": items_per_frame,
        "id_table_size": 0 if table is None else int(table.size),
        "zstd_level": level,
    }
    return EncodedEntries(sections, meta, kl, kl_tail)


def _id_layout(counts: np.ndarray, keys: np.ndarray, codes: np.ndarray, limit: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by ``keys`` (ids or ranks < limit): (codes, gap symbols, extra-bit values)."""
    keys, codes = sort_by_id(counts, keys, codes, limit)
    gaps = np.diff(keys, prepend=-1) - 1
    starts = (np.cumsum(counts) - counts)[counts > 0]
    gaps[starts] = keys[starts]  # a row's first gap is its first id
    if gaps.size and gaps.min() < 0:
        raise ValueError("token ids must be distinct within a row")
    if gaps.size and gaps.max() >= MAX_GAP_VOCAB:
        raise ValueError(f"format 2 stores vocabularies of at most {MAX_GAP_VOCAB} tokens")
    symbols, extra = gap_symbols(gaps)
    return codes, symbols, extra


def _estimated_bits(symbols: np.ndarray) -> float:
    """Coded size of a gap-symbol stream, estimated: zeroth-order entropy plus extra bits."""
    hist = np.bincount(symbols, minlength=NUM_GAP_SYMBOLS).astype(np.float64)
    hist = hist[hist > 0]
    entropy = float(-(hist * np.log2(hist / symbols.size)).sum())
    return entropy + float(GAP_EXTRA_BITS[symbols].sum())


#: Masks of the gap symbols' extra bits, and their bases plus one (what the running sum adds).
GAP_EXTRA_MASKS = ((np.uint64(1) << GAP_EXTRA_BITS.astype(np.uint64)) - np.uint64(1)).astype(np.uint64)
GAP_BASE_PLUS_1 = GAP_BASE + 1


class EntryDecoder:
    """Decodes items of one format-2 shard (sections as written by ``encode_entries``)."""

    def __init__(self, sections: dict[str, np.ndarray], meta: dict, *, vocab_size: int,
                 seq_len: int, k_max: int):
        self.sections = sections
        self.seq_len = seq_len
        self.scale = int(meta["value_scale"])
        if not 1 <= self.scale <= MAX_VALUE_SCALE:
            raise ValueError(f"value scale {self.scale} is outside [1, {MAX_VALUE_SCALE}]")
        self.items_per_frame = int(meta["items_per_frame"])
        self.logprob_table = sqrt_code_logprobs(self.scale)
        self.prob_table = np.exp(self.logprob_table.astype(np.float64))
        self.count_dtype = count_dtype(k_max)
        self.entry_offsets = sections["item_entry_offsets"]
        self.extra_offsets = sections["item_extra_bit_offsets"]
        self.frame_offsets = sections["frame_offsets"]
        self.table = None
        if int(meta["id_table_size"]):
            codec = IndexCodec.for_vocab(vocab_size)
            n = int(meta["id_table_size"])
            self.table = codec.decode_ranges(sections["id_table"], np.array([0]), np.array([n]))
        # sort keys: ((S - 1 - code) << id_bits) | id, so that an ascending sort puts rows in
        # descending probability, ties by lower id; padding (255 << id_bits) sorts last and
        # reads back as id 0, log-probability -inf
        self.id_bits = _id_bits(vocab_size)
        self.key_dtype = _uint_for_bits(self.id_bits + 8)
        self.code_keys = ((self.scale - 1 - np.arange(256)) % 256).astype(self.key_dtype)
        self.code_keys <<= self.key_dtype.type(self.id_bits)
        self.table_keys = None if self.table is None else self.table.astype(self.key_dtype)
        self.lp_by_key = np.full(256, -np.inf, dtype=np.float32)
        self.lp_by_key[: self.scale] = self.logprob_table[::-1]

    def _frame(self, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Row counts, kept-mass codes, gap symbols and value codes of frame group f."""
        n = self.items_per_frame
        num_items = self.entry_offsets.size - 1
        first, last = f * n, min((f + 1) * n, num_items)
        num_rows = (last - first) * self.seq_len
        num_entries = int(self.entry_offsets[last] - self.entry_offsets[first])
        streams = ((self.count_dtype, num_rows), (np.dtype("<u2"), num_rows),
                   (np.dtype(np.uint8), num_entries), (np.dtype(np.uint8), num_entries))
        out = []
        d = _decompressor()
        frames = self.sections["frames"]
        for j, (dtype, length) in enumerate(streams):
            size = length * dtype.itemsize
            a, b = self.frame_offsets[FRAME_STREAMS * f + j], self.frame_offsets[FRAME_STREAMS * f + j + 1]
            raw = d.decompress(frames[a:b], max_output_size=size) if size else b""
            if len(raw) != size:
                raise ValueError(f"frame {f} stream {j} holds {len(raw)} bytes, not {size}")
            out.append(np.frombuffer(raw, dtype=dtype))
        return out[0], out[1], out[2], out[3]

    def _entries(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(counts (n*T,) int64, keys (E,) int64 = ids or ranks, codes (E,) intp, row shift
        (n*T,) float32 = what each row's coded log-probabilities add to become stored ones),
        rows by ascending key."""
        T, n = self.seq_len, self.items_per_frame
        frames = {}
        counts, masses, symbols, codes = [], [], [], []
        offsets = self.entry_offsets
        for item in local.tolist():
            f = item // n
            if f not in frames:
                frames[f] = self._frame(f)
            c, m, s, v = frames[f]
            r0 = (item - f * n) * T
            e0, e1 = offsets[item] - offsets[f * n], offsets[item + 1] - offsets[f * n]
            counts.append(c[r0 : r0 + T])
            masses.append(m[r0 : r0 + T])
            symbols.append(s[e0:e1])
            codes.append(v[e0:e1])
        counts = np.concatenate(counts).astype(np.int64)
        symbols = np.concatenate(symbols)
        codes = np.concatenate(codes)
        # gap + 1 per entry: the symbol + 1 below DIRECT_GAPS, base + 1 + extra bits above
        steps = symbols.astype(np.int64)
        steps += 1
        big = np.flatnonzero(symbols >= DIRECT_GAPS)
        if big.size:
            # extra bits of the large gaps, back to back in entry order from each item's offset
            big_symbols = symbols[big].astype(np.intp)
            widths = GAP_EXTRA_BITS[big_symbols]
            begins = np.cumsum(widths)
            begins -= widths
            lengths = offsets[local + 1] - offsets[local]
            ends = np.cumsum(lengths)
            item_of = np.searchsorted(ends, big, side="right")  # item (in local) of each large gap
            first_big = np.searchsorted(big, ends - lengths)  # its first large gap
            base = self.extra_offsets[local] - np.append(begins, 0)[first_big]
            begins += base[item_of]
            steps[big] = GAP_BASE_PLUS_1[big_symbols] + read_bits(
                self.sections["extra_bits"], begins, masks=GAP_EXTRA_MASKS[big_symbols]).view(np.int64)
        # keys: running sums of gap + 1 restarted at every row, minus 1. Subtracting each row's
        # total from the next row's first step restarts one running sum (no per-entry repeat).
        row_starts = np.cumsum(counts)
        row_starts -= counts
        totals = np.add.reduceat(steps, row_starts)
        steps[row_starts[1:]] -= totals[:-1]
        running = np.cumsum(steps)
        running -= 1
        # rows rescaled to their stored kept mass: shift = log(mass) - log(sum of coded probs)
        codes = codes.astype(np.intp)  # fancy-index and take() are fastest with intp indices
        coded_mass = np.add.reduceat(self.prob_table[codes], row_starts)
        shift = np.log(kept_mass_of_codes(np.concatenate(masses)) / coded_mass).astype(np.float32)
        return counts, running, codes, shift

    def decode(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items ``local`` (shard-local ids, int64) -> (counts (n*T,) int64, ids (E,) int64,
        log-probabilities (E,) float32), each row's entries as stored: by ascending id, or by
        ascending frequency rank in a shard with an id table."""
        counts, keys, codes, shift = self._entries(local)
        ids = keys if self.table is None else self.table[keys]
        return counts, ids, self.logprob_table[codes] + np.repeat(shift, counts)

    def decode_rows(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items ``local`` -> (counts (n*T,) int64, ids (n*T, W) int64, log-probabilities
        (n*T, W) float32), each row by descending stored probability, ties by lower id, padded
        with (0, -inf) to W = the largest count."""
        counts, keys, codes, row_shift = self._entries(local)
        dtype = self.key_dtype
        sort_keys = self.code_keys[codes]
        sort_keys |= keys.astype(dtype) if self.table is None else np.take(self.table_keys, keys)
        shift = dtype.type(self.id_bits)
        block = sorted_block(counts, sort_keys, dtype.type(255) << shift)
        logprobs = np.take(self.lp_by_key, block >> shift)
        logprobs += row_shift[:, None]
        block &= dtype.type((1 << self.id_bits) - 1)
        return counts, block.astype(np.int64), logprobs
