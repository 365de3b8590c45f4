"""Study files: the strict schema, loading (include:, overrides) and expansion into trials.

A study YAML holds only what differs from the defaults below. ``load_study(path)`` returns a
validated ``Study``; ``expand(study)`` turns it into ``TrialSpec``s (students and their LM-only
baselines), each with a fully resolved config dict and a content hash. Every validation error
names the dotted path of the offending value (``sweeps[1].kd.top_p: must be in (0, 1] (got
1.5)``) and is raised as one ``StudyError``.

This module must stay cheap to import (``pdspace validate`` / ``plan``): no torch, no ray. The
KD and model-size constraints of ``core`` are mirrored here, and a test keeps them in sync.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterable, Literal, Mapping, Sequence, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    StrictBool,
    StrictStr,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from core.utils import DATA_FORMAT_VERSION, stable_hash
from orchestrator.errors import StudyError

__all__ = [
    "CONFIG_VERSION",
    "HASH_EXCLUDED_KEYS",
    "TEACHER_HASH_EXCLUDED_KEYS",
    "KNOWN_SIZES",
    "BUILTIN_TASKS",
    "Study",
    "TrialSpec",
    "TeacherSpec",
    "LogitsSpec",
    "StudyError",
    "load_study",
    "load_study_dict",
    "validate_study",
    "apply_overrides",
    "expand",
    "parse_yaml",
]

CONFIG_VERSION = 1
"""Bump when the meaning of a resolved config changes without its keys changing: every hash moves."""

HASH_EXCLUDED_KEYS = ("teacher", "baseline_hash")
"""Cosmetic or derived keys left out of a run's config_hash (the teacher's identity is in
``teacher_hash``; a study-local teacher name must not split a run shared across studies)."""

TEACHER_HASH_EXCLUDED_KEYS = ("name", "eval")
"""Left out of a teacher's config_hash: its study-local name, and how it is evaluated (the
costliest unit is never retrained because an evaluation setting changed)."""

KNOWN_SIZES = (
    "330M", "670M", "1.9B", "3.8B", "6.8B",
    "d32l2", "d64l3", "d96l3", "d128l4", "d192l6", "d256l6", "d320l8",
)
"""Mirror of core.models.MODEL_SIZES (kept in sync by a test; importing core.models needs torch)."""

BUILTIN_TASKS = ("pdspace_nextline", "pdspace_cloze")
"""The evaluation tasks core.lmeval builds from the held-out documents."""

KD_ONLY_FIELDS = ("teacher", "kd", "alpha", "logits_source")
"""Run fields that an LM-only baseline ignores: a baseline id keeps every other varied field."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# --------------------------------------------------------------------------------------------
# Values and their messages

def _fmt(value: Any) -> str:
    """Compact, stable rendering of a value for trial ids: 0.0005, 2, true, null, [1,2]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def _show(value: Any) -> str:
    """A value as it reads in an error message: strings quoted, long values cut."""
    text = repr(value) if isinstance(value, str) else _fmt(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(message: str) -> PydanticCustomError:
    # The message goes through the context so that braces in it are never format fields.
    return PydanticCustomError("pdspace", "{message}", {"message": message})


def _integral(value: Any) -> Any:
    """Accept 2e6 (a float in YAML) for an integer field when it is a whole number."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _bounds(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False) -> AfterValidator:
    if lo is not None and hi is not None:
        rule = f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        rule = f"must be {'>' if lo_open else '>='} {lo}"
    else:
        rule = f"must be {'<' if hi_open else '<='} {hi}"

    def check(value: float) -> float:
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and (value >= hi if hi_open else value > hi)
        if too_low or too_high or (isinstance(value, float) and math.isnan(value)):
            raise _fail(f"{rule} (got {_show(value)})")
        return value

    return AfterValidator(check)


Int = Annotated[int, BeforeValidator(_integral), Strict()]
Float = Annotated[float, Strict()]  # strict: ints are accepted, strings and bools are not
Str = StrictStr
Bool = StrictBool
PosInt = Annotated[Int, _bounds(1)]
NonNegInt = Annotated[Int, _bounds(0)]
PosFloat = Annotated[Float, _bounds(0, lo_open=True)]
NonNegFloat = Annotated[Float, _bounds(0)]
Prob = Annotated[Float, _bounds(0, 1, lo_open=True)]  # (0, 1]
Unit = Annotated[Float, _bounds(0, 1)]  # [0, 1]
Beta = Annotated[Float, _bounds(0, 1, hi_open=True)]  # [0, 1)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------------------------
# Schema: every field has its default here; a study file holds only what differs.

class DataConfig(_Section):
    """The corpus, its tokenizer and packing (mirrors core.data.DataSpec)."""

    source: Str = "builtin:python-stdlib"
    """`builtin:python-stdlib`, a local text/JSONL/Parquet file or glob, or `hf:<name>[:<config>]`."""
    text_field: Str = "text"
    """Field holding the text in JSONL/Parquet/HF rows."""
    tokenizer: Str | None = None
    """None: train a byte-level BPE on the corpus; else a HF tokenizer dir or hub id (required with
    a pretrained teacher: students must share its vocabulary)."""
    vocab_size: Annotated[Int, _bounds(257)] = 4096
    """Vocabulary size of a trained BPE, special tokens included (ignored when `tokenizer` is given)."""
    seq_len: Annotated[Int, _bounds(8)] = 128
    """Tokens per packed training sequence."""
    val_fraction: Annotated[Float, _bounds(0, 1, lo_open=True, hi_open=True)] = 0.02
    """Fraction of documents held out for validation (chosen by a hash of each document)."""
    max_train_tokens: PosInt | None = None
    """Cap on the packed training stream; None keeps the whole corpus."""
    max_documents: PosInt | None = None
    """Use only the first N non-empty documents in corpus order (small test corpora)."""
    max_corpus_bytes: PosInt | None = None
    """Use only the leading documents whose sizes sum to at most this many bytes."""


class OptimizerConfig(_Section):
    """AdamW settings (core.trainer.TrainConfig's lr, weight_decay, betas, eps, grad_clip)."""

    lr: PosFloat = 3e-3
    """Peak learning rate."""
    weight_decay: NonNegFloat = 0.1
    """Decoupled weight decay."""
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    """Adam's (beta1, beta2)."""
    eps: PosFloat = 1e-8
    """Adam's epsilon."""
    grad_clip: PosFloat | None = 1.0
    """Clip the global gradient norm to this; None disables clipping."""


DEFAULT_WARMUP_FRAC = 0.05
DEFAULT_DECAY_FRAC = 0.1  # core.schedules' default when neither stable_frac nor decay_frac is given


class LRScheduleConfig(_Section):
    """Learning-rate schedule (mirrors core.schedules.LRScheduleConfig): linear warm-up, then
    cosine to min_ratio, warm-up-stable-decay, or constant."""

    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    """cosine: decay to min_ratio; wsd: stable at the peak, then decay to min_ratio over the last
    decay_frac; constant: the peak after warm-up."""
    warmup_frac: Unit | None = None
    """Warm-up as a fraction of the run's steps; None: 0.05, unless warmup_steps is given."""
    warmup_steps: NonNegInt | None = None
    """Warm-up in optimizer steps (instead of warmup_frac)."""
    stable_frac: Unit | None = None
    """wsd: fraction of the steps at the peak after warm-up (instead of decay_frac)."""
    decay_frac: Unit | None = None
    """wsd: fraction of the steps spent decaying; None: 0.1, unless stable_frac is given."""
    min_ratio: Unit = 0.1
    """Final LR as a fraction of the peak (cosine and wsd)."""
    decay_shape: Literal["linear", "cosine"] = "linear"
    """wsd: shape of the decay."""


