"""A pretrained teacher with a padded vocabulary, end to end: a tiny Qwen2 model (hidden 32, one
layer, V = 151,552 embedding rows) saved with save_pretrained next to a tokenizer of 512 tokens,
through `pdspace run`: the data tokenized with the teacher's tokenizer, a logits store at
V = 151,552 (ids >= 65,536: 18-bit indices), KD students and their baselines built with the
teacher's padded vocabulary, results in the database."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from cli.main import run_and_summarise
from core.config import DataSpec
from core.data import prepare_data
from orchestrator.study import validate_study
from results import load_results

pytestmark = pytest.mark.slow

V = 151_552  # GLM-4-9B's padded vocabulary


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("qwen")
    data = prepare_data(DataSpec(vocab_size=512, seq_len=32, max_corpus_bytes=200_000), root / "tok")
    out = root / "tiny-qwen2"
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=data.eos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(out)
    for f in (data.path / "tokenizer").iterdir():
        shutil.copy(f, out / f.name)
    return out


def test_padded_vocabulary_teacher_through_pdspace_run(teacher_dir, tmp_path, capsys):
    study = validate_study({
        "data": {"tokenizer": str(teacher_dir), "seq_len": 32, "max_corpus_bytes": 200_000},
        "teachers": {"qwen": {"pretrained": str(teacher_dir)}},
        "base": {"student": "d32l2", "teacher": "qwen", "tokens": 8 * 32 * 6, "batch_size": 8,
                 "kd": {"top_k": 20}},
        "seeds": [0],
        "eval": {"heldout_sequences": 4, "builtin_tasks": [], "every_tokens": 8 * 32 * 3},
        "resources": {"max_concurrent": 2, "max_retries": 0},
    }, name="padded")
    db = f"sqlite:///{tmp_path / 'pd.db'}"
    code = run_and_summarise([study], db_url=db, artifacts=tmp_path / "artifacts", quiet=True, report=False)
    out = capsys.readouterr().out
    assert code == 0, out
    res = load_results(db, "padded")
    runs = res.runs.set_index("kind")
    assert set(res.runs["status"]) == {"completed"} and {"logits", "student", "baseline"} <= set(runs.index)
    # the store holds the teacher's vocabulary, ids beyond 16 bits included
    from core.logits import LogitsStore

    [store_dir] = (tmp_path / "artifacts" / "logits").glob("*/store")
    store = LogitsStore.open(store_dir)
    store.verify()
    assert store.vocab_size == V
    batch = store.batch([0, 1])
    assert int(batch.indices.max()) >= 1 << 16
    # students and baselines are built with V rows (the tokenizer has 512 tokens)
    for kind in ("student", "baseline"):
        run_dir = tmp_path / "artifacts" / "runs" / runs.loc[kind, "config_hash"] / "export"
        assert json.loads((run_dir / "config.json").read_text())["vocab_size"] == V
    finals = res.metrics[(res.metrics["name"] == "val_loss")].groupby("run_id")["value"].last()
    assert len(finals) >= 2 and finals.notna().all()
