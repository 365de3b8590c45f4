"""Teacher logits: truncation, the logits store, extraction, online capture and teachers.

The public API of the logits part of core (see docs/internals.md); the code lives in
``logits_math`` (truncation, statistics), ``logits_store`` (format, writer, reader, store
teachers, kept statistics) and ``logits_extract`` (offline extraction, online capture, the
live teacher).
"""
from core.logits_extract import DEFAULT_GAMMAS, LiveTeacher, OnlineCapture, extract_logits
from core.logits_math import row_stats, stat_keys, truncate, truncate_and_stats, truncate_with_counts
from core.logits_store import (
    VALUE_MAX_ABS_ERROR,
    DecodedRows,
    IndexCodec,
    LogitsStore,
    LogitsStoreWriter,
    StoreCorruptError,
    StoreError,
    StoreLoader,
    StoreMismatchError,
    StoreTeacher,
    convert_store,
    decode_values,
    encode_values,
    kept_stats,
)

__all__ = [
    "DEFAULT_GAMMAS",
    "VALUE_MAX_ABS_ERROR",
    "DecodedRows",
    "IndexCodec",
    "LiveTeacher",
    "LogitsStore",
    "LogitsStoreWriter",
    "OnlineCapture",
    "StoreCorruptError",
    "StoreError",
    "StoreLoader",
    "StoreMismatchError",
    "StoreTeacher",
    "convert_store",
    "decode_values",
    "encode_values",
    "extract_logits",
    "kept_stats",
    "row_stats",
    "stat_keys",
    "truncate",
    "truncate_and_stats",
    "truncate_with_counts",
]
