"""Peak device memory of a training unit, estimated from the model's shape (no torch): what
`pdspace plan` prints per unit and checks against ``resources.gpu_memory_gb``.

Bytes on one device (one worker of a trial). P = parameters, M = matmul parameters (P without
the embeddings and the norms), V = vocabulary rows, d = hidden, f = FFN, L = layers, d_kv =
kv_heads · head_dim, t = tokens of one micro-batch (micro_batch_size · T), T = seq_len.

Held for the whole run:
    weights       4·P         fp32 master weights (the trainer trains fp32 parameters; bf16 is
                              autocast, not a bf16 copy of the model)
    optimizer     8·P         AdamW's exp_avg and exp_avg_sq, fp32
    ddp_buckets   4·P         several workers only: DDP's gradient buckets, a second copy of the
                              gradients (torch's default gradient_as_bucket_view=False)
    teacher       P_T·b_T + memo   a KD student's held-out teacher (core.logits.LiveTeacher: b_T =
                              2 bytes for a bf16 checkpoint, 4 for a scratch teacher's fp32 export)
                              and its memoised held-out targets, heldout · T · K · 12 bytes
Training step (the peak of forward + backward, or of the optimizer step, whichever is larger):
    gradients     4·P         fp32
    weight_copies 2·M (+ 2·V·d unfused)   bf16 autocast: the bf16 copy of every matmul weight,
                              saved for backward, and of the LM head when it runs under autocast
                              (the unfused path; the fused loss runs after the autocast region)
    activations   t·((L + 1)·a + 8·d + 12)   tensors saved for backward, with
                  a = 30·d + 4·d_kv + 8·f + 4·heads + 8 bytes per token per layer under bf16
                  autocast (fp32: 32·d + 8·d_kv + 16·f + 4·heads + 8); the final norm adds 8·d + 4,
                  the token ids 8, and backward's working gradients about one more layer (the +1).
                  Measured, not guessed: the sum of the distinct storages that autograd saves for a
                  Llama decoder layer (torch 2.13, transformers 5.24, SDPA whose flash kernels save
                  q, k, v, the output and the logsumexp), on CPU under the same autocast policy as
                  CUDA's; tests/core/test_memory.py re-measures it on every run.
    loss          fused (the trainer's default on a GPU): c·V·4 bytes·3, c = min(t, FUSED_CHUNK_LOGITS // V)
                  rows (a chunk's fp32 logits, their gradient, one temporary) + the fused loss's
                  fp32 gradient buffers t·d·4 + V·d·4 (core.fused_loss). Unfused (a teacher
                  capturing online logits needs them whole, or fused_loss: false): t·V·16 (bf16
                  logits, their fp32 copy, log-probs, their gradient).
    step          4·P         foreach AdamW's temporary sqrt(exp_avg_sq), at the optimizer step
                              (when the activations are gone)
Evaluation (held-out loss at each evaluation point; gradients are freed by then):
    eval_logits   r·T·V·10 + r·T·a   r sequences per forward (EVAL_LOGITS_BYTES bounds them, see
                              core.evaluation): bf16 logits (autocast on a GPU), their fp32 copy,
                              logsumexp's temporary (8 bytes on CPU: no bf16 copy), and the
                              no-grad forward's working layer
    teacher_eval  r·T·V·b + TRUNCATION_CHUNK_LOGITS·4·5 (+ 2·M_T)   the teacher's logits for the
                              same rows (b = 2 bytes on a GPU), truncation's fp32 working set
                              (core.logits_math chunks rows) and, for an fp32 teacher on a GPU,
                              autocast's bf16 copy of its matmul weights
Runtime:
    runtime       RUNTIME_BYTES on a GPU: CUDA context, cuBLAS and NCCL workspaces (rough)

peak = held + max(gradients + weight_copies + activations + loss, gradients + step,
eval_logits + teacher_eval) + runtime. Not counted: allocator fragmentation, lm-eval tasks (their
contexts are short).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from core.config import FUSED_LOSS_ABOVE_BYTES, EvalConfig, Truncation
from core.sizes import ModelSize, get_size, param_counts

GB = 1e9
"""Memory is printed and declared in GB of 10^9 bytes (an "80 GB" H100 has 85.9e9)."""

FUSED_CHUNK_LOGITS = 128 * 151_552
"""Logits per chunk of the fused loss (core.fused_loss.DEFAULT_CHUNK_LOGITS; a test pins that the
two agree): 128 rows at V = 151,552."""

EVAL_LOGITS_BYTES = 1 << 30
"""core.evaluation runs at most this many bytes of fp32 logits per forward pass (at least one
sequence): 16 sequences of 4096 × 151,552 logits would be 40 GB, and the logsumexp doubles it."""

TRUNCATION_CHUNK_LOGITS = 1 << 28
"""Logits per row chunk of the teacher's truncation on a GPU (core.logits_math.truncate_and_stats;
2^18 on CPU)."""

RUNTIME_BYTES = int(1e9)
"""CUDA context, cuBLAS and NCCL workspaces on a GPU (rough; not counted on CPU)."""

FUSED_LOSS_COPIES = 3
UNFUSED_LOSS_BYTES_PER_LOGIT = 16
TRUNCATION_COPIES = 5


def _truncation_chunk(rows: int, vocab_size: int, on_gpu: bool) -> int:
    """Logits of one row chunk of core.logits_math.truncate_and_stats."""
    per_chunk = TRUNCATION_CHUNK_LOGITS if on_gpu else 1 << 18
    return min(rows, max(1, per_chunk // vocab_size)) * vocab_size


def activation_bytes_per_token_layer(size: str | dict | ModelSize, bf16: bool) -> int:
    """Bytes autograd saves per token per decoder layer (see the module docstring)."""
    s = get_size(size)
    kv = s.kv_heads * s.head_dim
    if bf16:
        return 30 * s.hidden + 4 * kv + 8 * s.ffn + 4 * s.heads + 8
    return 32 * s.hidden + 8 * kv + 16 * s.ffn + 4 * s.heads + 8


def activation_bytes(size: str | dict | ModelSize, tokens: int, bf16: bool) -> int:
    """Saved activations of a forward over ``tokens`` tokens, backward's working layer included."""
    s = get_size(size)
    per_layer = activation_bytes_per_token_layer(s, bf16)
    return int(tokens) * ((s.layers + 1) * per_layer + 8 * s.hidden + 12)


