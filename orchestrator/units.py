"""What each kind of unit does, in terms of core: prepare data, train a teacher, extract logits,
train a student or its LM-only baseline, evaluate. No ray and no study parsing here.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from core.config import LM_ONLY_ALPHA, SAMPLING_SEED, EvalConfig, LogitsStoreConfig, TrainConfig, Truncation
from core.settings import build, build_from, config_dict
from orchestrator.recorder import RunRecorder

Runner = Callable[[dict[str, Any], Path, str, RunRecorder, str], None]


def _data(unit: dict[str, Any], artifacts: str):
    from core.data import DataSpec, prepare_data

    return prepare_data(DataSpec.from_dict(unit["config"]["data"]), Path(artifacts))


def run_data(unit: dict[str, Any], out_dir: Path, artifacts: str, rec: RunRecorder, device: str) -> None:
    data = _data(unit, artifacts)
    rec.artifact("data", data.path)


def teacher_examples(data: Any) -> np.ndarray:
    """A scratch teacher trains on the second half of the training sequences (see plan.py)."""
    n = data.num_sequences("train")
    return np.arange(n // 2, n, dtype=np.int64)


def student_examples(data: Any, tokens: int) -> np.ndarray:
    """Students, baselines and offline logits use the first sequences their budget needs."""
    n = data.num_sequences("train")
    need = -(-int(tokens) // data.seq_len)
    if need > n // 2:
        need = n  # the budget exceeds the student half: use everything (epochs repeat)
    return np.arange(min(need, n), dtype=np.int64)


def _teacher_model(pretrained: str | None, teacher_hash: str | None, artifacts: str, device: str):
    """The teacher as an eval-mode model: a pretrained hub id/path or a trained teacher's export."""
    from core.models import load_pretrained

    source = pretrained or str(Path(artifacts) / "runs" / teacher_hash / "export")
    model, _ = load_pretrained(source, device=device)
    model.eval()
    return model


def _evaluator(cfg: dict[str, Any], data: Any, artifacts: str, device: str, *,
               val_teacher: Any = None, total_tokens: int) -> Callable:
    """Held-out loss (and teacher agreement) at every evaluation point; lm-eval tasks as configured."""
    from core.evaluation import heldout_metrics

    ev = eval_config(cfg)
    tasks = list(ev.builtin_tasks) + list(ev.tasks)
    builtin = None
    if tasks:
        from core.lmeval import build_builtin_tasks

        builtin = build_builtin_tasks(data, Path(artifacts) / "tasks", seed=ev.task_seed,
                                      num_examples=ev.task_examples)

    state = {"bucket": 0}

    def evaluate(model: torch.nn.Module, step: int, tokens: int):
        metrics = heldout_metrics(model, data, teacher=val_teacher, max_sequences=ev.heldout_sequences,
                                  batch_size=ev.batch_size, device=device)
        records: list[dict[str, Any]] = []
        every = ev.tasks_every_tokens
        if every:  # due when a multiple of `every` was crossed since the last evaluation point
            due = tokens // every > state["bucket"]
            state["bucket"] = tokens // every
        else:
            due = tokens > 0 and not ev.final_only
        if tasks and (due or tokens >= total_tokens):
            from core.lmeval import run_lm_eval

            records = run_lm_eval(model, data.tokenizer, tasks, builtin.include_path, device=device,
                                  limit=ev.limit, batch_size=ev.batch_size)
        return metrics, records

    return evaluate


# What a worker builds from a unit's resolved config: core's own config objects, read back with
# core.settings.build (a setting added to core arrives here with no edit).

def train_config(cfg: dict[str, Any], device: str) -> TrainConfig:
    """The TrainConfig of a teacher, student or baseline unit (the evaluation interval is the
    eval section's, the device the worker's)."""
    train = build_from(TrainConfig, {"kd": None, "alpha_schedule": config_dict(LM_ONLY_ALPHA), **cfg})
    return replace(train, eval_every_tokens=cfg["eval"]["every_tokens"], device=device)  # a teacher: no KD


def eval_config(cfg: dict[str, Any]) -> EvalConfig:
    return build(EvalConfig, cfg["eval"])


def store_config(cfg: dict[str, Any]) -> LogitsStoreConfig:
    """The LogitsStoreConfig of a logits unit."""
    return build_from(LogitsStoreConfig, cfg)


def truncation(cfg: dict[str, Any]) -> Truncation:
    """The Truncation a student reads from its teacher's store."""
    return build_from(Truncation, cfg["logits"])


