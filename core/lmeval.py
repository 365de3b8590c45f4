"""lm-evaluation-harness integration: pdspace's offline built-in tasks, in-process and CLI evaluation.

Built-in tasks are generated deterministically from the held-out documents of any corpus and
written as JSONL plus lm-eval task YAML (templates in ``core/tasks/``), so they need no network:

- ``pdspace_nextline``: given up to ``CONTEXT_LINES`` preceding lines (at most ``CONTEXT_CHARS``
  characters), pick the true next line among 4.
- ``pdspace_cloze``: given the preceding lines and a line up to its last word (closing
  punctuation after it is left out), pick that word among 4.

Lines longer than ``MAX_LINE_CHARS`` (prose stored one paragraph per line) are cut into sentences
first, so both tasks work on code and on prose.

Both are built from groups of 4 examples taken from 4 different held-out documents; inside a group
the 4 answers (lines or words) are alike in form (same indentation / capitalisation, similar length)
and every example offers the group's 4 answers as its choices, the right one being its own. Each
answer is therefore right exactly once and wrong three times in its group, so any scorer that does
not read the context (a random model, a unigram model, a bias for short answers) scores exactly
0.25 on whole groups: chance is known, and scoring above it means the context was used. Examples
are written group by group, so a ``limit`` that is a multiple of 4 keeps whole groups.

Standard lm-eval tasks (hellaswag, piqa, winogrande, mmlu, gsm8k, ...) are selected by name;
``check_tasks_available`` tells, before any training, whether each task is known and its dataset
can be loaded offline.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from core.config import EvalConfig
from core.utils import atomic_write_text, canonical_json, stable_hash

log = logging.getLogger(__name__)

NEXTLINE_TASK = "pdspace_nextline"
CLOZE_TASK = "pdspace_cloze"
BUILTIN_TASK_NAMES = (NEXTLINE_TASK, CLOZE_TASK)
#: Chance accuracy of every built-in task (4 choices; exact for context-free scorers, see above).
BUILTIN_CHANCE = 0.25

#: Bump when the generated examples change for the same inputs (recorded in every manifest).
GENERATOR_VERSION = 1
NUM_CHOICES = 4
CONTEXT_LINES = 6  # at most this many preceding lines ...
CONTEXT_CHARS = 200  # ... and this many characters (~60 tokens at 3.4 bytes/token)
MIN_CONTEXT_LINES = 2  # non-blank lines before a next-line answer (one before a cloze line)
MIN_LINE_CHARS = 12  # next-line answers: stripped length in [MIN_LINE_CHARS, MAX_LINE_CHARS]
MAX_LINE_CHARS = 100  # (longer lines are cut into sentences, see _split_units)
MIN_WORD_CHARS = 3  # cloze answers: identifier-like words of at least this many characters
MAX_SOURCE_CHARS = 20_000_000  # read at most this much held-out text (in document order)
LENGTH_RATIO = 1.2  # next-line answers of a group differ in length by at most ~this factor

MANIFEST = "manifest.json"
LOADER_MODULE = "pdspace_task_data"
_LOADER_SOURCE = '''"""Loads a pdspace built-in task's records (the JSONL beside this file) for lm-eval."""
import json
from pathlib import Path

import datasets


def load(data_file, **_):
    with open(Path(__file__).with_name(data_file), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}
