"""The logits store on disk: codecs, shard files, manifest, the crash-safe writer and the reader.

Layout of a store directory (format version 1)::

    manifest.json        identity, parameters, encodings, counts, and per-shard row ranges,
                         sizes and sha256 (written atomically after every shard)
    shard-00000.bin      items [first_item, first_item + num_items) of the store
    ...

An *item* is a packed sequence (offline store: item id = sequence id) or a capture entry
(online store: item id = position in capture order). Every item owns ``seq_len`` consecutive
*rows* (row = one token position: item i owns rows [i*T, (i+1)*T)), and every row keeps a
variable number of *entries* (token index, log-probability), sorted by probability.

Shard file: ``MAGIC`` (8 bytes), header length (uint64 little-endian), the header (canonical
JSON: section table and shard metadata), then 64-byte-aligned sections:

    item_entry_offsets  int64  (num_items + 1,)   first entry of each item, relative to the shard
    counts              uint8  (num_rows,)        entries kept per row (uint16 if k_max > 255)
    stats               float32 (num_stats, num_rows)  entropy, std, log_u_<gamma>... per row
    values              uint16 (num_entries,)     log-probability codes, see ``encode_values``
    indices             uint8  packed token ids, see ``IndexCodec``
    sequence_ids, steps int64  (num_items,)       online stores only: what each entry captured

Entry cost: 16 bits of value plus ceil(n*log2 V)/n bits of index, n token ids packed per
mixed-radix group (n = 3 at V = 151,552: 52 bits per 3 ids, 17.33 bits per id instead of 18),
so 33.33 bits = 4.167 bytes per entry, plus 1 byte per row and 8 bytes per item.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from core.config import Truncation
from core.logits_math import kept_counts, stat_keys
from core.types import SparseTeacherBatch
from core.utils import atomic_write_text

FORMAT_NAME = "pdspace-logits-store"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAGIC = b"PDLOGIT1"
_ALIGN = 64

#: Manifest fields a run may pin with ``LogitsStore.open(path, expect=...)`` (equality).
IDENTITY_KEYS = (
    "kind", "teacher_id", "teacher_hash", "tokenizer_hash", "data_hash", "split", "seq_len",
    "vocab_size",
)


class StoreError(ValueError):
    """A logits store cannot be used as asked (one sentence says why)."""


class StoreMismatchError(StoreError):
    """The store was made for another teacher, tokenizer, data, split or shape."""


class StoreCorruptError(StoreError):
    """A shard is missing, truncated or altered (the message names the file)."""


# --------------------------------------------------------------------------------------------
# value code: uint16, linear in the log-probability
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
# index code: mixed-radix groups of token ids, bit-packed
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
        """The group_bits-bit words of groups ``groups`` (int64), as uint64.

        Each word lies within two consecutive aligned 64-bit words of the stream: two aligned
        gathers, then shifts (``(hi << 1) << (63 - s)`` avoids an undefined shift by 64).
        """
        words = stream.view("<u8")
        bitpos = np.asarray(groups, dtype=np.int64) * self.group_bits
        index = bitpos >> 6
        shift = (bitpos & 63).astype(np.uint64)
        lo = words[index]
        index += 1
        hi = words[index]
        lo >>= shift
        hi <<= np.uint64(1)
        hi <<= np.uint64(63) - shift
        lo |= hi
        lo &= np.uint64((1 << self.group_bits) - 1)
        return lo


def _unaligned_u64(buf: np.ndarray) -> np.ndarray:
    """A uint64 view starting at every byte of ``buf`` (len(buf) - 7 overlapping words)."""
    return np.ndarray((buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))


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


def encoding_spec(vocab_size: int, k_max: int) -> dict:
    """The manifest's description of every on-disk dtype and code."""
    codec = IndexCodec.for_vocab(vocab_size)
    return {
        "index": {
            "code": "mixed-radix groups of per_group ids, bit-packed little-endian",
            "per_group": codec.per_group,
            "group_bits": codec.group_bits,
            "bits_per_index": codec.bits_per_index,
        },
        "value": {
            "dtype": "uint16",
            "code": "round(-logprob / step); 65535 = -inf",
            "step": VALUE_STEP,
            "min_logprob": MIN_LOGPROB,
            "max_abs_error": VALUE_MAX_ABS_ERROR,
        },
        "counts": np.dtype(count_dtype(k_max)).name,
        "stats": "float32",
        "item_entry_offsets": "int64",
    }


