"""Producing teacher logits: offline extraction, online capture during teacher training, and
a live teacher. Truncation, encoding and writing run on a background thread, overlapping the
teacher's forward passes (torch and numpy release the GIL in their kernels).
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from core.config import LogitsStoreConfig, Truncation
from core.logits_math import stat_keys, truncate_and_stats
from core.logits_store import LogitsStoreWriter, StoreError, encode_values
from core.sampled_kd import DEFAULT_SEED, batch_generator, sample_and_stats, sampling_header
from core.types import SparseTeacherBatch

#: WTTM gammas stored by default: none. A study that runs WTTM passes its gammas (the paper's
#: sources tuned 0.7-0.8, see PAPER.md); each one costs an exp pass over the vocabulary.
DEFAULT_GAMMAS: tuple[float, ...] = ()

_STOP = object()
_FLUSH = object()


class _ShardPipeline:
    """Truncates, encodes and writes shards on one background thread.

    ``submit`` takes raw logits (truncated on the thread: CPU) or an already truncated result
    (GPU); ``flush`` writes everything submitted since the last flush as one shard. Work is
    done in submission order, so a ``close`` after an error in the producer still writes every
    shard whose flush was submitted, and nothing else.
    """

    def __init__(self, writer: LogitsStoreWriter, keeps: Truncation,
                 gammas: Sequence[float], background: bool = True, t_norms: Sequence[float] = ()):
        self.writer = writer
        self.keeps, self.gammas, self.t_norms = keeps, list(gammas), list(t_norms)
        self.keys = writer.header["stat_keys"]
        self.error: BaseException | None = None
        self._pending: list[tuple] = []
        self._queue: queue.Queue | None = None
        self._thread = None
        if background:
            self._queue = queue.Queue(maxsize=2)
            self._thread = threading.Thread(target=self._run, daemon=True, name="logits-writer")
            self._thread.start()

    # -- producer side ---------------------------------------------------------------------
    def submit(self, payload: Any, sequence_ids=None, steps=None) -> None:
        self._send((payload, sequence_ids, steps))

    def flush(self) -> None:
        self._send(_FLUSH)

    def close(self) -> None:
        """Finish queued work and stop the thread; re-raise its error, if any."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self.error is not None:
            raise self.error

    def _send(self, message: Any) -> None:
        if self.error is not None:
            raise self.error
        if self._queue is None:
            self._handle(message)
        else:
            self._queue.put(message)

    # -- worker side -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if message is _STOP:
                return
            if self.error is None:
                try:
                    self._handle(message)
                except BaseException as exc:  # re-raised in the producer
                    self.error = exc

    def _handle(self, message: Any) -> None:
        if message is _FLUSH:
            self._write()
            return
        payload, sequence_ids, steps = message
        if isinstance(payload, torch.Tensor):
            with torch.no_grad():
                payload = truncate_and_stats(payload, self.keeps, self.gammas, t_norms=self.t_norms)
        indices, logprobs, counts, stats = payload
        k = indices.shape[-1]
        indices = indices.reshape(-1, k).numpy()
        logprobs = logprobs.reshape(-1, k).numpy()
        counts = counts.reshape(-1).numpy()
        keep = np.arange(k) < counts[:, None]
        self._pending.append((
            counts,
            indices[keep],
            encode_values(logprobs[keep]),
            np.stack([stats[key].reshape(-1).float().numpy() for key in self.keys]),
            sequence_ids,
            steps,
        ))

    def _write(self) -> None:
        if not self._pending:
            return
        parts, self._pending = self._pending, []
        online = self.writer.header["kind"] == "online"
        self.writer.write_shard(
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            None,
            np.concatenate([p[3] for p in parts], axis=1),
            codes=np.concatenate([p[2] for p in parts]),
            sequence_ids=np.concatenate([p[4] for p in parts]) if online else None,
            steps=np.concatenate([p[5] for p in parts]) if online else None,
        )


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _autocast(device: torch.device, model: torch.nn.Module):
    """bf16 autocast for a float32 model on CUDA; nothing elsewhere (core.models.inference_autocast)."""
    from core.models import inference_autocast

    return inference_autocast(model, device)


