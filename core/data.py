"""The data unit of work: corpus -> tokenizer -> packed, memory-mapped token streams (train/val).

An artifact lives in ``<root>/data/<spec hash>/`` and holds:

    manifest.json     what was built from what (spec, corpus fingerprint, tokenizer hash, counts)
    tokenizer/        a Hugging Face ``PreTrainedTokenizerFast`` directory
    train.bin         the training token stream (flat uint16 if V <= 65536, else uint32)
    val.bin           the validation token stream
    val_docs.jsonl    the held-out documents as text, one JSON object per line: {"name", "text"}

Each document is tokenized without special tokens and followed by the end-of-text token, then all
documents of a split are concatenated in corpus order. Sequence i of a split is
``stream[i*T : i*T + T + 1]`` (T = seq_len): consecutive sequences share one boundary token, so
every stream token after the first is a target exactly once. A document's split is fixed by a hash
of its key (the relative file path for one-document-per-file sources, the text itself for record
sources), so it never changes between runs, machines or corpus subsets.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from core.config import DataSpec
from core.settings import identity_dict
from core.utils import DATA_FORMAT_VERSION, artifacts_root, atomic_write_text, file_sha256, stable_hash

log = logging.getLogger(__name__)

FORMAT_VERSION = DATA_FORMAT_VERSION  # 2: documents packed in a hash-shuffled order
BUILTIN_SOURCES = ("builtin:python-stdlib",)
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN,)
SPLITS = ("train", "val")
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val"}
_RECORD_SUFFIXES = (".jsonl", ".parquet")
# Files a directory source picks up (an explicit file or glob takes any file; unknown suffixes are text).
_DIRECTORY_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py") + _RECORD_SUFFIXES
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
# Documents go to the tokenizer in batches of this many characters (memory bound, not speed).
_ENCODE_BATCH_CHARS = 8 << 20


def corpus_fingerprint(spec: DataSpec) -> dict[str, Any]:
    """Content fingerprint of a spec's (capped) corpus; ``sha256`` is its stable part."""
    return _open_corpus(spec).fingerprint()


def external_tokenizer_hash(name_or_path: str) -> str:
    """tokenizer_hash of an external tokenizer (a HF dir or hub id)."""
    return tokenizer_hash(_load_external_tokenizer(name_or_path))


def data_hash(spec: DataSpec) -> str:
    """Content hash of the spec, the corpus content and the external tokenizer (16 hex)."""
    fields = identity_dict(spec)
    if spec.tokenizer is not None:
        fields["vocab_size"] = None  # the external tokenizer fixes it
    return stable_hash({
        "format_version": FORMAT_VERSION,
        "spec": fields,
        "corpus": corpus_fingerprint(spec)["sha256"],
        "tokenizer": None if spec.tokenizer is None else external_tokenizer_hash(spec.tokenizer),
    })


# ---------------------------------------------------------------------------------------------
# Corpus sources


@dataclass(frozen=True)
class _Document:
    name: str  # readable id: a relative path, or "<relative path>#<record>"
    key: str  # what the train/val split hashes
    text: str
    num_bytes: int  # what max_corpus_bytes counts


def hash_fraction(key: str) -> float:
    """sha256 of ``key`` read as a number in [0, 1) (first 64 bits)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def document_split(key: str, val_fraction: float) -> str:
    """'val' when hash_fraction(key) < val_fraction, else 'train' (before the non-empty fallback)."""
    return "val" if hash_fraction(key) < val_fraction else "train"


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _cached_file_sha256(path: Path) -> str:
    """file_sha256, memoised per process on (path, size, mtime) so a spec's hash is cheap twice."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = file_sha256(path)
    return _FILE_HASHES[key]


def _content_fingerprint(base: Path, files: list[Path]) -> dict[str, Any]:
    h = hashlib.sha256()
    num_bytes = 0
    for path in files:
        rel = path.relative_to(base).as_posix()
        h.update(f"{rel}\0{_cached_file_sha256(path)}\n".encode())
        num_bytes += path.stat().st_size
    return {"num_files": len(files), "num_bytes": num_bytes, "sha256": h.hexdigest()}


def _read_text(path: Path) -> str:
    # Undecodable bytes (a few stdlib test files are deliberately not UTF-8) become U+FFFD.
    return path.read_bytes().decode("utf-8", errors="replace")


