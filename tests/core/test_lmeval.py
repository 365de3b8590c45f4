"""Tests of core.lmeval: built-in offline tasks, lm-eval in process and on the command line, task checks."""
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core import lmeval
from core.lmeval import (
    BUILTIN_CHANCE,
    BUILTIN_TASK_NAMES,
    build_builtin_tasks,
    check_tasks_available,
    lm_eval_command,
    run_lm_eval,
)

torch.set_num_threads(1)
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Held-out documents for the tasks, and other files to train the test tokenizer on.
VAL_FILES = ["bisect.py", "calendar.py", "colorsys.py", "copy.py", "csv.py", "fnmatch.py",
             "functools.py", "glob.py", "heapq.py", "numbers.py", "queue.py", "random.py",
             "sched.py", "shlex.py", "statistics.py", "textwrap.py"]
TOKENIZER_FILES = ["argparse.py", "os.py", "posixpath.py", "string.py", "tempfile.py"]
NUM_EXAMPLES = 200


def _read(names):
    return [(STDLIB / n).read_text(encoding="utf-8") for n in names if (STDLIB / n).is_file()]


class TextData:
    """A stand-in for PackedData: held-out documents as text."""

    def __init__(self, texts):
        self.texts = list(texts)

    def validation_texts(self):
        return list(self.texts)


def make_tokenizer(vocab_size=512):
    """A small byte-level BPE tokenizer like the data unit's: <|endoftext|> is bos and eos; no pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_read(TOKENIZER_FILES), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>")


def make_model(vocab_size, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=True,
                      bos_token_id=0, eos_token_id=0)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def data():
    return TextData(_read(VAL_FILES))


@pytest.fixture(scope="module")
def built(data, tmp_path_factory):
    return build_builtin_tasks(data, tmp_path_factory.mktemp("tasks"), seed=0,
                               num_examples=NUM_EXAMPLES)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def rows_of(built, task):
    with open(Path(built.include_path) / f"{task}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------ generation


def test_builtin_tasks_are_content_addressed(data, built, tmp_path, monkeypatch):
    assert built.task_names == BUILTIN_TASK_NAMES
    assert built.seed == 0 and built.num_examples == (NUM_EXAMPLES, NUM_EXAMPLES)
    manifest = json.loads((Path(built.include_path) / "manifest.json").read_text())
    assert manifest["data_hash"] == built.data_hash and manifest["seed"] == 0

    # Same inputs elsewhere: byte-identical files, same hash.
    again = build_builtin_tasks(data, tmp_path, seed=0, num_examples=NUM_EXAMPLES)
    assert again.data_hash == built.data_hash
    assert Path(again.include_path).name == Path(built.include_path).name
    for task in BUILTIN_TASK_NAMES:
        for ext in ("jsonl", "yaml"):
            name = f"{task}.{ext}"
            assert (Path(again.include_path) / name).read_bytes() == \
                (Path(built.include_path) / name).read_bytes()

    # A complete folder is found, not regenerated.
    def fail(*args, **kwargs):
        raise AssertionError("regenerated existing tasks")

    monkeypatch.setattr(lmeval, "_nextline_examples", fail)
    assert build_builtin_tasks(data, tmp_path, seed=0, num_examples=NUM_EXAMPLES) == again
    monkeypatch.undo()

    # Another seed: other examples, another folder and hash.
    other = build_builtin_tasks(data, tmp_path, seed=1, num_examples=NUM_EXAMPLES)
    assert other.data_hash != built.data_hash and other.include_path != again.include_path


def test_altered_task_file_is_regenerated(data, tmp_path):
    first = build_builtin_tasks(data, tmp_path, seed=0, num_examples=40)
    path = Path(first.include_path) / "pdspace_cloze.jsonl"
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    second = build_builtin_tasks(data, tmp_path, seed=0, num_examples=40)
    assert second == first and path.read_bytes() == original


def test_too_little_held_out_text_is_refused(tmp_path):
    with pytest.raises(ValueError, match="distinct documents"):
        build_builtin_tasks(TextData(_read(VAL_FILES[:3])), tmp_path, num_examples=8)


@pytest.mark.parametrize("task", BUILTIN_TASK_NAMES)
def test_examples_are_whole_groups_of_four_from_four_documents(built, task):
    rows = rows_of(built, task)
    assert len(rows) == NUM_EXAMPLES
    for g in range(0, len(rows), 4):
        group = rows[g : g + 4]
        assert len({r["group"] for r in group}) == 1
        assert len({r["doc"] for r in group}) == 4  # distractors come from other documents
        assert all(r["choices"] == group[0]["choices"] for r in group)
        assert len(set(group[0]["choices"])) == 4
        assert sorted(r["label"] for r in group) == [0, 1, 2, 3]  # each answer right once
        assert all(r["context"].strip() for r in group)


def _ends_a_unit(text, prefix):
    """Whether ``prefix`` occurs in ``text`` followed by whitespace, closing punctuation or the end."""
    return re.search(re.escape(prefix) + r"""[.,;:!?)\]}"']{0,2}(\s|$)""", text) is not None


