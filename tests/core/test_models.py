"""Tests for core.models: sizes, parameter counts, building, loading, vocabulary checks."""
import pytest
import torch

from core.models import (
    MODEL_SIZES,
    ModelSize,
    build_model,
    check_vocab_compatible,
    get_size,
    load_pretrained,
    param_counts,
)

torch.set_num_threads(1)


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once


# CPU_SCALE.md, measured with plain scripts at V = 4096: (total, non-embedding) in millions.
@pytest.mark.parametrize(
    "name, total_m, non_embedding_m",
    [("d32l2", 0.155, 0.024), ("d64l3", 0.413, 0.151), ("d128l4", 1.30, 0.78),
     ("d192l6", 3.44, 2.66), ("d256l6", 5.80, 4.75)],
)
def test_cpu_sizes_match_cpu_scale_counts(name, total_m, non_embedding_m):
    counts = param_counts(name, 4096)
    assert round(counts.num_params / 1e6, 3 if total_m < 1 else 2) == total_m
    assert round(counts.num_non_embedding_params / 1e6, 3 if non_embedding_m < 0.5 else 2) == non_embedding_m


@pytest.mark.parametrize(
    "name, billions", [("330M", 0.33), ("670M", 0.67), ("1.9B", 1.9), ("3.8B", 3.8), ("6.8B", 6.8)]
)
def test_paper_sizes_are_near_their_names_at_the_glm4_vocabulary(name, billions):
    total = param_counts(name, 151_552).num_params
    assert abs(total / 1e9 - billions) / billions < 0.03


@pytest.mark.parametrize(
    "size",
    ["d32l2", "d64l3", "d96l3",
     {"name": "gqa-untied", "hidden": 64, "ffn": 96, "layers": 2, "heads": 4, "kv_heads": 2, "tied": False}],
)
def test_formula_matches_an_instantiated_model(size):
    s = get_size(size)
    model = build_model(s, vocab_size=300, seq_len=32, seed=0)
    counts = param_counts(s, 300)
    assert counts.num_params == _numel(model)
    embedding = model.get_input_embeddings().weight.numel()
    head = 0 if s.tied else model.get_output_embeddings().weight.numel()
    assert counts.num_non_embedding_params == _numel(model) - embedding - head


def test_cpu_size_shapes():
    for name in ("d32l2", "d64l3", "d96l3", "d128l4", "d192l6", "d256l6", "d320l8"):
        s = MODEL_SIZES[name]
        assert s.head_dim == 32 and s.heads == s.kv_heads == s.hidden // 32 and s.tied
        assert s.ffn % 16 == 0 and abs(s.ffn - 8 * s.hidden / 3) <= 8
    assert MODEL_SIZES["d128l4"].ffn == 336
    paper = MODEL_SIZES["3.8B"]
    assert (paper.hidden, paper.ffn, paper.layers, paper.heads, paper.kv_heads, paper.tied) == (
        3072, 8192, 28, 24, 8, False)
    assert MODEL_SIZES["330M"].tied and not MODEL_SIZES["670M"].tied


def test_flops_per_token():
    s = MODEL_SIZES["d64l3"]
    counts = param_counts(s, 4096, seq_len=128)
    attention = 6 * s.layers * 128 * s.hidden
    assert counts.flops_per_token == 6 * counts.num_non_embedding_params + attention
    assert param_counts(s, 4096).flops_per_token == 6 * counts.num_non_embedding_params
    assert counts.train_flops(1000) == 1000 * counts.flops_per_token


def test_build_model_config_and_determinism():
    a = build_model("d64l3", vocab_size=300, seq_len=64, seed=3, eos_token_id=0)
    b = build_model("d64l3", vocab_size=300, seq_len=64, seed=3, eos_token_id=0)
    c = build_model("d64l3", vocab_size=300, seq_len=64, seed=4)
    cfg = a.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (300, 64, 176, 3)
    assert cfg.num_attention_heads == cfg.num_key_value_heads == 2 and cfg.max_position_embeddings == 2048
    assert cfg.tie_word_embeddings and cfg.eos_token_id == 0
    assert cfg._attn_implementation in ("sdpa", "eager")
    assert a.lm_head.weight.data_ptr() == a.model.embed_tokens.weight.data_ptr()
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    logits = a(torch.randint(0, 300, (2, 64))).logits
    assert logits.shape == (2, 64, 300)


def test_seeded_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("d32l2", vocab_size=300, seq_len=16, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_untied_model_has_its_own_head():
    s = get_size({"hidden": 64, "ffn": 128, "layers": 1, "heads": 2, "tied": False})
    assert s.name == "d64l1" and s.kv_heads == 2
    model = build_model(s, vocab_size=300, seq_len=16, seed=0)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def test_sequence_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="sequence length 8192 is larger than model d64l3's context of 2048"):
        build_model("d64l3", vocab_size=300, seq_len=8192)


def test_get_size_errors():
    assert get_size("D64L3") is MODEL_SIZES["d64l3"]
    assert get_size(MODEL_SIZES["1.9B"]) is MODEL_SIZES["1.9B"]
    with pytest.raises(ValueError, match="unknown model size 'd64l2'; did you mean d64l3"):
        get_size("d64l2")
    with pytest.raises(ValueError, match="hidden 100 is not divisible by heads 3"):
        get_size({"hidden": 100, "ffn": 64, "layers": 1, "heads": 3})
    with pytest.raises(ValueError, match="heads 4 is not divisible by kv_heads 3"):
        ModelSize("x", 64, 64, 1, 4, 3)
    with pytest.raises(ValueError, match=r"unknown model size field\(s\) \['width'\]"):
        get_size({"width": 64})


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<|endoftext|>", "[UNK]"] + [f"w{i}" for i in range(62)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="[UNK]")


def test_load_pretrained_from_a_local_directory(tmp_path):
    tokenizer = _tiny_tokenizer()
    model = build_model("d32l2", vocab_size=len(tokenizer), seq_len=16, seed=0, eos_token_id=0)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_pretrained(tmp_path, dtype="float32")
    assert not loaded.training and loaded.config.vocab_size == 64
    ids = torch.tensor([loaded_tok("w1 w2 w3 w4").input_ids])
    assert ids.tolist() == [[3, 4, 5, 6]]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    half, _ = load_pretrained(str(tmp_path), dtype=torch.bfloat16)
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_pretrained(tmp_path, dtype="float8")


def test_check_vocab_compatible():
    check_vocab_compatible(4096, 4096)
    check_vocab_compatible(151_552, 151_329)  # GLM-4-9B: padded rows beyond the tokenizer are fine
    with pytest.raises(ValueError, match="the tokenizer has 32000 tokens but the teacher's vocabulary has only "
                                         "4096 rows: token ids would be out of range"):
        check_vocab_compatible(4096, 32000)


def test_model_vocab_size_reads_the_padded_size(tmp_path):
    from transformers import Qwen2Config

    from core.models import model_vocab_size

    Qwen2Config(vocab_size=151_552, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1).save_pretrained(tmp_path)
    assert model_vocab_size(tmp_path) == 151_552
