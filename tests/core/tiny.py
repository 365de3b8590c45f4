"""A tiny Llama for the store and loss tests (built from transformers directly, no core.models)."""
from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(vocab_size: int, seq_len: int) -> LlamaForCausalLM:
    """One layer, hidden 32, two heads, one KV head; in eval mode. Seed torch before calling."""
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=seq_len)
    return LlamaForCausalLM(config).eval()
