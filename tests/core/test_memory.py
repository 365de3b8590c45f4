"""core.memory: the peak-memory estimate `pdspace plan` prints, checked against hand calculations,
and its activation constants re-measured on a real Llama decoder (the tensors autograd saves)."""
from __future__ import annotations

import pytest

from core.memory import (EVAL_LOGITS_BYTES, FUSED_CHUNK_LOGITS, RUNTIME_BYTES, activation_bytes_per_token_layer,
                         inference_memory, pretrained_teacher, scratch_teacher, training_memory)

V = 151_552

# The 330M student (hidden 1024, FFN 4096, 12 layers, 16 heads, 2 KV heads of 64, tied), by hand:
LAYER = 2 * 1024 * 1024 + 2 * 1024 * 128 + 3 * 1024 * 4096 + 2 * 1024  # q,o + k,v + MLP + 2 norms
N_330M = 12 * LAYER + 1024  # + final norm = 179,332,096
P_330M = N_330M + V * 1024  # tied embedding = 334,521,344
M_330M = N_330M - 25 * 1024  # matmul weights: no norms
A_330M = 30 * 1024 + 4 * 128 + 8 * 4096 + 4 * 16 + 8  # bytes per token per layer, bf16 = 64,072


def test_330m_student_on_one_gpu_by_hand():
    est = training_memory("330M", V, 4096, 4, workers=1, bf16=True, on_gpu=True, fused=True)
    t = 4 * 4096
    activations = t * (13 * A_330M + 8 * 1024 + 12)  # 12 layers + backward's working one, final norm, ids
    loss = 128 * V * 4 * 3 + t * 1024 * 4 + V * 1024 * 4  # a 128-row chunk x3, hidden and head grads
    assert P_330M == 334_521_344 and A_330M == 64_072
    assert est.phase == "train step"
    assert est.parts == {"weights": 4 * P_330M, "optimizer": 8 * P_330M, "ddp_buckets": 0,
                         "gradients": 4 * P_330M, "weight_copies": 2 * M_330M, "activations": activations,
                         "loss": loss, "runtime": RUNTIME_BYTES}
    assert est.peak_bytes == 21_412_841_984  # 21.4 GB
    assert est.describe().startswith("21.4 GB = weights 1.3 + optimizer 2.7 + gradients 1.3")