ALPHA_KINDS = ("constant", "linear_inc", "linear_dec", "period", "wsd_alpha", "wsd_beta")


class AlphaScheduleConfig(_Section):
    """The KD share α of L = (1-α)·L_lm + α·L_kd over training (mirrors
    core.schedules.AlphaScheduleConfig, whose docstring has the exact shapes). α stays within
    [alpha_min, alpha]. A plain number in YAML (`alpha: 0.9`) means `{kind: constant, alpha: 0.9}`;
    a sweep or grid value of `alpha` replaces the whole schedule.
    """

    sweep_replaces: ClassVar[bool] = True

    kind: Literal["constant", "linear_inc", "linear_dec", "period", "wsd_alpha", "wsd_beta"] = "constant"
    """constant: α = alpha; linear_inc: alpha_min -> alpha; linear_dec: alpha -> alpha_min;
    period: a wave of period_steps between alpha and alpha_min (KD first); wsd_alpha: warm-up
    alpha_min -> alpha, stable, decay to alpha_min; wsd_beta: the same shape on β = 1 - α."""
    alpha: Unit = 0.9
    """The high KD share (the only value of kind constant)."""
    alpha_min: Unit = 0.0
    """The low value of the non-constant kinds."""
    period_steps: Annotated[Int, _bounds(2)] | None = None
    """period: steps per period (required there, refused elsewhere)."""
    period_shape: Literal["square", "triangle"] = "square"
    """period: square (alpha, then alpha_min, half a period each) or triangle."""
    warmup_frac: Unit = 0.1
    """wsd_alpha / wsd_beta: warm-up fraction of the steps."""
    stable_frac: Unit | None = None
    """wsd_alpha / wsd_beta: stable fraction (instead of decay_frac)."""
    decay_frac: Unit | None = None
    """wsd_alpha / wsd_beta: decay fraction; None: 0.1, unless stable_frac is given."""

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not 0 <= value <= 1:
                raise _fail(f"must be in [0, 1] (got {_show(value)})")
            return {"kind": "constant", "alpha": value}
        if value is None or isinstance(value, (bool, str, list)):
            raise _fail(
                f"must be a number in [0, 1] or a mapping with kind: {'|'.join(ALPHA_KINDS)} "
                f"(got {_show(value)})"
            )
        return value


class KDLossConfig(_Section):
    """The distillation loss against the truncated teacher. Mirrors core.losses.KDConfig (whose
    `kind` is `loss` here) plus top_p/top_k, the truncation read from the logits store."""

    loss: Literal["nll", "kld", "mse", "reverse_kld", "jsd", "tvd"] = "kld"
    """D in α·D(student, teacher): soft cross-entropy, forward KL, MSE, reverse KL, JS, TV."""
    top_p: Prob = 0.95
    """Keep the smallest prefix of the teacher's sorted distribution holding this mass ..."""
    top_k: PosInt = 100
    """... capped at this many tokens (the paper's top-p-k)."""
    temperature: PosFloat = 1.0
    """Teacher-side τ, dividing the kept teacher log-probs (adakd_sd: the base τ)."""
    student_temperature: PosFloat = 1.0
    """Student-side τ (the paper does not say whether it used one; 1 = none)."""
    normalization: Literal["renormalize", "tail"] = "renormalize"
    """renormalize over the kept entries (the paper), or keep the dropped mass as one tail bucket."""
    adaptive: Literal["normkd", "wttm", "adakd_sd", "adakd_h"] | None = None
    """Per-position temperature from teacher statistics (core.losses documents each); None: static τ."""
    t_norm: PosFloat = 2.0
    """normkd: τ_T = t_norm · std(z_T), τ_S = t_norm · std(z_S)."""
    wttm_gamma: PosFloat = 0.8
    """wttm: teacher power γ; must be listed in logits.gammas."""
    wttm_beta: NonNegFloat = 1.0
    """wttm: weight β of the U_γ-weighted KD term."""
    adakd_tau_min: PosFloat = 0.5
    """adakd_sd / adakd_h: lower clip of the per-position τ."""
    adakd_tau_max: PosFloat = 2.0
    """adakd_sd / adakd_h: upper clip of the per-position τ."""
    adakd_sd_ref: PosFloat | None = None
    """adakd_sd: reference logit std; None: the micro-batch mean."""
    scale_by_temperature_sq: Bool = False
    """Multiply the KD term by τ² (Hinton); static τ and adakd_* only."""


class LogitsSourceConfig(_Section):
    """Where a student's teacher logits come from. `logits_source: offline` is shorthand; a sweep
    or grid value of `logits_source` replaces the whole section."""

    sweep_replaces: ClassVar[bool] = True

    kind: Literal["offline", "online"] = "offline"
    """offline: the converged teacher over the student's sequences (a logits store);
    online: the logits a from-scratch teacher captured while it trained."""
    window: Literal["first", "last"] = "last"
    """online: use the first or the last `tokens` of the teacher's run."""
    tokens: PosInt | None = None
    """online: window length in teacher-training tokens; None: the student's token budget."""
    steps: tuple[NonNegInt, NonNegInt] | None = None
    """online: an explicit teacher-step range [start, end) instead of window/tokens."""

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in ("offline", "online"):
                raise _fail(f"must be 'offline', 'online' or a mapping with kind: (got {_show(value)})"
                            + _did_you_mean(value, ("offline", "online")))
            return {"kind": value}
        if value is None or isinstance(value, (bool, int, float, list)):
            raise _fail(f"must be 'offline', 'online' or a mapping with kind: (got {_show(value)})")
        return value


