"""The logits store on disk: shard files, manifest, the crash-safe writer and the reader.

Layout of a store directory::

    manifest.json        identity, parameters, encodings, counts, and per-shard row ranges,
                         sizes, sha256 and (format 2) distortion (written atomically after
                         every shard)
    shard-00000.bin      items [first_item, first_item + num_items) of the store
    ...

An *item* is a packed sequence (offline store: item id = sequence id) or a capture entry
(online store: item id = position in capture order). Every item owns ``seq_len`` consecutive
*rows* (row = one token position: item i owns rows [i*T, (i+1)*T)), and every row keeps a
variable number of *entries* (token index, log-probability); a reader returns them sorted by
probability.

Shard file: a magic (8 bytes: ``PDLOGIT1`` or ``PDLOGIT2``, the format version), header length
(uint64 little-endian), the header (canonical JSON: section table and shard metadata), then
64-byte-aligned sections. Both formats have

    item_entry_offsets  int64  (num_items + 1,)   first entry of each item, relative to the shard
    stats               float32 (num_stats, num_rows)  entropy, std, log_u_<gamma>...,
                                                       log_u_normkd_<t_norm>... per row
    sequence_ids, steps int64  (num_items,)       online stores only: what each entry captured

**Format 1** (exact; ``core.logits_codec`` has the codes) adds, rows in probability order:

    counts              uint8  (num_rows,)        entries kept per row (uint16 if k_max > 255)
    values              uint16 (num_entries,)     log-probability codes, step 2**-11 nats
    indices             uint8  packed token ids, ~log2 V bits each (``IndexCodec``)

33.33 bits = 4.167 bytes per entry at V = 151,552, plus 1 byte per row and 8 bytes per item.

**Format 2** (compact; values to a declared bound, see ``core.logits_codec``) adds

    item_extra_bit_offsets  int64 (num_items + 1,)  first extra bit of each item
    frame_offsets       int64  (3 * num_frames + 1,)  byte ranges of the zstd frames
    frames              uint8  per group of items_per_frame items: zstd frames of the row
                               counts, the gap symbols and the value codes
    extra_bits          uint8  the gaps' extra bits, one little-endian bit stream
    id_table            uint8  (optional) token ids by frequency rank, packed as IndexCodec

Each shard's record in the manifest holds its value scale and its distortion: the mean,
99.9th percentile and maximum over rows of KL(exact || stored), both renormalised over the
row's kept entries (``LogitsStore.distortion`` sums them up).
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
from core.logits_codec import (
    DEFAULT_TARGET_KL,
    distortion_summary,
    DEFAULT_ZSTD_LEVEL,
    MAX_GAP_VOCAB,
    MAX_VALUE_SCALE,
    MIN_LOGPROB,
    VALUE_MAX_ABS_ERROR,
    VALUE_STEP,
    EntryDecoder,
    IndexCodec,
    concat_ranges,
    count_dtype,
    decode_values,
    encode_entries,
    encode_values,
    zstandard,
)
from core.logits_math import kept_counts, stat_keys
from core.sampled_kd import check_store_format, store_keeps
from core.types import SparseTeacherBatch
from core.utils import atomic_write_text

FORMAT_NAME = "pdspace-logits-store"
#: Formats this code reads and writes: 1 (exact 16-bit values) and 2 (compact, bounded error).
FORMAT_VERSIONS = (1, 2)
#: Format of a new store when the writer is not told (a resumed store keeps its own).
DEFAULT_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAGICS = {1: b"PDLOGIT1", 2: b"PDLOGIT2"}
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


def encoding_spec(vocab_size: int, k_max: int, version: int = 1, *,
                  target_kl: float = DEFAULT_TARGET_KL, zstd_level: int = DEFAULT_ZSTD_LEVEL) -> dict:
    """The manifest's description of every on-disk dtype and code of a format."""
    common = {"counts": np.dtype(count_dtype(k_max)).name, "stats": "float32",
              "item_entry_offsets": "int64"}
    if version == 1:
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
            **common,
        }
    if version != 2:
        raise ValueError(f"logits store format version must be one of {FORMAT_VERSIONS}, got {version!r}")
    return {
        "index": {
            "code": "per row: ids (or their per-shard frequency ranks, id_table) ascending; each "
                    "gap one byte (the gap below 128, else its bit length and next 3 bits; zstd) "
                    "plus raw extra bits",
        },
        "value": {
            "dtype": "uint8",
            "code": "p' = p / (row's kept mass); c = min(floor(sqrt(p') * S), S - 1), read as "
                    "((c + 0.5) / S)**2, each row rescaled to its stored kept mass; S per shard "
                    f"(<= {MAX_VALUE_SCALE}), the smallest meeting target_kl",
            "max_sqrt_prob_error": "1 / (2 S), on the renormalised probabilities",
            "kept_mass": "uint16 per row: round(logit(kept mass) / 2**-8) + 2**15; kept and dropped "
                         "mass to a relative 2**-9",
            "target_kl": float(target_kl),
            "kl": "KL(exact || stored), each row renormalised over its kept entries, nats per row; "
                  "kl_tail: with the dropped mass as one more outcome",
        },
        "compression": {"codec": "zstd", "level": int(zstd_level)},
        **common,
    }