def _iter_records(path: Path, rel: str, text_field: str) -> Iterator[tuple[str, str]]:
    """(name, text) of every record of a JSONL or Parquet file; empty or null texts are skipped."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        columns = pf.schema_arrow.names
        if text_field not in columns:
            raise ValueError(f"{path}: no column {text_field!r} (columns: {columns})")
        i = 0
        for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                if text:
                    yield f"{rel}#{i}", _require_str(text, f"{path} row {i}", text_field)
                i += 1
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise ValueError(f"{path}:{lineno}: record has no field {text_field!r}")
            if record[text_field]:
                yield f"{rel}#{lineno}", _require_str(record[text_field], f"{path}:{lineno}", text_field)


def _require_str(value: Any, where: str, text_field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {text_field!r} must be a string, got {type(value).__name__}")
    return value


class _Corpus:
    """A resolved corpus: a content fingerprint and a re-iterable stream of documents."""

    def __init__(self, max_documents: int | None, max_bytes: int | None):
        self.max_documents = max_documents
        self.max_bytes = max_bytes

    def fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def _raw_documents(self) -> Iterator[_Document]:
        raise NotImplementedError

    def documents(self) -> Iterator[_Document]:
        """Non-empty documents in corpus order, after max_documents / max_corpus_bytes."""
        count = total = 0
        for doc in self._raw_documents():
            if not doc.text:
                continue
            if self.max_documents is not None and count >= self.max_documents:
                return
            if self.max_bytes is not None and count > 0 and total + doc.num_bytes > self.max_bytes:
                return
            count += 1
            total += doc.num_bytes
            yield doc


class _FileCorpus(_Corpus):
    """Local files: text files are one document each; JSONL/Parquet files one per record."""

    def __init__(self, kind: str, base: Path, files: list[Path], spec: DataSpec, info: dict):
        super().__init__(spec.max_documents, spec.max_corpus_bytes)
        self.kind, self.base, self.text_field, self.info = kind, base, spec.text_field, info
        files = [p for p in files if p.suffix in _RECORD_SUFFIXES or p.stat().st_size > 0]
        if all(p.suffix not in _RECORD_SUFFIXES for p in files):
            files = self._cap(files)  # so the fingerprint reads only the files that are used
        self.files = files

    def _cap(self, files: list[Path]) -> list[Path]:
        kept, total = [], 0
        for path in files:
            size = path.stat().st_size
            if self.max_documents is not None and len(kept) >= self.max_documents:
                break
            if self.max_bytes is not None and kept and total + size > self.max_bytes:
                break
            kept.append(path)
            total += size
        return kept

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.info, **_content_fingerprint(self.base, self.files)}

    def _raw_documents(self) -> Iterator[_Document]:
        for path in self.files:
            rel = path.relative_to(self.base).as_posix()
            if path.suffix in _RECORD_SUFFIXES:
                for name, text in _iter_records(path, rel, self.text_field):
                    yield _Document(name, text, text, len(text.encode("utf-8")))
            else:
                yield _Document(rel, rel, _read_text(path), path.stat().st_size)


class _HFCorpus(_Corpus):
    """A Hugging Face dataset (hub id, local data directory, or a save_to_disk directory)."""

    def __init__(self, name: str, config: str | None, spec: DataSpec):
        super().__init__(spec.max_documents, spec.max_corpus_bytes)
        self.name, self.config, self.text_field = name, config, spec.text_field
        self.local = Path(name).expanduser().is_dir()

    def load(self):
        import datasets

        path = Path(self.name).expanduser()
        if self.local and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(path) if self.local else self.name, self.config)
        if isinstance(ds, (datasets.DatasetDict, dict)):
            splits = list(ds)
            if "train" in ds:
                ds = ds["train"]
            elif len(splits) == 1:
                ds = ds[splits[0]]
            else:
                raise ValueError(
                    f"Hugging Face dataset {self.name!r} has no 'train' split and several others "
                    f"({splits}); pdspace makes its own validation split from one of them"
                )
        if self.text_field not in ds.column_names:
            raise ValueError(
                f"Hugging Face dataset {self.name!r} has no column {self.text_field!r} "
                f"(columns: {ds.column_names}); set text_field"
            )
        return ds

    def fingerprint(self) -> dict[str, Any]:
        info = {"kind": "hf", "name": self.name, "config": self.config}
        if self.local:
            base = Path(self.name).expanduser()
            files = sorted((p for p in base.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
            return {**info, **_content_fingerprint(base, files)}
        ds = self.load()
        return {**info, "num_rows": ds.num_rows, "sha256": hashlib.sha256(
            f"{self.name}\0{self.config}\0{ds._fingerprint}".encode()).hexdigest()}

    def _raw_documents(self) -> Iterator[_Document]:
        ds = self.load()
        i = 0
        for batch in ds.iter(batch_size=1024):
            for text in batch[self.text_field]:
                if text:
                    text = _require_str(text, f"{self.name} row {i}", self.text_field)
                    yield _Document(f"{i}", text, text, len(text.encode("utf-8")))
                i += 1


def _stdlib_files() -> tuple[Path, list[Path]]:
    """Every .py file of the running Python's standard library, sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    excluded = []
    if sys.prefix != sys.base_prefix:  # never pick up a virtual environment's own files
        excluded.append(Path(sys.prefix).resolve())
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in _SKIP_DIRS and not (here / d / "pyvenv.cfg").exists()
            and not any((here / d).resolve() == e for e in excluded)
        )
        files.extend(here / f for f in filenames if f.endswith(".py"))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return root, files


