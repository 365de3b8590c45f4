"""One declaration per setting: every field of every core config can be set from a study file,
arrives with its value in the object the worker builds, and leaves existing unit hashes alone
while it sits at its default; the shipped studies plan to the hashes pinned before the redesign."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from core.config import DataSpec, EvalConfig, KDConfig, LogitsStoreConfig, OptimizerConfig, TrainConfig, Truncation
from core.schedules import AlphaScheduleConfig, LRScheduleConfig
from core.settings import build, field_docs, yaml_name
from orchestrator import units
from orchestrator.plan import build_plan
from orchestrator.schema import explain
from orchestrator.study import load_study, validate_study

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "unit_hashes.json"

# A valid value other than the default for every field, with the companion settings it needs.
# A field added to a core config without an entry here fails test_every_field_has_a_value: add one.
VALUES: dict[type, dict[str, tuple]] = {
    DataSpec: {
        "source": ("some/corpus/*.txt", {}), "text_field": ("body", {}), "tokenizer": ("gpt2", {}),
        "vocab_size": (8192, {}), "seq_len": (64, {}), "val_fraction": (0.05, {}),
        "max_train_tokens": (123_456, {}), "max_documents": (99, {}), "max_corpus_bytes": (10_000_000, {}),
    },
    OptimizerConfig: {
        "lr": (1e-3, {}), "weight_decay": (0.05, {}), "betas": ([0.8, 0.99], {}), "eps": (1.0, {}),
        "grad_clip": (None, {}),
    },
    LRScheduleConfig: {
        "kind": ("wsd", {}), "warmup_frac": (0.02, {}), "warmup_steps": (7, {}),
        "stable_frac": (0.5, {"kind": "wsd"}), "decay_frac": (0.2, {"kind": "wsd"}), "min_ratio": (0.0, {}),
        "decay_shape": ("cosine", {"kind": "wsd"}),
    },
    AlphaScheduleConfig: {
        "kind": ("linear_dec", {}), "alpha": (0.6, {}), "alpha_min": (0.1, {"kind": "linear_inc"}),
        "period_steps": (20, {"kind": "period"}), "period_shape": ("triangle", {"kind": "period", "period_steps": 10}),
        "warmup_frac": (0.2, {"kind": "wsd_alpha"}), "stable_frac": (0.5, {"kind": "wsd_alpha"}),
        "decay_frac": (0.3, {"kind": "wsd_alpha"}),
    },
    KDConfig: {
        "kind": ("tvd", {}), "temperature": (2.0, {}), "student_temperature": (1.5, {}),
        "normalization": ("tail", {}), "adaptive": ("adakd_sd", {}), "t_norm": (3.0, {}),
        "wttm_gamma": (0.7, {}), "wttm_beta": (0.5, {}), "adakd_tau_min": (0.25, {}), "adakd_tau_max": (4.0, {}),
        "adakd_sd_ref": (2.5, {}), "scale_by_temperature_sq": (True, {}),
    },
    Truncation: {"top_p": (0.8, {}), "top_k": (50, {}), "samples": (8, {}),
                 "proposal_temperature": (2.0, {"samples": 8})},
    TrainConfig: {
        "tokens": (655_360, {}), "batch_size": (8, {}), "micro_batch_size": (4, {}), "seed": (7, {}),
        "nonfinite_from_step": (3, {}), "max_nonfinite_steps": (2, {}), "bf16": (False, {}), "fused_loss": (False, {}),
        "log_every_steps": (3, {}), "checkpoint_every_steps": (11, {}), "checkpoint_every_s": (5.0, {}),
    },
    EvalConfig: {
        "every_tokens": (65_536, {}), "heldout_sequences": (8, {}), "builtin_tasks": (["pdspace_cloze"], {}),
        "tasks": (["hellaswag"], {}), "limit": (10, {}), "final_only": (False, {}),
        "tasks_every_tokens": (131_072, {}), "task_examples": (50, {}), "task_seed": (3, {}), "batch_size": (4, {}),
    },
    LogitsStoreConfig: {
        "top_p_max": (0.99, {}), "top_k_max": (200, {}), "gammas": ([0.5, 0.8], {}), "t_norms": ([1.5], {}), "shard_tokens": (65_536, {}),
        "format_version": (2, {}), "target_kl": (1e-3, {}),
        "batch_size": (4, {}),
    },
}

# Where each config sits in a study file, and which object the worker builds it into.
SECTIONS = {
    DataSpec: ("data", lambda u: build(DataSpec, u["student"]["data"])),
    OptimizerConfig: ("base.optimizer", lambda u: units.train_config(u["student"], "cpu").optimizer),
    LRScheduleConfig: ("base.lr_schedule", lambda u: units.train_config(u["student"], "cpu").lr_schedule),
    AlphaScheduleConfig: ("base.alpha", lambda u: units.train_config(u["student"], "cpu").alpha_schedule),
    KDConfig: ("base.kd", lambda u: units.train_config(u["student"], "cpu").kd),
    Truncation: ("base.kd", lambda u: units.truncation(u["student"])),
    TrainConfig: ("base", lambda u: units.train_config(u["student"], "cpu")),
    EvalConfig: ("eval", lambda u: units.eval_config(u["student"])),
    LogitsStoreConfig: ("logits", lambda u: units.store_config(u["logits"])),
}

BASE = {"teachers": {"t1": {"size": "d32l2", "tokens": 2_000_000}},
        "base": {"teacher": "t1", "tokens": 1_000_000}}


def _study_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("in_study", True)
            and not dataclasses.is_dataclass(_declared(cls, f))]


def _declared(cls: type, f: dataclasses.Field):
    import typing

    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else hint


def _set(tree: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[last] = value


def _units(study_dict: dict) -> dict:
    plan = build_plan(validate_study(study_dict, name="settings"))
    out = {}
    for u in plan.units:
        out.setdefault(u.kind, u.config)
    return out


def test_every_field_has_a_value():
    for cls, values in VALUES.items():
        assert {f.name for f in _study_fields(cls)} == set(values), cls.__name__


@pytest.mark.parametrize("cls", list(VALUES), ids=lambda c: c.__name__)
def test_every_field_set_in_yaml_reaches_the_worker(cls):
    where, built = SECTIONS[cls]
    for f in _study_fields(cls):
        value, companions = VALUES[cls][f.name]
        study = json.loads(json.dumps(BASE))
        for name, other in companions.items():
            _set(study, f"{where}.{name}", other)
        _set(study, f"{where}.{yaml_name(f)}", value)
        got = getattr(built(_units(study)), f.name)
        want = tuple(value) if isinstance(got, tuple) else value
        assert got == want, f"{where}.{yaml_name(f)}: set {value!r}, the worker built {got!r}"


def test_every_setting_is_documented_in_explain():
    text = explain()
    for cls, (where, _) in SECTIONS.items():
        docs = field_docs(cls)
        for f in _study_fields(cls):
            path = f"{where}.{yaml_name(f)}".removeprefix("base.") if where != "base" else yaml_name(f)
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            assert path.split(".")[-1] in text


def test_a_new_setting_at_its_default_changes_no_hash(monkeypatch):
    """Adding a field (since >= 2) to a core config leaves every hash alone until it is set."""
    from core.settings import config_dict, setting

    before = {u.trial_id: u.config_hash for u in build_plan(load_study(ROOT / "studies" / "quickstart.yaml")).units}

    @dataclasses.dataclass(frozen=True)
    class KDWithNewField(KDConfig):
        label_smoothing: float = setting(0.0)
        """A new setting."""

    # Resolution builds the KD settings from this declaration.
    import orchestrator.expand as expand_mod

    monkeypatch.setattr(expand_mod, "KDConfig", KDWithNewField)
    assert "label_smoothing" not in config_dict(KDWithNewField())
    assert config_dict(KDWithNewField(label_smoothing=0.1))["label_smoothing"] == 0.1
    after = {u.trial_id: u.config_hash for u in build_plan(load_study(ROOT / "studies" / "quickstart.yaml")).units}
    assert after == before


def test_execution_settings_never_change_a_hash():
    plain = _units(BASE)["student"]
    study = json.loads(json.dumps(BASE))
    study["base"]["checkpoint_every_steps"] = 7
    study["logits"] = {"batch_size": 2}
    changed = _units(study)
    assert changed["student"]["execution"] == {"checkpoint_every_steps": 7}
    from orchestrator.identity import unit_hash

    assert unit_hash("student", changed["student"]) == unit_hash("student", plain)


@pytest.mark.parametrize("path", sorted(json.loads(GOLDEN.read_text())))
def test_shipped_studies_keep_their_unit_hashes(path):
    """Every unit of every shipped study plans to the hash it had before the config redesign,
    so a user's artifacts and results database stay valid."""
    golden = json.loads(GOLDEN.read_text())[path]
    plan = build_plan(load_study(ROOT / path))
    got = {u.trial_id: u.config_hash for u in plan.units} | {t: u.config_hash for t, u in plan.aliases}
    assert got == golden


