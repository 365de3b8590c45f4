"""The study file's schema: pydantic models generated from core's config dataclasses, plus the
sections only a study has (teachers, sweeps, resources, ...).

A section built from core (``data``, ``optimizer``, ``lr_schedule``, ``alpha``, ``kd``, ``eval``,
``logits``, and the training fields of ``base`` and of a teacher) is generated field by field from
the dataclass: same names (a field's ``yaml`` name where a study spells it differently), same
defaults, same bounds, same docstrings. Nothing here restates a core setting: a field added to a
core config is in the study schema, validated, documented (``explain``) and resolved with no
edit to this file. ``to_core`` turns a validated section back into the core objects it declares.

No torch, no ray: ``pdspace validate`` and ``plan`` import this cheaply.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, StrictBool,
                      StrictStr, create_model)
from pydantic_core import PydanticCustomError

from core.config import (DataSpec, EvalConfig, KDConfig, LogitsStoreConfig, NonNegInt, PosFloat, PosInt, TrainConfig,
                         Truncation)
from core.config import NonNegFloat as _NonNegFloat
from core.schedules import ALPHA_KINDS, AlphaScheduleConfig
from core.settings import bounds_text, build, field_docs, fmt_value, in_bounds, show_value, unwrap, yaml_name
from core.sizes import MODEL_SIZES

__all__ = ["Study", "RunConfig", "TeacherConfig", "DataConfig", "KDLossConfig", "EvalSection", "LogitsConfig",
           "to_core", "fmt", "show", "did_you_mean", "explain", "NOT_FOR_TEACHERS", "KD_ONLY_FIELDS",
           "SCRATCH_TEACHER_FIELDS", "unwrap_model_field"]

fmt = fmt_value


show = show_value


def did_you_mean(word: Any, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def fail(message: str) -> PydanticCustomError:
    # The message goes through the context so that braces in it are never format fields.
    return PydanticCustomError("pdspace", "{message}", {"message": message})


def _integral(value: Any) -> Any:
    """Accept 2e6 (a float in YAML) for an integer field when it is a whole number."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _bounds_validator(bounds: list[Any]) -> AfterValidator:
    rule = bounds_text(bounds)

    def check(value: Any) -> Any:
        if not in_bounds(value, bounds):
            raise fail(f"{rule} (got {show(value)})")
        return value

    return AfterValidator(check)


Int = Annotated[int, BeforeValidator(_integral), Strict()]
Float = Annotated[float, Strict()]  # strict: ints are accepted, strings and bools are not


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    core: ClassVar[tuple[type, ...]] = ()
    """The core dataclasses this section declares (empty for study-only sections)."""
    sweep_replaces: ClassVar[bool] = False
    """A sweep or grid value of this section replaces it whole (instead of merging into it)."""


# --------------------------------------------------------------------------------------------
# Generation

def _pyd(annotation: Any) -> Any:
    """The strict pydantic annotation of a core field's annotation."""
    tp, bounds = unwrap(annotation)
    if get_origin(tp) in (Union, types.UnionType):
        members = [_pyd(a) for a in get_args(tp) if a is not type(None)]
        out: Any = members[0] if len(members) == 1 else Union[tuple(members)]
        return out | None if type(None) in get_args(tp) else out
    origin = get_origin(tp)
    if origin is Literal:
        out = tp
    elif origin is tuple:
        out = tuple[tuple(_pyd(a) for a in get_args(tp))]
    elif origin is list:
        out = list[_pyd(get_args(tp)[0])]
    elif dataclasses.is_dataclass(tp):
        out = section(tp)
    elif tp is bool:
        out = StrictBool
    elif tp is int:
        out = Int
    elif tp is float:
        out = Float
    elif tp is str:
        out = StrictStr
    else:  # pragma: no cover - a declaration this generator does not know
        raise TypeError(f"cannot derive a study field from {tp!r}")
    if bounds:
        out = Annotated[out, _bounds_validator(bounds)]
    return out