class RunConfig(_Section):
    """One student run (the study's `base:`); sweeps and grids vary its fields."""

    student: Str = "d64l3"
    """Student size name (core.models.MODEL_SIZES)."""
    teacher: Str | None = None
    """Name of a teacher under `teachers:`; None: LM-only."""
    tokens: PosInt = 1_000_000
    """Training tokens."""
    batch_size: PosInt = 16
    """Sequences per optimizer step."""
    micro_batch_size: PosInt | None = None
    """Sequences per forward/backward (gradient accumulation); None: batch_size."""
    seed: NonNegInt = 0
    """Initialisation and data-order seed (overridden by the study's `seeds:`)."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """AdamW settings."""
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)
    """Learning-rate schedule."""
    alpha: Annotated[AlphaScheduleConfig, BeforeValidator(AlphaScheduleConfig.from_shorthand)] = Field(
        default_factory=AlphaScheduleConfig
    )
    """KD share: a number (constant) or a schedule."""
    kd: KDLossConfig = Field(default_factory=KDLossConfig)
    """Distillation loss and truncation."""
    logits_source: Annotated[LogitsSourceConfig, BeforeValidator(LogitsSourceConfig.from_shorthand)] = Field(
        default_factory=LogitsSourceConfig
    )
    """offline (default) or online teacher logits."""
    nonfinite_from_step: NonNegInt | None = None
    """Testing aid: make the loss non-finite from this step on, to exercise failure handling."""


class OnlineCaptureConfig(_Section):
    """Logits a from-scratch teacher writes while it trains (at no extra forward cost)."""

    capture: Bool = False
    """Write an online logits store during teacher training."""
    top_p: Prob | None = None
    """Truncation kept in the online store; None: logits.top_p_max."""
    top_k: PosInt | None = None
    """None: logits.top_k_max."""


SCRATCH_TEACHER_FIELDS = ("size", "tokens", "batch_size", "micro_batch_size", "seed", "optimizer",
                          "lr_schedule", "online")


class TeacherConfig(_Section):
    """A teacher: `{pretrained: <hub id or path>}`, or trained from scratch on the study's data."""

    pretrained: Str | None = None
    """Hugging Face hub id or local path of a pretrained causal LM; the other fields then do not apply."""
    size: Str = "d128l4"
    """From scratch: model size name."""
    tokens: PosInt = 2_000_000
    """From scratch: training tokens."""
    batch_size: PosInt = 16
    """From scratch: sequences per optimizer step."""
    micro_batch_size: PosInt | None = None
    """From scratch: sequences per forward/backward; None: batch_size."""
    seed: NonNegInt = 0
    """From scratch: seed."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """From scratch: AdamW settings."""
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)
    """From scratch: learning-rate schedule."""
    online: OnlineCaptureConfig = Field(default_factory=OnlineCaptureConfig)
    """From scratch: online logits capture."""


class LogitsConfig(_Section):
    """The offline logits store of each teacher: one store serves every p <= top_p_max, k <= top_k_max, τ."""

    top_p_max: Prob = 0.95
    """Largest top-p any student of the study reads."""
    top_k_max: PosInt = 100
    """Largest top-k any student reads."""
    gammas: list[PosFloat] = Field(default_factory=list)
    """WTTM γ values whose log Σ p^γ is stored per row (every kd.wttm_gamma used must be here)."""
    shard_tokens: PosInt = 262_144
    """Token positions per store shard (the unit of crash-safe resumption)."""
    batch_size: PosInt = 16
    """Sequences per teacher forward pass during extraction."""


class BaselinesConfig(_Section):
    """LM-only baselines."""

    auto: Bool = True
    """Plan the LM-only baseline (α = 0; same student, data, tokens, LR schedule, seed) of every KD trial."""


class EvalConfig(_Section):
    """What every student, baseline and teacher is evaluated on."""

    every_tokens: PosInt | None = None
    """Held-out evaluation interval in training tokens; None: 10 points per run."""
    heldout_sequences: PosInt = 64
    """Held-out sequences per evaluation (val_loss, teacher_kl, top1_agreement)."""
    builtin_tasks: list[Literal["pdspace_nextline", "pdspace_cloze"]] = Field(
        default_factory=lambda: list(BUILTIN_TASKS)
    )
    """Tasks built from the held-out documents (work on any corpus and tokenizer)."""
    tasks: list[Str] = Field(default_factory=list)
    """Standard lm-evaluation-harness tasks (e.g. hellaswag)."""
    limit: PosInt | None = None
    """Examples per lm-eval task; None: all."""
    final_only: Bool = True
    """Run the lm-eval tasks on the final checkpoint only (held-out loss is always periodic),
    unless tasks_every_tokens is set."""
    tasks_every_tokens: PosInt | None = None
    """Also run the lm-eval tasks every this many training tokens (at held-out evaluation points
    that are multiples of it); None: as final_only says."""
    task_examples: PosInt = 200
    """Examples built per built-in task."""
    task_seed: NonNegInt = 0
    """Seed of the built-in tasks' example selection."""
    batch_size: PosInt = 16
    """Sequences per forward pass during evaluation."""


class ResourcesConfig(_Section):
    """What each trial asks Ray for, and failure handling."""

    cpus_per_trial: PosFloat = 1
    """CPUs per worker of a trial."""
    gpus_per_trial: NonNegFloat = 0
    """GPUs per worker of a trial."""
    workers_per_trial: PosInt = 1
    """Data-parallel workers per trial (DDP)."""
    max_concurrent: PosInt | None = None
    """Trials at once; None: as many as resources allow."""
    max_retries: NonNegInt = 1
    """Retries of a failed unit before it is recorded as failed."""


class StorageConfig(_Section):
    """Where results go; None: $PDSPACE_DB or ./pdspace.db, $PDSPACE_HOME or ./artifacts."""

    db: Str | None = None
    """SQLAlchemy URL or SQLite file path."""
    artifacts: Str | None = None
    """Root folder of all artifacts (data, teachers, logits stores, checkpoints)."""


SweepValues = list[Any]


class Study(_Section):
    """A validated study. Build it with load_study / validate_study, expand it with expand()."""

    name: Str
    """Study name (unique in the database); defaults to the file's stem."""
    description: Str = ""
    """Free text shown in reports."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Corpus and tokenizer."""
    teachers: dict[Str, TeacherConfig] = Field(default_factory=dict)
    """Teachers by name."""
    logits: LogitsConfig = Field(default_factory=LogitsConfig)
    """Offline logits store parameters."""
    base: RunConfig = Field(default_factory=RunConfig)
    """The default student run."""
    sweeps: list[dict[Str, SweepValues]] = Field(default_factory=list)
    """One factor at a time from base: `- {kd.top_k: [1, 5, 50]}`; several keys in one entry
    vary together (zipped lists of equal length)."""
    grid: dict[Str, SweepValues] = Field(default_factory=dict)
    """Cartesian product from base: `{student: [d32l2, d64l3], kd.temperature: [1, 2]}`."""
    seeds: list[NonNegInt] | None = None
    """Repeat every trial with each seed (trial ids get `,seed=N`); None: base.seed once."""
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    """LM-only baselines."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation."""
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    """Per-trial resources."""
    storage: StorageConfig = Field(default_factory=StorageConfig)
    """Database and artifacts."""

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The study file this was loaded from (None when validated from a dict)."""
        return self._source

    def to_dict(self) -> dict:
        """The fully resolved study (every default filled in), JSON-able: the DB's `studies.spec`."""
        return self.model_dump(mode="json")

    @property
    def spec_hash(self) -> str:
        return stable_hash(self.to_dict())

    def data_spec(self) -> dict:
        """Keyword arguments of core.data.DataSpec."""
        return self.data.model_dump(mode="json")

    def teacher_specs(self, used_only: bool = True) -> dict[str, "TeacherSpec"]:
        """Resolved teachers by name; with used_only, only those a student trial distils from."""
        used = {t.config["teacher"] for t in expand(self)} if used_only else set(self.teachers)
        return {name: _teacher_spec(self, name) for name in self.teachers if name in used}

    def logits_spec(self, teacher: str) -> "LogitsSpec":
        """The offline logits store of `teacher` over this study's data."""
        if teacher not in self.teachers:
            raise StudyError([("teacher", f"{teacher!r} is not defined under teachers:"
                                          + _did_you_mean(teacher, self.teachers))])
        t = _teacher_spec(self, teacher)
        offline = [
            trial.config["tokens"] for trial in expand(self)
            if trial.config["teacher"] == teacher and trial.config["logits"]["source"] == "offline"
        ]
        config = {
            "config_version": CONFIG_VERSION,
            "kind": "logits",
            "teacher": teacher,
            "teacher_hash": t.config_hash,
            "pretrained": t.config.get("pretrained"),
            "data": self.data_spec(),
            "data_format": DATA_FORMAT_VERSION,
            "top_p_max": self.logits.top_p_max,
            "top_k_max": self.logits.top_k_max,
            "gammas": sorted(set(self.logits.gammas)),
            "shard_tokens": self.logits.shard_tokens,
            "batch_size": self.logits.batch_size,
            "num_tokens": max(offline) if offline else None,
        }
        # batch_size is throughput only; num_tokens is how far the store must extend (it grows,
        # resumably); neither changes the store's identity.
        identity = {k: v for k, v in config.items() if k not in ("teacher", "batch_size", "num_tokens")}
        return LogitsSpec(teacher=teacher, config=config, config_hash=stable_hash(identity))

    def trials(self) -> list["TrialSpec"]:
        return expand(self)


# --------------------------------------------------------------------------------------------
# Resolved units of work

