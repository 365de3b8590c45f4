"""Model sizes and their parameter and FLOP counts, computed without building a model (no torch).

Sizes: the paper's five students (Peng et al. 2025, Table "student architectures", GQA) and
CPU-sized ones named ``d<hidden>l<layers>`` (head size 32, heads = kv_heads = hidden / 32,
FFN = 8·hidden/3 rounded to the nearest multiple of 16, tied embeddings), whose counts match
CPU_SCALE.md (d64l3 at V = 4096: 0.413M total, 0.151M non-embedding).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

# Context length of the paper's students (their batches are 2048 x 4096-token sequences).
PAPER_MAX_SEQ_LEN = 4096
CPU_MAX_SEQ_LEN = 2048


@dataclass(frozen=True)
class ModelSize:
    """A Llama-style decoder shape. ``ffn`` is the SwiGLU MLP's hidden size."""

    name: str
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool = True
    max_seq_len: int = CPU_MAX_SEQ_LEN

    def __post_init__(self) -> None:
        for f in ("hidden", "ffn", "layers", "heads", "kv_heads", "max_seq_len"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model size {self.name!r}: {f} must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(
                f"model size {self.name!r}: hidden {self.hidden} is not divisible by heads {self.heads}"
            )
        if self.heads % self.kv_heads:
            raise ValueError(
                f"model size {self.name!r}: heads {self.heads} is not divisible by kv_heads {self.kv_heads}"
            )
        if not isinstance(self.tied, bool):
            raise ValueError(f"model size {self.name!r}: tied must be true or false, got {self.tied!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _cpu_size(hidden: int, layers: int) -> ModelSize:
    ffn = 16 * round(8 * hidden / 3 / 16)
    heads = hidden // 32
    return ModelSize(f"d{hidden}l{layers}", hidden, ffn, layers, heads, heads, True, CPU_MAX_SEQ_LEN)


_PAPER_SIZES = [
    ModelSize("330M", 1024, 4096, 12, 16, 2, True, PAPER_MAX_SEQ_LEN),
    ModelSize("670M", 1024, 4096, 24, 16, 2, False, PAPER_MAX_SEQ_LEN),
    ModelSize("1.9B", 2048, 6912, 24, 16, 2, False, PAPER_MAX_SEQ_LEN),
    ModelSize("3.8B", 3072, 8192, 28, 24, 8, False, PAPER_MAX_SEQ_LEN),
    ModelSize("6.8B", 4096, 12800, 28, 32, 8, False, PAPER_MAX_SEQ_LEN),
]
_CPU_SIZES = [_cpu_size(d, l) for d, l in [(32, 2), (64, 3), (96, 3), (128, 4), (192, 6), (256, 6), (320, 8)]]
MODEL_SIZES: dict[str, ModelSize] = {s.name: s for s in _PAPER_SIZES + _CPU_SIZES}


def get_size(size: str | dict | ModelSize) -> ModelSize:
    """A named size (exact, then case-insensitive), a dict of ModelSize fields, or a ModelSize.

    A dict without ``name`` is named ``d<hidden>l<layers>``; unknown keys are an error.
    """
    if isinstance(size, ModelSize):
        return size
    if isinstance(size, dict):
        names = [f.name for f in dataclasses.fields(ModelSize)]
        unknown = sorted(set(size) - set(names))
        if unknown:
            raise ValueError(f"unknown model size field(s) {unknown}; expected some of {names}")
        missing = sorted({"hidden", "ffn", "layers", "heads"} - set(size))
        if missing:
            raise ValueError(f"custom model size is missing {missing}")
        fields = dict(size)
        fields.setdefault("kv_heads", fields["heads"])
        fields.setdefault("name", f"d{fields['hidden']}l{fields['layers']}")
        return ModelSize(**fields)
    if isinstance(size, str):
        if size in MODEL_SIZES:
            return MODEL_SIZES[size]
        lowered = {k.lower(): v for k, v in MODEL_SIZES.items()}
        if size.lower() in lowered:
            return lowered[size.lower()]
        close = difflib.get_close_matches(size, list(MODEL_SIZES), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model size {size!r}{hint} (known: {', '.join(MODEL_SIZES)})")
    raise ValueError(f"a model size is a name, a dict or a ModelSize, got {type(size).__name__}")


@dataclass(frozen=True)
class ParamCounts:
    """Parameter and compute counts of a size at a vocabulary (and sequence length).

    num_params: every parameter (the tied lm_head counted once).
    num_non_embedding_params: N, without the input embedding and the (untied) lm_head.
    flops_per_token: training FLOPs per token, Kaplan et al. 2020 (Table 1) style:
        6·N  +  6·layers·seq_len·(heads·head_dim)
      i.e. 3 x (forward 2·N for the matmuls + 2·layers·T·d_attn for QK^T and AV), not halved for
      the causal mask; the embedding lookup and the unembedding matmul are not counted, as in
      Kaplan (for tiny models with a large vocabulary the unembedding, 6·V·d per token, is the
      bigger part of the real cost). Without seq_len the attention term is 0.
    """

    num_params: int
    num_non_embedding_params: int
    flops_per_token: int
    seq_len: int | None = None

    def train_flops(self, tokens: int) -> int:
        """Training FLOPs for ``tokens`` tokens (forward + backward)."""
        return self.flops_per_token * int(tokens)


def param_counts(size: str | dict | ModelSize, vocab_size: int, seq_len: int | None = None) -> ParamCounts:
    """Counts for a LlamaForCausalLM of ``size`` (no biases, RMSNorm), computed without building it."""
    s = get_size(size)
    q_and_o = 2 * s.hidden * s.heads * s.head_dim
    k_and_v = 2 * s.hidden * s.kv_heads * s.head_dim
    mlp = 3 * s.hidden * s.ffn  # gate, up, down
    norms = 2 * s.hidden
    non_embedding = s.layers * (q_and_o + k_and_v + mlp + norms) + s.hidden  # + final norm
    embedding = vocab_size * s.hidden * (1 if s.tied else 2)
    attention = 6 * s.layers * seq_len * s.heads * s.head_dim if seq_len else 0
    return ParamCounts(
        num_params=non_embedding + embedding,
        num_non_embedding_params=non_embedding,
        flops_per_token=6 * non_embedding + attention,
        seq_len=seq_len,
    )
