"""Tests for core.data: corpus sources, tokenizer, packing, manifest, reuse and concurrency."""
import json
import multiprocessing as mp
import pickle
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import core.data as data_mod
from core.data import DataSpec, PackedData, corpus_fingerprint, data_hash, document_split, prepare_data, tokenizer_hash

torch.set_num_threads(1)

WORDS = (
    "def class return import from self value index token model teacher student loss alpha "
    "batch sequence logits vocab layer hidden train eval data file open read write list dict "
    "for while if else elif try except with yield lambda none true false print len range"
).split()


def _write_corpus(folder: Path, num_docs: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_docs):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(40)]
        (folder / f"doc_{i:03d}.txt").write_text(f"# document {i}\n" + "\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus") / "texts")


@pytest.fixture(scope="module")
def small_spec(corpus_dir) -> DataSpec:
    return DataSpec(source=str(corpus_dir), vocab_size=320, seq_len=16, val_fraction=0.2)


@pytest.fixture(scope="module")
def packed(small_spec, tmp_path_factory) -> PackedData:
    return prepare_data(small_spec, tmp_path_factory.mktemp("root"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seq_len": 4}, "seq_len must be >= 8 (got 4)"),
        ({"vocab_size": 200}, "vocab_size must be >= 257"),
        ({"val_fraction": 0.0}, "val_fraction must be in (0, 1)"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"max_train_tokens": 0}, "max_train_tokens must be >= 1"),
        ({"source": ""}, "source must be a non-empty string"),
    ],
)
def test_spec_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DataSpec(**kwargs)


def test_spec_from_dict_is_strict():
    assert DataSpec.from_dict({"seq_len": 64}).seq_len == 64
    with pytest.raises(ValueError, match="seqlen is not a setting of DataSpec"):
        DataSpec.from_dict({"seqlen": 64})


def test_artifact_layout_and_manifest(packed, small_spec):
    assert packed.path.name == data_hash(small_spec) == packed.hash
    for name in ("manifest.json", "train.bin", "val.bin", "val_docs.jsonl", "tokenizer/tokenizer.json"):
        assert (packed.path / name).exists(), name
    m = packed.manifest
    assert m["spec"] == small_spec.to_dict()
    assert m["seq_len"] == 16 and m["vocab_size"] == 320 == packed.vocab_size
    assert m["dtype"] == "uint16"
    assert m["corpus"]["num_files"] == 40 and len(m["corpus"]["sha256"]) == 64
    assert m["tokenizer_hash"] == packed.tokenizer_hash == tokenizer_hash(packed.path / "tokenizer")
    assert m["splits"]["train"]["num_documents"] + m["splits"]["val"]["num_documents"] == 40
    for split in ("train", "val"):
        s = m["splits"][split]
        assert s["num_tokens"] == len(packed.stream(split)) == packed.num_tokens(split)
        assert s["num_sequences"] == (s["num_tokens"] - 1) // 16 == packed.num_sequences(split)
    assert packed.tokenizer.eos_token == "<|endoftext|>"
    assert packed.eos_token_id == packed.tokenizer.eos_token_id


def test_sequences_share_one_boundary_token_and_cover_every_target(packed):
    T = packed.seq_len
    n = packed.num_sequences("train")
    seqs = packed.sequences("train", np.arange(n))
    assert seqs.shape == (n, T + 1) and seqs.dtype == np.int64
    np.testing.assert_array_equal(seqs[:-1, -1], seqs[1:, 0])
    stream = np.asarray(packed.stream("train"), dtype=np.int64)
    np.testing.assert_array_equal(seqs[:, 1:].reshape(-1), stream[1 : n * T + 1])
    inputs, labels = packed.batch("validation", [1, 0])
    assert inputs.shape == labels.shape == (2, T) and inputs.dtype == labels.dtype == torch.int64
    val = packed.sequences("val", [1, 0])
    assert torch.equal(inputs, torch.from_numpy(val[:, :-1]))
    assert torch.equal(labels, torch.from_numpy(val[:, 1:]))
    with pytest.raises(IndexError, match="sequence ids must lie in"):
        packed.sequences("train", [n])
    with pytest.raises(ValueError, match="unknown split"):
        packed.num_sequences("test")