def _forward(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> (B, T, V) logits, for Hugging Face causal LMs and plain modules."""
    if hasattr(model, "config"):
        out = model(input_ids=input_ids, use_cache=False)
    else:
        out = model(input_ids)
    return getattr(out, "logits", out)


def _vocab_size(model: torch.nn.Module) -> int:
    from core.models import output_vocab_size

    size = output_vocab_size(model)
    if size is None:
        raise ValueError("the teacher has neither an output layer nor a config.vocab_size")
    return size


class _SequenceSource:
    """Packed sequences (n, T+1) from a PackedData-like object or an array."""

    def __init__(self, data: Any, split: str, num_sequences: int | None):
        if hasattr(data, "sequences") and hasattr(data, "num_sequences"):
            self._fetch = lambda ids: np.asarray(data.sequences(split, ids))
            available = int(data.num_sequences(split))
            self.seq_len = int(getattr(data, "seq_len", 0) or self._fetch(np.arange(1)).shape[1] - 1)
            self.data_hash = str(getattr(data, "hash", "") or "")
            self.tokenizer_hash = str(getattr(data, "tokenizer_hash", "") or "")
        else:
            array = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
            if array.ndim != 2 or array.shape[1] < 2:
                raise ValueError(f"sequences must be (n, T+1) token ids, got shape {array.shape}")
            self._fetch = lambda ids: array[ids]
            available = array.shape[0]
            self.seq_len = array.shape[1] - 1
            self.data_hash = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]
            self.tokenizer_hash = ""
        if num_sequences is not None and not 0 < num_sequences <= available:
            raise ValueError(f"num_sequences must be in [1, {available}], got {num_sequences}")
        self.num_sequences = available if num_sequences is None else int(num_sequences)

    def inputs(self, ids: np.ndarray) -> torch.Tensor:
        seqs = np.asarray(self._fetch(ids), dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(seqs[:, :-1]))


def extract_logits(
    model: torch.nn.Module,
    data_or_sequences: Any,
    out_dir: str | os.PathLike,
    *,
    split: str = "train",
    keeps: Truncation = Truncation(),
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    t_norms: Sequence[float] = (),
    batch_size: int = LogitsStoreConfig.batch_size,
    shard_tokens: int = LogitsStoreConfig.shard_tokens,
    format_version: int = LogitsStoreConfig.format_version,
    target_kl: float = LogitsStoreConfig.target_kl,
    sampling_seed: int = DEFAULT_SEED,
    device: str | torch.device | None = None,
    teacher_id: str = "",
    teacher_hash: str = "",
    tokenizer_hash: str = "",
    data_hash: str = "",
    num_sequences: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    background: bool = True,
) -> Path:
    """Run the teacher over a split's packed sequences and write a logits store.

    data_or_sequences: a PackedData (``.num_sequences(split)``, ``.sequences(split, ids)`` ->
    (n, T+1) int64; its ``hash``/``tokenizer_hash`` fill empty hashes) or an (n, T+1) array.
    The first ``num_sequences`` sequences (all by default) are extracted: sequence i's inputs
    ``[:-1]`` give rows [i*T, (i+1)*T). Shards hold ``max(1, shard_tokens // T)`` sequences and
    are processed in batches of ``batch_size`` starting at the shard's first sequence, so a run
    resumed after an interruption (any exception, e.g. raised by ``progress(done, total)``)
    redoes the same batches and ends with a store byte-identical to an uninterrupted one. A
    directory holding this store complete is returned at once. device: where the model is
    (default: its parameters' device); on CUDA the forward runs under bf16 autocast and the
    truncation on the GPU. Returns the store's path.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = _SequenceSource(data_or_sequences, split, num_sequences)
    device = torch.device(device) if device is not None else _device_of(model)
    vocab_size = _vocab_size(model)
    seq_len = source.seq_len
    per_shard = max(1, shard_tokens // seq_len)
    header = {
        "kind": "offline",
        "teacher_id": teacher_id,
        "teacher_hash": teacher_hash,
        "tokenizer_hash": tokenizer_hash or source.tokenizer_hash,
        "data_hash": data_hash or source.data_hash,
        "split": split,
        "seq_len": seq_len,
        "vocab_size": vocab_size,
        "p_max": keeps.top_p,
        "k_max": keeps.top_k,
        "gammas": [float(g) for g in gammas],
        "t_norms": [float(t) for t in t_norms],
        "num_sequences": source.num_sequences,
        "items_per_shard": per_shard,
        "extraction": {
            "batch_size": int(batch_size),
            "device_type": device.type,
            "autocast": "bf16" if isinstance(_autocast(device, model), torch.autocast) else None,
        },
    }
    if keeps.sampled:  # importance-sampled rows (core.sampled_kd): log-weights (the writer refuses format 2)
        header.update(sampling_header(keeps, vocab_size, sampling_seed))
    writer = LogitsStoreWriter(out_dir, header, format_version=format_version, target_kl=target_kl)
    if writer.complete:
        return writer.path
    total = source.num_sequences
    num_shards = -(-total // per_shard)
    if not keeps.sampled:
        keeps = Truncation(keeps.top_p, writer.header["k_max"])  # k capped at the vocabulary
    pipeline = _ShardPipeline(writer, keeps, gammas, background=background, t_norms=t_norms)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for shard in range(writer.num_shards, num_shards):
                first, stop = shard * per_shard, min((shard + 1) * per_shard, total)
                for start in range(first, stop, batch_size):
                    ids = np.arange(start, min(start + batch_size, stop))
                    inputs = source.inputs(ids).to(device)
                    with _autocast(device, model):
                        logits = _forward(model, inputs)
                    if logits.shape[-1] != vocab_size:
                        raise ValueError(f"the teacher returned {logits.shape[-1]} logits per "
                                         f"position, its output layer has {vocab_size}")
                    if keeps.sampled:  # draws seeded by the batch's first row: resumption rewrites them
                        pipeline.submit(sample_and_stats(logits, keeps, gammas, t_norms=t_norms,
                                                         generator=batch_generator(sampling_seed, start * seq_len)))
                    elif logits.is_cuda:
                        result = truncate_and_stats(logits, keeps, gammas, t_norms=t_norms)
                        pipeline.submit((result[0].cpu(), result[1].cpu(), result[2].cpu(),
                                         {k: v.cpu() for k, v in result[3].items()}))
                    else:
                        pipeline.submit(logits.detach())
                    del logits
                    if progress is not None:
                        progress(int(ids[-1]) + 1, total)
                pipeline.flush()
    finally:
        model.train(was_training)
        pipeline.close()
    return writer.finalize()


class OnlineCapture:
    """Captures a teacher's truncated logits while it trains (no extra forward passes).

    The trainer calls ``capture(step, sequence_ids, logits)`` after each teacher forward with
    logits (B, T, V) detached (not modified in place afterwards), and ``close()`` at the end.
    Entries are numbered in capture order; each records its sequence id and the teacher step.
    A shard is written once ``shard_tokens`` rows are buffered and a new step begins, so shards
    hold whole steps. Resuming: a new OnlineCapture on the same directory keeps the written
    shards and ignores calls for steps already stored (a resumed teacher re-runs them); call
    ``flush()`` whenever the trainer checkpoints so that no step before a checkpoint is lost.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        vocab_size: int,
        seq_len: int,
        keeps: Truncation = Truncation(),
        gammas: Sequence[float] = DEFAULT_GAMMAS,
        t_norms: Sequence[float] = (),
        teacher_id: str = "",
        teacher_hash: str = "",
        tokenizer_hash: str = "",
        data_hash: str = "",
        split: str = "train",
        shard_tokens: int = LogitsStoreConfig.shard_tokens,
        background: bool = True,
    ):
        header = {
            "kind": "online", "teacher_id": teacher_id, "teacher_hash": teacher_hash,
            "tokenizer_hash": tokenizer_hash, "data_hash": data_hash, "split": split,
            "seq_len": int(seq_len), "vocab_size": int(vocab_size), "p_max": keeps.top_p,
            "k_max": keeps.top_k, "gammas": [float(g) for g in gammas],
            "t_norms": [float(t) for t in t_norms],
        }
        self.writer = LogitsStoreWriter(out_dir, header)
        if self.writer.complete:
            raise StoreError(f"online logits store {self.writer.path} is complete; capture into "
                             f"another directory.")
        self.path = self.writer.path
        self.seq_len, self.vocab_size = int(seq_len), int(vocab_size)
        self.keeps, self.gammas = Truncation(keeps.top_p, self.writer.header["k_max"]), list(gammas)
        self.t_norms = list(t_norms)
        self.shard_tokens = shard_tokens
        stored = [s["last_step"] for s in self.writer.shards]
        self.last_stored_step: int | None = max(stored) if stored else None
        self._pipeline = _ShardPipeline(self.writer, self.keeps, self.gammas,
                                        background=background, t_norms=self.t_norms)
        self._pending_rows = 0
        self._step: int | None = None

    def __call__(self, step: int, sequence_ids, logits: torch.Tensor) -> None:
        step = int(step)
        if self.last_stored_step is not None and step <= self.last_stored_step:
            return
        if self._step is not None and step < self._step:
            raise ValueError(f"capture steps must not decrease: got step {step} after {self._step}")
        if logits.dim() != 3 or logits.shape[1] != self.seq_len or logits.shape[2] != self.vocab_size:
            raise ValueError(f"expected logits (B, {self.seq_len}, {self.vocab_size}), got "
                             f"{tuple(logits.shape)}")
        sequence_ids = np.asarray(sequence_ids, dtype=np.int64).reshape(-1)
        if sequence_ids.size != logits.shape[0]:
            raise ValueError(f"{sequence_ids.size} sequence ids for {logits.shape[0]} sequences")
        if step != self._step and self._pending_rows >= self.shard_tokens:
            self.flush()
        self._step = step
        logits = logits.detach()
        if logits.is_cuda:
            with torch.no_grad():
                result = truncate_and_stats(logits, self.keeps, self.gammas, t_norms=self.t_norms)
            payload = (result[0].cpu(), result[1].cpu(), result[2].cpu(),
                       {k: v.cpu() for k, v in result[3].items()})
        else:
            payload = logits
        steps = np.full(sequence_ids.size, step, dtype=np.int64)
        self._pipeline.submit(payload, sequence_ids, steps)
        self._pending_rows += logits.shape[0] * logits.shape[1]

    capture = __call__

    def flush(self) -> None:
        """Write everything captured so far as a shard (call at trainer checkpoints)."""
        if self._pending_rows:
            self._pipeline.flush()
            self._pending_rows = 0

    def close(self) -> Path:
        """Flush, stop the writer thread and mark the store complete. Returns its path."""
        self.flush()
        self._pipeline.close()
        return self.writer.finalize()

    def abort(self) -> None:
        """Stop without writing buffered entries or completing the store (for crashes)."""
        self._pipeline.close()  # buffered entries without a flush are dropped with the thread

    def __enter__(self) -> "OnlineCapture":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class LiveTeacher:
    """TeacherSignal computed by running the teacher model (dense, online or validation use).

    Returns a SparseTeacherBatch (B, T, min(top_k, V)) on the model's device, with the full-
    vocabulary statistics for ``gammas`` and ``t_norms``. The model is put in eval mode.

    memoize: keep each batch's result, keyed by its sequence ids, and return it again when the
    same sequences come back with the same tokens (the held-out set is scored at every evaluation
    point against a teacher that does not change: its forward pass is then run once per run, not
    once per evaluation). The result is the same tensors, so the numbers are unchanged.
    """

    def __init__(self, model: torch.nn.Module, truncation: Truncation,
                 gammas: Sequence[float] = DEFAULT_GAMMAS, *, memoize: bool = False,
                 t_norms: Sequence[float] = ()):
        if truncation.sampled:
            raise ValueError(f"a live teacher truncates; it cannot serve sampled KD ({truncation.label}): "
                             f"extract an offline sampled store")
        self.model = model.eval()
        self.truncation, self.gammas, self.t_norms = truncation, list(gammas), list(t_norms)
        self.stat_keys = stat_keys(self.gammas, self.t_norms)
        self._memo: dict[tuple[int, ...], tuple[torch.Tensor, SparseTeacherBatch]] | None = (
            {} if memoize else None)

    def __call__(self, example_ids, sequence_ids, input_ids: torch.Tensor) -> SparseTeacherBatch:
        if self._memo is None:
            return self._compute(input_ids)
        key = tuple(int(i) for i in np.asarray(sequence_ids).reshape(-1))
        hit = self._memo.get(key)
        if hit is not None and torch.equal(hit[0], input_ids.cpu()):
            return hit[1]
        batch = self._compute(input_ids)
        self._memo[key] = (input_ids.detach().cpu().clone(), batch)
        return batch

    def _compute(self, input_ids: torch.Tensor) -> SparseTeacherBatch:
        device = _device_of(self.model)
        with torch.no_grad(), _autocast(device, self.model):
            logits = _forward(self.model, input_ids.to(device))
        batch, length = logits.shape[:2]
        with torch.no_grad():
            indices, logprobs, _, stats = truncate_and_stats(logits, self.truncation, self.gammas,
                                                             t_norms=self.t_norms)
        return SparseTeacherBatch(
            indices.reshape(batch, length, -1),
            logprobs.reshape(batch, length, -1),
            {key: value.reshape(batch, length) for key, value in stats.items()},
        )