# --------------------------------------------------------------------------------------------
# shard files
# --------------------------------------------------------------------------------------------


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


def _write_shard_file(path: Path, sections: list[tuple[str, np.ndarray]], meta: dict) -> tuple[int, str]:
    """Write sections to ``path`` under a temporary name, fsync, rename. Returns (bytes, sha256)."""
    table, offset = {}, 0
    for name, arr in sections:
        offset = -(-offset // _ALIGN) * _ALIGN
        table[name] = {"offset": offset, "nbytes": arr.nbytes, "dtype": arr.dtype.str,
                       "shape": list(arr.shape)}
        offset += arr.nbytes
    header = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "meta": meta,
                         "sections": table}, sort_keys=True, separators=(",", ":")).encode()
    prefix = MAGIC + len(header).to_bytes(8, "little") + header
    data_start = -(-len(prefix) // _ALIGN) * _ALIGN
    digest = hashlib.sha256()
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with open(tmp, "wb") as f:

        def put(block: bytes | memoryview) -> None:
            nonlocal written
            f.write(block)
            digest.update(block)
            written += len(block)

        put(prefix + bytes(data_start - len(prefix)))
        for name, arr in sections:
            pad = data_start + table[name]["offset"] - written
            if pad:
                put(bytes(pad))
            put(memoryview(np.ascontiguousarray(arr)).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return written, digest.hexdigest()


class _Shard:
    """A memory-mapped shard: its header and zero-copy views of its sections."""

    def __init__(self, path: Path):
        self.path = path
        self.buf = np.memmap(path, dtype=np.uint8, mode="r")
        if self.buf[:8].tobytes() != MAGIC:
            raise StoreCorruptError(f"logits store shard {path} does not start with {MAGIC!r}.")
        header_len = int.from_bytes(self.buf[8:16].tobytes(), "little")
        header = json.loads(self.buf[16 : 16 + header_len].tobytes())
        data_start = -(-(16 + header_len) // _ALIGN) * _ALIGN
        self.meta = header["meta"]
        self.sections: dict[str, np.ndarray] = {}
        for name, spec in header["sections"].items():
            start = data_start + spec["offset"]
            raw = self.buf[start : start + spec["nbytes"]]
            if raw.size != spec["nbytes"]:
                raise StoreCorruptError(f"logits store shard {path} is truncated.")
            # plain ndarray views: indexing a np.memmap subclass costs more per call
            array = raw.view(np.ndarray).view(np.dtype(spec["dtype"]))
            self.sections[name] = array.reshape(spec["shape"])


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------


def _manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def read_manifest(path: str | os.PathLike) -> dict:
    file = Path(path) / MANIFEST_NAME
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} is not a logits store: it has no {MANIFEST_NAME}.") from None
    except json.JSONDecodeError as exc:
        raise StoreCorruptError(f"logits store manifest {file} is not valid JSON ({exc}).") from None


class LogitsStoreWriter:
    """Writes a store shard by shard; resumes an interrupted one.

    ``header`` holds everything that defines the store's content (identity, seq_len,
    vocab_size, p_max, k_max, gammas, kind, and any producer settings that change bytes). A
    directory that already holds a store with the same header is resumed after its last
    complete shard (the shards are verified first); one with another header is refused.
    Temporary files and shard files the manifest does not list (a crash between the rename
    and the manifest update) are removed, so a resumed run rewrites them identically.
    """

    def __init__(self, path: str | os.PathLike, header: dict):
        self.path = Path(path)
        required = {"kind", "seq_len", "vocab_size", "p_max", "k_max", "gammas"}
        missing = required - header.keys()
        if missing:
            raise ValueError(f"store header lacks {sorted(missing)}")
        Truncation(float(header["p_max"]), int(header["k_max"]))  # the store's maximum must be a rule
        self.header = dict(header)
        self.header["k_max"] = min(int(header["k_max"]), int(header["vocab_size"]))
        self.header["gammas"] = [float(g) for g in header["gammas"]]
        self.header["stat_keys"] = stat_keys(self.header["gammas"])
        self.header["encoding"] = encoding_spec(header["vocab_size"], self.header["k_max"])
        self.codec = IndexCodec.for_vocab(int(header["vocab_size"]))
        self.count_dtype = count_dtype(self.header["k_max"])
        self.seq_len = int(header["seq_len"])
        self.shards: list[dict] = []
        self.complete = False
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / MANIFEST_NAME).exists():
            self._resume(read_manifest(self.path))
        else:
            self._write_manifest()

    # -- state ----------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        return sum(s["num_items"] for s in self.shards)

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def manifest(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            **self.header,
            "complete": self.complete,
            "num_items": self.num_items,
            "num_rows": sum(s["num_rows"] for s in self.shards),
            "num_entries": sum(s["num_entries"] for s in self.shards),
            "shards": self.shards,
        }

    def _write_manifest(self) -> None:
        atomic_write_text(self.path / MANIFEST_NAME, _manifest_text(self.manifest()))

    def _resume(self, old: dict) -> None:
        ours = json.loads(json.dumps(self.header))  # the JSON types the file holds
        keys = (set(ours) | set(old)) - _MANIFEST_STATE_KEYS
        diffs = sorted(k for k in keys if ours.get(k) != old.get(k))
        if diffs or old.get("format_version") != FORMAT_VERSION:
            k = diffs[0] if diffs else "format_version"
            raise StoreMismatchError(
                f"{self.path} already holds a logits store made with {k}={old.get(k)!r}, not "
                f"{ours.get(k, FORMAT_VERSION)!r}; use another directory or delete it."
            )
        self.shards = list(old["shards"])
        self.complete = bool(old["complete"])
        if self.complete:
            return  # nothing to add; readers verify before training
        verify_shards(self.path, self.shards)
        listed = {s["file"] for s in self.shards}
        for file in self.path.iterdir():
            stray = file.name.endswith(".tmp") or (
                file.name.startswith("shard-") and file.name not in listed)
            if stray:
                file.unlink()

    # -- writing ---------------------------------------------------------------------------
    def write_shard(
        self,
        counts: np.ndarray,
        indices: np.ndarray,
        logprobs: np.ndarray | None,
        stats: np.ndarray,
        *,
        codes: np.ndarray | None = None,
        sequence_ids: np.ndarray | None = None,
        steps: np.ndarray | None = None,
    ) -> dict:
        """Append one shard of whole items.

        counts: (R,) entries per row, R a multiple of seq_len; indices: (E,) token ids and
        logprobs: (E,) float log-probabilities (or ``codes``: (E,) uint16, already encoded),
        rows' entries concatenated in row order; stats: (num_stats, R) float32 in
        ``stat_keys`` order; online stores also pass sequence_ids and steps, (R / seq_len,).
        """
        if self.complete:
            raise StoreError(f"logits store {self.path} is complete; it takes no more shards.")
        counts = np.asarray(counts)
        num_rows = counts.size
        if num_rows == 0 or num_rows % self.seq_len:
            raise ValueError(f"a shard holds whole items: {num_rows} rows is not a multiple of "
                             f"seq_len {self.seq_len}")
        if counts.min() < 1 or counts.max() > self.header["k_max"]:
            raise ValueError(f"row counts must be in [1, {self.header['k_max']}]")
        num_items = num_rows // self.seq_len
        num_entries = int(counts.sum())
        if codes is None:
            codes = encode_values(logprobs)
        codes = np.asarray(codes, dtype=np.uint16)
        indices = np.asarray(indices)
        if codes.size != num_entries or indices.size != num_entries:
            raise ValueError(f"counts sum to {num_entries} entries but got {indices.size} "
                             f"indices and {codes.size} values")
        keys = self.header["stat_keys"]
        stats = np.asarray(stats, dtype=np.float32).reshape(len(keys), num_rows)
        item_counts = counts.reshape(num_items, self.seq_len).sum(axis=1, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(item_counts)]).astype(np.int64)
        sections = [
            ("item_entry_offsets", offsets),
            ("counts", counts.astype(self.count_dtype)),
            ("stats", stats),
            ("values", codes),
            ("indices", self.codec.encode(indices)),
        ]
        if self.header["kind"] == "online":
            if sequence_ids is None or steps is None:
                raise ValueError("an online store's shard needs sequence_ids and steps")
            sections.append(("sequence_ids", np.asarray(sequence_ids, dtype=np.int64).reshape(num_items)))
            sections.append(("steps", np.asarray(steps, dtype=np.int64).reshape(num_items)))
        first_item = self.num_items
        meta = {"first_item": first_item, "num_items": num_items, "num_rows": num_rows,
                "num_entries": num_entries}
        name = shard_name(len(self.shards))
        nbytes, sha = _write_shard_file(self.path / name, sections, meta)
        record = {"file": name, "first_item": first_item, "num_items": num_items,
                  "first_row": first_item * self.seq_len, "num_rows": num_rows,
                  "num_entries": num_entries, "bytes": nbytes, "sha256": sha}
        if self.header["kind"] == "online":
            record["first_step"] = int(np.min(steps))
            record["last_step"] = int(np.max(steps))
        self.shards.append(record)
        self._write_manifest()
        return record

    def finalize(self) -> Path:
        """Mark the store complete (a reader refuses incomplete stores)."""
        self.complete = True
        self._write_manifest()
        return self.path


