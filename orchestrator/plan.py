"""A study expanded into units of work (data, teachers, logits, students, baselines) with their
dependencies, sizes, FLOPs and time estimates; what already exists is marked for reuse.

Data regions: a teacher trained from scratch learns on the second half of the training
sequences; students, their baselines and offline logits use the first ones (as many as the
student's token budget needs), so a student learns on text its teacher never saw, as it would
with a pretrained teacher. Online logits are the teacher's own batches, so a student trained on
an online window sees the teacher's sequences, as in the paper.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import LogitsStoreConfig
from core.memory import (GB, MemoryEstimate, TeacherFootprint, inference_memory, pretrained_teacher, scratch_teacher,
                         training_memory)
from core.sizes import get_size, param_counts
from core.logits_codec import distortion_summary
from core.utils import DATA_FORMAT_VERSION, artifacts_root
from orchestrator.identity import logits_unit_hash, unit_hash
from orchestrator.sampling import sampling_of

# Throughput assumptions for estimates (stated in `pdspace plan`'s output).
CPU_FLOPS_PER_S = 4.0e10  # one trial on one CPU core, fp32, measured range 3-6e10 (CPU_SCALE.md)
GPU_PEAK_FLOPS = 989e12  # H100 SXM dense bf16
GPU_MFU = 0.40
LOGITS_STORE_BYTES_PER_ENTRY = {1: 4.25, 2: 2.1}
"""Bytes per stored entry at V = 151,552 by store format: 18-bit index + 16-bit value; format 2
measured 1.0-2.1 (bench/logits_store.py; 2.1 without a shard's shared-id rank table)."""
EST_KEPT_PER_TOKEN = 25  # the paper's ~150 bytes/token at top-0.95-100; CPU teachers keep more


@dataclass(frozen=True)
class Unit:
    """One unit of work; ``config_hash`` is its identity in the database and artifact cache."""

    kind: str
    trial_id: str
    config: dict
    config_hash: str
    deps: tuple[str, ...] = ()
    resources: dict = field(default_factory=lambda: {"cpus": 1, "gpus": 0, "workers": 1})
    factor: str | None = None
    value: str | None = None
    estimate: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["deps"] = list(self.deps)
        return out


@dataclass
class Plan:
    study: Any
    units: list[Unit]
    aliases: list[tuple[str, Unit]]
    """(trial id, unit) for study trials that share a unit with another trial id."""

    def by_hash(self) -> dict[str, Unit]:
        return {u.config_hash: u for u in self.units}


def _estimate(size: str, vocab_size: int, seq_len: int, tokens: int, gpus: float, workers: int,
              forward_only: bool = False) -> dict[str, Any]:
    counts = param_counts(size, vocab_size, seq_len)
    # 6N + attention per trained token, plus the output layer (2·V·d forward, x3 with backward),
    # which dominates at CPU sizes.
    d = get_size(size).hidden
    per_token = counts.flops_per_token + 6 * vocab_size * d
    flops = per_token * tokens / (3 if forward_only else 1)
    if gpus > 0:
        seconds = flops / (GPU_PEAK_FLOPS * GPU_MFU * max(gpus * workers, 1))
    else:
        seconds = flops / (CPU_FLOPS_PER_S * max(workers, 1))
    return {"size": size, "num_params": counts.num_params,
            "num_non_embedding_params": counts.num_non_embedding_params,
            "flops_per_token": counts.flops_per_token, "tokens": tokens, "flops": flops,
            "seconds": seconds, "gpu_hours": seconds * gpus * workers / 3600 if gpus else 0.0}


@functools.lru_cache(maxsize=None)
def _pretrained_config(name: str) -> dict | None:
    """A pretrained model's config.json from its local directory or the Hugging Face cache (never
    the network); None when neither has it."""
    path = Path(name).expanduser() / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, "config.json")
        except Exception:  # noqa: BLE001 - not a hub id, no hub client: unknown
            found = None
        if not isinstance(found, str):
            return None
        path = Path(found)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _teacher_footprint(name: str, spec: dict, vocab_size: int) -> TeacherFootprint | None:
    """What teacher ``name`` occupies on a device; None for a pretrained one whose config.json is
    not on this machine."""
    if spec.get("origin") == "scratch":
        return scratch_teacher(name, spec["size"], vocab_size)
    config = _pretrained_config(spec["pretrained"])
    return pretrained_teacher(name, config) if config else None