def _total_tokens(tcfg: Any, data: Any) -> int:
    tokens_per_step = tcfg.batch_size * data.seq_len
    return max(1, tcfg.tokens // tokens_per_step) * tokens_per_step


def model_vocab(cfg: dict[str, Any], data: Any) -> int:
    """The vocabulary (embedding rows) a run's model is built with: a pretrained teacher's own,
    padding included, for its students and their baselines (``vocab_of``); else the tokenizer's."""
    if not cfg.get("vocab_of"):
        return data.vocab_size
    from core.models import check_vocab_compatible, model_vocab_size

    vocab = model_vocab_size(cfg["vocab_of"])
    check_vocab_compatible(vocab, data.vocab_size, model=f"teacher {cfg['vocab_of']!r}")
    return vocab


def _fresh_model(unit: dict[str, Any], artifacts: str, size: str):
    """(config, data, a freshly initialised model of `size`) for a training unit."""
    from core.models import build_model

    cfg = unit["config"]
    data = _data(unit, artifacts)
    model = build_model(size, model_vocab(cfg, data), data.seq_len, seed=cfg["seed"], eos_token_id=data.eos_token_id)
    return cfg, data, model


def _stats_expected(kd) -> dict[str, list[float]]:
    """The store statistics a KD term reads, as LogitsStore.open expectations."""
    gammas, t_norms = kd.stats_needed() if kd is not None else ([], [])
    return {"gammas": gammas, "t_norms": t_norms}


def run_teacher(unit: dict[str, Any], out_dir: Path, artifacts: str, rec: RunRecorder, device: str) -> None:
    from core.trainer import train

    cfg, data, model = _fresh_model(unit, artifacts, unit["config"]["size"])
    tcfg = train_config(cfg, device)
    capture = None
    if cfg["online"]["capture"]:
        from core.logits import OnlineCapture

        on = cfg["online"]
        capture = OnlineCapture(
            out_dir / "online_logits", vocab_size=data.vocab_size, seq_len=data.seq_len,
            keeps=Truncation(on["top_p"], on["top_k"]), gammas=on["gammas"], t_norms=on.get("t_norms", ()),
            teacher_id=cfg["name"], teacher_hash=unit["config_hash"],
            tokenizer_hash=data.tokenizer_hash, data_hash=data.hash,
        )
    evaluate = _evaluator(cfg, data, artifacts, device, total_tokens=_total_tokens(tcfg, data))
    result = train(tcfg, model, data, run_dir=out_dir, report=rec.report, evaluator=evaluate,
                   online_capture=capture, examples=teacher_examples(data))
    rec.artifact("export", result.export_dir)
    if capture is not None:
        rec.artifact("online_logits", out_dir / "online_logits")


def run_logits(unit: dict[str, Any], out_dir: Path, artifacts: str, rec: RunRecorder, device: str) -> None:
    from core.logits import extract_logits

    cfg = unit["config"]
    data = _data(unit, artifacts)
    model = _teacher_model(cfg.get("pretrained"), cfg["teacher_hash"], artifacts, device)
    store = store_config(cfg)
    from core.models import check_vocab_compatible

    check_vocab_compatible(model.config.vocab_size, data.vocab_size,
                           model=f"teacher {cfg.get('pretrained') or cfg['teacher']!r}")
    num_sequences = len(student_examples(data, cfg["num_tokens"] or data.num_tokens("train")))
    sampling = cfg.get("sampling")  # a sampled store (core.sampled_kd): its own rule and seed
    keeps = store.keeps if not sampling else Truncation(
        samples=sampling["samples"], proposal_temperature=sampling["proposal_temperature"])
    path = extract_logits(
        model, data, out_dir / "store", split="train", keeps=keeps, gammas=store.gammas, t_norms=store.t_norms,
        sampling_seed=sampling["seed"] if sampling else SAMPLING_SEED,
        batch_size=store.batch_size, format_version=store.format_version, target_kl=store.target_kl,
        shard_tokens=store.shard_tokens, device=device, teacher_id=cfg.get("pretrained") or cfg["teacher"],
        teacher_hash=cfg["teacher_hash"], tokenizer_hash=data.tokenizer_hash, data_hash=data.hash,
        num_sequences=num_sequences,
    )
    rec.artifact("logits_store", path)
    record_kept_stats(path, rec, num_tokens=num_sequences * data.seq_len)


# The paper's truncation grids (PAPER.md); kept-logit statistics are recorded for every point a
# store can derive, so Figures 2-3's right-hand axes come from the database.
PAPER_TOP_P = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
PAPER_TOP_K = (1, 3, 5, 10, 20, 50, 100)


def record_kept_stats(store_path: Path, rec: RunRecorder, *, num_tokens: int) -> None:
    """Kept entries and bytes per token of each derivable (p, k), as kept_stats rows of the logits
    run; the store's size on disk as its `store_bytes` metric."""
    from core.logits import LogitsStore, kept_stats

    store = LogitsStore.open(store_path)
    keeps = store.keeps
    points = set()  # a sampled store serves only its sampling: no (p, k) grid, its size below
    if not keeps.sampled:
        points = {Truncation(p, keeps.top_k) for p in PAPER_TOP_P if p <= keeps.top_p}
        points |= {Truncation(keeps.top_p, k) for k in PAPER_TOP_K if k <= keeps.top_k}
    rows = []
    for t in sorted(points, key=lambda t: (t.top_p, t.top_k)):
        st = kept_stats(store, t)
        rows.append({"top_p": t.top_p, "top_k": t.top_k, "num_tokens": num_tokens,
                     **{key: st[key] for key in ("mean_kept_per_token", "bytes_per_token", "mean_kept_mass",
                                                 "capped_frac", "sampled_rows")}})
    rec.kept_stats(rows)
    size = store.storage()
    row = {"step": 0, "tokens": num_tokens, "store_bytes": size["bytes"]}
    if keeps.sampled:  # its measured size per token (entries and counts; statistics apart)
        row.update(store_bytes_per_token=size["bytes_per_token"],
                   store_entries_per_token=size["mean_entries_per_token"])
    if store.distortion is not None:  # a compact (format 2) store reports what it lost
        row.update(store_mean_kl=store.distortion["mean_kl"], store_p999_kl=store.distortion["p999_kl"])
    rec.metrics(row)


def run_student(unit: dict[str, Any], out_dir: Path, artifacts: str, rec: RunRecorder, device: str) -> None:
    from core.trainer import train

    cfg, data, model = _fresh_model(unit, artifacts, unit["config"]["student"])
    tcfg = train_config(cfg, device)
    teacher = val_teacher = None
    examples = student_examples(data, cfg["tokens"])
    if cfg.get("teacher"):
        from core.logits import LiveTeacher, LogitsStore, StoreTeacher

        lg = cfg["logits"]
        trunc = truncation(cfg)
        entries = None
        if lg["source"] == "offline":
            store_dir = Path(artifacts) / "logits" / cfg["logits_hash"] / "store"
        else:
            store_dir = Path(artifacts) / "runs" / cfg["teacher_hash"] / "online_logits"
        store = LogitsStore.open(store_dir, expect={
            "tokenizer_hash": data.tokenizer_hash, "data_hash": data.hash, "seq_len": data.seq_len,
            "vocab_size": model.config.vocab_size, "teacher_hash": cfg["teacher_hash"],
            "truncation": trunc, **_stats_expected(tcfg.kd),
        })
        store.verify()
        if lg["source"] == "online":
            if lg.get("steps"):
                entries = store.window(steps=tuple(lg["steps"]))
            elif lg.get("window") == "first":
                entries = store.window(first_tokens=lg["tokens"])
            else:
                entries = store.window(last_tokens=lg["tokens"])
            examples = store.entry_sequence_ids()[entries]
        teacher = StoreTeacher(store, trunc, entries=entries)
        pretrained = cfg.get("teacher_pretrained")
        val_teacher = LiveTeacher(_teacher_model(pretrained, cfg["teacher_hash"], artifacts, device),
                                  trunc if not trunc.sampled else Truncation(),  # sampled: held-out KL at the default cut
                                  gammas=store.gammas, t_norms=store.t_norms, memoize=True)
    evaluate = _evaluator(cfg, data, artifacts, device, val_teacher=val_teacher,
                          total_tokens=_total_tokens(tcfg, data))
    result = train(tcfg, model, data, run_dir=out_dir, teacher=teacher, report=rec.report,
                   evaluator=evaluate, examples=examples)
    if result.export_dir is not None:
        rec.artifact("export", result.export_dir)


RUNNERS: dict[str, Runner] = {
    "data": run_data,
    "teacher": run_teacher,
    "logits": run_logits,
    "student": run_student,
    "baseline": run_student,
}