def test_optimizer_eps_reaches_adamw(tmp_path):
    """The 0.1 bug: `optimizer: {eps: ...}` was validated, stored and hashed, then dropped by a
    hand mapper. Two baselines that differ only in eps now train to different losses."""
    import torch

    from core.data import prepare_data
    from core.models import build_model
    from core.trainer import train

    torch.set_num_threads(1)
    losses = {}
    for eps in (1e-8, 1.0):
        study = {"data": {"vocab_size": 512, "seq_len": 32, "max_corpus_bytes": 300_000},
                 "base": {"student": "d32l2", "tokens": 20 * 8 * 32, "batch_size": 8, "optimizer": {"eps": eps}},
                 "eval": {"builtin_tasks": []}}
        cfg = _units(study)["baseline"]
        assert cfg["optimizer"]["eps"] == eps
        tcfg = units.train_config(cfg, "cpu")
        data = prepare_data(build(DataSpec, cfg["data"]), tmp_path / "artifacts")
        model = build_model(cfg["student"], data.vocab_size, data.seq_len, seed=cfg["seed"])
        rows = []
        train(tcfg, model, data, run_dir=tmp_path / f"eps{eps}", export=False,
              report=lambda kind, row: rows.append(row) if kind == "metrics" and "lm_loss" in row else None)
        losses[eps] = rows[-1]["lm_loss"]
    # eps = 1 swamps sqrt(v) (~1e-3 here): updates are ~lr * m, orders of magnitude smaller.
    assert losses[1.0] > losses[1e-8] + 0.1, losses