def _field_default(f: dataclasses.Field, description: str | None) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        factory = f.default_factory
        return Field(default_factory=lambda: _as_section(factory()), description=description)
    return Field(default=f.default, description=description)


def _as_section(value: Any) -> Any:
    """A core default (a dataclass instance) as the generated section's default."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        model = section(type(value))
        return model.model_validate({yaml_name(f): _plain(getattr(value, f.name))
                                     for f in dataclasses.fields(value) if f.metadata.get("in_study", True)})
    return value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {yaml_name(f): _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.metadata.get("in_study", True)}
    if isinstance(value, tuple):
        return list(value)
    return value


def core_fields(*classes: type, drop: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """create_model field definitions for every study-settable field of ``classes``."""
    out: dict[str, tuple[Any, Any]] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls, include_extras=True)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if not f.metadata.get("in_study", True) or f.name in drop:
                continue
            out[yaml_name(f)] = (_pyd(hints[f.name]), _field_default(f, docs.get(f.name)))
    return out


@lru_cache(maxsize=None)
def section(*classes: type, name: str | None = None) -> type[_Section]:
    """The study section generated from core config dataclasses (merged when several)."""
    model = create_model(name or "".join(c.__name__ for c in classes) + "Section", __base__=_Section,
                         __doc__=" ".join((c.__doc__ or "").split("\n\n")[0] for c in classes),
                         **core_fields(*classes))
    model.core = classes
    return model


def to_core(value: _Section, cls: type | None = None) -> Any:
    """The core object a generated section declares (``cls`` picks one of a merged section's)."""
    cls = cls or type(value).core[0]
    data = {}
    for f in dataclasses.fields(cls):
        name = yaml_name(f)
        if name in type(value).model_fields:
            data[f.name] = _core_value(getattr(value, name))
    return build(cls, data)


def _core_value(value: Any) -> Any:
    if isinstance(value, _Section) and type(value).core:
        return to_core(value)
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_core_value(v) for v in value]
    return value


def explain() -> str:
    """Every study setting with its type, default and docstring (`pdspace validate --explain`)."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}{name}"
            inner = unwrap_model_field(field.annotation)
            if field.is_required():
                shown = " (required)"
            else:
                default = field.get_default(call_default_factory=True)
                shown = "" if isinstance(default, BaseModel) else f" = {fmt(default)}"
            doc = " ".join((field.description or "").split())
            lines.append(f"{path}{shown}" + (f"\n    {doc}" if doc else ""))
            if inner is not None:
                walk(inner, path + ".")
            elif typing.get_origin(field.annotation) is dict:
                value = typing.get_args(field.annotation)[1]
                sub = unwrap_model_field(value)
                if sub is not None:
                    walk(sub, path + ".<name>.")

    walk(Study, "")
    return "\n".join(lines)


def unwrap_model_field(annotation: Any) -> type[BaseModel] | None:
    """The section model behind a field annotation (None for a leaf)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return unwrap_model_field(members[0]) if len(members) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


# --------------------------------------------------------------------------------------------
# Sections generated from core

DataConfig = section(DataSpec, name="DataConfig")
KDLossConfig = section(KDConfig, Truncation, name="KDLossConfig")
"""`kd:` = KDConfig's fields (`loss` is its `kind`) plus the Truncation a student reads."""
EvalSection = section(EvalConfig, name="EvalSection")
LogitsConfig = section(LogitsStoreConfig, name="LogitsConfig")