def _memory(est: MemoryEstimate) -> dict[str, Any]:
    return {"memory_bytes": est.peak_bytes, "memory_parts": est.parts, "memory_phase": est.phase}


def _training_memory(cfg: dict, size: str, vocab_size: int, seq_len: int, resources: dict, *,
                     teacher: TeacherFootprint | None, capture: bool = False) -> dict[str, Any]:
    """core.memory.training_memory of a teacher, student or baseline unit, on one of its workers."""
    on_gpu = resources["gpus"] > 0
    workers = int(resources["workers"])
    bf16 = on_gpu if cfg.get("bf16") is None else bool(cfg["bf16"])
    fused = False if capture else (cfg.get("execution") or {}).get("fused_loss")  # None: as the trainer decides
    share = max(1, cfg["batch_size"] // workers)  # the trainer's per-worker batch and micro-batch
    micro = min(cfg.get("micro_batch_size") or share, share)
    ev = cfg.get("eval") or {}
    est = training_memory(size, vocab_size, seq_len, micro, workers=workers, bf16=bf16, on_gpu=on_gpu, fused=fused,
                          eval_batch_size=ev.get("batch_size", 16), heldout_sequences=ev.get("heldout_sequences", 64),
                          teacher=teacher, teacher_top_k=(cfg.get("logits") or {}).get("samples")
                          or (cfg.get("logits") or {}).get("top_k") or 100)
    return _memory(est)


def _logits_unit(name: str, label: str | None, spec: Any, tspec: dict, footprint: TeacherFootprint | None,
                 data_unit: Unit, teacher_units: dict[str, Unit], vocab: int, seq_len: int,
                 resources: dict) -> Unit:
    """The extraction unit of one offline store of teacher ``name`` (``label``: its sampling, or
    None for the truncated store), with its time, memory and size estimates."""
    deps = [data_unit.config_hash] + ([teacher_units[name].config_hash] if name in teacher_units else [])
    est = {}
    if tspec.get("size"):
        est = _estimate(tspec["size"], vocab, seq_len, spec.config["num_tokens"] or 0,
                        resources["gpus"], 1, forward_only=True)
    if footprint is not None:
        batch = (spec.config.get("execution") or {}).get("batch_size", LogitsStoreConfig.batch_size)
        est.update(_memory(inference_memory(footprint, vocab, seq_len, batch, size=tspec.get("size"),
                                            on_gpu=resources["gpus"] > 0)))
    est["bytes_per_token"] = store_bytes_per_token(spec.config, vocab)
    est["store_bytes"] = (spec.config["num_tokens"] or 0) * est["bytes_per_token"]
    logits_hash = logits_unit_hash(spec.config_hash, spec.config["num_tokens"])
    trial_id = f"logits:{name}" + (f":{label}" if label else "")
    return Unit(kind="logits", trial_id=trial_id, config=spec.config, config_hash=logits_hash, deps=tuple(deps),
                resources={**resources, "workers": 1}, estimate=est)


def store_bytes_per_token(config: dict, vocab_size: int) -> float:
    """Estimated entry bytes per token of a logits store config: kept entries times the format's
    bytes per entry (LOGITS_STORE_BYTES_PER_ENTRY, at V = 151,552). A truncated store keeps
    min(top_k_max, EST_KEPT_PER_TOKEN) entries; a sampled one at most its samples (its distinct
    draws). The per-row statistics (4 bytes each) are not included."""
    sampling = config.get("sampling")
    kept = sampling["samples"] if sampling else min(config["top_k_max"], EST_KEPT_PER_TOKEN)
    return kept * LOGITS_STORE_BYTES_PER_ENTRY[config.get("format_version", 1)]


def build_plan(study: Any, artifacts: Path | None = None) -> Plan:
    """Expand ``study`` (orchestrator.study.Study) into units in dependency order."""
    res = study.resources
    resources = {"cpus": res.cpus_per_trial, "gpus": res.gpus_per_trial, "workers": res.workers_per_trial}
    data_spec = study.data_spec()
    vocab = data_spec.get("vocab_size") or 4096
    seq_len = data_spec["seq_len"]
    data_cfg = {"kind": "data", "data": data_spec, "data_format": DATA_FORMAT_VERSION}
    data_unit = Unit(kind="data", trial_id="data", config=data_cfg, config_hash=unit_hash("data", data_cfg),
                     resources={"cpus": 1, "gpus": 0, "workers": 1})
    units: list[Unit] = [data_unit]
    trials = study.trials()
    teachers = study.teacher_specs()
    teacher_units: dict[str, Unit] = {}
    for name, spec in teachers.items():
        if spec.config.get("origin") != "scratch":
            continue
        est = _estimate(spec.config["size"], vocab, seq_len, spec.config["tokens"], resources["gpus"],
                        resources["workers"])
        est.update(_training_memory(spec.config, spec.config["size"], vocab, seq_len, resources, teacher=None,
                                    capture=spec.config["online"]["capture"]))
        u = Unit(kind="teacher", trial_id=f"teacher:{name}", config=spec.config, config_hash=spec.config_hash,
                 deps=(data_unit.config_hash,), resources=resources, estimate=est)
        teacher_units[name] = u
    footprints = {name: _teacher_footprint(name, spec.config, vocab) for name, spec in teachers.items()}
    # One truncated store per teacher (when a student reads truncation) and one per sampling
    # (orchestrator.sampling), keyed (teacher, sampling label or None).
    logits_units: dict[tuple[str, str | None], Unit] = {}
    for name in teachers:
        specs = []
        if any(t.config["teacher"] == name and (t.config["logits"] or {}).get("source") == "offline"
               and sampling_of(t.config) is None for t in trials):
            specs.append((None, study.logits_spec(name)))
        specs += [(rule.label, spec) for rule, spec in study.sampled_logits_specs(name)]
        for label, spec in specs:
            logits_units[(name, label)] = _logits_unit(name, label, spec, teachers[name].config, footprints[name],
                                                       data_unit, teacher_units, vocab, seq_len, resources)
    seen: dict[str, Unit] = {}
    aliases: list[tuple[str, Unit]] = []
    trial_units: list[Unit] = []
    for t in trials:
        if t.config_hash in seen:
            aliases.append((t.trial_id, seen[t.config_hash]))
            continue
        cfg = dict(t.config)
        cfg["baseline_hash"] = t.baseline_hash
        deps = [data_unit.config_hash]
        teacher = cfg.get("teacher")
        if teacher:
            cfg["teacher_pretrained"] = teachers[teacher].config.get("pretrained")
            if teacher in teacher_units:
                deps.append(teacher_units[teacher].config_hash)
            if cfg["logits"]["source"] == "offline":
                rule = sampling_of(cfg)
                store = logits_units[(teacher, rule.label if rule is not None else None)]
                deps.append(store.config_hash)
                cfg["logits_hash"] = store.config_hash
        est = _estimate(cfg["student"], vocab, seq_len, cfg["tokens"], resources["gpus"], resources["workers"])
        cfg.update(num_params=est["num_params"], num_non_embedding_params=est["num_non_embedding_params"],
                   flops_per_token=est["flops_per_token"])
        # A KD student holds its teacher on its own device for the held-out evaluation.
        footprint = footprints.get(teacher) if teacher else None
        est.update(_training_memory(cfg, cfg["student"], vocab, seq_len, resources, teacher=footprint))
        if teacher and footprint is None:
            est["memory_note"] = (f"teacher {teacher}'s weights are not counted: the config.json of "
                                  f"{teachers[teacher].config.get('pretrained')!r} is not on this machine")
        u = Unit(kind=t.role, trial_id=t.trial_id, config=cfg, config_hash=t.config_hash, deps=tuple(deps),
                 resources=resources, factor=t.factor, value=t.value, estimate=est)
        seen[t.config_hash] = u
        trial_units.append(u)
    # Baselines first: they need no teacher, so they run beside it.
    trial_units.sort(key=lambda u: 0 if u.kind == "baseline" else 1)
    units += list(teacher_units.values()) + list(logits_units.values()) + trial_units
    return Plan(study=study, units=units, aliases=aliases)


def prepared_train_sequences(study: Any, artifacts: Path | None) -> int | None:
    """Training sequences of the study's data when it is already prepared under ``artifacts``
    (read from its manifest, matched by spec: no tokenisation), else None."""
    if artifacts is None:
        return None
    spec = study.data_spec()
    for manifest in sorted((Path(artifacts) / "data").glob("*/manifest.json")):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if m.get("spec") == spec:
            return int(m["splits"]["train"]["num_sequences"])
    return None


def region_problems(plan: Plan, num_train_sequences: int) -> list[tuple[str, str]]:
    """(trial id, problem) for each student, baseline or offline logits unit that would read
    sequences a teacher trained from scratch learns on (see the module docstring: students read
    the first half of the training sequences, such a teacher the second). Pretrained teachers
    are exempt: their training text is unknown, and none of the study's is theirs."""
    scratch = [u for u in plan.units if u.kind == "teacher"]
    if not scratch:
        return []
    seq_len = plan.study.data_spec()["seq_len"]
    half = num_train_sequences // 2
    out = []
    for u in plan.units:
        if u.kind == "logits":
            tokens = u.config.get("num_tokens") or num_train_sequences * seq_len
        elif u.kind in ("student", "baseline") and (u.config.get("logits") or {}).get("source") != "online":
            tokens = u.config["tokens"]
        else:
            continue  # online windows train on the teacher's own batches, as in the paper
        need = -(-int(tokens) // seq_len)
        if need > half:
            teachers = ", ".join(t.trial_id.removeprefix("teacher:") for t in scratch)
            out.append((u.trial_id, (
                f"needs {int(tokens):,} tokens ({need:,} sequences of {seq_len}), but the student region, the "
                f"first half of the training data that the scratch teacher ({teachers}) never sees, holds "
                f"{half:,} sequences ({half * seq_len:,} tokens); lower its tokens, give the study more "
                f"text (a larger data.source or data.max_train_tokens), or use a pretrained teacher")))
    return out


def check_regions(plan: Plan, artifacts: Path | None) -> bool:
    """Refuse (StudyError, exit 2 on the CLI) a plan whose students would read a scratch teacher's
    training text. Returns False when the data is not prepared yet (nothing to check against)."""
    n = prepared_train_sequences(plan.study, artifacts)
    if n is None:
        return False
    problems = region_problems(plan, n)
    if problems:
        from orchestrator.errors import StudyError

        raise StudyError([(f"{plan.study.name}: {trial}", problem) for trial, problem in problems])
    return True


def existing_status(db_url: str | None, plan: Plan) -> dict[str, str]:
    """config_hash -> status for the plan's units already in the database (any study)."""
    if not db_url:
        return {}
    from results import unit_statuses

    return unit_statuses(db_url, [u.config_hash for u in plan.units])


def _human(n: float, unit: str = "") -> str:
    for suffix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def format_plan(plan: Plan, db_url: str | None = None) -> str:
    """The table `pdspace plan` prints."""
    status = existing_status(db_url, plan)
    gpu = plan.units[0] is not None and any(u.resources["gpus"] for u in plan.units)
    lines = [f"study {plan.study.name}: {len(plan.units)} units ({len(plan.aliases)} trial ids share a unit)"]
    header = (f"{'unit':<44} {'kind':<8} {'model':<7} {'params':>8} {'tokens':>8} {'FLOPs':>8} {'est.':>9} "
              f"{'mem/dev':>9}  state")
    lines += [header, "-" * len(header)]
    total_s = total_flops = gpu_hours = store = 0.0
    for u in plan.units:
        e = u.estimate
        st = status.get(u.config_hash)
        state = {"completed": "reuse (done)", "running": "resume", "failed": "retry", "pending": "resume"}.get(
            st or "", "new")
        if st != "completed":
            total_s += e.get("seconds", 0.0)
            gpu_hours += e.get("gpu_hours", 0.0)
        total_flops += e.get("flops", 0.0)
        store += e.get("store_bytes", 0.0)
        lines.append(
            f"{u.trial_id[:44]:<44} {u.kind:<8} {e.get('size', '-'):<7} "
            f"{_human(e['num_params']) if 'num_params' in e else '-':>8} "
            f"{_human(e['tokens']) if e.get('tokens') else '-':>8} "
            f"{_human(e['flops']) if e.get('flops') else '-':>8} "
            f"{_duration(e['seconds']) if e.get('seconds') else '-':>9} {_memory_cell(e):>9}  {state}"
        )
    lines.append("-" * len(header))
    lines.append(f"total FLOPs {_human(total_flops)}; logits store on disk ~{_human(store, 'B')}")
    if gpu:
        lines.append(f"to run: ~{gpu_hours:,.0f} GPU-hours (H100 bf16 at {GPU_MFU:.0%} MFU), "
                     f"~{_duration(total_s)} of wall time per trial slot")
    else:
        slots = plan.study.resources.max_concurrent or 2
        lines.append(f"to run: ~{_duration(total_s)} of single-core compute (at {CPU_FLOPS_PER_S:.0e} FLOP/s "
                     f"per trial), ~{_duration(total_s / slots)} with {slots} trials at once, plus start-up")
    lines += _memory_lines(plan)
    lines += _store_lines(plan)
    return "\n".join(lines)


def _store_lines(plan: Plan) -> list[str]:
    """The format of each logits store, and the distortion a compact store measured (its manifest)."""
    root = artifacts_root(create=False)
    out = []
    for u in plan.units:
        if u.kind != "logits":
            continue
        version = u.config.get("format_version", 1)
        text = f"{u.trial_id}: store format {version}" + (
            " (exact 16-bit values)" if version == 1
            else f" (compact; target mean KL {u.config.get('target_kl', LogitsStoreConfig.target_kl):g})")
        sampling = u.config.get("sampling")
        rule = (f"sampled, {sampling['samples']} draws per token at proposal temperature "
                f"{sampling['proposal_temperature']:g}" if sampling else
                f"top-{u.config['top_p_max']:g}-{u.config['top_k_max']}")
        if "bytes_per_token" in u.estimate:
            text += f"; {rule}; ~{u.estimate['bytes_per_token']:.0f} B/token estimated"
        kept = [f"log U_γ at γ = {', '.join(f'{g:g}' for g in u.config['gammas'])}"] if u.config.get("gammas") else []
        if u.config.get("t_norms"):
            kept.append(f"NormKD's exact normaliser at t_norm = {', '.join(f'{t:g}' for t in u.config['t_norms'])}")
        if kept:
            text += "; per row, full-vocabulary " + " and ".join(kept)
        manifest = root / "logits" / u.config_hash / "store" / "manifest.json"
        measured = distortion_summary(json.loads(manifest.read_text()).get("shards", [])) \
            if version == 2 and manifest.exists() else None
        if measured is not None:
            text += (f"; measured KL(exact || stored): mean {measured['mean_kl']:.2e}, "
                     f"p99.9 {measured['p999_kl']:.2e} nats per position")
        out.append(text)
    return out


def _memory_cell(e: dict) -> str:
    if "memory_bytes" not in e:
        return "-"
    return f"{e['memory_bytes'] / GB:.1f}GB" + ("+?" if e.get("memory_note") else "")


def _memory_text(u: Unit) -> str:
    e = u.estimate
    return MemoryEstimate(e["memory_bytes"], e["memory_parts"], e["memory_phase"]).describe()


def _memory_lines(plan: Plan) -> list[str]:
    """What `pdspace plan` says under the table about memory per device (core.memory)."""
    sized = [u for u in plan.units if "memory_bytes" in u.estimate]
    if not sized:
        return []
    where = "GPU" if any(u.resources["gpus"] for u in sized) else "worker (host memory)"
    largest = max(sized, key=lambda u: u.estimate["memory_bytes"])
    lines = [f"peak memory per {where} (core.memory), largest {largest.trial_id}: {_memory_text(largest)}"]
    declared = plan.study.resources.gpu_memory_gb
    if declared is not None:
        over = [u for u in sized if u.estimate["memory_bytes"] > declared * GB]
        lines.append(f"resources.gpu_memory_gb = {declared:g}: " + (
            "every unit fits" if not over else f"{len(over)} unit(s) do not fit"))
    for note in dict.fromkeys(u.estimate["memory_note"] for u in sized if u.estimate.get("memory_note")):
        lines.append(f"+? {note}")
    return lines


def check_memory(plan: Plan) -> None:
    """Refuse (StudyError, exit 2 on the CLI) a plan with a unit whose estimated peak memory per
    device (core.memory) is larger than the declared ``resources.gpu_memory_gb``; nothing is
    checked when the study declares none."""
    declared = plan.study.resources.gpu_memory_gb
    if declared is None:
        return
    from orchestrator.errors import StudyError

    advice = {"logits": "lower logits.batch_size (the teacher's logits) or use devices with more memory"}
    training = ("lower micro_batch_size (activations) or eval.batch_size, train a smaller model, or use devices "
                "with more memory (every worker holds the whole model and its optimizer state: there is no sharding)")
    problems = [
        (f"{plan.study.name}: {u.trial_id}",
         f"needs ~{_memory_text(u)} per GPU, more than resources.gpu_memory_gb = {declared:g} GB; "
         f"{advice.get(u.kind, training)}")
        for u in plan.units if u.estimate.get("memory_bytes", 0) > declared * GB]
    if problems:
        raise StudyError(problems)