#: Manifest keys that describe progress, not what the store is.
_MANIFEST_STATE_KEYS = {"format", "format_version", "complete", "num_items", "num_rows",
                        "num_entries", "shards"}


def verify_shards(path: Path, shards: Sequence[dict]) -> None:
    """Check that every listed shard exists with its recorded size and sha256."""
    for record in shards:
        file = Path(path) / record["file"]
        if not file.exists():
            raise StoreCorruptError(f"logits store shard {file} is missing.")
        size = file.stat().st_size
        if size != record["bytes"]:
            raise StoreCorruptError(
                f"logits store shard {file} is {size} bytes, not the {record['bytes']} its "
                f"manifest records (truncated or overwritten).")
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        if digest.hexdigest() != record["sha256"]:
            raise StoreCorruptError(
                f"logits store shard {file} fails its sha256 check (altered since it was written).")


# --------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------


@dataclass
class DecodedRows:
    """Stored rows of some items, in the order asked for.

    counts: (n, T) int64 entries per row; indices: (E,) int64 and logprobs: (E,) float32, the
    rows' entries concatenated in row order (E = counts.sum()); stats: {key: (n, T) float32}.
    """

    counts: np.ndarray
    indices: np.ndarray
    logprobs: np.ndarray
    stats: dict[str, np.ndarray]