def test_streams_decode_to_documents_separated_by_eos(packed, corpus_dir):
    tok = packed.tokenizer
    val_stream = np.asarray(packed.stream("val"), dtype=np.int64)
    docs = [d for d in tok.decode(val_stream.tolist()).split("<|endoftext|>") if d]
    assert docs == packed.validation_texts()
    names = [d["name"] for d in packed.validation_documents()]
    assert all(document_split(name, 0.2) == "val" for name in names)
    assert [(corpus_dir / n).read_text() for n in names] == packed.validation_texts()
    train_text = tok.decode(np.asarray(packed.stream("train"), dtype=np.int64).tolist())
    for text in packed.validation_texts():
        assert text not in train_text


def test_same_spec_is_deterministic_across_roots(small_spec, packed, tmp_path):
    again = prepare_data(DataSpec(**small_spec.to_dict()), tmp_path)
    assert again.hash == packed.hash and again.path != packed.path
    for name in ("train.bin", "val.bin", "val_docs.jsonl", "tokenizer/tokenizer.json"):
        assert (again.path / name).read_bytes() == (packed.path / name).read_bytes(), name


def test_existing_artifact_is_returned_without_rebuilding(small_spec, packed, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt an existing artifact")

    monkeypatch.setattr(data_mod, "_build", fail)
    start = time.perf_counter()
    again = prepare_data(small_spec, packed.path.parent.parent)
    assert again.path == packed.path
    assert time.perf_counter() - start < 1.0


def test_hash_follows_corpus_content_and_spec(tmp_path):
    folder = _write_corpus(tmp_path / "c", num_docs=5)
    spec = DataSpec(source=str(folder), vocab_size=300, seq_len=16)
    before = data_hash(DataSpec(**spec.to_dict()))
    assert data_hash(DataSpec(**spec.to_dict())) == before
    assert data_hash(DataSpec(**{**spec.to_dict(), "seq_len": 32})) != before
    (folder / "doc_002.txt").write_text("changed content\n")
    assert data_hash(DataSpec(**spec.to_dict())) != before


def test_losing_a_preparation_race_uses_the_winner(small_spec, tmp_path, monkeypatch):
    real_build = data_mod._build
    winner = {}

    def build_then_lose(spec, spec_hash, corpus, out):
        manifest = real_build(spec, spec_hash, corpus, out)
        monkeypatch.setattr(data_mod, "_build", real_build)
        winner["data"] = prepare_data(spec, tmp_path)  # another "process" finishes first
        return manifest

    monkeypatch.setattr(data_mod, "_build", build_then_lose)
    data = prepare_data(small_spec, tmp_path)
    assert data.path == winner["data"].path
    assert [p.name for p in (tmp_path / "data").iterdir()] == [data_hash(small_spec)]


def _prepare_in_child(spec_dict, root, barrier, queue):
    barrier.wait()
    queue.put(str(prepare_data(DataSpec(**spec_dict), root).path))


def test_two_processes_preparing_the_same_data(small_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_prepare_in_child, args=(small_spec.to_dict(), str(tmp_path), barrier, queue))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    paths = {queue.get(timeout=5), queue.get(timeout=5)}
    assert paths == {str(tmp_path / "data" / data_hash(small_spec))}
    assert [p.name for p in (tmp_path / "data").iterdir()] == [data_hash(small_spec)]
    data = PackedData(paths.pop())
    assert data.num_sequences("train") > 0 and len(data.stream("train")) == data.num_tokens("train")


def test_max_train_tokens_caps_the_train_stream(corpus_dir, tmp_path, packed):
    spec = DataSpec(source=str(corpus_dir), vocab_size=320, seq_len=16, val_fraction=0.2,
                    max_train_tokens=160)
    data = prepare_data(spec, tmp_path)
    assert data.num_tokens("train") == 161 and data.num_sequences("train") == 10
    assert data.manifest["splits"]["train"]["truncated"] is True
    np.testing.assert_array_equal(data.stream("train"), packed.stream("train")[:161])
    np.testing.assert_array_equal(data.stream("val"), packed.stream("val"))


def test_max_documents_and_bytes_select_a_prefix(corpus_dir):
    spec = DataSpec(source=str(corpus_dir), max_documents=7)
    assert corpus_fingerprint(spec)["num_files"] == 7
    size = (corpus_dir / "doc_000.txt").stat().st_size
    assert corpus_fingerprint(DataSpec(source=str(corpus_dir), max_corpus_bytes=size))["num_files"] == 1
    assert corpus_fingerprint(DataSpec(source=str(corpus_dir), max_corpus_bytes=1))["num_files"] == 1


def test_glob_and_missing_sources(corpus_dir, tmp_path):
    assert corpus_fingerprint(DataSpec(source=str(corpus_dir / "doc_00*.txt")))["num_files"] == 10
    pattern = str(tmp_path / "nothing" / "*.jsonl")
    with pytest.raises(ValueError, match="matches no files") as err:
        data_hash(DataSpec(source=pattern))
    assert pattern in str(err.value)
    with pytest.raises(ValueError, match="is not builtin:python-stdlib, hf:<name>, nor an existing"):
        data_hash(DataSpec(source=str(tmp_path / "missing.txt")))
    with pytest.raises(ValueError, match="unknown builtin corpus"):
        data_hash(DataSpec(source="builtin:nope"))


def _records(n=60, seed=1):
    rng = random.Random(seed)
    return [
        {"id": i, "body": "\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(8))}
        for i in range(n)
    ]


def test_jsonl_and_parquet_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = _records()
    folder = tmp_path / "recs"
    folder.mkdir()
    with open(folder / "a.jsonl", "w") as f:
        for r in records[:30]:
            f.write(json.dumps(r) + "\n")
    pq.write_table(pa.Table.from_pylist(records[30:]), folder / "b.parquet")
    spec = DataSpec(source=str(folder), text_field="body", vocab_size=300, seq_len=16, val_fraction=0.2)
    data = prepare_data(spec, tmp_path / "root")
    splits = data.manifest["splits"]
    assert splits["train"]["num_documents"] + splits["val"]["num_documents"] == 60
    texts = data.validation_texts()
    assert texts and all(document_split(t, 0.2) == "val" for t in texts)
    assert set(texts) <= {r["body"] for r in records}
    with pytest.raises(ValueError, match=r"a.jsonl:1: record has no field 'text'"):
        prepare_data(DataSpec(source=str(folder / "a.jsonl")), tmp_path / "root")
    with pytest.raises(ValueError, match="no column 'text'"):
        prepare_data(DataSpec(source=str(folder / "b.parquet")), tmp_path / "root")


def test_hf_source_from_local_files_and_saved_dataset(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    records = _records(40, seed=2)
    folder = tmp_path / "hf_json"
    folder.mkdir()
    with open(folder / "train.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps({"text": r["body"]}) + "\n")
    spec = DataSpec(source=f"hf:{folder}", vocab_size=300, seq_len=16, val_fraction=0.2)
    from_files = prepare_data(spec, tmp_path / "root")

    saved = tmp_path / "hf_saved"
    datasets.Dataset.from_list([{"text": r["body"]} for r in records]).save_to_disk(str(saved))
    from_disk = prepare_data(DataSpec(**{**spec.to_dict(), "source": f"hf:{saved}"}), tmp_path / "root")
    # Same documents in the same order: identical streams and tokenizers, different artifacts.
    assert from_files.hash != from_disk.hash
    assert from_files.tokenizer_hash == from_disk.tokenizer_hash
    np.testing.assert_array_equal(from_files.stream("train"), from_disk.stream("train"))
    with pytest.raises(ValueError, match="no column 'body'"):
        prepare_data(DataSpec(**{**spec.to_dict(), "text_field": "body"}), tmp_path / "root")


def test_external_tokenizer_directory(packed, corpus_dir, tmp_path):
    spec = DataSpec(source=str(corpus_dir), tokenizer=str(packed.path / "tokenizer"), seq_len=16,
                    val_fraction=0.2)
    data = prepare_data(spec, tmp_path)
    assert data.tokenizer_hash == packed.tokenizer_hash
    assert data.hash != packed.hash
    np.testing.assert_array_equal(data.stream("train"), packed.stream("train"))
    assert data_hash(DataSpec(**{**spec.to_dict(), "vocab_size": 999})) == data.hash


def test_large_vocabulary_uses_uint32(corpus_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    vocab.update({f"extra{i}": len(vocab) + i for i in range(70_000 - len(vocab))})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="[UNK]")
    wrapped.save_pretrained(str(tmp_path / "big_tok"))
    spec = DataSpec(source=str(corpus_dir), tokenizer=str(tmp_path / "big_tok"), seq_len=16,
                    val_fraction=0.2)
    data = prepare_data(spec, tmp_path / "root")
    assert data.vocab_size == 70_000 and data.manifest["dtype"] == "uint32"
    assert data.stream("train").dtype == np.uint32
    assert data.sequences("train", [0]).max() < 70_000


def test_too_few_tokens_for_a_validation_sequence(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text("x")
    with pytest.raises(ValueError, match="split holds .* tokens, fewer than one sequence"):
        prepare_data(DataSpec(source=str(folder), seq_len=8, vocab_size=300), tmp_path / "root")


def test_packed_data_pickles_and_reopens(packed):
    copy = pickle.loads(pickle.dumps(packed))
    assert copy.hash == packed.hash
    np.testing.assert_array_equal(copy.sequences("train", [3]), packed.sequences("train", [3]))
    assert PackedData.open(packed.path).manifest == packed.manifest
    with pytest.raises(ValueError, match="not a prepared data artifact"):
        PackedData(packed.path / "tokenizer")


@pytest.mark.slow
def test_builtin_stdlib_subset_split_is_deterministic(tmp_path):
    spec = DataSpec(max_corpus_bytes=400_000, vocab_size=400, seq_len=32, val_fraction=0.2)
    fp = corpus_fingerprint(spec)
    assert fp["kind"] == "builtin:python-stdlib" and fp["python_version"] and fp["num_files"] > 5
    first = prepare_data(spec, tmp_path / "a")
    second = prepare_data(DataSpec(**spec.to_dict()), tmp_path / "b")
    assert first.hash == second.hash
    assert first.validation_documents() == second.validation_documents()
    assert (first.path / "train.bin").read_bytes() == (second.path / "train.bin").read_bytes()
    names = [d["name"] for d in first.validation_documents()]
    assert names and all(n.endswith(".py") and document_split(n, 0.2) == "val" for n in names)
    assert not any("site-packages" in n for n in names)
    train_text = first.tokenizer.decode(np.asarray(first.stream("train"), dtype=np.int64).tolist())
    for text in first.validation_texts():
        if len(text) > 200:
            assert text not in train_text
    # A document's split depends on its path only: a larger subset keeps the earlier val files.
    bigger = prepare_data(DataSpec(**{**spec.to_dict(), "max_corpus_bytes": 800_000}), tmp_path / "a")
    bigger_names = [d["name"] for d in bigger.validation_documents()]
    assert set(names) <= set(bigger_names)


def test_documents_are_packed_in_a_shuffled_order(tmp_path):
    """A contiguous range of sequences samples the whole corpus, not its first files."""
    from core.data import PACK_BUCKETS, pack_bucket

    spec = DataSpec(vocab_size=300, seq_len=16, max_corpus_bytes=300_000, val_fraction=0.4)
    packed = prepare_data(spec, tmp_path)
    names = [d["name"] for d in packed.validation_documents()]
    assert len(names) >= 5
    buckets = [pack_bucket(n) for n in names]
    assert buckets == sorted(buckets) and 0 <= min(buckets) and max(buckets) < PACK_BUCKETS
    assert names != sorted(names)  # not alphabetical (corpus) order
