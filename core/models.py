"""Llama-style causal LMs built from a named size (core.sizes), and pretrained loading."""
from __future__ import annotations

import os
from typing import Any

import torch

from core.sizes import (  # noqa: F401 - re-exported
    CPU_MAX_SEQ_LEN, MODEL_SIZES, PAPER_MAX_SEQ_LEN, ModelSize, ParamCounts, get_size, param_counts,
)


def llama_config(size: str | dict | ModelSize, vocab_size: int, seq_len: int, **overrides: Any):
    """The ``LlamaConfig`` of a size; ``overrides`` go straight to LlamaConfig (token ids etc.)."""
    from transformers import LlamaConfig

    s = get_size(size)
    if seq_len > s.max_seq_len:
        raise ValueError(
            f"sequence length {seq_len} is larger than model {s.name}'s context of {s.max_seq_len}"
        )
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=s.hidden,
        intermediate_size=s.ffn,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        head_dim=s.head_dim,
        max_position_embeddings=max(seq_len, s.max_seq_len),
        tie_word_embeddings=s.tied,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def build_model(
    size: str | dict | ModelSize,
    vocab_size: int,
    seq_len: int,
    seed: int | None = None,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
):
    """A freshly initialised ``LlamaForCausalLM`` (fp32, CPU, SDPA attention).

    With ``seed`` the initialisation is deterministic and leaves the global RNG untouched.
    Token ids go into the config so an exported model generates and pads like its tokenizer.
    Raises ValueError if ``seq_len`` exceeds the size's context.
    """
    from transformers import LlamaForCausalLM

    config = llama_config(
        size, vocab_size, seq_len,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
    )
    has_sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    config._attn_implementation = "sdpa" if has_sdpa else "eager"
    if seed is None:
        return LlamaForCausalLM(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def inference_autocast(model: torch.nn.Module, device: str | torch.device | None = None):
    """bf16 autocast for a forward of an fp32 model on CUDA (teachers, extraction, evaluation);
    nothing on CPU or for a model already in bf16/fp16. The caller computes losses in fp32."""
    import contextlib

    param = next(model.parameters(), None)
    if param is None:
        return contextlib.nullcontext()
    device = torch.device(device) if device is not None else param.device
    if device.type == "cuda" and param.dtype == torch.float32:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def output_vocab_size(model: torch.nn.Module) -> int | None:
    """Logits per position of a causal LM: its output layer's rows (padding included), else its
    config's vocab_size; None when it has neither."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if size is not None else None


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(names)}")
    return names[dtype]


def load_pretrained(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", dtype=None):
    """(model, tokenizer) of a Hugging Face causal LM (hub id or local dir), model in eval mode.

    ``dtype``: None keeps the checkpoint's dtype; else a torch.dtype or "float32"/"bfloat16"/....
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = os.fspath(name_or_path)
    torch_dtype = _resolve_dtype(dtype)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype if torch_dtype else "auto")
    model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(name)
    return model, tokenizer


def model_vocab_size(name_or_path: str | os.PathLike) -> int:
    """Rows of a pretrained model's embedding (its config's ``vocab_size``), read without loading
    the weights. Padded: GLM-4-9B has 151,552 rows for a tokenizer of ~151,3xx tokens, Qwen2.5
    151,936 for ~151,6xx; students of such a teacher are built with this size."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(os.fspath(name_or_path))
    size = getattr(config, "padded_vocab_size", None) or getattr(config, "vocab_size", None)
    if not size:
        raise ValueError(f"model {os.fspath(name_or_path)!r} has no vocab_size in its config")
    return int(size)


def check_vocab_compatible(model_vocab: int, num_tokens: int, *, model: str = "the teacher") -> None:
    """Raise ValueError unless every token id of a tokenizer of ``num_tokens`` ids has a row in a
    model whose vocabulary (embedding rows, padding included) is ``model_vocab``."""
    if int(num_tokens) > int(model_vocab):
        raise ValueError(
            f"the tokenizer has {num_tokens} tokens but {model}'s vocabulary has only {model_vocab} rows: "
            f"token ids would be out of range (use the model's own tokenizer as data.tokenizer)"
        )


__all__ = [
    "ModelSize", "MODEL_SIZES", "ParamCounts", "get_size", "param_counts", "llama_config",
    "build_model", "load_pretrained", "check_vocab_compatible", "model_vocab_size", "inference_autocast",
    "output_vocab_size",
]
