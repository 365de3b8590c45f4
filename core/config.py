"""Every setting of a unit of work, declared once: name, type, default, bounds and docstring.

These frozen dataclasses are the only declaration of each setting. The study schema
(``orchestrator.schema``) is generated from them, a unit's identity (``orchestrator.identity``)
is computed from them, and the worker builds them back from a resolved config
(``core.settings.build``); see ``core.settings`` for how a field is declared. The LR and α
schedules are declared the same way in ``core.schedules``, next to their formulas.

No torch here: the orchestrator and analysis import this module cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt

from core.schedules import AlphaScheduleConfig, LRScheduleConfig
from core.settings import ConfigError, check_fields, setting

__all__ = [
    "PosInt", "NonNegInt", "PosFloat", "NonNegFloat", "Prob", "UnitFloat", "Beta",
    "KDKind", "Normalization", "SAMPLED_KD_KINDS", "SAMPLING_SEED", "check_sampled_kd", "AdaptiveMethod", "KD_KINDS", "NORMALIZATIONS", "ADAPTIVE_METHODS",
    "BUILTIN_TASKS", "DataSpec", "OptimizerConfig", "KDConfig", "Truncation", "TrainConfig",
    "EvalConfig", "LogitsStoreConfig", "LM_ONLY_ALPHA",
]

PosInt = Annotated[int, Ge(1)]
NonNegInt = Annotated[int, Ge(0)]
PosFloat = Annotated[float, Gt(0)]
NonNegFloat = Annotated[float, Ge(0)]
Prob = Annotated[float, Gt(0), Le(1)]  # (0, 1]
UnitFloat = Annotated[float, Ge(0), Le(1)]  # [0, 1]
Beta = Annotated[float, Ge(0), Lt(1)]  # [0, 1)

KDKind = Literal["nll", "kld", "mse", "reverse_kld", "jsd", "tvd"]
"""The KD divergences (core.losses implements each, registered under these names)."""
Normalization = Literal["renormalize", "tail"]
AdaptiveMethod = Literal["normkd", "wttm", "adakd_sd", "adakd_h"]
KD_KINDS: tuple[str, ...] = KDKind.__args__
NORMALIZATIONS: tuple[str, ...] = Normalization.__args__
ADAPTIVE_METHODS: tuple[str, ...] = AdaptiveMethod.__args__

BuiltinTask = Literal["pdspace_nextline", "pdspace_cloze"]
BUILTIN_TASKS: tuple[str, ...] = BuiltinTask.__args__
"""The evaluation tasks core.lmeval builds from the held-out documents (any corpus, any tokenizer)."""

FUSED_LOSS_ABOVE_BYTES = 1 << 28
"""TrainConfig.fused_loss = None fuses the LM head and loss when a micro-batch's fp32 logits would
take more than this (256 MiB: e.g. 4 x 128 tokens at V = 151,552)."""

LM_ONLY_ALPHA = AlphaScheduleConfig(kind="constant", alpha=0.0)
"""The α schedule of an LM-only run (a baseline): no KD at any step."""


# ---------------------------------------------------------------------------------------------
# Data

@dataclass(frozen=True)
class DataSpec:
    """What to build: a corpus, a tokenizer and a sequence length.

    Two specs with the same fields over the same corpus content have the same content hash
    (core.data.data_hash) and share one artifact (core.data.prepare_data).
    """

    source: str = setting("builtin:python-stdlib", since=1)
    """``builtin:python-stdlib`` (every .py file of the running Python's standard library), a local
    file, directory or glob (.txt and other text files are one document each; .jsonl and .parquet
    hold one document per record), or ``hf:<name>[:<config>]`` for a Hugging Face dataset (hub id or
    local directory; its ``train`` split, or its only split)."""
    text_field: str = setting("text", since=1)
    """Field holding a record's text (JSONL, Parquet, Hugging Face datasets)."""
    tokenizer: str | None = setting(None, since=1)
    """None trains a byte-level BPE on the train split; otherwise a HF tokenizer dir or hub id
    (required with a pretrained teacher: students must share its vocabulary)."""
    vocab_size: Annotated[int, Ge(257)] = setting(4096, since=1)
    """Vocabulary of a trained tokenizer, special tokens included (ignored with ``tokenizer``)."""
    seq_len: Annotated[int, Ge(8)] = setting(128, since=1)
    """T, tokens per training sequence (inputs); each sequence reads T + 1 stream tokens."""
    val_fraction: Annotated[float, Gt(0), Lt(1)] = setting(0.02, since=1)
    """Expected fraction of documents held out for validation (chosen by a hash of each document)."""
    max_train_tokens: PosInt | None = setting(None, since=1)
    """Cap on training targets: the train stream keeps at most max_train_tokens + 1 tokens."""
    max_documents: PosInt | None = setting(None, since=1)
    """Use only the first N non-empty documents in corpus order (small test corpora)."""
    max_corpus_bytes: PosInt | None = setting(None, since=1)
    """Use only the leading documents whose sizes (file bytes, or UTF-8 bytes of a record) sum to at
    most this; the first document is always kept."""

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.source.strip():
            raise ConfigError("source", "must be a non-empty string")
        if not self.text_field:
            raise ConfigError("text_field", "must be a non-empty string")
        if self.tokenizer is not None and not self.tokenizer:
            raise ConfigError("tokenizer", "must be None or a non-empty string")

    def to_dict(self) -> dict[str, Any]:
        from core.settings import config_dict

        return config_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        """Strict constructor: an unknown key is an error that names it."""
        from core.settings import build

        return build(cls, d)


# ---------------------------------------------------------------------------------------------
# Training

@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW settings."""

    lr: PosFloat = setting(3e-3, since=1)
    """Peak learning rate."""
    weight_decay: NonNegFloat = setting(0.1, since=1)
    """Decoupled weight decay (matrices only; norms and biases get none)."""
    betas: tuple[Beta, Beta] = setting((0.9, 0.95), since=1)
    """Adam's (beta1, beta2)."""
    eps: PosFloat = setting(1e-8, since=1)
    """Adam's epsilon."""
    grad_clip: PosFloat | None = setting(1.0, since=1)
    """Clip the global gradient norm to this; None disables clipping."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Truncation:
    """Which of the teacher's next-token entries a student sees: the smallest prefix of the
    sorted distribution (at τ = 1) holding ``top_p`` of the mass, capped at ``top_k`` entries (the
    paper's top-p-k). One rule for torch and numpy: ``core.logits_math.truncation_counts``.

    A logits store keeps one Truncation (its maximum); it serves any rule it ``covers``.
    """

    top_p: Prob = setting(0.95, since=1)
    """Keep the smallest prefix of the teacher's sorted distribution holding this mass ..."""
    top_k: PosInt = setting(100, since=1)
    """... capped at this many tokens."""
    samples: PosInt | None = setting(None, since=2)
    """Sampled KD (RS-KD, core.sampled_kd) instead of top-p/top-k: per position draw this many ids
    from the proposal softmax(l / proposal_temperature) with replacement and keep each distinct id
    with its importance weight c·p/(N·π); the KD loss is then an unbiased estimate of the
    full-vocabulary one (kd.loss kld or nll, τ = 1, renormalize, no adaptive method)."""
    proposal_temperature: Annotated[float, Ge(1)] = setting(1.0, since=2)
    """Sampled KD: τp of the proposal π = softmax(l / τp) (>= 1 flattens it; 1 samples the teacher)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.samples is not None and (self.top_p, self.top_k) != (Truncation.top_p, Truncation.top_k):
            raise ConfigError("samples", f"replaces top_p/top_k (a sampled teacher is not truncated): leave "
                                         f"them at their defaults, got top_p {self.top_p:g}, top_k {self.top_k}")
        if self.samples is None and self.proposal_temperature != 1.0:
            raise ConfigError("proposal_temperature", f"is used only with samples; got "
                                                      f"{self.proposal_temperature:g} without samples")

    @property
    def sampled(self) -> bool:
        return self.samples is not None

    def covered_by(self, keeps: "Truncation") -> bool:
        """Whether a store that keeps ``keeps`` can derive this rule exactly (a sampled store serves
        exactly its own sampling, a truncated one no sampling)."""
        if self.sampled or keeps.sampled:
            return (self.samples, self.proposal_temperature) == (keeps.samples, keeps.proposal_temperature)
        return self.top_p <= keeps.top_p and self.top_k <= keeps.top_k

    def check_covered_by(self, keeps: "Truncation", where: str = "the logits store") -> None:
        """ConfigError naming the field a store that keeps ``keeps`` cannot serve."""
        if self.sampled or keeps.sampled:
            if not self.covered_by(keeps):
                raise ConfigError("samples", f"must be what {where} keeps ({keeps.label}) exactly; got {self.label}")
            return
        if self.top_p > keeps.top_p:
            raise ConfigError("top_p", f"must be <= {keeps.top_p:g}, the top_p {where} keeps; got {self.top_p:g}")
        if self.top_k > keeps.top_k:
            raise ConfigError("top_k", f"must be <= {keeps.top_k}, the top_k {where} keeps; got {self.top_k}")

    @property
    def label(self) -> str:
        """'top-0.95-100'; sampled: 'sample-12' ('sample-12-tp2' at proposal_temperature 2)."""
        if self.sampled:
            tp = "" if self.proposal_temperature == 1.0 else f"-tp{self.proposal_temperature:g}"
            return f"sample-{self.samples}{tp}"
        return f"top-{self.top_p:g}-{self.top_k}"


SAMPLING_SEED = 0
"""Seed of a sampled store's draws (core.sampled_kd; recorded in the store's ``sampling``)."""

SAMPLED_KD_KINDS = ("kld", "nll")
"""The KD kinds a sampled teacher (Truncation.samples) supports: the losses linear in p, whose
importance-weighted estimate is unbiased (core.sampled_kd)."""


def check_sampled_kd(kd: "KDConfig") -> None:
    """ConfigError naming the KD setting a sampled teacher cannot serve unbiasedly (only
    kd.loss kld or nll at τ = τ_s = 1 with renormalize and no adaptive method is linear in p)."""
    if kd.kind not in SAMPLED_KD_KINDS:
        raise ConfigError("kind", f"must be kld or nll with samples (the sampled estimate is unbiased only for "
                                  f"losses linear in the teacher's p), got {kd.kind}")
    if kd.temperature != 1.0:
        raise ConfigError("temperature", f"must be 1 with samples (p^(1/τ) is not linear in p), got {kd.temperature:g}")
    if kd.student_temperature != 1.0:
        raise ConfigError("student_temperature", f"must be 1 with samples, got {kd.student_temperature:g}")
    if kd.normalization != "renormalize":
        raise ConfigError("normalization", f"must be renormalize with samples (no tail: the sampled estimate "
                                           f"already covers the full vocabulary), got {kd.normalization}")
    if kd.adaptive is not None:
        raise ConfigError("adaptive", f"must be null with samples (adaptive temperatures are not linear in p), "
                                      f"got {kd.adaptive}")


@dataclass(frozen=True)
class KDConfig:
    """How the KD term is computed (core.losses: the formulas of every kind and method)."""

    kind: KDKind = setting("kld", yaml="loss", since=1)
    """D in α·D(student, teacher): soft cross-entropy (nll), forward KL, MSE, reverse KL, JS, TV."""
    temperature: PosFloat = setting(1.0, since=1)
    """Teacher temperature τ (divides the kept teacher log-probs). For adakd_sd it is τ_base."""
    student_temperature: PosFloat = setting(1.0, since=1)
    """Student temperature τ_s (divides the student's logits); 1 = none (the paper does not say
    whether it used one)."""
    normalization: Normalization = setting("renormalize", since=1)
    """renormalize over the kept entries (the paper), or keep the dropped mass as one tail bucket
    on both sides (exact at any τ: the store keeps the full-vocabulary normaliser it needs)."""
    adaptive: AdaptiveMethod | None = setting(None, since=1)
    """None (static τ) or a per-position temperature from the teacher's full-distribution stats."""
    t_norm: PosFloat = setting(2.0, since=1)
    """normkd: τ_T = t_norm · std(z_T), τ_S = t_norm · std(z_S) (official default 2.0)."""
    wttm_gamma: PosFloat = setting(0.8, since=1)
    """wttm: teacher power γ (p̂ = p^γ / Σ p^γ; the store must keep log U_γ: logits.gammas)."""
    wttm_beta: NonNegFloat = setting(1.0, since=1)
    """wttm: weight β of the KD term β · U_γ · KL(p̂ ‖ q)."""
    adakd_tau_min: PosFloat = setting(0.5, since=1)
    """adakd_sd / adakd_h: lower clip of the per-position temperature."""
    adakd_tau_max: PosFloat = setting(2.0, since=1)
    """adakd_sd / adakd_h: upper clip of the per-position temperature."""
    adakd_sd_ref: PosFloat | None = setting(None, since=1)
    """adakd_sd: reference logit std s_ref; None = mean std over the micro-batch's positions
    (then the loss depends slightly on how a batch is split into micro-batches)."""
    scale_by_temperature_sq: bool = setting(False, since=1)
    """Multiply the KD term by τ² (Hinton); static τ and adakd_* only (NormKD always has its
    τ_T² factor, WTTM never has one)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.adakd_tau_max >= self.adakd_tau_min:
            raise ConfigError("adakd_tau_max", f"must be >= adakd_tau_min ({self.adakd_tau_min:g}), "
                                               f"got {self.adakd_tau_max:g}")
        # Refuse settings an adaptive method would silently ignore.
        if self.adaptive in ("normkd", "wttm", "adakd_h") and self.temperature != 1.0:
            raise ConfigError("temperature", f"is not used with adaptive {self.adaptive} (it sets its own); "
                                             f"leave it at 1, got {self.temperature:g}")
        if self.adaptive in ("normkd", "wttm") and self.student_temperature != 1.0:
            raise ConfigError("student_temperature", f"is not used with adaptive {self.adaptive}; "
                                                     f"leave it at 1, got {self.student_temperature:g}")
        if self.adaptive in ("normkd", "wttm") and self.scale_by_temperature_sq:
            raise ConfigError("scale_by_temperature_sq", f"does not apply to adaptive {self.adaptive} (normkd "
                                                         f"always has its τ² factor, wttm has none)")
        if self.adaptive in ("adakd_sd", "adakd_h") and self.normalization == "tail":
            raise ConfigError("normalization", f"tail is exact only at a temperature whose full-vocabulary "
                                               f"normaliser the store keeps; {self.adaptive}'s per-position τ "
                                               f"has none: use renormalize")

    def stats_needed(self) -> tuple[list[float], list[float]]:
        """The full-vocabulary row statistics this KD term reads from its teacher: (gammas whose
        log U_γ it needs, NormKD t_norms whose exact normaliser it needs)."""
        gammas, t_norms = [], []
        if self.adaptive == "wttm":
            gammas.append(self.wttm_gamma)
        if self.normalization == "tail" and self.adaptive is None and self.temperature != 1.0:
            gammas.append(1.0 / self.temperature)
        if self.normalization == "tail" and self.adaptive == "normkd":
            t_norms.append(self.t_norm)
        return gammas, t_norms

    def to_dict(self) -> dict:
        from core.settings import config_dict

        return config_dict(self)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run besides the model, data and teacher."""

    tokens: PosInt = setting(1_000_000, since=1)
    """Training budget in tokens; steps = tokens // (batch_size * seq_len)."""
    batch_size: PosInt = setting(16, since=1)
    """Sequences per optimizer step, over all workers."""
    micro_batch_size: PosInt | None = setting(None, since=1)
    """Sequences per forward/backward on one worker (gradient accumulation); None: the whole share."""
    seed: NonNegInt = setting(0, since=1)
    """Initialisation and data-order seed."""
    optimizer: OptimizerConfig = setting(default_factory=OptimizerConfig, since=1)
    """AdamW settings."""
    lr_schedule: LRScheduleConfig = setting(default_factory=LRScheduleConfig, since=1)
    """Learning-rate schedule."""
    alpha_schedule: AlphaScheduleConfig = setting(default_factory=AlphaScheduleConfig, yaml="alpha", since=1)
    """KD share α of L = (1-α)·L_lm + α·L_kd: a number (constant) or a schedule. Used only with a
    teacher (``kd`` set); an LM-only run ignores it."""
    kd: KDConfig | None = setting(None, since=1)
    """The distillation loss; None: an LM-only run (a study's `kd:` section holds KDConfig's
    defaults for every student with a teacher)."""
    eval_every_tokens: PosInt | None = setting(None, since=1, in_study=False)
    """Run the evaluator every this many tokens (and always at the end); a study sets it as
    ``eval.every_tokens``."""
    nonfinite_from_step: NonNegInt | None = setting(None)
    """Testing aid: make the loss non-finite from this step on, to exercise failure handling."""
    max_nonfinite_steps: NonNegInt = setting(5)
    """Refuse up to this many non-finite steps in total, then fail the run."""
    bf16: bool | None = setting(None)
    """bf16 autocast; None = on for CUDA, off on CPU."""
    fused_loss: bool | None = setting(None, identity=False)
    """LM head and loss fused and chunked (core.fused_loss): no (B, T, V) logits or gradient in
    memory; the same loss up to float rounding. None: fused on a GPU, or when a micro-batch's fp32
    logits would exceed FUSED_LOSS_ABOVE_BYTES (at CPU scale the reference path is ~10 % faster).
    False (and always for a teacher capturing online logits, which needs them whole): the
    reference path, logits then core.losses.distillation_loss."""
    log_every_steps: PosInt = setting(10, identity=False)
    """Report training metrics every this many steps."""
    checkpoint_every_steps: PosInt = setting(100, identity=False)
    """Checkpoint every this many steps."""
    checkpoint_every_s: PosFloat = setting(60.0, identity=False)
    """Also checkpoint when this much wall time passed since the last one (crash safety)."""
    device: str = setting("cpu", identity=False, in_study=False)
    """Where the run trains (chosen by the worker, never by the study)."""

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def lm_only(self) -> bool:
        return self.kd is None

    def total_steps(self, seq_len: int) -> int:
        return max(1, self.tokens // (self.batch_size * seq_len))

    def check(self, seq_len: int) -> None:
        """The checks that need the data's sequence length: one batch at least, micro-batches that
        divide the batch, schedules that fit the run's steps. Raises ConfigError."""
        per_step = self.batch_size * seq_len
        if self.tokens < per_step:
            raise ConfigError("tokens", f"must be at least one batch (batch_size {self.batch_size} × "
                                        f"seq_len {seq_len} = {per_step} tokens), got {self.tokens}")
        micro = self.micro_batch_size
        if micro is not None and (micro > self.batch_size or self.batch_size % micro):
            raise ConfigError("micro_batch_size", f"must divide batch_size {self.batch_size}, got {micro}")
        total = self.total_steps(seq_len)
        try:
            self.lr_schedule.check_fits(total)
        except ConfigError as exc:
            raise exc.under("lr_schedule") from None
        if self.kd is not None:
            try:
                self.alpha_schedule.check_fits(total)
            except ConfigError as exc:
                raise exc.under("alpha_schedule") from None

    def resolved(self) -> "TrainConfig":
        """Defaults that depend on other fields filled in: the form a unit's identity hashes."""
        return replace(self, micro_batch_size=self.micro_batch_size or self.batch_size,
                       lr_schedule=self.lr_schedule.resolved(), alpha_schedule=self.alpha_schedule.resolved())


# ---------------------------------------------------------------------------------------------
# Evaluation and logits stores

@dataclass(frozen=True)
class EvalConfig:
    """What every student, baseline and teacher is evaluated on (core.evaluation, core.lmeval)."""

    every_tokens: PosInt | None = setting(None, since=1)
    """Held-out evaluation interval in training tokens; None: 10 points per run."""
    heldout_sequences: PosInt = setting(64, since=1)
    """Held-out sequences per evaluation (val_loss, teacher_kl, top1_agreement)."""
    builtin_tasks: list[BuiltinTask] = setting(default_factory=lambda: list(BUILTIN_TASKS), since=1)
    """Tasks built from the held-out documents (work on any corpus and tokenizer)."""
    tasks: list[str] = setting(default_factory=list, since=1)
    """Standard lm-evaluation-harness tasks (e.g. hellaswag)."""
    limit: PosInt | None = setting(None, since=1)
    """Examples per lm-eval task; None: all."""
    final_only: bool = setting(True, since=1)
    """Run the lm-eval tasks on the final checkpoint only (held-out loss is always periodic),
    unless tasks_every_tokens is set."""
    tasks_every_tokens: PosInt | None = setting(None, since=1)
    """Also run the lm-eval tasks every this many training tokens (at held-out evaluation points
    that are multiples of it); None: as final_only says."""
    task_examples: PosInt = setting(200, since=1)
    """Examples built per built-in task."""
    task_seed: NonNegInt = setting(0, since=1)
    """Seed of the built-in tasks' example selection."""
    batch_size: PosInt = setting(16, since=1)
    """Sequences per forward pass during evaluation."""

    def __post_init__(self) -> None:
        check_fields(self)

    def resolved(self, run_tokens: int) -> "EvalConfig":
        """every_tokens filled in: 10 evaluation points over a run of ``run_tokens``."""
        return replace(self, every_tokens=self.every_tokens or max(run_tokens // 10, 1))


@dataclass(frozen=True)
class LogitsStoreConfig:
    """An offline logits store: what it keeps and how it is written. One store serves every
    Truncation it covers and any τ."""

    top_p_max: Prob = setting(Truncation.top_p, since=1)
    """Largest top-p any student reads (the store keeps Truncation(top_p_max, top_k_max))."""
    top_k_max: PosInt = setting(Truncation.top_k, since=1)
    """Largest top-k any student reads."""
    gammas: list[PosFloat] = setting(default_factory=list, since=1)
    """γ values whose log U_γ = log Σ_v p_v^γ (full vocabulary) is stored per row: WTTM's γ, and 1/τ
    for an exact `tail` at a static τ ≠ 1. An offline store gets every γ its students need added
    by the planner; an online capture keeps only these."""
    t_norms: list[PosFloat] = setting(default_factory=list)
    """NormKD t_norm values whose exact tempered normaliser log Σ_v p_v^(1/τ_T), τ_T = t_norm·std(z),
    is stored per row (NormKD with `tail`). Added by the planner for an offline store, as gammas."""
    shard_tokens: PosInt = setting(262_144, since=1)
    """Token positions per store shard (the unit of crash-safe resumption)."""
    batch_size: PosInt = setting(16, since=1, identity=False)
    """Sequences per teacher forward pass during extraction (throughput only)."""
    format_version: Literal[1, 2] = setting(1)
    """1: exact 16-bit log-probs (4.2 bytes per entry at V = 151,552); 2: compact (sorted ids with
    gap and zstd coding, sqrt(p) in one byte; ~1-2.1 bytes per entry), its KL distortion measured
    per shard and reported (core.logits_store)."""
    target_kl: PosFloat = setting(5e-4)
    """Format 2: the mean KL(exact || stored) per position each shard's value scale must meet (nats)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if len(set(self.gammas)) != len(self.gammas):
            raise ConfigError("gammas", f"must not repeat a value, got {list(self.gammas)}")
        if len(set(self.t_norms)) != len(self.t_norms):
            raise ConfigError("t_norms", f"must not repeat a value, got {list(self.t_norms)}")

    @property
    def keeps(self) -> Truncation:
        return Truncation(self.top_p_max, self.top_k_max)

    def missing_stats(self, kd: "KDConfig") -> list[str]:
        """What ``kd`` reads that this store does not keep, as study settings to add ([] = none)."""
        gammas, t_norms = kd.stats_needed()
        return ([f"logits.gammas: {g:g}" for g in gammas if g not in self.gammas]
                + [f"logits.t_norms: {t:g}" for t in t_norms if t not in self.t_norms])

    def with_stats_for(self, kds: "list[KDConfig]") -> "LogitsStoreConfig":
        """This store with every statistic the KD terms ``kds`` read added (sorted, no repeats)."""
        gammas, t_norms = set(self.gammas), set(self.t_norms)
        for kd in kds:
            g, t = kd.stats_needed()
            gammas.update(g)
            t_norms.update(t)
        return replace(self, gammas=sorted(gammas), t_norms=sorted(t_norms))