def _glob_base(pattern: str) -> Path:
    """The leading directories of a glob pattern that hold no wildcard."""
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _parse_hf(source: str) -> tuple[str, str | None]:
    rest = source[len("hf:"):]
    if not rest:
        raise ValueError("source 'hf:' needs a dataset name: hf:<name>[:<config>]")
    name, sep, config = rest.rpartition(":")
    if sep and name and "/" not in config and not Path(rest).expanduser().exists():
        return name, config
    return rest, None


def _open_corpus(spec: DataSpec) -> _Corpus:
    source = spec.source
    if source.startswith("builtin:"):
        if source != "builtin:python-stdlib":
            raise ValueError(f"unknown builtin corpus {source!r}; builtin corpora: {list(BUILTIN_SOURCES)}")
        root, files = _stdlib_files()
        info = {
            "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(),
        }
        return _FileCorpus("builtin:python-stdlib", root, files, spec, info)
    if source.startswith("hf:"):
        name, config = _parse_hf(source)
        return _HFCorpus(name, config, spec)
    path = Path(source).expanduser()
    if glob.has_magic(source):
        base = _glob_base(os.path.expanduser(source))
        files = [Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True)]
        files = [p for p in files if p.is_file()]
        if not files:
            raise ValueError(f"corpus glob {source!r} matches no files")
    elif path.is_dir():
        base = path
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix in _DIRECTORY_SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        if not files:
            raise ValueError(
                f"corpus directory {source!r} holds no {'/'.join(_DIRECTORY_SUFFIXES)} files"
            )
    elif path.is_file():
        base, files = path.parent, [path]
    else:
        raise ValueError(
            f"corpus source {source!r} is not builtin:python-stdlib, hf:<name>, nor an existing "
            "file, directory or glob"
        )
    files.sort(key=lambda p: p.relative_to(base).as_posix())
    return _FileCorpus("files", base, files, spec, {})


# ---------------------------------------------------------------------------------------------
# Tokenizers


def tokenizer_hash(tokenizer: Any) -> str:
    """Hash of a tokenizer's ``tokenizer.json`` content (16 hex), independent of JSON formatting.

    Accepts a ``PreTrainedTokenizerFast``, a ``tokenizers.Tokenizer``, a ``tokenizer.json`` path or
    a directory holding one.
    """
    from tokenizers import Tokenizer

    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer)
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
    elif hasattr(tokenizer, "backend_tokenizer"):
        tokenizer = tokenizer.backend_tokenizer
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"cannot hash a {type(tokenizer).__name__}: a fast (Rust) tokenizer is needed")
    return stable_hash(json.loads(tokenizer.to_str()))


def _wrap_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE (GPT-2 style) on ``texts``; returns a PreTrainedTokenizerFast.

    ``<|endoftext|>`` (id 0) is its bos, eos and pad token. Deterministic for the same texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return _wrap_tokenizer(tok)