# --------------------------------------------------------------------------------------------
# shard files
# --------------------------------------------------------------------------------------------


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


def _write_shard_file(path: Path, sections: list[tuple[str, np.ndarray]], meta: dict,
                      version: int) -> tuple[int, str]:
    """Write sections to ``path`` under a temporary name, fsync, rename. Returns (bytes, sha256)."""
    table, offset = {}, 0
    for name, arr in sections:
        offset = -(-offset // _ALIGN) * _ALIGN
        table[name] = {"offset": offset, "nbytes": arr.nbytes, "dtype": arr.dtype.str,
                       "shape": list(arr.shape)}
        offset += arr.nbytes
    header = json.dumps({"format": FORMAT_NAME, "version": version, "meta": meta,
                         "sections": table}, sort_keys=True, separators=(",", ":")).encode()
    prefix = MAGICS[version] + len(header).to_bytes(8, "little") + header
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

    def __init__(self, path: Path, version: int):
        self.path = path
        self.buf = np.memmap(path, dtype=np.uint8, mode="r")
        if self.buf[:8].tobytes() != MAGICS[version]:
            raise StoreCorruptError(f"logits store shard {path} does not start with "
                                    f"{MAGICS[version]!r} (format {version}, as its manifest says).")
        header_len = int.from_bytes(self.buf[8:16].tobytes(), "little")
        try:
            header = json.loads(self.buf[16 : 16 + header_len].tobytes())
        except ValueError:
            raise StoreCorruptError(f"logits store shard {path} has an unreadable header.") from None
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
        self.decoder: EntryDecoder | None = None  # format 2: set by the store on first use


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

    format_version: 1 (exact 16-bit values, 4.17 bytes per entry at V = 151,552) or 2 (compact:
    values to a declared bound, see ``core.logits_codec``); None: the format of the store being
    resumed, else ``DEFAULT_FORMAT_VERSION``. target_kl (format 2): each shard's value scale is
    the smallest whose mean KL(exact || stored) per position is <= target_kl (nats; None: the
    resumed store's, else ``DEFAULT_TARGET_KL``). zstd_level (format 2): likewise.
    """

    def __init__(self, path: str | os.PathLike, header: dict, *, format_version: int | None = None,
                 target_kl: float | None = None, zstd_level: int | None = None):
        self.path = Path(path)
        required = {"kind", "seq_len", "vocab_size", "p_max", "k_max", "gammas"}
        missing = required - header.keys()
        if missing:
            raise ValueError(f"store header lacks {sorted(missing)}")
        Truncation(float(header["p_max"]), int(header["k_max"]))  # the store's maximum must be a rule
        old = read_manifest(self.path) if (self.path / MANIFEST_NAME).exists() else None
        if format_version is None:
            format_version = (old or {}).get("format_version", DEFAULT_FORMAT_VERSION)
        if format_version not in FORMAT_VERSIONS:
            raise ValueError(f"format_version must be one of {FORMAT_VERSIONS}, got {format_version!r}")
        if header.get("sampling"):
            check_store_format(format_version)  # importance weights: format 1 only (core.sampled_kd)
        if format_version == 2 and int(header["vocab_size"]) > MAX_GAP_VOCAB:
            raise ValueError(f"format 2 stores vocabularies of at most {MAX_GAP_VOCAB} tokens, not "
                             f"{header['vocab_size']}; use format_version=1")
        old_encoding = (old or {}).get("encoding") or {}
        if target_kl is None:
            target_kl = old_encoding.get("value", {}).get("target_kl", DEFAULT_TARGET_KL)
        if zstd_level is None:
            zstd_level = old_encoding.get("compression", {}).get("level", DEFAULT_ZSTD_LEVEL)
        if not float(target_kl) > 0:
            raise ValueError(f"target_kl must be > 0, got {target_kl}")
        self.format_version = int(format_version)
        self.target_kl, self.zstd_level = float(target_kl), int(zstd_level)
        self.header = dict(header)
        self.header["k_max"] = min(int(header["k_max"]), int(header["vocab_size"]))
        self.header["gammas"] = [float(g) for g in header["gammas"]]
        if header.get("t_norms"):  # only written when asked for: older manifests stay as they were
            self.header["t_norms"] = [float(t) for t in header["t_norms"]]
        else:
            self.header.pop("t_norms", None)
        self.header["stat_keys"] = stat_keys(self.header["gammas"], self.header.get("t_norms", ()))
        self.header["encoding"] = encoding_spec(header["vocab_size"], self.header["k_max"],
                                                self.format_version, target_kl=self.target_kl,
                                                zstd_level=self.zstd_level)
        self.codec = IndexCodec.for_vocab(int(header["vocab_size"]))
        self.count_dtype = count_dtype(self.header["k_max"])
        self.seq_len = int(header["seq_len"])
        self.shards: list[dict] = []
        self.complete = False
        self.path.mkdir(parents=True, exist_ok=True)
        if old is not None:
            self._resume(old)
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
            "format_version": self.format_version,
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
        if old.get("format_version") != self.format_version:
            diffs.insert(0, "format_version")
            ours["format_version"] = self.format_version
        if diffs:
            k = diffs[0]
            raise StoreMismatchError(
                f"{self.path} already holds a logits store made with {k}={old.get(k)!r}, not "
                f"{ours.get(k)!r}; use another directory or delete it."
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
        logprobs: (E,) float log-probabilities (or ``codes``: (E,) uint16, format 1's codes),
        rows' entries concatenated in row order, each row sorted by probability (format 2
        accepts any order within a row; ids must be distinct within a row); stats:
        (num_stats, R) float32 in ``stat_keys`` order; online stores also pass sequence_ids
        and steps, (R / seq_len,). Format 2 measures its distortion against ``logprobs``, or
        against the values ``codes`` hold (within 2.44e-4 nats of the exact ones).
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
        indices = np.asarray(indices)
        num_values = (codes if codes is not None else np.asarray(logprobs)).size
        if num_values != num_entries or indices.size != num_entries:
            raise ValueError(f"counts sum to {num_entries} entries but got {indices.size} "
                             f"indices and {num_values} values")
        if indices.size and (indices.min() < 0 or indices.max() >= self.header["vocab_size"]):
            raise ValueError(f"token ids must be in [0, {self.header['vocab_size']})")
        keys = self.header["stat_keys"]
        stats = np.asarray(stats, dtype=np.float32).reshape(len(keys), num_rows)
        meta = {"first_item": self.num_items, "num_items": num_items, "num_rows": num_rows,
                "num_entries": num_entries}
        extra_record = {}
        if self.format_version == 1:
            if codes is None:
                codes = encode_values(logprobs)
            item_counts = counts.reshape(num_items, self.seq_len).sum(axis=1, dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(item_counts)]).astype(np.int64)
            sections = [
                ("item_entry_offsets", offsets),
                ("counts", counts.astype(self.count_dtype)),
                ("stats", stats),
                ("values", np.asarray(codes, dtype=np.uint16)),
                ("indices", self.codec.encode(indices)),
            ]
        else:
            reference = "float32" if codes is None else "format-1 codes (2.44e-4 nats)"
            values = decode_values(np.asarray(codes, dtype=np.uint16)) if codes is not None else logprobs
            encoded = encode_entries(counts, indices, values, vocab_size=int(self.header["vocab_size"]),
                                     seq_len=self.seq_len, k_max=int(self.header["k_max"]),
                                     target_kl=self.target_kl, level=self.zstd_level)
            named = dict(encoded.sections)
            sections = [(name, named.pop(name)) for name in
                        ("item_entry_offsets", "item_extra_bit_offsets", "frame_offsets")]
            sections.append(("stats", stats))
            sections.extend(named.items())
            meta.update(encoded.meta)
            kl, kl_tail = encoded.kl, encoded.kl_tail
            extra_record = {
                "value_scale": encoded.meta["value_scale"],
                "id_table_size": encoded.meta["id_table_size"],
                # percentiles as the inverted CDF: the largest shard's then bounds the store's
                "distortion": {"mean_kl": float(kl.mean()),
                               "p999_kl": float(np.percentile(kl, 99.9, method="inverted_cdf")),
                               "max_kl": float(kl.max()), "mean_kl_tail": float(kl_tail.mean()),
                               "p999_kl_tail": float(np.percentile(kl_tail, 99.9, method="inverted_cdf")),
                               "reference": reference},
            }
        if self.header["kind"] == "online":
            if sequence_ids is None or steps is None:
                raise ValueError("an online store's shard needs sequence_ids and steps")
            sections.append(("sequence_ids", np.asarray(sequence_ids, dtype=np.int64).reshape(num_items)))
            sections.append(("steps", np.asarray(steps, dtype=np.int64).reshape(num_items)))
        first_item = self.num_items
        name = shard_name(len(self.shards))
        nbytes, sha = _write_shard_file(self.path / name, sections, meta, self.format_version)
        record = {"file": name, "first_item": first_item, "num_items": num_items,
                  "first_row": first_item * self.seq_len, "num_rows": num_rows,
                  "num_entries": num_entries, "bytes": nbytes, "sha256": sha, **extra_record}
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
        self.keeps = store_keeps(manifest)
        """The truncation the store keeps: it serves every rule this covers (a sampled store:
        exactly its sampling, core.sampled_kd)."""
        self.gammas: list[float] = list(manifest["gammas"])
        self.t_norms: list[float] = list(manifest.get("t_norms", []))
        """NormKD t_norm values whose exact tempered normaliser is stored per row."""
        self.stat_keys: list[str] = list(manifest["stat_keys"])
        self.num_items: int = int(manifest["num_items"])
        self.num_rows: int = int(manifest["num_rows"])
        self.num_entries: int = int(manifest["num_entries"])
        self.format_version: int = int(manifest["format_version"])
        """1: exact 16-bit values; 2: compact, values to a declared bound (``distortion``)."""
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
        ``truncation`` must be a rule the store's ``keeps`` covers; ``gammas`` and ``t_norms`` must all be stored;
        ``num_items`` (or ``num_sequences``) is a minimum. Raises StoreMismatchError (a
        ValueError) with one sentence naming every mismatch.
        """
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") not in FORMAT_VERSIONS:
            raise StoreMismatchError(
                f"logits store {path} has format {manifest.get('format')!r} version "
                f"{manifest.get('format_version')!r}; this reader reads {FORMAT_NAME!r} versions "
                f"{', '.join(map(str, FORMAT_VERSIONS))}.")
        if manifest.get("format_version") == 2 and zstandard is None:
            raise StoreError(f"logits store {path} is in format 2, which needs the 'zstandard' "
                             f"package (pip install zstandard).")
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

    @property
    def distortion(self) -> dict | None:
        """What storing the values cost, per position (row), or None for a format-1 store
        (values exact to 2**-12 nats: at most ~3e-8 nats of KL).

        ``mean_kl``: mean over rows of KL(exact || stored), each row's distribution renormalised
        over its kept entries (nats); ``p999_kl``: the largest of the shards' 99.9th percentiles
        (an upper bound on the store's); ``max_kl``: the largest row's; ``mean_kl_tail``: the
        mean with the dropped mass as one more outcome (what a tail-bucket loss sees);
        ``target_kl``: the bound each shard's mean was written to; ``value_scales``: the shards'
        smallest and largest S (renormalised probabilities p: |sqrt(p') - sqrt(p)| <= 1 / (2 S)).
        """
        if self.format_version == 1:
            return None
        summary = distortion_summary(self._records) or {
            "mean_kl": 0.0, "p999_kl": 0.0, "max_kl": 0.0, "mean_kl_tail": 0.0, "value_scales": []}
        return {**summary, "target_kl": self.manifest["encoding"]["value"]["target_kl"]}

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
                    shard = _Shard(file, self.format_version)
                    if self.format_version == 2:
                        try:
                            shard.decoder = EntryDecoder(shard.sections, shard.meta,
                                                         vocab_size=self.vocab_size,
                                                         seq_len=self.seq_len, k_max=self.keeps.top_k)
                        except (KeyError, ValueError, IndexError) as exc:
                            raise StoreCorruptError(f"logits store shard {file} cannot be read "
                                                    f"({exc}).") from None
                    self._shards[s] = shard
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

    def _locate(self, ids: np.ndarray):
        """Shards of items ``ids``: [(positions in ids, shard-local ids, shard)], their stats
        {key: (n, T)} and entry counts (n,)."""
        T, n = self.seq_len, ids.size
        shard_of = np.searchsorted(self._first_items, ids, side="right") - 1
        stats = np.empty((len(self.stat_keys), n, T), dtype=np.float32)
        lengths = np.empty(n, dtype=np.int64)
        parts = []
        for s in np.unique(shard_of):
            shard = self._shard(int(s))
            sel = np.flatnonzero(shard_of == s)
            local = ids[sel] - self._first_items[s]
            offsets = shard.sections["item_entry_offsets"]
            lengths[sel] = offsets[local + 1] - offsets[local]
            rows = (local[:, None] * T + np.arange(T)).reshape(-1)
            stats[:, sel] = shard.sections["stats"][:, rows].reshape(len(self.stat_keys), -1, T)
            parts.append((sel, local, shard))
        return parts, {k: stats[i] for i, k in enumerate(self.stat_keys)}, lengths

    def decode(self, ids) -> DecodedRows:
        """The stored rows of items ``ids`` (sequence ids offline, entry ids online), each row's
        entries by descending probability (format 2: ties by lower id)."""
        ids = self._check_ids(ids)
        parts, stats, lengths = self._locate(ids)
        if self.format_version == 1:
            counts, indices, logprobs = self._decode_v1(parts, lengths)
        else:
            counts, indices, logprobs = self._decode_v2(parts, ids.size)
            keep = np.arange(indices.shape[1]) < counts.reshape(-1, 1)
            indices, logprobs = indices[keep], logprobs[keep]
        return DecodedRows(counts, indices, logprobs, stats)

    def _decode_v1(self, parts, lengths):
        T, n = self.seq_len, lengths.size
        counts = np.empty((n, T), dtype=np.int64)
        starts = np.empty(n, dtype=np.int64)
        for sel, local, shard in parts:
            starts[sel] = shard.sections["item_entry_offsets"][local]
            rows = (local[:, None] * T + np.arange(T)).reshape(-1)
            counts[sel] = shard.sections["counts"][rows].reshape(-1, T)
        if len(parts) == 1 and np.array_equal(parts[0][0], np.arange(n)):
            shard = parts[0][2]
            entries = concat_ranges(starts, lengths)
            indices = self.codec.decode_ranges(shard.sections["indices"], starts, lengths, entries)
            codes = shard.sections["values"][entries]
        else:
            out_begin = np.cumsum(lengths) - lengths
            indices = np.empty(int(lengths.sum()), dtype=np.int64)
            codes = np.empty(indices.size, dtype=np.uint16)
            for sel, _, shard in parts:
                dest = concat_ranges(out_begin[sel], lengths[sel])
                entries = concat_ranges(starts[sel], lengths[sel])
                indices[dest] = self.codec.decode_ranges(
                    shard.sections["indices"], starts[sel], lengths[sel], entries)
                codes[dest] = shard.sections["values"][entries]
        return counts, indices, decode_values(codes)

    def _decode_v2(self, parts, n: int):
        """Format 2: (counts (n, T), indices (n*T, W), logprobs (n*T, W)), rows sorted, padded."""
        T = self.seq_len
        decoded = []
        for sel, local, shard in parts:
            try:
                decoded.append((sel, shard.decoder.decode_rows(local)))
            except (zstandard.ZstdError, ValueError, IndexError) as exc:
                raise StoreCorruptError(f"logits store shard {shard.path} cannot be decoded "
                                        f"({exc}); verify() checks every shard.") from None
        if len(decoded) == 1 and np.array_equal(decoded[0][0], np.arange(n)):
            counts, indices, logprobs = decoded[0][1]
            return counts.reshape(n, T), indices, logprobs
        width = max(d[1][1].shape[1] for d in decoded)
        counts = np.empty((n, T), dtype=np.int64)
        indices = np.zeros((n * T, width), dtype=np.int64)
        logprobs = np.full((n * T, width), -np.inf, dtype=np.float32)
        for sel, (part_counts, part_ids, part_lp) in decoded:
            counts[sel] = part_counts.reshape(-1, T)
            rows = (sel[:, None] * T + np.arange(T)).reshape(-1)
            indices[rows, : part_ids.shape[1]] = part_ids
            logprobs[rows, : part_lp.shape[1]] = part_lp
        return counts, indices, logprobs

    # -- derived truncation ---------------------------------------------------------------
    def resolve(self, truncation: Truncation | None) -> Truncation:
        """``truncation`` (None: what the store keeps), refused unless the store covers it."""
        t = self.keeps if truncation is None else truncation
        if not t.covered_by(self.keeps):
            raise StoreMismatchError(f"logits store {self.path} keeps {self.keeps.label}; it cannot serve {t.label}.")
        return t

    def geometry(self, t: Truncation) -> Truncation:
        """The cut that reads rule ``t``'s rows: ``t``, or for a sampled store its whole rows
        (Truncation(p_max, k_max), k_max = the samples per row)."""
        return Truncation(float(self.manifest["p_max"]), int(self.manifest["k_max"])) if t.sampled else t

    def batch(self, ids, truncation: Truncation | None = None) -> SparseTeacherBatch:
        """The truncated teacher for items ``ids`` (B,): a SparseTeacherBatch (B, T, top_k).

        ``truncation``: a rule the store covers (default: what it keeps). Rows keep the smallest
        prefix reaching top_p, capped at top_k; the rest is padding (index 0, logprob -inf).
        With the stored top_p the stored cut is used as is (exact). With a smaller top_p the cut is
        recomputed on the stored log-probabilities: in format 1 they are exact to a relative
        2.44e-4 (VALUE_MAX_ABS_ERROR), so it equals the cut made on the original logits unless one
        of the row's first top_k prefixes has a true cumulative mass that close (relatively) to
        top_p; in format 2 sqrt(p) is exact to 1 / (2 S) (``distortion``), and a smaller top_k or
        top_p may also swap entries whose stored probabilities tie. Tensors are on the CPU (not
        pinned); the caller moves them.
        """
        t = self.resolve(truncation)
        ids = self._check_ids(ids)
        if self.format_version == 1:
            rows = self.decode(ids)
            indices, logprobs = self.dense(rows, t)
            stats = rows.stats
        else:  # rows come out of the decoder sorted and padded: only the cuts are left
            parts, stats, _ = self._locate(ids)
            _, indices, logprobs = self._decode_v2(parts, ids.size)
            indices, logprobs = self._cut(indices, logprobs, t)
        shape = (ids.size, self.seq_len, self.geometry(t).top_k)
        if t.sampled:  # stored values are log w - B (core.sampled_kd): the log-weights back
            logprobs += np.float32(self.manifest["sampling"]["log_weight_offset"])
        return SparseTeacherBatch(
            torch.from_numpy(indices.reshape(shape)),
            torch.from_numpy(logprobs.reshape(shape)),
            {key: torch.from_numpy(v) for key, v in stats.items()},
            sampled=t.sampled,
        )

    def dense(self, rows: DecodedRows, truncation: Truncation | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decoded rows truncated at ``truncation``, as (R, top_k) int64 indices and float32
        log-probabilities (padding: 0, -inf), R = rows.counts.size. See ``batch``."""
        t = self.geometry(self.resolve(truncation))
        counts = rows.counts.reshape(-1)
        num_rows = counts.size
        # scatter the stored rows into a dense (rows, width) layout, width = k when no stored
        # row is longer (the common case), else k_max and cut to k after
        width = t.top_k if num_rows == 0 or counts.max() <= t.top_k else self.keeps.top_k
        row_begin = np.cumsum(counts) - counts
        dest = np.arange(counts.sum(), dtype=np.int64)
        dest += np.repeat(np.arange(num_rows, dtype=np.int64) * width - row_begin, counts)
        indices = np.zeros((num_rows, width), dtype=np.int64)
        logprobs = np.full((num_rows, width), -np.inf, dtype=np.float32)
        indices.reshape(-1)[dest] = rows.indices
        logprobs.reshape(-1)[dest] = rows.logprobs
        return self._cut(indices, logprobs, t)

    def _cut(self, indices: np.ndarray, logprobs: np.ndarray, t: Truncation) -> tuple[np.ndarray, np.ndarray]:
        """Sorted, padded rows (R, width) -> (R, t.top_k), then the top-p cut when t.top_p is
        below the stored one."""
        p, k = t.top_p, t.top_k
        width = indices.shape[1]
        if width > k:
            indices, logprobs = indices[:, :k].copy(), logprobs[:, :k].copy()
        elif width < k:
            indices = np.pad(indices, ((0, 0), (0, k - width)))
            logprobs = np.pad(logprobs, ((0, 0), (0, k - width)), constant_values=-np.inf)
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
    allowed = set(IDENTITY_KEYS) | {"truncation", "gammas", "t_norms", "num_items", "num_sequences"}
    unknown = set(expect) - allowed
    if unknown:
        raise ValueError(f"unknown store expectation(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    problems = []
    for key in IDENTITY_KEYS:
        if key in expect and expect[key] is not None and manifest.get(key) != expect[key]:
            problems.append(f"{key} is {manifest.get(key)!r} in the store but the run expects "
                            f"{expect[key]!r}")
    wanted, keeps = expect.get("truncation"), store_keeps(manifest)
    if wanted is not None and not wanted.covered_by(keeps):
        problems.append(f"the run reads {wanted.label} but the store keeps {keeps.label}")
    missing = [g for g in expect.get("gammas") or () if float(g) not in manifest["gammas"]]
    if missing:
        problems.append(f"gammas {missing} are not stored (stored: {manifest['gammas']})")
    stored_t = manifest.get("t_norms", [])
    missing = [t for t in expect.get("t_norms") or () if float(t) not in stored_t]
    if missing:
        problems.append(f"NormKD t_norms {missing} are not stored (stored: {stored_t})")
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


def convert_store(src: str | os.PathLike, dst: str | os.PathLike, *, format_version: int = 2,
                  target_kl: float | None = None, zstd_level: int | None = None) -> Path:
    """Rewrite the complete store ``src`` into ``dst`` in ``format_version``; returns dst.

    Same identity, truncation, stats and (online) capture fields, shard by shard with the same
    items per shard; ``src`` is verified first. Resumable: a ``dst`` left by an interrupted
    conversion continues after its last shard. Converting a format-1 store to format 2
    measures the distortion against its 16-bit values (within 2.44e-4 nats of the exact ones).
    """
    store = LogitsStore.open(src)
    store.verify()
    skip = _MANIFEST_STATE_KEYS | {"encoding", "stat_keys"}
    header = {k: v for k, v in store.manifest.items() if k not in skip}
    writer = LogitsStoreWriter(dst, header, format_version=format_version, target_kl=target_kl,
                               zstd_level=zstd_level)
    if writer.complete:
        return writer.path
    for record in store._records[writer.num_shards:]:
        ids = np.arange(record["first_item"], record["first_item"] + record["num_items"])
        rows = store.decode(ids)
        stats = np.stack([rows.stats[k].reshape(-1) for k in store.stat_keys]) if store.stat_keys \
            else np.zeros((0, ids.size * store.seq_len), dtype=np.float32)
        extra = {}
        if store.kind == "online":
            extra = {"sequence_ids": store.entry_sequence_ids(ids), "steps": store.entry_steps(ids)}
        # a format-1 source passes its codes: format 2 then measures against its 16-bit values
        values = {"codes": encode_values(rows.logprobs)} if store.format_version == 1 else {}
        writer.write_shard(rows.counts.reshape(-1), rows.indices, None if values else rows.logprobs,
                           stats, **values, **extra)
    return writer.finalize()


def kept_stats(store: LogitsStore, truncation: Truncation | None = None, *, max_rows: int = 1 << 20) -> dict:
    """Kept-logits statistics of a truncation derived from a store.

    Uses every item when the store has at most ``max_rows`` rows, else ``ceil(max_rows / T)``
    items evenly spaced over the store (deterministic). Sizes are those of a store written at
    (top_p, top_k) in format 1: entries at bits_per_index + 16 bits, one count per row, an
    int64 entry offset per item; stats (float32 per row and statistic) are reported apart.
    (A format-2 store's size depends on its entries: ``LogitsStore.storage()`` measures it.)
    ``capped_frac``: rows whose top_p prefix was cut by top_k (for k = k_max, counts of a
    top-p-inf truncation are lower bounds on those rows).
    """
    t = store.geometry(store.resolve(truncation))
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