def check_nextline(texts, rows):
    # Units as documented: lines, and the sentences of lines longer than MAX_LINE_CHARS.
    all_units = [u.strip() for t in texts for line in t.split("\n")
                 for u in ([line] if len(line.rstrip()) <= lmeval.MAX_LINE_CHARS
                           else re.split(r"(?<=[.!?])\s+", line))]
    for r in rows:
        answer = r["choices"][r["label"]]
        assert r["context"][-1].isspace()  # lm-eval moves it in front of every choice
        assert _ends_a_unit(texts[r["doc"]], r["context"] + answer)
        stripped = answer.strip()
        assert lmeval.MIN_LINE_CHARS <= len(stripped) <= lmeval.MAX_LINE_CHARS
        assert all_units.count(stripped) == 1  # no duplicated or boilerplate lines
        indents = {c[: len(c) - len(c.lstrip())] for c in r["choices"]}
        assert len(indents) == 1  # plausible distractors: the same indentation
        lengths = [len(c.strip()) for c in r["choices"]]
        assert max(lengths) <= 1.5 * min(lengths)  # ... and a similar length


def check_cloze(texts, rows):
    for r in rows:
        answer = r["choices"][r["label"]]
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{2,}", answer)
        assert _ends_a_unit(texts[r["doc"]], r["context"] + answer)
        assert not r["context"][-1].isalnum()


def test_answers_are_the_true_next_lines_and_final_words(data, built):
    check_nextline(data.validation_texts(), rows_of(built, "pdspace_nextline"))
    check_cloze(data.validation_texts(), rows_of(built, "pdspace_cloze"))


def test_prose_with_one_paragraph_per_line_gives_tasks_too(tmp_path):
    """Long lines are cut into sentences: a corpus of unwrapped paragraphs works like code."""
    topics = pytest.importorskip("pydoc_data.topics").topics
    texts = ["\n\n".join(re.sub(r"\s*\n\s*", " ", p.strip())
                         for p in topics[k].split("\n\n") if p.strip())
             for k in sorted(topics)[:40]]
    assert max(len(line) for t in texts for line in t.splitlines()) > 1000
    prose = build_builtin_tasks(TextData(texts), tmp_path, num_examples=100)
    assert prose.num_examples == (100, 100)
    check_nextline(texts, rows_of(prose, "pdspace_nextline"))
    check_cloze(texts, rows_of(prose, "pdspace_cloze"))


@pytest.mark.parametrize("task", BUILTIN_TASK_NAMES)
def test_any_context_free_scorer_scores_exactly_chance(built, task):
    rows = rows_of(built, task)
    scorers = [len, lambda c: -len(c), lambda c: hash(c) % 97, lambda c: c.count("e")]
    for score in scorers:
        correct = sum(int(np.argmax([score(c) for c in r["choices"]]) == r["label"]) for r in rows)
        assert correct / len(rows) == BUILTIN_CHANCE