def test_ddp_and_a_bf16_teacher_add_their_bytes():
    glm = pretrained_teacher("glm4_9b", {  # THUDM/glm-4-9b-hf's config.json
        "hidden_size": 4096, "num_hidden_layers": 40, "intermediate_size": 13696, "num_attention_heads": 32,
        "num_key_value_heads": 2, "head_dim": 128, "vocab_size": V, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16"})
    layer = 2 * 4096 * 4096 + 2 * 4096 * 256 + 3 * 4096 * 13696 + 2 * 4096
    assert glm.num_params == 40 * layer + 4096 + 2 * V * 4096 and glm.bytes_per_param == 2
    alone = training_memory("330M", V, 4096, 4, workers=1)
    est = training_memory("330M", V, 4096, 4, workers=8, teacher=glm, heldout_sequences=256, teacher_top_k=100)
    memo = 256 * 4096 * 100 * 12  # int64 index + fp32 log-prob per kept entry of the held-out set
    assert est.parts["ddp_buckets"] == 4 * P_330M
    assert est.parts["teacher"] == 2 * glm.num_params + memo
    assert est.peak_bytes == alone.peak_bytes + 4 * P_330M + 2 * glm.num_params + memo


def test_unfused_loss_holds_every_logit():
    fused = training_memory("330M", V, 4096, 2, fused=True)
    unfused = training_memory("330M", V, 4096, 2, fused=False)
    t = 2 * 4096
    assert fused.phase == unfused.phase == "train step"
    assert unfused.parts["loss"] == t * V * 16
    assert unfused.parts["weight_copies"] == 2 * (M_330M + V * 1024)  # the head runs under autocast too
    assert unfused.peak_bytes - fused.peak_bytes == (t * V * 16 + 2 * V * 1024) - fused.parts["loss"]


def test_evaluation_can_be_the_peak():
    """A tiny model with a large vocabulary on CPU: one held-out sequence of fp32 logits (and
    logsumexp's temporary) outweighs the training step."""
    est = training_memory("d32l2", V, 2048, 1, bf16=False, on_gpu=False)
    rows = 1  # EVAL_LOGITS_BYTES (1 GiB) holds less than one sequence of 2048 x V x 4 bytes
    assert 2048 * V * 4 > EVAL_LOGITS_BYTES
    a_fp32 = 32 * 32 + 8 * 32 + 16 * 80 + 4 * 1 + 8  # d32l2: hidden 32, FFN 80, 1 head of 32
    assert activation_bytes_per_token_layer("d32l2", False) == a_fp32
    assert est.phase == "evaluation"
    assert est.parts["eval_logits"] == rows * 2048 * V * 8 + rows * 2048 * a_fp32
    assert "runtime" in est.parts and est.parts["runtime"] == 0 and "gradients" not in est.parts


def test_extraction_of_a_scratch_teacher():
    teacher = scratch_teacher("t", "1.9B", V)
    est = inference_memory(teacher, V, 4096, 4, size="1.9B", on_gpu=True)
    chunk = (1 << 28) // V  # rows per truncation chunk on a GPU
    assert est.parts == {
        "weights": 4 * teacher.num_params, "weight_copies": 2 * teacher.matmul_params,
        "activations": 4 * 4096 * activation_bytes_per_token_layer("1.9B", True),
        "logits": 4 * 4096 * V * 2, "truncation": chunk * V * 4 * 5, "runtime": RUNTIME_BYTES}


def test_pretrained_footprint_counts_a_real_models_parameters():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    fp = pretrained_teacher("llama", config.to_dict())
    assert fp.num_params == sum(p.numel() for p in model.parameters())
    assert pretrained_teacher("odd", {"hidden_size": 64}) is None
    chatglm = pretrained_teacher("glm", {"hidden_size": 64, "num_layers": 3, "ffn_hidden_size": 160,
                                         "num_attention_heads": 4, "multi_query_group_num": 2,
                                         "kv_channels": 16, "padded_vocab_size": 1000, "torch_dtype": "bfloat16"})
    assert chatglm.bytes_per_param == 2 and chatglm.num_params == fp.num_params


def test_the_constants_agree_with_the_code_they_describe():
    import inspect

    from core import evaluation
    from core.fused_loss import DEFAULT_CHUNK_LOGITS

    assert FUSED_CHUNK_LOGITS == DEFAULT_CHUNK_LOGITS
    assert inspect.signature(evaluation.heldout_metrics).parameters["max_logits_bytes"].default == EVAL_LOGITS_BYTES


def _saved_bytes(size: dict, tokens_per_sequence: int, batch: int, bf16: bool) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in a forward to the final norm."""
    import torch

    from core.models import build_model

    model = build_model(size, 1000, tokens_per_sequence, seed=0)
    ids = torch.randint(0, 1000, (batch, tokens_per_sequence))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model.model(input_ids=ids)
    return sum(seen.values())


@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize("shape", [(128, 384, 4, 2), (192, 256, 6, 6)])
def test_activation_constants_match_what_autograd_saves(shape, bf16):
    """Two layer counts and two batch sizes: the per-token-per-layer slope is the formula's `a`
    exactly, the per-token rest (final norm, token ids) 8·d + 12; what does not grow with tokens
    (autocast's bf16 weight copies) cancels."""
    import torch

    torch.set_num_threads(1)
    hidden, ffn, heads, kv_heads = shape
    T = 32
    saved = {}
    for layers in (1, 2):
        size = dict(hidden=hidden, ffn=ffn, layers=layers, heads=heads, kv_heads=kv_heads)
        for batch in (1, 3):
            saved[layers, batch] = _saved_bytes(size, T, batch, bf16)
    extra_tokens = 2 * T
    per_layer = ((saved[2, 3] - saved[2, 1]) - (saved[1, 3] - saved[1, 1])) / extra_tokens
    rest = (saved[1, 3] - saved[1, 1]) / extra_tokens - per_layer
    size = dict(hidden=hidden, ffn=ffn, layers=1, heads=heads, kv_heads=kv_heads)
    assert per_layer == activation_bytes_per_token_layer(size, bf16)
    assert rest == 8 * hidden + 12


def test_fused_none_decides_as_the_trainer():
    """TrainConfig.fused_loss = None: fused on a GPU, or on CPU once a micro-batch's fp32 logits pass
    FUSED_LOSS_ABOVE_BYTES (256 MiB); the reference path otherwise."""
    def loss(vocab, micro, **kw):
        est = training_memory("d64l3", vocab, 128, micro, bf16=False, eval_batch_size=1, **kw)
        assert est.phase == "train step"
        return est.parts["loss"]

    assert loss(V, 1, on_gpu=True) == loss(V, 1, on_gpu=True, fused=True)  # 74 MiB of logits, on a GPU
    assert loss(4096, 16, on_gpu=False) == loss(4096, 16, on_gpu=False, fused=False) == 16 * 128 * 4096 * 16
    assert loss(V, 4, on_gpu=False) == loss(V, 4, on_gpu=False, fused=True) != loss(V, 4, on_gpu=False, fused=False)