def _load_external_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if not hasattr(tok, "backend_tokenizer"):
        raise ValueError(f"tokenizer {name_or_path!r} has no fast (Rust) implementation")
    if tok.eos_token_id is None:
        raise ValueError(
            f"tokenizer {name_or_path!r} has no eos token; the packer separates documents with it"
        )
    return tok


def _stream_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


# ---------------------------------------------------------------------------------------------
# Building an artifact


PACK_BUCKETS = 256


def pack_bucket(key: str) -> int:
    """The shuffle bucket of a document (independent of its train/val split hash)."""
    return min(int(hash_fraction("pack:" + key) * PACK_BUCKETS), PACK_BUCKETS - 1)


class _StreamWriter:
    """Writes encoded documents (+ eos) of one split to a flat binary file, up to a token cap.

    Documents are packed in a shuffled order, not corpus order: each goes to one of
    PACK_BUCKETS temporary files chosen by a hash of its key, and the buckets are concatenated
    at close. Any contiguous range of sequences (what a student or a logits store uses) is then
    a sample of documents from the whole corpus rather than, say, its alphabetically first
    files, with bounded memory and a deterministic order.
    """

    def __init__(self, path: Path, dtype: np.dtype, eos_id: int, max_tokens: int | None):
        self.path = path
        self.dtype, self.eos_id, self.max_tokens = dtype, eos_id, max_tokens
        self.buckets = [path.with_name(f".{path.name}.bucket{b:03d}") for b in range(PACK_BUCKETS)]
        self.files: dict[int, Any] = {}
        self.docs: list[list[tuple[int, int]]] = [[] for _ in range(PACK_BUCKETS)]  # (tokens, chars)
        self.num_tokens = self.num_documents = self.num_chars = 0
        self.truncated = False

    @property
    def full(self) -> bool:
        return False  # a document late in the corpus may still pack early: encode them all

    def write(self, ids_per_doc: list[list[int]], texts: list[str], keys: list[str]) -> None:
        for ids, text, key in zip(ids_per_doc, texts, keys):
            b = pack_bucket(key)
            if b not in self.files:
                self.files[b] = open(self.buckets[b], "wb")
            arr = np.empty(len(ids) + 1, dtype=self.dtype)
            arr[:-1] = ids
            arr[-1] = self.eos_id
            self.files[b].write(arr.tobytes())
            self.docs[b].append((len(arr), len(text)))

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        with open(self.path, "wb") as out:
            for b in range(PACK_BUCKETS):
                if b not in self.files:
                    continue
                arr = np.fromfile(self.buckets[b], dtype=self.dtype)
                self.buckets[b].unlink()
                if self.max_tokens is not None and self.num_tokens + len(arr) > self.max_tokens:
                    arr = arr[: max(0, self.max_tokens - self.num_tokens)]
                    self.truncated = True
                out.write(arr.tobytes())
                used = 0
                for tokens, chars in self.docs[b]:
                    if used >= len(arr):
                        break
                    used += tokens
                    self.num_documents += 1
                    self.num_chars += chars
                self.num_tokens += len(arr)
            out.flush()
            os.fsync(out.fileno())