def _alpha_shorthand(value: Any) -> Any:
    """`alpha: 0.9` means `{kind: constant, alpha: 0.9}`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 <= value <= 1:
            raise fail(f"must be in [0, 1] (got {show(value)})")
        return {"kind": "constant", "alpha": value}
    if value is None or isinstance(value, (bool, str, list)):
        raise fail(f"must be a number in [0, 1] or a mapping with kind: {'|'.join(ALPHA_KINDS)} "
                   f"(got {show(value)})")
    return value


AlphaSection = section(AlphaScheduleConfig, name="AlphaScheduleConfig")
AlphaSection.sweep_replaces = True
AlphaSection.from_shorthand = staticmethod(_alpha_shorthand)


# --------------------------------------------------------------------------------------------
# Study-only sections

class LogitsSourceConfig(_Section):
    """Where a student's teacher logits come from. `logits_source: offline` is shorthand; a sweep
    or grid value of `logits_source` replaces the whole section."""

    sweep_replaces: ClassVar[bool] = True

    kind: Literal["offline", "online"] = "offline"
    """offline: the converged teacher over the student's sequences (a logits store);
    online: the logits a from-scratch teacher captured while it trained."""
    window: Literal["first", "last"] = "last"
    """online: use the first or the last `tokens` of the teacher's run."""
    tokens: _pyd(PosInt) | None = None
    """online: window length in teacher-training tokens; None: the student's token budget."""
    steps: tuple[_pyd(NonNegInt), _pyd(NonNegInt)] | None = None
    """online: an explicit teacher-step range [start, end) instead of window/tokens."""

    @staticmethod
    def from_shorthand(value: Any) -> Any:
        if isinstance(value, str):
            if value not in ("offline", "online"):
                raise fail(f"must be 'offline', 'online' or a mapping with kind: (got {show(value)})"
                           + did_you_mean(value, ("offline", "online")))
            return {"kind": value}
        if value is None or isinstance(value, (bool, int, float, list)):
            raise fail(f"must be 'offline', 'online' or a mapping with kind: (got {show(value)})")
        return value


class OnlineCaptureConfig(_Section):
    """Logits a from-scratch teacher writes while it trains (at no extra forward cost)."""

    capture: StrictBool = False
    """Write an online logits store during teacher training."""
    top_p: KDLossConfig.model_fields["top_p"].annotation | None = None
    """Truncation kept in the online store; None: logits.top_p_max."""
    top_k: KDLossConfig.model_fields["top_k"].annotation | None = None
    """None: logits.top_k_max."""


NOT_FOR_TEACHERS = ("kd", "alpha_schedule", "nonfinite_from_step")
"""TrainConfig fields a teacher does not have (it trains on the next-token loss alone)."""
KD_ONLY_FIELDS = ("teacher", "kd", "alpha", "logits_source")
"""Run fields that an LM-only baseline ignores: a baseline id keeps every other varied field."""

_TRAIN = core_fields(TrainConfig)
_STUDENT_SIZE = Field(default="d64l3", description="Student size name (core.sizes.MODEL_SIZES).")

RunConfig = create_model(
    "RunConfig", __base__=_Section,
    __doc__="One student run (the study's `base:`); sweeps and grids vary its fields.",
    student=(StrictStr, _STUDENT_SIZE),
    teacher=(StrictStr | None, Field(default=None, description="Name of a teacher under `teachers:`; None: LM-only.")),
    **{name: spec for name, spec in _TRAIN.items() if name not in ("kd", "alpha")},
    alpha=(Annotated[AlphaSection, BeforeValidator(_alpha_shorthand)],
           Field(default_factory=AlphaSection, description=_TRAIN["alpha"][1].description)),
    kd=(KDLossConfig, Field(default_factory=KDLossConfig, description="Distillation loss and truncation.")),
    logits_source=(Annotated[LogitsSourceConfig, BeforeValidator(LogitsSourceConfig.from_shorthand)],
                   Field(default_factory=LogitsSourceConfig, description="offline (default) or online teacher logits.")),
)
RunConfig.core = (TrainConfig,)

_TEACHER_TRAIN = {n: s for n, s in _TRAIN.items()
                  if n not in NOT_FOR_TEACHERS and n not in ("alpha",)}