@dataclass(frozen=True)
class TrialSpec:
    """One student or baseline run of a study, fully resolved.

    trial_id:      readable and stable within the study ("base", "top_k=50,seed=1",
                   "baseline:student=d64l3,seed=0"); unique in the study.
    factor:        the varied field(s) ("kd.top_k"; grid/zipped: "student,kd.temperature"); None for
                   base and auto baselines.
    value:         the value(s) as text ("50"; "d32l2,2"); None when factor is None.
    role:          "student" (distils from a teacher) or "baseline" (LM-only).
    config:        the resolved run config (plain JSON-able dict; do not mutate).
    config_hash:   stable_hash of config without HASH_EXCLUDED_KEYS; several trial ids may share one
                   (e.g. a sweep value equal to base): run each hash once.
    baseline_hash: config_hash of the matching LM-only run (None for a baseline, or when auto
                   baselines are off and the study has no such run).
    """

    trial_id: str
    factor: str | None
    value: str | None
    role: Literal["student", "baseline"]
    config: dict
    config_hash: str
    baseline_hash: str | None

    def __hash__(self) -> int:
        return hash((self.trial_id, self.config_hash))


@dataclass(frozen=True)
class TeacherSpec:
    """A resolved teacher: config (JSON-able) and its content hash."""

    name: str
    config: dict
    config_hash: str

    def __hash__(self) -> int:
        return hash((self.name, self.config_hash))


@dataclass(frozen=True)
class LogitsSpec:
    """A resolved offline logits store: config (JSON-able) and its identity hash."""

    teacher: str
    config: dict
    config_hash: str

    def __hash__(self) -> int:
        return hash((self.teacher, self.config_hash))


# --------------------------------------------------------------------------------------------
# YAML: safe_load with YAML 1.2 numbers and booleans, and duplicate keys refused