def matmul_params(size: str | dict | ModelSize, vocab_size: int) -> int:
    """Parameters of the decoder's matrix products (no embeddings, no norms)."""
    s = get_size(size)
    return param_counts(s, vocab_size).num_non_embedding_params - (2 * s.layers + 1) * s.hidden


@dataclass(frozen=True)
class TeacherFootprint:
    """What a teacher occupies on a device: its weights and its logits per row."""

    name: str
    num_params: int
    bytes_per_param: int
    """2 for a bf16 checkpoint, 4 for fp32 (a scratch teacher's export)."""
    matmul_params: int = 0
    """fp32 teachers under autocast make a bf16 copy of these during a forward."""

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.bytes_per_param

    def logit_bytes(self, on_gpu: bool) -> int:
        """Bytes per logit of its forward: 2 from a bf16 checkpoint or under autocast (GPU)."""
        return 2 if on_gpu or self.bytes_per_param == 2 else 4

    def forward_copies(self, on_gpu: bool) -> int:
        """bf16 weight copies autocast makes during a forward of an fp32 teacher on a GPU."""
        return 2 * self.matmul_params if on_gpu and self.bytes_per_param == 4 else 0


def scratch_teacher(name: str, size: str | dict | ModelSize, vocab_size: int) -> TeacherFootprint:
    """A teacher trained by pdspace: its export holds fp32 weights."""
    return TeacherFootprint(name, param_counts(size, vocab_size).num_params, 4, matmul_params(size, vocab_size))


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def pretrained_teacher(name: str, config: Mapping[str, Any]) -> TeacherFootprint | None:
    """A pretrained causal LM's footprint from its Hugging Face ``config.json`` (Llama, Qwen2,
    Mistral and GLM-style keys; ChatGLM's own names too); None when its shape cannot be read."""
    def first(*keys: str) -> Any:
        return next((config[k] for k in keys if config.get(k) is not None), None)

    try:
        hidden = int(first("hidden_size", "d_model", "n_embd"))
        layers = int(first("num_hidden_layers", "num_layers", "n_layer"))
        ffn = int(first("intermediate_size", "ffn_hidden_size", "n_inner") or 4 * hidden)
        heads = int(first("num_attention_heads", "n_head"))
        kv_heads = int(first("num_key_value_heads", "multi_query_group_num") or heads)
        head_dim = int(first("head_dim", "kv_channels") or hidden // heads)
        vocab = int(first("padded_vocab_size", "vocab_size"))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    tied = bool(config.get("tie_word_embeddings", False))
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    matmul = layers * (attention + 3 * hidden * ffn)
    params = matmul + layers * 2 * hidden + hidden + vocab * hidden * (1 if tied else 2)
    dtype = str(first("torch_dtype", "dtype") or "float32").removeprefix("torch.")
    return TeacherFootprint(name, params, _DTYPE_BYTES.get(dtype, 4), matmul)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes on one device, with the parts that add up to it (module docstring)."""

    peak_bytes: int
    parts: dict[str, int]
    """The parts of the peak phase, in order; they sum to peak_bytes."""
    phase: str
    """Which phase peaks: "train step", "optimizer step", "evaluation" or "extraction"."""

    def describe(self) -> str:
        """'62.3 GB = weights 5.4 + optimizer 10.7 + ... (train step)'."""
        shown = " + ".join(f"{name.replace('_', ' ')} {b / GB:.1f}" for name, b in self.parts.items() if b)
        return f"{self.peak_bytes / GB:.1f} GB = {shown} ({self.phase})"


def training_memory(
    size: str | dict | ModelSize,
    vocab_size: int,
    seq_len: int,
    micro_batch_size: int,
    *,
    workers: int = 1,
    bf16: bool = True,
    on_gpu: bool = True,
    fused: bool | None = None,
    eval_batch_size: int = EvalConfig.batch_size,
    heldout_sequences: int = EvalConfig.heldout_sequences,
    teacher: TeacherFootprint | None = None,
    teacher_top_k: int = Truncation.top_k,
) -> MemoryEstimate:
    """Peak bytes on one device of a run training ``size`` (see the module docstring).

    micro_batch_size: sequences per forward on one worker (the trainer's micro-batch: the
    worker's whole share of the batch when the study sets none). teacher: a KD student's held-out
    teacher, held on the same device for the whole run (None: LM-only, or a teacher unit).
    fused: TrainConfig.fused_loss; None decides as the trainer does (fused on a GPU or when a
    micro-batch's fp32 logits pass core.config.FUSED_LOSS_ABOVE_BYTES).
    """
    s = get_size(size)
    P = param_counts(s, vocab_size).num_params
    V, d, T = int(vocab_size), s.hidden, int(seq_len)
    t = int(micro_batch_size) * T
    if fused is None:
        fused = on_gpu or 4 * t * V > FUSED_LOSS_ABOVE_BYTES
    held = {"weights": 4 * P, "optimizer": 8 * P, "ddp_buckets": 4 * P if workers > 1 else 0}
    if teacher is not None:
        memo = int(heldout_sequences) * T * min(teacher_top_k, V) * 12
        held["teacher"] = teacher.weight_bytes + memo
    if fused:
        chunk_rows = min(max(1, FUSED_CHUNK_LOGITS // V), t)
        loss = chunk_rows * V * 4 * FUSED_LOSS_COPIES + t * d * 4 + V * d * 4
    else:
        loss = t * V * UNFUSED_LOSS_BYTES_PER_LOGIT
    copies = 2 * (matmul_params(s, V) + (0 if fused else V * d)) if bf16 else 0
    step = {"gradients": 4 * P, "weight_copies": copies,
            "activations": activation_bytes(s, t, bf16), "loss": loss}
    opt_step = {"gradients": 4 * P, "step": 4 * P}
    rows = min(eval_batch_size, max(1, EVAL_LOGITS_BYTES // (T * V * 4)))
    evaluation = {"eval_logits": rows * T * V * (10 if on_gpu else 8)
                  + rows * T * activation_bytes_per_token_layer(s, on_gpu)}
    if teacher is not None:
        chunk = _truncation_chunk(rows * T, V, on_gpu)
        evaluation["teacher_eval"] = (rows * T * V * teacher.logit_bytes(on_gpu) + chunk * 4 * TRUNCATION_COPIES
                                      + teacher.forward_copies(on_gpu))
    runtime = {"runtime": RUNTIME_BYTES if on_gpu else 0}
    phases = [("train step", step), ("optimizer step", opt_step), ("evaluation", evaluation)]
    phase, dynamic = max(phases, key=lambda p: sum(p[1].values()))
    parts = {**held, **dynamic, **runtime}
    return MemoryEstimate(sum(parts.values()), parts, phase)


def inference_memory(
    teacher: TeacherFootprint, vocab_size: int, seq_len: int, batch_size: int, *,
    size: str | dict | ModelSize | None = None, on_gpu: bool = True,
) -> MemoryEstimate:
    """Peak bytes on one device of a logits extraction (core.logits_extract): the teacher's
    weights, autocast's bf16 copies of an fp32 teacher's, its (batch, T, V) logits, truncation's
    working set, and (when ``size`` is known) one layer's activations of the no-grad forward."""
    V, T = int(vocab_size), int(seq_len)
    rows = int(batch_size) * T
    chunk = _truncation_chunk(rows, V, on_gpu)
    parts = {
        "weights": teacher.weight_bytes,
        "weight_copies": teacher.forward_copies(on_gpu),
        "activations": rows * activation_bytes_per_token_layer(size, on_gpu) if size is not None else 0,
        "logits": rows * V * teacher.logit_bytes(on_gpu),
        "truncation": chunk * 4 * TRUNCATION_COPIES,
        "runtime": RUNTIME_BYTES if on_gpu else 0,
    }
    return MemoryEstimate(sum(parts.values()), parts, "extraction")