class LogitsStore:
    """Read access to a logits store (open with ``LogitsStore.open``)."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.kind: str = manifest["kind"]
        self.seq_len: int = int(manifest["seq_len"])
        self.vocab_size: int = int(manifest["vocab_size"])
        self.keeps = Truncation(float(manifest["p_max"]), int(manifest["k_max"]))
        """The truncation the store keeps: it serves every rule this covers."""
        self.gammas: list[float] = list(manifest["gammas"])
        self.stat_keys: list[str] = list(manifest["stat_keys"])
        self.num_items: int = int(manifest["num_items"])
        self.num_rows: int = int(manifest["num_rows"])
        self.num_entries: int = int(manifest["num_entries"])
        self.codec = IndexCodec.for_vocab(self.vocab_size)
        self._records = manifest["shards"]
        self._first_items = np.array([s["first_item"] for s in self._records], dtype=np.int64)
        self._shards: dict[int, _Shard] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike, expect: dict | None = None, *,
             allow_incomplete: bool = False) -> "LogitsStore":
        """Open a store, refusing one that does not match what the run expects.

        expect: manifest values the run needs. Keys in ``IDENTITY_KEYS`` must be equal;
        ``truncation`` must be a rule the store's ``keeps`` covers; ``gammas`` must all be stored;
        ``num_items`` (or ``num_sequences``) is a minimum. Raises StoreMismatchError (a
        ValueError) with one sentence naming every mismatch.
        """
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
            raise StoreMismatchError(
                f"logits store {path} has format {manifest.get('format')!r} version "
                f"{manifest.get('format_version')!r}; this reader reads {FORMAT_NAME!r} version "
                f"{FORMAT_VERSION}.")
        if not manifest.get("complete") and not allow_incomplete:
            raise StoreError(f"logits store {path} is incomplete (its extraction or capture did "
                             f"not finish); finish or re-run it first.")
        problems = _expectation_problems(manifest, expect or {})
        if problems:
            raise StoreMismatchError(f"logits store {path} does not match this run: "
                                     + "; ".join(problems) + ".")
        return cls(path, manifest)

    # -- integrity ------------------------------------------------------------------------
    def verify(self) -> None:
        """Check every shard's size and sha256 against the manifest (reads the whole store).

        Raises StoreCorruptError naming the first bad shard file.
        """
        verify_shards(self.path, self._records)

    def storage(self) -> dict:
        """Bytes on disk: total, and per stored entry / per token (entries vs stats)."""
        total = sum(s["bytes"] for s in self._records)
        stats_bytes = 4 * len(self.stat_keys) * self.num_rows
        entry_bytes = total - stats_bytes
        return {
            "bytes": total,
            "bytes_per_entry": entry_bytes / max(self.num_entries, 1),
            "bytes_per_token": entry_bytes / max(self.num_rows, 1),
            "stats_bytes_per_token": stats_bytes / max(self.num_rows, 1),
            "mean_entries_per_token": self.num_entries / max(self.num_rows, 1),
        }

    # -- low-level access -----------------------------------------------------------------
    def _shard(self, s: int) -> _Shard:
        shard = self._shards.get(s)
        if shard is None:
            with self._lock:
                shard = self._shards.get(s)
                if shard is None:
                    record = self._records[s]
                    file = self.path / record["file"]
                    if not file.exists():
                        raise StoreCorruptError(f"logits store shard {file} is missing.")
                    if file.stat().st_size != record["bytes"]:
                        raise StoreCorruptError(
                            f"logits store shard {file} is {file.stat().st_size} bytes, not the "
                            f"{record['bytes']} its manifest records (truncated or overwritten).")
                    shard = self._shards[s] = _Shard(file)
        return shard

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_items):
            what = "sequence" if self.kind == "offline" else "entry"
            raise ValueError(f"{what} ids must be in [0, {self.num_items}) for logits store "
                             f"{self.path}; got {int(ids.min())}..{int(ids.max())}")
        return ids

    def _item_section(self, ids: np.ndarray, name: str) -> np.ndarray:
        ids = self._check_ids(ids)
        shard_of = np.searchsorted(self._first_items, ids, side="right") - 1
        out = np.empty(ids.size, dtype=np.int64)
        for s in np.unique(shard_of):
            sel = shard_of == s
            out[sel] = self._shard(int(s)).sections[name][ids[sel] - self._first_items[s]]
        return out

    def decode(self, ids) -> DecodedRows:
        """The stored rows of items ``ids`` (sequence ids offline, entry ids online)."""
        ids = self._check_ids(ids)
        T = self.seq_len
        n = ids.size
        shard_of = np.searchsorted(self._first_items, ids, side="right") - 1
        counts = np.empty((n, T), dtype=np.int64)
        stats = np.empty((len(self.stat_keys), n, T), dtype=np.float32)
        starts = np.empty(n, dtype=np.int64)
        lengths = np.empty(n, dtype=np.int64)
        parts = []
        for s in np.unique(shard_of):
            shard = self._shard(int(s))
            sel = np.flatnonzero(shard_of == s)
            local = ids[sel] - self._first_items[s]
            offsets = shard.sections["item_entry_offsets"]
            starts[sel], lengths[sel] = offsets[local], offsets[local + 1] - offsets[local]
            rows = (local[:, None] * T + np.arange(T)).reshape(-1)
            counts[sel] = shard.sections["counts"][rows].reshape(-1, T)
            stats[:, sel] = shard.sections["stats"][:, rows].reshape(len(self.stat_keys), -1, T)
            parts.append((sel, shard))
        out_begin = np.cumsum(lengths) - lengths
        total = int(lengths.sum())
        if len(parts) == 1 and np.array_equal(parts[0][0], np.arange(n)):
            shard = parts[0][1]
            entries = concat_ranges(starts, lengths)
            indices = self.codec.decode_ranges(shard.sections["indices"], starts, lengths, entries)
            codes = shard.sections["values"][entries]
        else:
            indices = np.empty(total, dtype=np.int64)
            codes = np.empty(total, dtype=np.uint16)
            for sel, shard in parts:
                dest = concat_ranges(out_begin[sel], lengths[sel])
                entries = concat_ranges(starts[sel], lengths[sel])
                indices[dest] = self.codec.decode_ranges(
                    shard.sections["indices"], starts[sel], lengths[sel], entries)
                codes[dest] = shard.sections["values"][entries]
        return DecodedRows(counts, indices, decode_values(codes),
                           {k: stats[i] for i, k in enumerate(self.stat_keys)})

    # -- derived truncation ---------------------------------------------------------------
    def resolve(self, truncation: Truncation | None) -> Truncation:
        """``truncation`` (None: what the store keeps), refused unless the store covers it."""
        t = self.keeps if truncation is None else truncation
        if not t.covered_by(self.keeps):
            raise StoreMismatchError(f"logits store {self.path} keeps {self.keeps.label}; it cannot serve {t.label}.")
        return t

    def batch(self, ids, truncation: Truncation | None = None) -> SparseTeacherBatch:
        """The truncated teacher for items ``ids`` (B,): a SparseTeacherBatch (B, T, top_k).

        ``truncation``: a rule the store covers (default: what it keeps). Rows keep the smallest
        prefix reaching top_p, capped at top_k; the rest is padding (index 0, logprob -inf).
        With the stored top_p the stored cut is used as is (exact). With a smaller top_p the cut is
        recomputed on the stored log-probabilities, whose probabilities are exact to a relative
        2.44e-4 (VALUE_MAX_ABS_ERROR): it equals the cut made on the original logits unless one
        of the row's first top_k prefixes has a true cumulative mass that close (relatively) to
        top_p. Tensors are on the CPU (not pinned); the caller moves them.
        """
        t = self.resolve(truncation)
        ids = self._check_ids(ids)
        rows = self.decode(ids)
        indices, logprobs = self.dense(rows, t)
        shape = (ids.size, self.seq_len, t.top_k)
        return SparseTeacherBatch(
            torch.from_numpy(indices.reshape(shape)),
            torch.from_numpy(logprobs.reshape(shape)),
            {key: torch.from_numpy(v) for key, v in rows.stats.items()},
        )

    def dense(self, rows: DecodedRows, truncation: Truncation | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decoded rows truncated at ``truncation``, as (R, top_k) int64 indices and float32
        log-probabilities (padding: 0, -inf), R = rows.counts.size. See ``batch``."""
        t = self.resolve(truncation)
        p, k = t.top_p, t.top_k
        counts = rows.counts.reshape(-1)
        num_rows = counts.size
        # scatter the stored rows into a dense (rows, width) layout, width = k when no stored
        # row is longer (the common case), else k_max and cut to k after
        width = k if num_rows == 0 or counts.max() <= k else self.keeps.top_k
        row_begin = np.cumsum(counts) - counts
        dest = np.arange(counts.sum(), dtype=np.int64)
        dest += np.repeat(np.arange(num_rows, dtype=np.int64) * width - row_begin, counts)
        indices = np.zeros((num_rows, width), dtype=np.int64)
        logprobs = np.full((num_rows, width), -np.inf, dtype=np.float32)
        indices.reshape(-1)[dest] = rows.indices
        logprobs.reshape(-1)[dest] = rows.logprobs
        if width != k:
            indices, logprobs = indices[:, :k].copy(), logprobs[:, :k].copy()
        if p < self.keeps.top_p:
            # the top-p rule (core.logits_math.kept_counts) on the stored log-probabilities
            drop = np.arange(k)[None, :] >= kept_counts(logprobs, t)[:, None]
            logprobs[drop] = -np.inf
            indices[drop] = 0
        return indices, logprobs

    # -- online windows -------------------------------------------------------------------
    def _require_online(self) -> None:
        if self.kind != "online":
            raise StoreError(f"logits store {self.path} is offline; windows and steps exist only "
                             f"for online captures.")

    def entry_sequence_ids(self, entry_ids=None) -> np.ndarray:
        """Sequence id captured by each entry (all entries when entry_ids is None)."""
        self._require_online()
        ids = np.arange(self.num_items) if entry_ids is None else entry_ids
        return self._item_section(ids, "sequence_ids")

    def entry_steps(self, entry_ids=None) -> np.ndarray:
        """Teacher step at which each entry was captured."""
        self._require_online()
        ids = np.arange(self.num_items) if entry_ids is None else entry_ids
        return self._item_section(ids, "steps")

    def window(self, first_tokens: int | None = None, last_tokens: int | None = None,
               steps: tuple[int, int] | None = None) -> np.ndarray:
        """Entry ids of a window of the teacher's run, in capture order (exactly one argument).

        first_tokens: the first floor(first_tokens / T) entries captured (early window);
        last_tokens: the last floor(last_tokens / T) entries (late window);
        steps: (start, stop): entries captured at teacher steps start <= step < stop.
        Map them to sequences with ``entry_sequence_ids``.
        """
        self._require_online()
        given = [a is not None for a in (first_tokens, last_tokens, steps)]
        if sum(given) != 1:
            raise ValueError("window() takes exactly one of first_tokens, last_tokens, steps")
        total_tokens = self.num_items * self.seq_len
        if steps is not None:
            start, stop = steps
            all_steps = self.entry_steps()
            return np.flatnonzero((all_steps >= start) & (all_steps < stop)).astype(np.int64)
        tokens = first_tokens if first_tokens is not None else last_tokens
        if tokens < 0 or tokens > total_tokens:
            raise ValueError(f"window of {tokens} tokens is outside the capture's "
                             f"{total_tokens} tokens")
        n = tokens // self.seq_len
        if first_tokens is not None:
            return np.arange(n, dtype=np.int64)
        return np.arange(self.num_items - n, self.num_items, dtype=np.int64)