'''

# A unit's last word, then at most two closing punctuation marks (not scored).
_WORD_AT_END = re.compile(r"^(.*[^A-Za-z0-9_])([A-Za-z_][A-Za-z0-9_]*)[.,;:!?)\]}\"']{0,2}$")
_SENTENCE_END = re.compile(r"(?<=[.!?])(\s+)(?=\S)")


@dataclass(frozen=True)
class BuiltinTasks:
    """Generated built-in tasks: pass ``include_path`` to lm-eval, record ``seed`` and ``data_hash``
    with every result. ``num_examples[i]`` is how many examples ``task_names[i]`` holds."""

    include_path: str
    task_names: tuple[str, ...]
    data_hash: str
    seed: int
    num_examples: tuple[int, ...] = ()


# ---------------------------------------------------------------------------------- generation


def build_builtin_tasks(data, out_dir, seed: int = EvalConfig.task_seed,
                        num_examples: int = EvalConfig.task_examples) -> BuiltinTasks:
    """Generate (or find) the built-in tasks for a corpus's held-out documents.

    data:    anything with ``.validation_texts() -> list[str]`` (a ``PackedData``).
    out_dir: parent folder; the tasks go to ``out_dir/builtin-<hash of inputs>/``, so the same
             texts, seed and ``num_examples`` give the same folder and files, and a folder that is
             already complete is returned without regenerating anything.
    Raises ValueError when the held-out text is too small to build even one group of examples.
    """
    if num_examples < NUM_CHOICES:
        raise ValueError(f"num_examples must be >= {NUM_CHOICES}, got {num_examples}")
    texts = _held_out_texts(data)
    templates = {n: _template(n) for n in BUILTIN_TASK_NAMES}
    inputs = {
        "generator": GENERATOR_VERSION,
        # Any change to this module or the templates gives a new folder (regenerating costs well
        # under a second); results stay comparable through data_hash, the hash of the examples.
        "code_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "templates_sha256": stable_hash(templates),
        "texts_sha256": _texts_digest(texts),
        "seed": int(seed),
        "num_examples": int(num_examples),
    }
    target = Path(out_dir) / f"builtin-{stable_hash(inputs)}"
    found = _read_complete(target)
    if found is not None:
        return found

    docs = [_split_units(t) for t in texts]
    nextline = _nextline_examples(docs, random.Random(f"nextline:{seed}"), num_examples)
    cloze = _cloze_examples(docs, random.Random(f"cloze:{seed}"), num_examples)
    for name, rows in ((NEXTLINE_TASK, nextline), (CLOZE_TASK, cloze)):
        if not rows:
            raise ValueError(
                f"cannot build task {name!r}: the held-out text ({len(texts)} documents) has no "
                f"{NUM_CHOICES} distinct documents with suitable lines; use a larger val_fraction"
            )
    payloads = {NEXTLINE_TASK: nextline, CLOZE_TASK: cloze}
    jsonl = {n: "".join(canonical_json(r) + "\n" for r in rows) for n, rows in payloads.items()}
    data_hash = stable_hash({n: hashlib.sha256(t.encode()).hexdigest() for n, t in jsonl.items()})
    counts = {n: len(rows) for n, rows in payloads.items()}
    for name, count in counts.items():
        if count < num_examples:
            log.warning("built-in task %s: only %d of %d examples from %d held-out documents",
                        name, count, num_examples, len(texts))
    files = {f"{LOADER_MODULE}.py": _LOADER_SOURCE}
    for name in BUILTIN_TASK_NAMES:
        files[f"{name}.jsonl"] = jsonl[name]
        files[f"{name}.yaml"] = templates[name] + f'  seed: {int(seed)}\n  data_hash: "{data_hash}"\n'
    manifest = {
        "generator": GENERATOR_VERSION,
        "inputs": inputs,
        "task_names": list(BUILTIN_TASK_NAMES),
        "num_examples": counts,
        "data_hash": data_hash,
        "seed": int(seed),
        "chance": BUILTIN_CHANCE,
        "files_sha256": {f: hashlib.sha256(t.encode()).hexdigest() for f, t in files.items()},
    }

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        for fname, text in files.items():
            (tmp / fname).write_text(text, encoding="utf-8")
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        try:
            os.rename(tmp, target)  # atomic publish; a concurrent builder may have won the race
        except OSError:
            if _read_complete(target) is None:
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _read_complete(target)
    if found is None:
        raise RuntimeError(f"built-in tasks at {target} are incomplete right after writing them")
    return found


def _template(task_name: str) -> str:
    """The lm-eval YAML template of a built-in task (package data in core/tasks/)."""
    return resources.files("core").joinpath(f"tasks/{task_name}.yaml").read_text("utf-8")


def _read_complete(path: Path) -> BuiltinTasks | None:
    """The tasks in ``path`` if its manifest is there and its files match their checksums."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        for fname, digest in manifest["files_sha256"].items():
            if hashlib.sha256((path / fname).read_bytes()).hexdigest() != digest:
                return None
    except (OSError, ValueError, KeyError):
        return None
    names = tuple(manifest["task_names"])
    return BuiltinTasks(
        include_path=str(path.resolve()),
        task_names=names,
        data_hash=manifest["data_hash"],
        seed=int(manifest["seed"]),
        num_examples=tuple(int(manifest["num_examples"][n]) for n in names),
    )


def _held_out_texts(data) -> list[str]:
    texts, total = [], 0
    for text in data.validation_texts():
        if total >= MAX_SOURCE_CHARS:
            break
        texts.append(text)
        total += len(text)
    return texts


def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _split_units(text: str) -> list[tuple[str, str]]:
    """A document as (separator, unit) pairs, ``"".join(sep + unit)`` giving the text back with
    trailing spaces stripped: units are lines, and lines longer than MAX_LINE_CHARS (a paragraph
    of prose on one line) are cut further after each sentence end."""
    units: list[tuple[str, str]] = []
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for n, line in enumerate(text.split("\n")):
        line = line.rstrip()
        sep = "\n" if n else ""
        if len(line) <= MAX_LINE_CHARS:
            units.append((sep, line))
            continue
        pieces = _SENTENCE_END.split(line)  # [sentence, space, sentence, space, ...]
        units.append((sep, pieces[0]))
        units.extend(zip(pieces[1::2], pieces[2::2]))
    return units


def _context(units: list[tuple[str, str]], end: int, tail: str = "",
             min_units: int = MIN_CONTEXT_LINES) -> str | None:
    """The text before unit ``end``: up to CONTEXT_LINES whole units (CONTEXT_CHARS at most, leading
    blank ones dropped), then the separator before unit ``end``, then ``tail``; None if fewer than
    ``min_units`` non-blank units fit."""
    picked: list[tuple[str, str]] = []
    size = len(units[end][0]) + len(tail)
    for j in range(end - 1, max(-1, end - 1 - CONTEXT_LINES), -1):
        size += len(units[j][0]) + len(units[j][1])
        if size > CONTEXT_CHARS:
            break
        picked.append(units[j])
    while picked and not picked[-1][1].strip():
        picked.pop()
    if sum(1 for _, unit in picked if unit.strip()) < min_units:
        return None
    picked.reverse()
    body = picked[0][1] + "".join(sep + unit for sep, unit in picked[1:])
    return body + units[end][0] + tail


def _unit_counts(docs: list[list[tuple[str, str]]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for units in docs:
        for _, unit in units:
            s = unit.strip()
            if s:
                counts[s] = counts.get(s, 0) + 1
    return counts


def _nextline_examples(docs: list[list[tuple[str, str]]], rng: random.Random, num_examples: int
                       ) -> list[dict]:
    counts = _unit_counts(docs)
    candidates = []  # (doc, answer, context, group key)
    for d, units in enumerate(docs):
        for i, (sep, unit) in enumerate(units):
            s = unit.strip()
            if not (MIN_LINE_CHARS <= len(s) <= MAX_LINE_CHARS) or counts[s] != 1:
                continue
            if sum(c.isalnum() for c in s) < len(s) // 2:  # mostly punctuation or numbers
                continue
            context = _context(units, i)
            if context is None:
                continue
            # Alike in form: lines with lines (same indentation), sentences with sentences,
            # and lengths within a factor LENGTH_RATIO.
            indent = unit[: len(unit) - len(unit.lstrip())]
            kind = "line" if sep == "\n" else "sentence"
            key = (kind, indent, int(math.log(len(s)) / math.log(LENGTH_RATIO)))
            candidates.append((d, unit, context, key))
    return _latin_groups(candidates, rng, num_examples, "nextline")


def _cloze_examples(docs: list[list[tuple[str, str]]], rng: random.Random, num_examples: int
                    ) -> list[dict]:
    counts = _unit_counts(docs)
    candidates = []
    for d, units in enumerate(docs):
        for i, (_, unit) in enumerate(units):
            s = unit.strip()
            if len(s) < MIN_LINE_CHARS or counts[s] != 1:
                continue
            m = _WORD_AT_END.match(unit)
            if m is None or not m.group(1).strip():
                continue
            prefix, word = m.group(1), m.group(2)
            if len(word) < MIN_WORD_CHARS:
                continue
            # The line's own beginning is context too: one unit before it is enough.
            context = _context(units, i, tail=prefix, min_units=MIN_CONTEXT_LINES - 1)
            if context is None:
                continue
            # Alike in form: same capitalisation class, similar length, same character before.
            shape = "U" if word[0].isupper() else ("_" if word[0] == "_" else "l")
            key = (shape, prefix[-1], min(len(word), 16) // 3)
            candidates.append((d, word, context, key))
    return _latin_groups(candidates, rng, num_examples, "cloze")


def _latin_groups(candidates: list[tuple], rng: random.Random, num_examples: int, prefix: str
                  ) -> list[dict]:
    """Group candidates ``(doc, answer, context, key)`` with the same key into groups of
    NUM_CHOICES from distinct documents with distinct answers, in a seeded random order; every
    member of a group becomes one example offering all the group's answers."""
    rng.shuffle(candidates)
    num_groups = -(-num_examples // NUM_CHOICES)
    pending: dict[Any, dict[int, list[tuple]]] = {}  # key -> doc -> waiting candidates
    groups: list[list[tuple]] = []
    for cand in candidates:
        bucket = pending.setdefault(cand[3], {})
        bucket.setdefault(cand[0], []).append(cand)
        members = _take_group(bucket)
        if members:
            groups.append(members)
            if len(groups) == num_groups:
                break
    rows = []
    for g, members in enumerate(groups):
        # One order of the answers per group: its examples' labels are then 0..3, once each.
        order = rng.sample(range(NUM_CHOICES), NUM_CHOICES)
        answers = [members[j][1] for j in order]
        for k, (doc, _, context, _) in enumerate(members):
            rows.append({
                "id": f"{prefix}-{len(rows):05d}",
                "group": g,
                "doc": doc,
                "context": context,
                "choices": answers,
                "label": order.index(k),
            })
    return rows[:num_examples]


def _take_group(bucket: dict[int, list[tuple]]) -> list[tuple] | None:
    """NUM_CHOICES waiting candidates from distinct documents with distinct answers, removed from
    ``bucket``; None (and ``bucket`` unchanged) if there are not enough yet."""
    members: list[tuple] = []
    for waiting in bucket.values():
        cand = next((c for c in waiting if all(c[1] != m[1] for m in members)), None)
        if cand is not None:
            members.append(cand)
            if len(members) == NUM_CHOICES:
                break
    if len(members) < NUM_CHOICES:
        return None
    for cand in members:
        bucket[cand[0]].remove(cand)
        if not bucket[cand[0]]:
            del bucket[cand[0]]
    return members


# -------------------------------------------------------------------------------- evaluation


def _include_paths(include_path) -> list[str]:
    if include_path is None:
        return []
    if isinstance(include_path, BuiltinTasks):
        return [include_path.include_path]
    if isinstance(include_path, (str, os.PathLike)):
        return [str(include_path)]
    return [p for item in include_path for p in _include_paths(item)]


def _builtin_extras(paths: Iterable[str]) -> dict[str, dict]:
    """task name -> {"seed", "data_hash"} for the pdspace-generated tasks under ``paths``."""
    extras = {}
    for p in paths:
        try:
            manifest = json.loads((Path(p) / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        for name in manifest.get("task_names", []):
            extras[name] = {"seed": manifest["seed"], "data_hash": manifest["data_hash"]}
    return extras


@functools.lru_cache(maxsize=8)
def _task_manager(include_paths: tuple[str, ...], include_defaults: bool):
    """A TaskManager over our include paths; with lm-eval's defaults only when asked (building the
    default index takes seconds, so it is cached per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths) or None, include_defaults=include_defaults)


def _manager_for(tasks: Sequence[str], paths: list[str]):
    """A TaskManager that knows ``tasks``: our include paths alone when they suffice."""
    local = _task_manager(tuple(paths), False)
    if all(t in local.task_index for t in tasks):
        return local
    return _task_manager(tuple(paths), True)


def _index_for(tasks: Sequence[str], paths: list[str]) -> dict:
    """Task index (name -> lm-eval Entry) for look-ups only: our include paths over lm-eval's
    defaults, the latter indexed once per process whatever the include paths."""
    local = _task_manager(tuple(paths), False).task_index
    if all(t in local for t in tasks):
        return local
    return {**_task_manager((), True).task_index, **local}


def run_lm_eval(
    model,
    tokenizer,
    tasks: Sequence[str],
    include_path=None,
    device: str = "cpu",
    limit: int | float | None = None,
    batch_size: int = EvalConfig.batch_size,
    *,
    max_length: int | None = None,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 1000,
    quiet: bool = True,
) -> list[dict]:
    """Evaluate an in-memory Hugging Face causal LM on lm-eval tasks, in process.

    model:        a ``PreTrainedModel``; moved to ``device`` for the call, then back, and its
                  train/eval mode restored. The global RNGs (python, numpy, torch) are left as
                  they were, so evaluating does not change the rest of a training run.
    tokenizer:    its tokenizer (copied, so lm-eval's padding set-up does not change it).
    tasks:        task, group or tag names (built-in ones or lm-eval's).
    include_path: folder(s) of task YAML, or a ``BuiltinTasks``.
    limit:        at most this many examples per task (a multiple of 4 keeps the built-in tasks'
                  groups whole).
    max_length:   context window; default the model's ``max_position_embeddings`` (lm-eval cuts
                  longer inputs from the left).
    quiet:        silence lm-eval's log messages below ERROR for the call.
    Returns one dict per (task, metric): ``task, metric, value, stderr`` (None when lm-eval gives
    none) and ``extra`` (``num_samples``; plus ``seed`` and ``data_hash`` for built-in tasks).
    Metric names are lm-eval's, with the filter appended after a comma unless it is "none".
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tasks = list(tasks)
    if not tasks:
        raise ValueError("run_lm_eval needs at least one task")
    paths = _include_paths(include_path)
    index = _index_for(tasks, paths)
    for task in tasks:
        if task not in index:
            raise ValueError(_unknown_message(task, sorted(index)))
    manager = _manager_for(tasks, paths)

    tok = copy.deepcopy(tokenizer)
    if tok.pad_token_id is None:
        # lm-eval would otherwise add a new <|pad|> token beyond the model's vocabulary; padded
        # positions are never scored, so any existing id will do.
        tok.pad_token = tok.eos_token or tok.unk_token or tok.convert_ids_to_tokens(0)
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None)
    # Unconditional scores (acc_mutual_info) start from bos, else eos; else from the pad id.
    prefix_id = tok.pad_token_id if tok.bos_token_id is None and tok.eos_token_id is None else None

    param = next(model.parameters(), None)
    old_device = param.device if param is not None else None
    was_training = model.training
    model.to(device)
    try:
        with _lean_lm_eval(quiet), _preserved_rngs(device):
            lm = HFLM(pretrained=model, tokenizer=tok, device=str(device), batch_size=batch_size,
                      max_length=max_length, prefix_token_id=prefix_id)
            results = simple_evaluate(
                model=lm,
                tasks=tasks,
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=manager,
                bootstrap_iters=bootstrap_iters,
                log_samples=False,
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
    finally:
        if old_device is not None:
            model.to(old_device)
        model.train(was_training)
    return _flatten_results(results, _builtin_extras(paths))


@contextlib.contextmanager
def _preserved_rngs(device):
    """Leave python's, numpy's and torch's global RNGs as they were: an evaluation point must not
    change the rest of a training run (lm-eval draws from python's ``random`` while it builds
    requests)."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    dev = torch.device(device)
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def _lean_lm_eval(quiet: bool):
    """simple_evaluate ends by collecting the machine's environment for its own report
    (torch.utils.collect_env runs subprocesses) and the git hash of the working directory: about
    1 s per call, 2-3 % of a quickstart student's training. pdspace records versions itself, so
    both are skipped for the call; and lm-eval's logging is quietened when asked."""
    import lm_eval.evaluator as evaluator

    saved = {}
    for name, stub in (("add_env_info", lambda *a, **k: None), ("get_git_commit_hash", lambda: None)):
        if hasattr(evaluator, name):
            saved[name] = getattr(evaluator, name)
            setattr(evaluator, name, stub)
    logger = logging.getLogger("lm_eval")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        for name, fn in saved.items():
            setattr(evaluator, name, fn)


def _flatten_results(results: dict, builtin: dict[str, dict]) -> list[dict]:
    rows = []
    n_samples = results.get("n-samples", {})
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            if not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            extra = dict(builtin.get(task, {}))
            if task in n_samples:
                extra["num_samples"] = int(n_samples[task].get("effective", 0))
            rows.append({
                "task": task,
                "metric": metric if filt == "none" else f"{metric},{filt}",
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                "extra": extra,
            })
    return rows


def lm_eval_command(
    export_dir,
    include_path,
    tasks: Sequence[str],
    *,
    device: str = "cpu",
    limit: int | None = None,
    batch_size: int | None = None,
) -> str:
    """The ``lm_eval`` command line that evaluates an exported checkpoint (save_pretrained +
    tokenizer in ``export_dir``) on ``tasks``, e.g.
    ``lm_eval --model hf --model_args pretrained=/a/export,dtype=float32 --tasks pdspace_nextline
    --include_path /a/builtin-1234 --device cpu``. Arguments are shell-quoted."""
    export_dir = str(Path(export_dir).resolve())
    if "," in export_dir:
        raise ValueError(f"lm_eval's --model_args cannot hold a path with a comma: {export_dir!r}")
    parts = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={export_dir},dtype=float32",
             "--tasks", ",".join(tasks)]
    paths = _include_paths(include_path)
    if len(paths) > 1:
        raise ValueError(f"the lm_eval command line takes one --include_path, got {len(paths)}")
    if paths:
        parts += ["--include_path", str(Path(paths[0]).resolve())]
    parts += ["--device", device]
    if batch_size is not None:
        parts += ["--batch_size", str(batch_size)]
    if limit is not None:
        parts += ["--limit", str(limit)]
    return shlex.join(parts)


# ------------------------------------------------------------------------- availability checks


def _unknown_message(task: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(task, known, n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"unknown lm-eval task {task!r}{hint}"


def _network_allowed() -> bool:
    """Datasets may be downloaded only when offline mode is explicitly switched off."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        value = os.environ.get(var)
        if value is not None and value.strip().lower() in ("0", "false", "no", "off"):
            return True
    return False


def _leaf_configs(name: str, index: dict, seen: set[str] | None = None) -> list[tuple[str, dict]]:
    """(task name, resolved YAML config) of every leaf task under a task, group or tag name."""
    seen = set() if seen is None else seen
    if name in seen:
        return []
    seen.add(name)
    entry = index.get(name)
    if entry is None:
        return [(name, {})]
    if entry.kind.name == "TAG":
        return [leaf for child in sorted(entry.tags) for leaf in _leaf_configs(child, index, seen)]
    if entry.kind.name == "GROUP":
        children = entry.cfg.get("task", []) if entry.cfg else []
        children = children if isinstance(children, list) else [children]
        out = []
        for child in children:
            if not isinstance(child, dict):
                out += _leaf_configs(str(child), index, seen)
            elif child.get("task") in index:  # a known task, with overrides
                overrides = {k: v for k, v in child.items() if k.startswith("dataset")}
                out += [(n, {**cfg, **overrides})
                        for n, cfg in _leaf_configs(str(child["task"]), index, seen)]
            else:  # an inline task config
                out.append((str(child.get("task")), child))
        return out
    return [(name, entry.cfg or {})]


_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


def _dataset_problem(cfg: dict) -> str | None:
    """Why the dataset of one task config cannot be loaded offline, or None if it can."""
    if cfg.get("custom_dataset") or cfg.get("class"):
        return None  # loaded by the task's own code: nothing to check from here
    path = cfg.get("dataset_path")
    if not path:
        return None
    kwargs = cfg.get("dataset_kwargs") or {}
    if path in _LOCAL_BUILDERS:
        files = kwargs.get("data_files")
        flat = files.values() if isinstance(files, dict) else ([files] if files else [])
        for f in flat:
            for item in (f if isinstance(f, list) else [f]):
                if "://" not in str(item) and not Path(item).exists():
                    return f"needs the local file {str(item)!r}, which does not exist"
        return None
    if Path(path).expanduser().exists():
        return None
    name = cfg.get("dataset_name")
    if _network_allowed() or _hub_dataset_cached(path, name):
        return None
    what = f"the Hugging Face dataset {path!r}" + (f" (config {name!r})" if name else "")
    return (f"needs {what}, which is not available offline "
            "(set HF_DATASETS_OFFLINE=0 with network access, or download it first)")


def _hub_dataset_cached(path: str, name: str | None) -> bool:
    """Whether ``datasets`` can build the dataset from its local cache, with the network off.
    Positive answers are remembered for the process (a dataset stays cached once it is)."""
    import datasets
    import huggingface_hub.constants as hub_constants

    key = (path, name, str(datasets.config.HF_DATASETS_CACHE))
    if key in _CACHED_DATASETS:
        return True
    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        datasets.load_dataset_builder(path, name, cache_dir=key[2])
    except Exception:  # any failure means "not loadable offline"; the caller says what is missing
        return False
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
    _CACHED_DATASETS.add(key)
    return True


_CACHED_DATASETS: set[tuple] = set()


def check_tasks_available(tasks: Sequence[str], include_path=None) -> None:
    """Raise ValueError (one sentence) unless every task is known and its data loads offline.

    Fast for built-in tasks (only ``include_path`` is indexed); a standard task needs lm-eval's
    default index, built once per process (seconds). A Hugging Face dataset counts as available
    when it is in the local ``datasets`` cache, or when offline mode is explicitly off
    (``HF_DATASETS_OFFLINE=0`` or ``HF_HUB_OFFLINE=0``).
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no lm-eval tasks given")
    paths = _include_paths(include_path)
    for p in paths:
        if not Path(p).is_dir():
            raise ValueError(f"lm-eval include path {p!r} is not a folder")
    index = _index_for(tasks, paths)
    for task in tasks:
        if task not in index:
            raise ValueError(_unknown_message(task, sorted(index)))
        for leaf, cfg in _leaf_configs(task, index):
            if leaf not in index and not cfg:
                raise ValueError(f"task {task!r} refers to {leaf!r}, which lm-eval does not know")
            problem = _dataset_problem(cfg)
            if problem:
                via = "" if leaf == task else f" (through {leaf!r})"
                raise ValueError(f"task {task!r}{via} {problem}")
