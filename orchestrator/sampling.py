"""Sampled KD (core.sampled_kd) in a study: the rules a sampled student must meet, and the offline
stores that serve sampled students.

A student selects sampled KD with ``kd: {samples: N}`` (optionally ``kd.proposal_temperature``);
its config's ``logits`` then carries the sampling (``core.config.Truncation``). A sampled store
serves exactly its own sampling and a truncated store none, so a study gets one truncated store
per teacher (``expand.logits_spec``, when any student reads truncation) plus one store per
distinct (teacher, samples, proposal_temperature) (``sampled_logits_specs``). A sampled store's
config is the study's store config with ``top_p_max`` 1 and ``top_k_max`` N (a row keeps at most
N distinct ids: the store header's p_max/k_max), its tokens those of its own readers, and a
``sampling: {samples, proposal_temperature, seed}`` record that a truncated store never has (so
every existing store hash is unchanged).
"""
from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

from core.config import SAMPLING_SEED, KDConfig, Truncation, check_sampled_kd
from core.settings import ConfigError, build_from, yaml_name
from orchestrator.expand import LogitsSpec, expand, logits_spec
from orchestrator.identity import unit_hash
from orchestrator.schema import RunConfig, Study, to_core

__all__ = ["sampling_of", "sampled_run_problems", "sampled_logits_specs"]


def sampling_of(config: dict[str, Any]) -> Truncation | None:
    """The sampling rule a resolved student config reads (None: truncation, online or LM-only)."""
    logits = config.get("logits") or {}
    if logits.get("samples") is None:
        return None
    return build_from(Truncation, logits)


def sampled_run_problems(study: Study, run: RunConfig) -> list[tuple[str, str]]:
    """(run-relative path, problem) for each rule a student with ``kd.samples`` breaks."""
    out = []
    samples = run.kd.samples
    if run.logits_source.kind != "offline":
        out.append(("kd.samples", f"needs an offline store (logits_source: offline); an online capture keeps "
                                  f"truncated rows, not samples; got {samples} with logits_source "
                                  f"{run.logits_source.kind}"))
    try:
        check_sampled_kd(to_core(run.kd, KDConfig))
    except ConfigError as exc:
        names = {f.name: yaml_name(f) for f in dataclasses.fields(KDConfig)}
        out.append((f"kd.{names.get(exc.field, exc.field)}", exc.problem))
    if study.logits.format_version != 1:
        out.append(("kd.samples", f"needs logits.format_version 1 (a sampled store holds importance weights, "
                                  f"which format 2 cannot code); got {study.logits.format_version}"))
    return out


def sampled_logits_specs(study: Study, teacher: str) -> list[tuple[Truncation, LogitsSpec]]:
    """The sampled offline stores of ``teacher``: one per distinct sampling its students read, in
    order of first use."""
    readers: dict[Truncation, list[int]] = {}
    for trial in expand(study):
        rule = sampling_of(trial.config)
        if trial.config["teacher"] == teacher and rule is not None:
            readers.setdefault(rule, []).append(trial.config["tokens"])
    if not readers:
        return []
    spec = logits_spec(study, teacher)
    out = []
    for rule, tokens in readers.items():
        config = {**spec.config, "top_p_max": 1.0, "top_k_max": rule.samples, "num_tokens": max(tokens),
                  "sampling": {"samples": rule.samples, "proposal_temperature": rule.proposal_temperature,
                               "seed": SAMPLING_SEED}}
        out.append((rule, replace(spec, config=config, config_hash=unit_hash("logits", config))))
    return out