def _build(spec: DataSpec, spec_hash: str, corpus: _Corpus, out: Path) -> dict[str, Any]:
    """Build the artifact's files in ``out``; returns the manifest (also written there)."""
    t_start = time.perf_counter()

    fractions = np.array([hash_fraction(d.key) for d in corpus.documents()], dtype=np.float64)
    if len(fractions) < 2:
        raise ValueError(
            f"corpus {spec.source!r} has {len(fractions)} non-empty document(s); at least 2 are "
            "needed for a train/validation split"
        )
    is_val = fractions < spec.val_fraction
    if not is_val.any():  # keep validation non-empty: the document that hashes lowest goes there
        is_val[int(np.argmin(fractions))] = True
    if is_val.all():
        raise ValueError(
            f"all {len(fractions)} documents fell into the validation split; lower val_fraction"
        )
    split_s = time.perf_counter() - t_start

    t0 = time.perf_counter()
    if spec.tokenizer is None:
        train_texts = (d.text for d, v in zip(corpus.documents(), is_val) if not v)
        tokenizer = train_tokenizer(train_texts, spec.vocab_size)
    else:
        tokenizer = _load_external_tokenizer(spec.tokenizer)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    tokenizer_s = time.perf_counter() - t0
    backend = tokenizer.backend_tokenizer
    vocab_size = len(tokenizer)
    dtype = _stream_dtype(vocab_size)
    eos_id = int(tokenizer.eos_token_id)
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)

    t0 = time.perf_counter()
    cap = None if spec.max_train_tokens is None else spec.max_train_tokens + 1
    writers = {
        "train": _StreamWriter(out / "train.bin", dtype, eos_id, cap),
        "val": _StreamWriter(out / "val.bin", dtype, eos_id, None),
    }
    pending: dict[str, list[str]] = {"train": [], "val": []}
    pending_keys: dict[str, list[str]] = {"train": [], "val": []}
    pending_chars = {"train": 0, "val": 0}

    def flush(split: str) -> None:
        texts = pending[split]
        if texts and not writers[split].full:
            writers[split].write([e.ids for e in encode(texts, add_special_tokens=False)], texts,
                                 pending_keys[split])
        pending[split], pending_keys[split], pending_chars[split] = [], [], 0

    val_docs: list[tuple[int, int, str]] = []  # (pack bucket, corpus position, json line)
    for i, (doc, v) in enumerate(zip(corpus.documents(), is_val)):
        split = "val" if v else "train"
        if v:
            val_docs.append((pack_bucket(doc.key), i, json.dumps({"name": doc.name, "text": doc.text})))
        pending[split].append(doc.text)
        pending_keys[split].append(doc.key)
        pending_chars[split] += len(doc.text)
        if pending_chars[split] >= _ENCODE_BATCH_CHARS:
            flush(split)
    for split in SPLITS:
        flush(split)
    for w in writers.values():
        w.close()
    with open(out / "val_docs.jsonl", "w", encoding="utf-8") as f:  # in the val stream's order
        f.writelines(line + "\n" for _, _, line in sorted(val_docs))
    encode_s = time.perf_counter() - t0

    splits = {}
    for split, w in writers.items():
        num_sequences = max(0, (w.num_tokens - 1) // spec.seq_len)
        if num_sequences < 1:
            raise ValueError(
                f"the {split} split holds {w.num_tokens} tokens, fewer than one sequence of "
                f"seq_len + 1 = {spec.seq_len + 1}; use more documents, a shorter seq_len"
                + (" or a larger val_fraction" if split == "val" else "")
            )
        splits[split] = {
            "num_tokens": w.num_tokens,
            "num_sequences": num_sequences,
            "num_documents": w.num_documents,
            "num_chars": w.num_chars,
        }
    splits["train"]["truncated"] = writers["train"].truncated

    import tokenizers
    import transformers

    tok_hash = tokenizer_hash(out / "tokenizer")
    manifest = {
        "format_version": FORMAT_VERSION,
        "hash": spec_hash,
        "spec": spec.to_dict(),
        "corpus": {"source": spec.source, **corpus_fingerprint(spec)},
        "tokenizer": {
            "hash": tok_hash,
            "source": spec.tokenizer or "trained byte-level BPE",
            "eos_token": tokenizer.eos_token,
            "eos_token_id": eos_id,
            "bos_token_id": tokenizer.bos_token_id,
        },
        "tokenizer_hash": tok_hash,
        "seq_len": spec.seq_len,
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "splits": splits,
        "num_documents": int(len(fractions)),
        "timings_s": {
            "split": round(split_s, 3),
            "tokenizer": round(tokenizer_s, 3),
            "encode": round(encode_s, 3),
            "total": round(time.perf_counter() - t_start, 3),
        },
        "versions": {
            "python": platform.python_version(),
            "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def prepare_data(spec: DataSpec | dict, root: str | os.PathLike | None = None) -> "PackedData":
    """Build (or find) the artifact of ``spec`` under ``root/data/<data_hash(spec)>/``.

    An existing artifact is returned at once. A new one is built in a temporary directory beside
    the target and renamed into place, so readers never see a partial artifact and two processes
    preparing the same spec both end up with the one that was renamed first.
    """
    if isinstance(spec, dict):
        spec = DataSpec.from_dict(spec)
    parent = artifacts_root(root) / "data"
    spec_hash = data_hash(spec)
    final = parent / spec_hash
    if (final / "manifest.json").exists():
        return PackedData(final)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec_hash}-", dir=parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the artifact is shared with other users
    try:
        log.info("preparing data %s from %s", spec_hash, spec.source)
        manifest = _build(spec, spec_hash, _open_corpus(spec), tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").exists():
                raise
            log.info("data %s was prepared concurrently by another process; using it", spec_hash)
        else:
            log.info(
                "prepared data %s: %d train / %d val tokens in %.1f s", spec_hash,
                manifest["splits"]["train"]["num_tokens"], manifest["splits"]["val"]["num_tokens"],
                manifest["timings_s"]["total"],
            )
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PackedData(final)


# ---------------------------------------------------------------------------------------------
# Reading an artifact


class PackedData:
    """A prepared data artifact: memory-mapped token streams, tokenizer and held-out texts.

    Splits are ``"train"`` and ``"val"`` (``"validation"`` is accepted). Picklable: a copy reopens
    the files lazily, so it can be shipped to worker processes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            raise ValueError(f"{self.path} is not a prepared data artifact (no manifest.json)")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{self.path}: data format version {self.manifest.get('format_version')}, "
                f"this pdspace reads version {FORMAT_VERSION}"
            )
        self.hash: str = self.manifest["hash"]
        self.seq_len: int = int(self.manifest["seq_len"])
        self.vocab_size: int = int(self.manifest["vocab_size"])
        self.tokenizer_hash: str = self.manifest["tokenizer_hash"]
        self.eos_token_id: int = int(self.manifest["tokenizer"]["eos_token_id"])
        self.dtype = np.dtype(self.manifest["dtype"])
        self._streams: dict[str, np.memmap] = {}
        self._tokenizer = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> "PackedData":
        return cls(path)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        s = self.manifest["splits"]
        return (
            f"PackedData({self.hash}, T={self.seq_len}, V={self.vocab_size}, "
            f"train={s['train']['num_sequences']} seqs, val={s['val']['num_sequences']} seqs)"
        )

    @staticmethod
    def _split(split: str) -> str:
        if split not in _SPLIT_ALIASES:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'val'")
        return _SPLIT_ALIASES[split]

    @property
    def tokenizer(self):
        """The artifact's ``PreTrainedTokenizerFast`` (loaded on first use)."""
        if self._tokenizer is None:
            from transformers import PreTrainedTokenizerFast

            self._tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.path / "tokenizer"))
        return self._tokenizer

    def stream(self, split: str) -> np.memmap:
        """The split's whole token stream, (num_tokens,) uint16/uint32, memory-mapped read-only."""
        split = self._split(split)
        if split not in self._streams:
            self._streams[split] = np.memmap(self.path / f"{split}.bin", dtype=self.dtype, mode="r")
        return self._streams[split]

    def num_tokens(self, split: str) -> int:
        return int(self.manifest["splits"][self._split(split)]["num_tokens"])

    def num_sequences(self, split: str) -> int:
        """Number of full sequences: (num_tokens - 1) // seq_len."""
        return int(self.manifest["splits"][self._split(split)]["num_sequences"])

    def sequences(self, split: str, ids: Any) -> np.ndarray:
        """Sequences ``ids`` of a split: (n, T + 1) int64; inputs ``[:, :-1]``, labels ``[:, 1:]``."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = self.num_sequences(split)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise IndexError(
                f"sequence ids must lie in [0, {n}) for split {split!r}, got {ids.min()}..{ids.max()}"
            )
        T = self.seq_len
        index = ids[:, None] * T + np.arange(T + 1)
        return self.stream(split)[index].astype(np.int64)

    def batch(self, split: str, ids: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels), each (n, T) torch.int64, for sequences ``ids`` of a split."""
        seqs = torch.from_numpy(self.sequences(split, ids))
        return seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()

    def validation_texts(self) -> list[str]:
        """The held-out documents' texts, in corpus order."""
        with open(self.path / "val_docs.jsonl", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()]

    def validation_documents(self) -> list[dict[str, str]]:
        """The held-out documents as {"name", "text"} (name: relative path or file#record)."""
        with open(self.path / "val_docs.jsonl", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


__all__ = [
    "BUILTIN_SOURCES", "EOS_TOKEN", "DataSpec", "PackedData", "prepare_data", "tokenizer_hash",
    "train_tokenizer", "document_split", "hash_fraction",
]