def _expectation_problems(manifest: dict, expect: dict) -> list[str]:
    allowed = set(IDENTITY_KEYS) | {"truncation", "gammas", "num_items", "num_sequences"}
    unknown = set(expect) - allowed
    if unknown:
        raise ValueError(f"unknown store expectation(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    problems = []
    for key in IDENTITY_KEYS:
        if key in expect and expect[key] is not None and manifest.get(key) != expect[key]:
            problems.append(f"{key} is {manifest.get(key)!r} in the store but the run expects "
                            f"{expect[key]!r}")
    wanted, keeps = expect.get("truncation"), Truncation(float(manifest["p_max"]), int(manifest["k_max"]))
    if wanted is not None and not wanted.covered_by(keeps):
        problems.append(f"the run reads {wanted.label} but the store keeps {keeps.label}")
    missing = [g for g in expect.get("gammas") or () if float(g) not in manifest["gammas"]]
    if missing:
        problems.append(f"gammas {missing} are not stored (stored: {manifest['gammas']})")
    need = expect.get("num_items", expect.get("num_sequences"))
    if need is not None and manifest["num_items"] < int(need):
        problems.append(f"it holds {manifest['num_items']} items but the run needs {int(need)}")
    return problems


# --------------------------------------------------------------------------------------------
# teachers and loaders that read a store
# --------------------------------------------------------------------------------------------


class StoreLoader:
    """Decodes batches of a store on a background thread, ``prefetch`` batches ahead.

    batches: iterable of item-id arrays (sequence ids offline, entry ids online). Iterating
    yields (ids, SparseTeacherBatch) in the same order.
    """

    def __init__(self, store: LogitsStore, batches: Iterable, truncation: Truncation | None = None,
                 prefetch: int = 2):
        self.store, self.truncation = store, store.resolve(truncation)  # fail now, not on the thread
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(batches),), daemon=True,
                                        name="logits-store-loader")
        self._thread.start()

    def _run(self, batches: Iterator) -> None:
        try:
            for ids in batches:
                ids = np.asarray(ids, dtype=np.int64)
                item = (ids, self.store.batch(ids, self.truncation))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer
            self._queue.put(exc)
            return
        self._queue.put(None)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[np.ndarray, SparseTeacherBatch]:
        item = self._queue.get()
        if item is None:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class StoreTeacher:
    """TeacherSignal read from a logits store, at any Truncation the store covers.

    Offline stores are keyed by ``sequence_ids``; online stores by capture entry:
    ``entries[example_id]`` when ``entries`` (e.g. a ``store.window(...)``) is given, else the
    example id itself; the entry's captured sequence must equal the sequence asked for.
    Decoding is synchronous unless ``schedule(batches)`` announces the coming calls, in which
    case a background thread decodes ``prefetch`` batches ahead.
    """

    def __init__(self, store: LogitsStore, truncation: Truncation | None = None,
                 *, prefetch: int = 2, entries: np.ndarray | None = None):
        self.store = store
        self.truncation = store.resolve(truncation)
        self.prefetch = prefetch
        self.entries = None if entries is None else np.asarray(entries, dtype=np.int64)
        if self.entries is not None and store.kind != "online":
            raise ValueError("entries= maps examples to capture entries: online stores only")
        self._entry_sequences = store.entry_sequence_ids() if store.kind == "online" else None
        self._loader: StoreLoader | None = None

    def keys(self, example_ids, sequence_ids) -> np.ndarray:
        """Store item ids for a micro-batch."""
        if self.store.kind == "offline":
            return np.asarray(sequence_ids, dtype=np.int64).reshape(-1)
        keys = np.asarray(example_ids, dtype=np.int64).reshape(-1)
        if self.entries is not None:
            keys = self.entries[keys]
        if sequence_ids is not None:
            captured = self._entry_sequences[keys]
            wanted = np.asarray(sequence_ids, dtype=np.int64).reshape(-1)
            if not np.array_equal(captured, wanted):
                raise ValueError(f"online logits store {self.store.path}: entries {keys.tolist()} "
                                 f"captured sequences {captured.tolist()}, not {wanted.tolist()}")
        return keys

    def schedule(self, batches: Iterable[tuple[Any, Any]]) -> None:
        """Announce the coming calls as (example_ids, sequence_ids) pairs, in call order."""
        if self._loader is not None:
            self._loader.close()
        keys = (self.keys(e, s) for e, s in batches)
        self._loader = StoreLoader(self.store, keys, self.truncation, self.prefetch)

    def __call__(self, example_ids, sequence_ids, input_ids=None) -> SparseTeacherBatch:
        keys = self.keys(example_ids, sequence_ids)
        if input_ids is not None and input_ids.shape[-1] != self.store.seq_len:
            raise ValueError(f"logits store {self.store.path} has sequences of "
                             f"{self.store.seq_len} tokens, the batch has {input_ids.shape[-1]}")
        if self._loader is not None:
            try:
                ids, batch = next(self._loader)
                if np.array_equal(ids, keys):
                    return batch
            except StopIteration:
                pass
            # the calls left the announced schedule: stop prefetching, decode here
            self._loader.close()
            self._loader = None
        return self.store.batch(keys, self.truncation)

    def close(self) -> None:
        if self._loader is not None:
            self._loader.close()
            self._loader = None