_TEACHER_TRAIN["tokens"] = (_TRAIN["tokens"][0], Field(default=2_000_000, description="From scratch: training tokens."))
TeacherConfig = create_model(
    "TeacherConfig", __base__=_Section,
    __doc__="A teacher: `{pretrained: <hub id or path>}`, or trained from scratch on the study's data.",
    pretrained=(StrictStr | None, Field(default=None, description=(
        "Hugging Face hub id or local path of a pretrained causal LM; the other fields then do not apply."))),
    size=(StrictStr, Field(default="d128l4", description="From scratch: model size name.")),
    **_TEACHER_TRAIN,
    online=(OnlineCaptureConfig, Field(default_factory=OnlineCaptureConfig,
                                       description="From scratch: online logits capture.")),
)
TeacherConfig.core = (TrainConfig,)
SCRATCH_TEACHER_FIELDS = tuple(n for n in TeacherConfig.model_fields if n != "pretrained")
"""Fields that apply only to a teacher trained from scratch."""


class BaselinesConfig(_Section):
    """LM-only baselines."""

    auto: StrictBool = True
    """Plan the LM-only baseline (α = 0; same student, data, tokens, LR schedule, seed) of every KD trial."""


class ResourcesConfig(_Section):
    """What each trial asks Ray for, and failure handling."""

    cpus_per_trial: _pyd(PosFloat) = 1
    """CPUs per worker of a trial."""
    gpus_per_trial: _pyd(_NonNegFloat) = 0
    """GPUs per worker of a trial: 1 on GPU clusters (each DDP worker trains on one GPU, over NCCL);
    a fraction lets one-worker trials of small models share a GPU; 0 trains on CPUs (gloo)."""
    workers_per_trial: _pyd(PosInt) = 1
    """Data-parallel workers per trial (DDP through Ray Train); a trial uses workers × gpus_per_trial GPUs."""
    gpu_memory_gb: _pyd(PosFloat) | None = None
    """Memory of one GPU in GB (10^9 bytes; e.g. 80 for an H100 80GB, 141 for an H200): `pdspace plan`
    and `pdspace run` refuse a study whose estimated peak memory per GPU (core.memory) is larger.
    None: unknown, nothing is checked."""
    max_concurrent: _pyd(PosInt) | None = None
    """Trials at once; None: as many as resources allow."""
    max_retries: _pyd(NonNegInt) = 1
    """Retries of a failed unit before it is recorded as failed."""


class StorageConfig(_Section):
    """Where results go; None: $PDSPACE_DB or ./pdspace.db, $PDSPACE_HOME or ./artifacts."""

    db: StrictStr | None = None
    """SQLAlchemy URL or SQLite file path."""
    artifacts: StrictStr | None = None
    """Root folder of all artifacts (data, teachers, logits stores, checkpoints)."""


class Study(_Section):
    """A validated study. Build it with orchestrator.study.load_study / validate_study."""

    name: StrictStr
    """Study name (unique in the database); defaults to the file's stem."""
    description: StrictStr = ""
    """Free text shown in reports."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Corpus and tokenizer."""
    teachers: dict[StrictStr, TeacherConfig] = Field(default_factory=dict)
    """Teachers by name."""
    logits: LogitsConfig = Field(default_factory=LogitsConfig)
    """Offline logits store parameters."""
    base: RunConfig = Field(default_factory=RunConfig)
    """The default student run."""
    sweeps: list[dict[StrictStr, list[Any]]] = Field(default_factory=list)
    """One factor at a time from base: `- {kd.top_k: [1, 5, 50]}`; several keys in one entry
    vary together (zipped lists of equal length)."""
    grid: dict[StrictStr, list[Any]] = Field(default_factory=dict)
    """Cartesian product from base: `{student: [d32l2, d64l3], kd.temperature: [1, 2]}`."""
    seeds: list[_pyd(NonNegInt)] | None = None
    """Repeat every trial with each seed (trial ids get `,seed=N`); None: base.seed once."""
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    """LM-only baselines."""
    eval: EvalSection = Field(default_factory=EvalSection)
    """Evaluation."""
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    """Per-trial resources."""
    storage: StorageConfig = Field(default_factory=StorageConfig)
    """Database and artifacts."""


def size_problem(name: str) -> str | None:
    if name in MODEL_SIZES:
        return None
    return (f"unknown model size {name!r}{did_you_mean(name, MODEL_SIZES)}; "
            f"known: {', '.join(MODEL_SIZES)}")