# --------------------------------------------------------------------------- lm-eval, in process


@pytest.fixture(scope="module")
def random_eval(built, tokenizer):
    """One in-process run of a randomly initialised model, with the state around it recorded."""
    model = make_model(len(tokenizer), seed=0)
    model.train()
    torch.manual_seed(123)
    random.seed(123)
    before = (torch.get_rng_state(), random.getstate(), len(tokenizer), tokenizer.pad_token)
    start = time.perf_counter()
    results = run_lm_eval(model, tokenizer, list(built.task_names), built.include_path,
                          device="cpu", batch_size=32)
    seconds = time.perf_counter() - start
    after = (torch.get_rng_state(), random.getstate(), len(tokenizer), tokenizer.pad_token)
    return {"results": results, "before": before, "after": after, "model": model,
            "seconds": seconds}


def test_random_model_scores_at_chance_on_every_builtin_task(random_eval, built):
    results = random_eval["results"]
    seen = {(r["task"], r["metric"]) for r in results}
    for task in BUILTIN_TASK_NAMES:
        assert {(task, m) for m in ("acc", "acc_norm", "acc_mutual_info")} <= seen
    for r in results:
        low, high = r["value"] - 1.96 * r["stderr"], r["value"] + 1.96 * r["stderr"]
        assert low <= BUILTIN_CHANCE <= high, r
        assert r["extra"] == {"seed": built.seed, "data_hash": built.data_hash,
                              "num_samples": NUM_EXAMPLES}


def test_run_lm_eval_leaves_model_tokenizer_and_rngs_as_they_were(random_eval):
    before, after = random_eval["before"], random_eval["after"]
    assert torch.equal(before[0], after[0])  # torch RNG not reseeded
    assert before[1:] == after[1:]  # python RNG, tokenizer size, pad token (None)
    assert random_eval["model"].training


# ------------------------------------------------------------------------------ command line


def test_lm_eval_command_is_the_documented_command_line(tmp_path):
    export, tasks_dir = tmp_path / "export", tmp_path / "tasks"
    assert lm_eval_command(export, tasks_dir, ["pdspace_nextline", "pdspace_cloze"]) == (
        f"lm_eval --model hf --model_args pretrained={export},dtype=float32 "
        f"--tasks pdspace_nextline,pdspace_cloze --include_path {tasks_dir} --device cpu"
    )
    assert lm_eval_command(export, tasks_dir, ["x"], limit=8, batch_size=4).endswith(
        "--device cpu --batch_size 4 --limit 8")


def _parse_table(stdout):
    """{(task, metric): value} from lm_eval's markdown results table."""
    values, task = {}, None
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or not re.fullmatch(r"[0-9.]+", cells[6] or "x"):
            continue
        task = cells[0] or task
        values[(task, cells[4])] = float(cells[6])
    return values


@pytest.mark.slow
def test_exported_model_runs_with_the_lm_eval_command_line(built, tokenizer, tmp_path):
    model = make_model(len(tokenizer), seed=1)
    export = tmp_path / "export"
    model.save_pretrained(export)
    tokenizer.save_pretrained(export)
    command = lm_eval_command(export, built, built.task_names, limit=8, batch_size=8)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = _parse_table(proc.stdout)
    # The same numbers as the in-process run on the same examples.
    inproc = run_lm_eval(model, tokenizer, built.task_names, built, limit=8, batch_size=8)
    assert {(r["task"], r["metric"]) for r in inproc} == set(cli)
    for r in inproc:
        assert cli[(r["task"], r["metric"])] == pytest.approx(r["value"], abs=1e-3)


# ------------------------------------------------------------------------- availability checks