def kept_stats(store: LogitsStore, truncation: Truncation | None = None, *, max_rows: int = 1 << 20) -> dict:
    """Kept-logits statistics of a truncation derived from a store.

    Uses every item when the store has at most ``max_rows`` rows, else ``ceil(max_rows / T)``
    items evenly spaced over the store (deterministic). Sizes are those of a store written at
    (top_p, top_k) in this format: entries at bits_per_index + 16 bits, one count per row, an
    int64 entry offset per item; stats (float32 per row and statistic) are reported apart.
    ``capped_frac``: rows whose top_p prefix was cut by top_k (for k = k_max, counts of a
    top-p-inf truncation are lower bounds on those rows).
    """
    t = store.resolve(truncation)
    p, k = t.top_p, t.top_k
    T = store.seq_len
    num_items = store.num_items
    take = min(num_items, -(-max_rows // T))
    ids = np.unique(np.linspace(0, max(num_items - 1, 0), take).round().astype(np.int64))
    kept_total, mass_total, capped, num_rows = 0, 0.0, 0, 0
    for chunk in np.array_split(ids, max(1, -(-ids.size // 256))):
        if chunk.size == 0:
            continue
        _, logprobs = store.dense(store.decode(chunk), t)
        kept = np.isfinite(logprobs).sum(axis=1)
        mass = np.exp(logprobs.astype(np.float64)).sum(axis=1)
        kept_total += int(kept.sum())
        mass_total += float(mass.sum())
        # capped: the row kept k entries whose mass is still below p (the p cut lies further)
        capped += int(((kept == k) & (mass < p)).sum())
        num_rows += kept.size
    mean_kept = kept_total / max(num_rows, 1)
    codec = IndexCodec.for_vocab(store.vocab_size)
    payload = codec.bits_per_index / 8 + 2
    overhead = count_dtype(k).itemsize + 8 / T
    bytes_per_token = mean_kept * payload + overhead
    stats_bytes = 4 * len(store.stat_keys)
    dense = 4 * store.vocab_size
    return {
        "top_p": p,
        "top_k": k,
        "mean_kept_per_token": mean_kept,
        "mean_kept_mass": mass_total / max(num_rows, 1),
        "capped_frac": capped / max(num_rows, 1),
        "bits_per_index": codec.bits_per_index,
        "bytes_per_entry": bytes_per_token / mean_kept if mean_kept else float("nan"),
        "bytes_per_token": bytes_per_token,
        "stats_bytes_per_token": stats_bytes,
        "dense_fp32_bytes_per_token": dense,
        "compression_vs_dense_fp32": dense / (bytes_per_token + stats_bytes),
        "sampled_rows": num_rows,
        "sampled_fraction": num_rows / max(store.num_rows, 1),
    }