class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that reads 5e-4 and 1e6 as floats (YAML 1.1 reads them as strings), only
    true/false as booleans (not yes/no/on/off), and refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable key: the base class reports it
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str = "<string>") -> Any:
    """Parse YAML text with the study loader; errors become a StudyError naming line and column."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.problem, exc.context if not exc.problem else None) if p)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StudyError([(where, f"invalid YAML{at}: {problem or 'cannot parse'}")]) from None
    except yaml.YAMLError as exc:
        raise StudyError([(where, f"invalid YAML: {str(exc).splitlines()[0]}")]) from None


def _read_yaml(path: Path, shown: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyError([(shown, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise StudyError([(shown, f"cannot read the file ({reason})")]) from None
    data = parse_yaml(text, shown)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StudyError([(shown, f"must be a mapping of sections (name, data, teachers, base, "
                                  f"sweeps, ...), got {_show(data)}")])
    return data


def _deep_merge(under: Mapping, over: Mapping) -> dict:
    """Mappings merge key by key; anything else (lists included) in `over` replaces `under`,
    except null over a mapping, which keeps it."""
    out = copy.deepcopy(dict(under))
    for key, value in over.items():
        if value is None and isinstance(out.get(key), Mapping):
            continue  # an empty section (`base:` with everything commented out) adds nothing
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_study_dict(path: str | os.PathLike) -> dict:
    """Read a study file and its includes into one raw dict (not validated).

    `include:` is a path or a list of paths relative to the including file; included files merge
    in order, deep, and the including file wins. An included file's `name` is dropped; `name`
    defaults to the top file's stem.
    """
    path = Path(path)
    top = path.resolve()

    def shown(p: Path) -> str:
        try:
            rel = os.path.relpath(p, top.parent)
        except ValueError:
            return str(p)
        return rel if not rel.startswith("..") else str(p)

    def load(p: Path, chain: tuple[Path, ...]) -> dict:
        if p in chain:
            names = " -> ".join(shown(c) for c in (*chain[chain.index(p):], p))
            raise StudyError([("include cycle", names)])
        data = _read_yaml(p, shown(p) if chain else str(path))
        includes = data.pop("include", None)
        if includes is None:
            return data
        if isinstance(includes, str):
            includes = [includes]
        where = f"{shown(p) if chain else path}: include"
        if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
            raise StudyError([(where, f"must be a file path or a list of paths, got {_show(includes)}")])
        merged: dict = {}
        for rel in includes:
            target = (p.parent / Path(rel).expanduser()).resolve()
            if not target.is_file():
                raise StudyError([(where, f"file not found: {rel} (looked for {target})")])
            sub = load(target, (*chain, p))
            sub.pop("name", None)
            merged = _deep_merge(merged, sub)
        return _deep_merge(merged, data)

    data = load(top, ())
    data.setdefault("name", path.stem)
    return data


def load_study(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Study:
    """Load, merge includes, apply `--set key=value` overrides, validate. Raises StudyError."""
    data = load_study_dict(path)
    if overrides:
        data = apply_overrides(data, overrides)
    study = validate_study(data, source=path)
    return study


# --------------------------------------------------------------------------------------------
# Schema walking: unknown-key suggestions, dotted paths of sweeps and overrides

def _unwrap(annotation: Any) -> tuple[str, Any]:
    """('model', cls) | ('dict', value annotation) | ('list', item annotation) | ('leaf', None)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if origin is Union or type(annotation).__name__ == "UnionType":
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
        return ("leaf", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("model", annotation)
    if origin is dict:
        return ("dict", get_args(annotation)[1])
    if origin is list:
        return ("list", get_args(annotation)[0])
    return ("leaf", None)


def _field_kind(cls: type[BaseModel], name: str) -> tuple[str, Any] | None:
    field = cls.model_fields.get(name)
    return None if field is None else _unwrap(field.annotation)


def _did_you_mean(word: Any, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _suggest_field(cls: type[BaseModel], key: Any) -> str:
    """' (did you mean ...?)' for an unknown key of `cls`: a field one level down with that exact
    name (a teacher's `lr` -> `optimizer.lr`), else a close spelling, else ''."""
    key = str(key)
    candidates = [(name, name) for name in cls.model_fields]  # (suggestion, name compared)
    for name in cls.model_fields:
        kind, inner = _unwrap(cls.model_fields[name].annotation)
        if kind == "model":
            candidates += [(f"{name}.{sub}", sub) for sub in inner.model_fields]
    best, best_score = None, 0.6
    for suggestion, compared in candidates:  # first best wins: this level before the one below
        score = 1.0 if compared == key else difflib.SequenceMatcher(None, key, compared).ratio()
        if score > best_score + 1e-9:
            best, best_score = suggestion, score
    return f" (did you mean {best!r}?)" if best else ""


def _model_at(root: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class at a pydantic error location (None when it is not a model)."""
    node: tuple[str, Any] = ("model", root)
    for part in loc:
        kind, inner = node
        if kind == "model" and isinstance(part, str) and part in inner.model_fields:
            node = _unwrap(inner.model_fields[part].annotation)
        elif kind == "dict" or (kind == "list" and isinstance(part, int)):
            node = _unwrap(inner)
        else:
            return None
    return node[1] if node[0] == "model" else None


def _unknown_key(root: type[BaseModel], parent_loc: Sequence[Any], key: Any) -> str:
    cls = _model_at(root, parent_loc)
    return "unknown key" + (_suggest_field(cls, key) if cls is not None else "")


@lru_cache(maxsize=None)
def _run_paths() -> tuple[str, ...]:
    """Every dotted field path of a run (sub-sections and leaves): what sweeps and grids may vary."""
    out: list[str] = []

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, field in cls.model_fields.items():
            path = f"{prefix}{name}"
            out.append(path)
            kind, inner = _unwrap(field.annotation)
            if kind == "model":
                walk(inner, path + ".")

    walk(RunConfig, "")
    return tuple(out)


@lru_cache(maxsize=None)
def short_name(path: str) -> str:
    """Shortest suffix of a run field path that no other run field path ends with:
    kd.top_k -> top_k, optimizer.lr -> lr, but lr_schedule.kind and alpha.alpha stay whole."""
    parts = path.split(".")
    others = [p.split(".") for p in _run_paths() if p != path]
    for n in range(1, len(parts)):
        if not any(o[-n:] == parts[-n:] for o in others):
            return ".".join(parts[-n:])
    return path


def _check_run_path(path: str) -> str | None:
    """None if `path` names a run field, else the problem (with a suggestion)."""
    if path in _run_paths():
        return None
    paths = _run_paths()
    close = difflib.get_close_matches(path, paths, n=1, cutoff=0.6)
    if not close:  # try the last component against the short names: `topk` -> kd.top_k
        last = path.split(".")[-1]
        by_short = {short_name(p): p for p in paths}
        hit = difflib.get_close_matches(last, list(by_short), n=1, cutoff=0.6)
        close = [by_short[hit[0]]] if hit else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field{hint}; sweeps and grids vary fields of base"


def _expand_shorthand(cls: Any, value: Any) -> Any:
    if isinstance(cls, type) and hasattr(cls, "from_shorthand"):
        try:
            return cls.from_shorthand(value)
        except PydanticCustomError:
            return value
    return value


def _set_path(root: dict, parts: Sequence[str], value: Any, cls: type[BaseModel]) -> None:
    """Set root[a][b]... = value along model fields, expanding shorthands (alpha: 0.9) on the way.
    A mapping value deep-merges into the section already there, except for sections that are one
    choice as a whole (alpha, logits_source: `sweep_replaces`), which it replaces."""
    node = root
    for i, part in enumerate(parts):
        kind = _field_kind(cls, part)
        inner = kind[1] if kind and kind[0] == "model" else None
        last = i == len(parts) - 1
        current = node.get(part)
        if current is not None and not isinstance(current, dict) and inner is not None:
            current = _expand_shorthand(inner, current)
        if last:
            value = copy.deepcopy(value)
            merges = inner is not None and not getattr(inner, "sweep_replaces", False)
            if merges and isinstance(value, dict) and isinstance(current, dict):
                value = _deep_merge(current, value)
            node[part] = value
            return
        if current is None:
            current = {}
        if not isinstance(current, dict) or inner is None:
            raise StudyError([(".".join(parts[: i + 1]), f"is not a section (got {_show(current)})")])
        node[part] = dict(current)
        node, cls = node[part], inner


def _apply_to_run(run: Mapping, changes: Iterable[tuple[str, Any]]) -> dict:
    out = copy.deepcopy(dict(run))
    for path, value in changes:
        _set_path(out, path.split("."), value, RunConfig)
    return out


def apply_overrides(study_dict: Mapping, overrides: Sequence[str]) -> dict:
    """Apply `--set key=value` overrides to a raw study dict (returns a new dict).

    `key` is a dotted path into the study (`base.tokens`, `teachers.t1.tokens`, `seeds`,
    `grid.kd.top_k`); `value` is parsed as YAML (`1e5`, `null`, `[0, 1]`, `{kind: wsd}`).
    An unknown key raises StudyError naming it.
    """
    out = copy.deepcopy(dict(study_dict))
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise StudyError([("--set", f"expected key=value, got {item!r}")])
        value = parse_yaml(raw, f"--set {key}")
        parts = key.split(".")
        head = parts[0]
        if head == "grid" and len(parts) > 1:
            field = ".".join(parts[1:])
            problem = _check_run_path(field)
            if problem:
                raise StudyError([(key, problem)])
            grid = out.get("grid")
            out["grid"] = dict(grid) if isinstance(grid, dict) else {}
            out["grid"][field] = value
            continue
        problem = _check_override_path(parts)
        if problem:
            raise StudyError([(key, problem)])
        if head == "teachers" and len(parts) > 1:
            teachers = out.get("teachers") or {}
            if not isinstance(teachers, dict):
                raise StudyError([("teachers", f"must be a mapping, got {_show(teachers)}")])
            out["teachers"] = teachers = dict(teachers)
            if len(parts) == 2:
                teachers[parts[1]] = value
                continue
            teacher = teachers.get(parts[1]) or {}
            if not isinstance(teacher, dict):
                raise StudyError([(f"teachers.{parts[1]}", f"must be a mapping, got {_show(teacher)}")])
            teachers[parts[1]] = teacher = dict(teacher)
            _set_path(teacher, parts[2:], value, TeacherConfig)
        else:
            _set_path(out, parts, value, Study)
    return out


def _check_override_path(parts: Sequence[str]) -> str | None:
    node: tuple[str, Any] = ("model", Study)
    for i, part in enumerate(parts):
        kind, inner = node
        if kind == "model":
            if part not in inner.model_fields:
                which = f" {part!r}" if i < len(parts) - 1 else ""
                return f"unknown key{which}" + _suggest_field(inner, part)
            node = _unwrap(inner.model_fields[part].annotation)
        elif kind == "dict":
            node = _unwrap(inner)
        else:
            return f"unknown key ({'.'.join(parts[:i])} has no sub-fields)"
    return None


# --------------------------------------------------------------------------------------------
# Validation

Problem = tuple[str, str]


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


def _loc_path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            out = _join(out, str(part))
    return out


def _pydantic_problems(exc: ValidationError, root: type[BaseModel], prefix: str = "") -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc, kind, given = tuple(err["loc"]), err["type"], err.get("input")
        if kind == "missing" and loc and isinstance(loc[-1], int):
            # a fixed-length tuple with too few items
            problems.append((_join(prefix, _loc_path(loc[:-1])), f"must have {loc[-1] + 1} items, got {_show(given)}"))
            continue
        if loc and loc[-1] == "[key]":  # a mapping key of the wrong type: name the mapping
            problems.append((_join(prefix, _loc_path(loc[:-2])), f"keys must be strings, got {_show(given)}"))
            continue
        path = _join(prefix, _loc_path(loc))
        if kind == "pdspace":
            message = err["ctx"]["message"]
        elif kind == "extra_forbidden":
            message = _unknown_key(root, loc[:-1], loc[-1])
        elif kind == "missing":
            message = "is required"
        elif kind in ("int_type", "int_parsing", "int_from_float"):
            message = f"must be a whole number, got {_show(given)}"
        elif kind in ("float_type", "float_parsing", "finite_number"):
            message = f"must be a number, got {_show(given)}"
        elif kind in ("bool_type", "bool_parsing"):
            message = f"must be true or false, got {_show(given)}"
        elif kind == "string_type":
            message = f"must be a string, got {_show(given)}"
        elif kind == "literal_error":
            options = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
            message = (f"must be one of {', '.join(options)}, got {_show(given)}"
                       + (_did_you_mean(given, options) if isinstance(given, str) else ""))
        elif kind in ("dict_type", "model_type", "model_attributes_type"):
            message = f"must be a mapping, got {_show(given)}"
        elif kind in ("list_type", "tuple_type", "set_type"):
            message = f"must be a list, got {_show(given)}"
        elif kind in ("too_long", "too_short"):
            ctx = err.get("ctx", {})
            want = ctx.get("max_length") if kind == "too_long" else ctx.get("min_length")
            message = f"must have {'at most' if kind == 'too_long' else 'at least'} {want} items, got {ctx.get('actual_length')}"
        elif kind == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            msg = err["msg"]
            message = msg[:1].lower() + msg[1:]
        problems.append((path, message))
    return problems


def _size_problem(name: str) -> str | None:
    if name in KNOWN_SIZES:
        return None
    return (f"unknown model size {name!r}{_did_you_mean(name, KNOWN_SIZES)}; "
            f"known: {', '.join(KNOWN_SIZES)}")


def _steps(tokens: int, batch_size: int, seq_len: int) -> int:
    return tokens // (batch_size * seq_len)


def _wsd_problem(total: int, warmup: int, stable_frac: float | None, decay_frac: float | None) -> str | None:
    """core.schedules' WSD phase check: the decay must start between the warm-up and the end."""
    if stable_frac is not None:
        decay_start = warmup + round(stable_frac * total)
    else:
        decay_start = total - round((DEFAULT_DECAY_FRAC if decay_frac is None else decay_frac) * total)
    if decay_start < warmup or decay_start > total:
        return f"warm-up ({warmup} steps) and decay do not fit in the run's {total} steps"
    return None


def _training_problems(cfg: RunConfig | TeacherConfig, seq_len: int) -> list[Problem]:
    """Checks shared by students and from-scratch teachers: batch, token budget, LR schedule."""
    out: list[Problem] = []
    per_step = cfg.batch_size * seq_len
    if cfg.tokens < per_step:
        out.append(("tokens", f"must be at least one batch (batch_size {cfg.batch_size} × "
                              f"seq_len {seq_len} = {per_step} tokens), got {cfg.tokens}"))
    micro = cfg.micro_batch_size
    if micro is not None and (micro > cfg.batch_size or cfg.batch_size % micro):
        out.append(("micro_batch_size", f"must divide batch_size {cfg.batch_size}, got {micro}"))
    ls = cfg.lr_schedule
    total = max(_steps(cfg.tokens, cfg.batch_size, seq_len), 1)
    if ls.warmup_frac is not None and ls.warmup_steps is not None:
        out.append(("lr_schedule", "set warmup_frac or warmup_steps, not both"))
        return out
    if ls.stable_frac is not None and ls.decay_frac is not None:
        out.append(("lr_schedule", "set stable_frac or decay_frac, not both (the stable phase is what "
                                   "warm-up and decay leave)"))
        return out
    if ls.warmup_steps is not None:
        warmup, field = ls.warmup_steps, "warmup_steps"
    else:
        warmup = round((ls.warmup_frac if ls.warmup_frac is not None else DEFAULT_WARMUP_FRAC) * total)
        field = "warmup_frac"
    if total > 1 and warmup >= total:
        out.append((f"lr_schedule.{field}", f"warm-up ({warmup} steps) must be shorter than the run "
                                            f"({total} steps)"))
    elif ls.kind == "wsd":
        problem = _wsd_problem(total, warmup, ls.stable_frac, ls.decay_frac)
        if problem:
            out.append(("lr_schedule", problem))
    return out


def _alpha_problems(a: AlphaScheduleConfig, total: int) -> list[Problem]:
    """core.schedules.AlphaScheduleConfig's checks, at run-relative paths."""
    out: list[Problem] = []
    if a.kind != "constant" and a.alpha_min > a.alpha:
        out.append(("alpha.alpha_min", f"must be <= alpha.alpha ({_fmt(a.alpha)}), got {_fmt(a.alpha_min)}"))
    if a.kind == "period" and a.period_steps is None:
        out.append(("alpha.period_steps", "is required for kind period"))
    elif a.kind != "period" and a.period_steps is not None:
        out.append(("alpha.period_steps", f"is only used by kind period (got kind {a.kind})"))
    if a.stable_frac is not None and a.decay_frac is not None:
        out.append(("alpha", "set stable_frac or decay_frac, not both"))
    elif a.kind in ("wsd_alpha", "wsd_beta"):
        problem = _wsd_problem(total, round(a.warmup_frac * total), a.stable_frac, a.decay_frac)
        if problem:
            out.append(("alpha", problem))
    return out


def _kd_problems(kd: KDLossConfig) -> list[Problem]:
    """core.losses.KDConfig's checks (settings an adaptive method would silently ignore)."""
    out: list[Problem] = []
    if kd.adakd_tau_max < kd.adakd_tau_min:
        out.append(("kd.adakd_tau_max", f"must be >= kd.adakd_tau_min ({_fmt(kd.adakd_tau_min)}), "
                                        f"got {_fmt(kd.adakd_tau_max)}"))
    if kd.adaptive in ("normkd", "wttm", "adakd_h") and kd.temperature != 1.0:
        out.append(("kd.temperature", f"is not used with adaptive {kd.adaptive} (it sets its own); "
                                      f"leave it at 1, got {_fmt(kd.temperature)}"))
    if kd.adaptive in ("normkd", "wttm") and kd.student_temperature != 1.0:
        out.append(("kd.student_temperature", f"is not used with adaptive {kd.adaptive}; leave it at 1, "
                                              f"got {_fmt(kd.student_temperature)}"))
    if kd.adaptive in ("normkd", "wttm") and kd.scale_by_temperature_sq:
        out.append(("kd.scale_by_temperature_sq", f"does not apply to adaptive {kd.adaptive} (normkd "
                                                  f"always has its τ² factor, wttm has none)"))
    return out


def _alpha_is_zero(alpha: AlphaScheduleConfig) -> bool:
    return alpha.alpha == 0 and (alpha.kind == "constant" or alpha.alpha_min == 0)


def _is_lm_only(run: RunConfig) -> bool:
    return run.teacher is None or _alpha_is_zero(run.alpha)


def _run_problems(study: Study, run: RunConfig) -> tuple[list[Problem], list[Problem]]:
    """Cross-field checks of one run: (problems at run-relative paths, problems at study paths)."""
    rel: list[Problem] = []
    absolute: list[Problem] = []
    seq_len = study.data.seq_len
    problem = _size_problem(run.student)
    if problem:
        rel.append(("student", problem))
    rel += _training_problems(run, seq_len)
    rel += _alpha_problems(run.alpha, max(_steps(run.tokens, run.batch_size, seq_len), 1))
    rel += _kd_problems(run.kd)
    if run.teacher is None:
        return rel, absolute
    teacher = study.teachers.get(run.teacher)
    if teacher is None:
        defined = ", ".join(study.teachers) or "none"
        rel.append(("teacher", f"{run.teacher!r} is not defined under teachers: (defined: {defined})"
                               + _did_you_mean(run.teacher, study.teachers)))
        return rel, absolute
    if _alpha_is_zero(run.alpha):
        return rel, absolute  # LM-only: nothing below applies
    if teacher.pretrained is not None and study.data.tokenizer is None:
        absolute.append(("data.tokenizer", f"must be set when a student distils from the pretrained "
                                           f"teacher {run.teacher!r} (use its tokenizer, e.g. "
                                           f"{teacher.pretrained!r})"))
    kd, src = run.kd, run.logits_source
    if src.kind == "online":
        if teacher.pretrained is not None:
            rel.append(("logits_source", f"online logits need a teacher trained from scratch with "
                                         f"online.capture: true; {run.teacher!r} is pretrained"))
            return rel, absolute
        if not teacher.online.capture:
            rel.append(("logits_source", f"online logits need a teacher trained from scratch with "
                                         f"online.capture: true; {run.teacher!r} has online.capture: false"))
            return rel, absolute
        if src.steps is not None:
            if src.tokens is not None or "window" in src.model_fields_set:
                rel.append(("logits_source", "set steps or window/tokens, not both"))
            start, end = src.steps
            teacher_steps = _steps(teacher.tokens, teacher.batch_size, seq_len)
            if start >= end:
                rel.append(("logits_source.steps", f"must be [start, end) with start < end, got {_fmt(list(src.steps))}"))
            elif end > teacher_steps:
                rel.append(("logits_source.steps", f"end must be <= {teacher_steps}, the steps teacher {run.teacher!r} trains for; got {end}"))
        else:
            window = src.tokens if src.tokens is not None else run.tokens
            if src.tokens is not None and src.tokens > teacher.tokens:
                rel.append(("logits_source.tokens", f"must be <= {teacher.tokens}, the tokens teacher "
                                                    f"{run.teacher!r} trains on; got {src.tokens}"))
            elif src.tokens is None and window > teacher.tokens:
                rel.append(("tokens", f"online logits from {run.teacher!r} cover at most its {teacher.tokens} "
                                      f"training tokens, got {run.tokens}"))
            if run.tokens > window:
                rel.append(("tokens", f"must be <= the online window of {window} tokens, got {run.tokens}"))
        p_max = teacher.online.top_p if teacher.online.top_p is not None else study.logits.top_p_max
        k_max = teacher.online.top_k if teacher.online.top_k is not None else study.logits.top_k_max
        store = f"teachers.{run.teacher}.online"
    else:
        p_max, k_max, store = study.logits.top_p_max, study.logits.top_k_max, "logits"
    if kd.top_p > p_max:
        rel.append(("kd.top_p", f"must be <= {store}.top_p{'' if store != 'logits' else '_max'} "
                                f"({_fmt(p_max)}), the truncation the store keeps; got {_fmt(kd.top_p)}"))
    if kd.top_k > k_max:
        rel.append(("kd.top_k", f"must be <= {store}.top_k{'' if store != 'logits' else '_max'} "
                                f"({k_max}), the truncation the store keeps; got {kd.top_k}"))
    if kd.adaptive == "wttm" and not any(math.isclose(kd.wttm_gamma, g) for g in study.logits.gammas):
        rel.append(("kd.wttm_gamma", f"{_fmt(kd.wttm_gamma)} must be listed in logits.gammas (the store "
                                     f"keeps log U_γ only for those; got {_fmt(study.logits.gammas)})"))
    return rel, absolute


def _validate_run(study: Study, run_dict: Mapping, prefix: str) -> list[Problem]:
    """Validate one run dict (base with changes applied); problems carry `prefix`."""
    try:
        run = RunConfig.model_validate(run_dict)
    except ValidationError as exc:
        return _pydantic_problems(exc, RunConfig, prefix)
    rel, absolute = _run_problems(study, run)
    return [(_join(prefix, p), m) for p, m in rel] + absolute


def _study_problems(study: Study) -> list[Problem]:
    out: list[Problem] = []
    if not _NAME_RE.match(study.name) or len(study.name) > 200:
        out.append(("name", f"must start with a letter or digit and hold only letters, digits and "
                            f"'_.+-' (got {study.name!r})"))
    for name, teacher in study.teachers.items():
        where = f"teachers.{name}"
        if not _NAME_RE.match(name):
            out.append((where, "teacher names hold only letters, digits and '_.+-'"))
        if teacher.pretrained is not None:
            for field in SCRATCH_TEACHER_FIELDS:
                if field in teacher.model_fields_set:
                    out.append((f"{where}.{field}", "does not apply to a pretrained teacher "
                                                    "(remove it, or remove pretrained)"))
            continue
        problem = _size_problem(teacher.size)
        if problem:
            out.append((f"{where}.size", problem))
        out += [(f"{where}.{p}", m) for p, m in _training_problems(teacher, study.data.seq_len)]
    gammas = study.logits.gammas
    if len(set(gammas)) != len(gammas):
        out.append(("logits.gammas", f"must not repeat a value, got {_fmt(gammas)}"))
    if study.seeds is not None:
        if not study.seeds:
            out.append(("seeds", "must list at least one seed (or be removed)"))
        dupes = sorted({s for s in study.seeds if study.seeds.count(s) > 1})
        if dupes:
            out.append(("seeds", f"must not repeat a seed, got {_fmt(dupes[0])} twice"))

    base_rel, base_abs = _run_problems(study, study.base)
    out += [(_join("base", p), m) for p, m in base_rel] + base_abs
    base = study.base.model_dump(exclude_unset=True)
    base_ok = not base_rel and not base_abs

    for i, sweep in enumerate(study.sweeps):
        where = f"sweeps[{i}]"
        if not sweep:
            out.append((where, "must name a field to vary, e.g. {kd.top_k: [1, 5, 50]}"))
            continue
        lengths = {len(v) for v in sweep.values()}
        bad_keys = False
        for key, values in sweep.items():
            problem = _check_run_path(key)
            if problem:
                out.append((f"{where}.{key}", problem))
                bad_keys = True
            elif not values:
                out.append((f"{where}.{key}", "must list at least one value"))
                bad_keys = True
            elif key == "seed" and study.seeds is not None:
                out.append((f"{where}.seed", "cannot vary seed when seeds: is set"))
        if len(lengths) > 1:
            counts = ", ".join(f"{k} has {len(v)}" for k, v in sweep.items())
            out.append((where, f"fields varied together need as many values each ({counts}); "
                               f"use grid: for a cartesian product"))
            continue
        if bad_keys or not base_ok:
            continue
        for j in range(lengths.pop()):
            run = _apply_to_run(base, [(k, v[j]) for k, v in sweep.items()])
            out += _validate_run(study, run, where)

    grid_ok = True
    for key, values in study.grid.items():
        problem = _check_run_path(key)
        if problem:
            out.append((f"grid.{key}", problem))
            grid_ok = False
        elif not values:
            out.append((f"grid.{key}", "must list at least one value"))
            grid_ok = False
        elif key == "seed" and study.seeds is not None:
            out.append(("grid.seed", "cannot vary seed when seeds: is set"))
        elif base_ok:
            for value in values:
                problems = _validate_run(study, _apply_to_run(base, [(key, value)]), "grid")
                grid_ok = grid_ok and not problems
                out += problems
    if grid_ok and base_ok and study.grid:
        keys = list(study.grid)
        for combo in itertools.product(*study.grid.values()):
            changes = list(zip(keys, combo))
            label = ",".join(f"{short_name(k)}={_fmt(v)}" for k, v in changes)
            out += _validate_run(study, _apply_to_run(base, changes), f"grid[{label}]")
    return out


def validate_study(data: Mapping, *, name: str | None = None, source: str | os.PathLike | None = None) -> Study:
    """Validate a raw study dict (includes already merged). Raises StudyError listing every problem."""
    data = {k: v for k, v in data.items() if v is not None}  # an empty section means the defaults
    shown = str(source) if source is not None else None
    if "include" in data:
        raise StudyError([("include", "is resolved when loading a file; use load_study or load_study_dict")],
                         source=shown)
    data.setdefault("name", name or (Path(source).stem if source is not None else "study"))
    try:
        study = Study.model_validate(data)
    except ValidationError as exc:
        raise StudyError(_pydantic_problems(exc, Study), source=shown) from None
    problems = _study_problems(study)
    if problems:
        raise StudyError(problems, source=shown)
    study._source = Path(source) if source is not None else None
    return study


# --------------------------------------------------------------------------------------------
# Resolution and expansion

def _training_dict(cfg: RunConfig | TeacherConfig, study: Study) -> dict:
    ls = cfg.lr_schedule.model_dump(mode="json")
    if ls["warmup_steps"] is None:  # core takes warmup_steps (int) or warmup_frac
        ls["warmup_steps"] = 0
        if ls["warmup_frac"] is None:
            ls["warmup_frac"] = DEFAULT_WARMUP_FRAC
    if ls["stable_frac"] is None and ls["decay_frac"] is None:
        ls["decay_frac"] = DEFAULT_DECAY_FRAC
    every = study.eval.every_tokens or max(cfg.tokens // 10, 1)
    return {
        "data": study.data_spec(),
        "data_format": DATA_FORMAT_VERSION,
        "seed": cfg.seed,
        "tokens": cfg.tokens,
        "batch_size": cfg.batch_size,
        "micro_batch_size": cfg.micro_batch_size or cfg.batch_size,
        "optimizer": cfg.optimizer.model_dump(mode="json"),
        "lr_schedule": ls,
        "eval": {**study.eval.model_dump(mode="json"), "every_tokens": every},
    }


def _hash_config(config: Mapping) -> str:
    return stable_hash({k: v for k, v in config.items() if k not in HASH_EXCLUDED_KEYS})


def _teacher_spec(study: Study, name: str) -> TeacherSpec:
    t = study.teachers[name]
    if t.pretrained is not None:
        config = {"config_version": CONFIG_VERSION, "kind": "teacher", "origin": "pretrained",
                  "name": name, "pretrained": t.pretrained}
    else:
        online = {"capture": False, "top_p": None, "top_k": None, "gammas": []}
        if t.online.capture:
            online = {
                "capture": True,
                "top_p": t.online.top_p if t.online.top_p is not None else study.logits.top_p_max,
                "top_k": t.online.top_k if t.online.top_k is not None else study.logits.top_k_max,
                "gammas": sorted(set(study.logits.gammas)),
            }
        config = {"config_version": CONFIG_VERSION, "kind": "teacher", "origin": "scratch",
                  "name": name, "size": t.size, **_training_dict(t, study), "online": online}
    identity = {k: v for k, v in config.items() if k not in TEACHER_HASH_EXCLUDED_KEYS}
    return TeacherSpec(name=name, config=config, config_hash=stable_hash(identity))


def _alpha_dict(alpha: AlphaScheduleConfig) -> dict:
    """core.schedules.AlphaScheduleConfig's keyword arguments, defaults filled in."""
    out = alpha.model_dump(mode="json")
    if out["stable_frac"] is None and out["decay_frac"] is None:
        out["decay_frac"] = DEFAULT_DECAY_FRAC
    return out


def _resolve_run(study: Study, run: RunConfig) -> dict:
    """The fully resolved config of one student or baseline run (see TrialSpec.config)."""
    lm_only = _is_lm_only(run)
    config: dict[str, Any] = {
        "config_version": CONFIG_VERSION,
        "kind": "baseline" if lm_only else "student",
        "student": run.student,
        "teacher": None if lm_only else run.teacher,
        "teacher_hash": None if lm_only else _teacher_spec(study, run.teacher).config_hash,
        **_training_dict(run, study),
    }
    if lm_only:
        config["alpha_schedule"] = _alpha_dict(AlphaScheduleConfig(alpha=0.0))
        config["kd"] = None
        config["logits"] = None
    else:
        config["alpha_schedule"] = _alpha_dict(run.alpha)
        kd = run.kd.model_dump(mode="json")
        top_p, top_k = kd.pop("top_p"), kd.pop("top_k")
        config["kd"] = {"kind": kd.pop("loss"), **kd}  # = core.losses.KDConfig's keyword arguments
        src = run.logits_source
        online = src.kind == "online"
        config["logits"] = {
            "source": src.kind,
            "top_p": top_p,
            "top_k": top_k,
            "window": src.window if online and src.steps is None else None,
            "tokens": (src.tokens or run.tokens) if online and src.steps is None else None,
            "steps": list(src.steps) if online and src.steps is not None else None,
        }
    if run.nonfinite_from_step is not None:  # only when set, so it leaves other hashes alone
        config["nonfinite_from_step"] = run.nonfinite_from_step
    config["baseline_hash"] = None
    return config


def _baseline_config(config: Mapping) -> dict:
    out = copy.deepcopy(dict(config))
    out.pop("nonfinite_from_step", None)
    out.update(kind="baseline", teacher=None, teacher_hash=None, kd=None, logits=None,
               baseline_hash=None,
               alpha_schedule=_alpha_dict(AlphaScheduleConfig(alpha=0.0)))
    return out


@dataclass
class _Point:
    changes: list[tuple[str, Any]]
    factor: str | None
    value: str | None


def expand(study: Study) -> list[TrialSpec]:
    """All trials of a study: base (when there is no grid), grid points, sweep points, each
    repeated per seed, then the LM-only baselines the KD trials need (deduplicated).

    Order: base/grid points, then sweeps in file order, seeds innermost, baselines last.
    """
    base = study.base.model_dump(exclude_unset=True)
    points: list[_Point] = []
    if study.grid:
        keys = list(study.grid)
        for combo in itertools.product(*study.grid.values()):
            points.append(_Point(list(zip(keys, combo)), ",".join(keys), ",".join(_fmt(v) for v in combo)))
    else:
        points.append(_Point([], None, None))
    for sweep in study.sweeps:
        keys = list(sweep)
        for j in range(len(sweep[keys[0]])):
            values = [sweep[k][j] for k in keys]
            points.append(_Point(list(zip(keys, values)), ",".join(keys), ",".join(_fmt(v) for v in values)))

    seeds: list[int | None] = list(study.seeds) if study.seeds is not None else [None]
    trials: list[TrialSpec] = []
    by_id: dict[str, TrialSpec] = {}
    origin: dict[str, list[tuple[str, Any]]] = {}  # trial id -> its changes from base
    for point in points:
        for seed in seeds:
            changes = point.changes + ([("seed", seed)] if seed is not None else [])
            run = RunConfig.model_validate(_apply_to_run(base, changes))
            config = _resolve_run(study, run)
            trial_id = ",".join(f"{short_name(k)}={_fmt(v)}" for k, v in changes) if point.changes else (
                "base" + (f",seed={seed}" if seed is not None else ""))
            trial = TrialSpec(trial_id=trial_id, factor=point.factor, value=point.value,
                              role=config["kind"], config=config, config_hash=_hash_config(config),
                              baseline_hash=None)
            if trial_id in by_id:
                if by_id[trial_id].config_hash != trial.config_hash:  # pragma: no cover - ids encode changes
                    raise StudyError([("sweeps", f"trial id {trial_id!r} names two different runs")])
                continue
            by_id[trial_id] = trial
            origin[trial_id] = changes
            trials.append(trial)

    existing = {t.config_hash for t in trials}
    baselines: list[TrialSpec] = []
    baseline_of: dict[str, str | None] = {}
    for trial in trials:
        if trial.role != "student":
            continue
        config = _baseline_config(trial.config)
        bhash = _hash_config(config)
        baseline_of[trial.trial_id] = bhash if (study.baselines.auto or bhash in existing) else None
        if not study.baselines.auto or bhash in existing:
            continue
        existing.add(bhash)
        changes = origin[trial.trial_id]
        kept = [(k, v) for k, v in changes
                if k.split(".")[0] not in KD_ONLY_FIELDS and k not in ("student", "seed")]
        varies_seed = study.seeds is not None or any(k == "seed" for k, _ in changes)
        seed = [("seed", trial.config["seed"])] if varies_seed else []
        parts = [("student", trial.config["student"])] + kept + seed
        trial_id = "baseline:" + ",".join(f"{short_name(k)}={_fmt(v)}" for k, v in parts)
        if trial_id in by_id:
            trial_id += f",cfg={bhash[:8]}"
        baseline = TrialSpec(trial_id=trial_id, factor=None, value=None, role="baseline",
                             config=config, config_hash=bhash, baseline_hash=None)
        by_id[trial_id] = baseline
        baselines.append(baseline)

    out: list[TrialSpec] = []
    for trial in trials:
        bhash = baseline_of.get(trial.trial_id)
        if bhash is not None:
            config = {**trial.config, "baseline_hash": bhash}
            trial = TrialSpec(trial_id=trial.trial_id, factor=trial.factor, value=trial.value,
                              role=trial.role, config=config, config_hash=trial.config_hash,
                              baseline_hash=bhash)
        out.append(trial)
    return out + baselines