def test_builtin_tasks_are_checked_without_lm_evals_default_index(built, monkeypatch):
    calls = []
    real = lmeval._task_manager

    def spy(paths, include_defaults):
        calls.append(include_defaults)
        return real(paths, include_defaults)

    monkeypatch.setattr(lmeval, "_task_manager", spy)
    check_tasks_available(list(built.task_names), built.include_path)
    assert calls and not any(calls)  # only our include path was indexed (~0.1 s)


TINY_TASK = """\
task: {name}
dataset_path: {path}
output_type: multiple_choice
test_split: test
doc_to_text: q
doc_to_choice: ["a", "b"]
doc_to_target: 0
"""


def _write_task(folder, name, path, extra=""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(TINY_TASK.format(name=name, path=path) + extra)
    return folder


def test_hub_dataset_must_be_in_the_local_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    tasks = _write_task(tmp_path / "tasks", "tiny_task", "pdspace-test/tiny")
    (tasks / "tiny_group.yaml").write_text("group: tiny_group\ntask:\n  - tiny_task\n")
    message = ("task 'tiny_task' needs the Hugging Face dataset 'pdspace-test/tiny', which is not "
               "available offline (set HF_DATASETS_OFFLINE=0 with network access, or download "
               "it first)")
    with pytest.raises(ValueError) as err:
        check_tasks_available(["tiny_task"], tasks)
    assert str(err.value) == message
    with pytest.raises(ValueError, match=r"'tiny_group' \(through 'tiny_task'\)"):
        check_tasks_available(["tiny_group"], tasks)

    # What `datasets` leaves in its cache after a download makes it available offline.
    cached = tmp_path / "cache" / "pdspace-test___tiny" / "default" / "0.0.0" / "abc123"
    cached.mkdir(parents=True)
    (cached / "dataset_info.json").write_text(json.dumps({
        "config_name": "default", "features": {"q": {"dtype": "string", "_type": "Value"}},
        "splits": {"test": {"name": "test", "num_examples": 1}},
    }))
    check_tasks_available(["tiny_task", "tiny_group"], tasks)


def test_network_allowed_explicitly_skips_the_cache_check(tmp_path, monkeypatch):
    tasks = _write_task(tmp_path / "tasks", "tiny_task2", "pdspace-test/absent")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    check_tasks_available(["tiny_task2"], tasks)


def test_missing_local_data_file_is_named(tmp_path):
    extra = f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'absent.jsonl'}\n"
    tasks = _write_task(tmp_path / "tasks", "local_task", "json", extra)
    with pytest.raises(ValueError, match="absent.jsonl"):
        check_tasks_available(["local_task"], tasks)


@pytest.mark.slow
def test_unknown_or_offline_tasks_give_one_clear_sentence(built, tokenizer, monkeypatch):
    # Unknown names make lm-eval's default index (built once per process) and suggest matches.
    with pytest.raises(ValueError, match=r"unknown lm-eval task 'hellaswg' \(did you mean 'hellaswag'"):
        check_tasks_available(["hellaswg"])
    with pytest.raises(ValueError, match=r"'pdspace_nextlin' \(did you mean 'pdspace_nextline'"):
        check_tasks_available(["pdspace_nextlin"], built)
    with pytest.raises(ValueError, match=r"'pdspace_nextlin' \(did you mean 'pdspace_nextline'"):
        run_lm_eval(make_model(len(tokenizer)), tokenizer, ["pdspace_nextlin"], built)

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if lmeval._hub_dataset_cached("Rowan/hellaswag", None):
        pytest.skip("hellaswag is in this machine's datasets cache")
    with pytest.raises(ValueError) as err:
        check_tasks_available(["hellaswag"])
    assert str(err.value) == (
        "task 'hellaswag' needs the Hugging Face dataset 'Rowan/hellaswag', which is not "
        "available offline (set HF_DATASETS_OFFLINE=0 with network access, or download it first)")
