"""Study files: strict validation with dotted-path errors, includes, overrides, expansion."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import StudyError
from orchestrator.study import (
    RunConfig,
    Study,
    apply_overrides,
    expand,
    load_study,
    load_study_dict,
    parse_yaml,
    validate_study,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "studies"
SHIPPED = sorted(p for p in (ROOT / "studies").rglob("*.yaml") if not p.name.startswith("_"))

TEACHER = "teachers:\n  t1: {size: d128l4, tokens: 2e6}\n"


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(StudyError) as info:
        load_study(write(tmp_path, text))
    return str(info.value)


def assert_clean(message: str) -> None:
    """A user-facing message: no traceback, no library boilerplate."""
    for noise in ("Traceback", "pydantic", "errors.pydantic.dev", "For further information",
                  "Input should", "validation error", "type="):
        assert noise not in message, message


# --------------------------------------------------------------------------------------------
# Bad files: each names the exact dotted path

BAD = [
    # (id, yaml, expected message)
    ("sweep-top-p", TEACHER + "base: {teacher: t1}\nsweeps:\n  - {kd.top_k: [5]}\n  - {kd.top_p: [0.5, 1.5]}\n",
     "sweeps[1].kd.top_p: must be in (0, 1] (got 1.5)"),
    ("top-k", "base:\n  kd: {top_k: 0}\n", "base.kd.top_k: must be >= 1 (got 0)"),
    ("temperature", "base:\n  kd: {temperature: 0}\n", "base.kd.temperature: must be > 0 (got 0)"),
    ("temperature-negative", "base:\n  kd: {temperature: -1.5}\n", "base.kd.temperature: must be > 0 (got -1.5)"),
    ("alpha-range", "base: {alpha: 1.5}\n", "base.alpha: must be in [0, 1] (got 1.5)"),
    ("alpha-schedule-range", "base:\n  alpha: {kind: linear_inc, alpha_min: -0.1}\n",
     "base.alpha.alpha_min: must be in [0, 1] (got -0.1)"),
    ("alpha-sweep", "sweeps:\n  - {alpha: [0.5, 2]}\n", "sweeps[0].alpha: must be in [0, 1] (got 2)"),
    ("unknown-key", "base:\n  kd: {topk: 5}\n", "base.kd.topk: unknown key (did you mean 'top_k'?)"),
    ("unknown-section", "sweep:\n  - {kd.top_k: [1]}\n", "sweep: unknown key (did you mean 'sweeps'?)"),
    ("unknown-nested-hint", "teachers:\n  t1: {lr: 1e-3}\n", "teachers.t1.lr: unknown key (did you mean 'optimizer.lr'?)"),
    ("wrong-type-float", "base:\n  optimizer: {lr: abc}\n", "base.optimizer.lr: must be a number, got 'abc'"),
    ("wrong-type-int", "base: {tokens: 1.5}\n", "base.tokens: must be a whole number, got 1.5"),
    ("wrong-type-bool", TEACHER.replace("tokens: 2e6", "online: {capture: yes}"),
     "teachers.t1.online.capture: must be true or false, got 'yes'"),
    ("wrong-type-section", "base: [1, 2]\n", "base: must be a mapping, got [1,2]"),
    ("literal", "base:\n  kd: {loss: kl}\n", "base.kd.loss: must be one of nll, kld, mse, reverse_kld, jsd, tvd, got 'kl' (did you mean 'kld'?)"),
    ("lr-kind", "base:\n  lr_schedule: {kind: cosin}\n", "base.lr_schedule.kind: must be one of cosine, wsd, constant, got 'cosin' (did you mean 'cosine'?)"),
    ("sweep-unknown-field", "sweeps:\n  - {kd.topk: [1, 5]}\n", "sweeps[0].kd.topk: unknown field (did you mean 'kd.top_k'?)"),
    ("grid-unknown-field", "grid:\n  temprature: [1, 2]\n", "grid.temprature: unknown field (did you mean 'kd.temperature'?)"),
    ("sweep-not-list", "sweeps:\n  - {kd.top_k: 5}\n", "sweeps[0].kd.top_k: must be a list, got 5"),
    ("sweep-empty", "sweeps:\n  - {kd.top_k: []}\n", "sweeps[0].kd.top_k: must list at least one value"),
    ("sweep-zip-lengths", "sweeps:\n  - {kd.top_k: [1, 2], kd.top_p: [0.5]}\n", "sweeps[0]: fields varied together need as many values each"),
    ("undefined-teacher-base", TEACHER + "base: {teacher: t2}\n", "base.teacher: 't2' is not defined under teachers: (defined: t1)"),
    ("undefined-teacher-sweep", TEACHER + "base: {teacher: t1}\nsweeps:\n  - {teacher: [t1, t9]}\n",
     "sweeps[0].teacher: 't9' is not defined under teachers:"),
    ("undefined-teacher-grid", TEACHER + "grid:\n  teacher: [t1, tX]\n", "grid.teacher: 'tX' is not defined under teachers:"),
    ("unknown-student", "base: {student: d64l4}\n", "base.student: unknown model size 'd64l4' (did you mean 'd64l3'?)"),
    ("online-pretrained", "data: {tokenizer: THUDM/glm-4-9b}\nteachers:\n  glm4: {pretrained: THUDM/glm-4-9b}\n"
     "base: {teacher: glm4, logits_source: online}\n",
     "base.logits_source: online logits need a teacher trained from scratch with online.capture: true; 'glm4' is pretrained"),
    ("online-no-capture", TEACHER + "base: {teacher: t1, tokens: 5e5, logits_source: online}\n",
     "base.logits_source: online logits need a teacher trained from scratch with online.capture: true; 't1' has online.capture: false"),
    ("online-sweep", "data: {tokenizer: gpt2}\nteachers:\n  glm4: {pretrained: gpt2}\nbase: {teacher: glm4}\n"
     "sweeps:\n  - {logits_source: [offline, online]}\n",
     "sweeps[0].logits_source: online logits need a teacher trained from scratch"),
    ("online-window", "teachers:\n  t1: {tokens: 1e6, online: {capture: true}}\n"
     "base: {teacher: t1, tokens: 5e5, logits_source: {kind: online, tokens: 2e6}}\n",
     "base.logits_source.tokens: must be <= 1000000, the tokens teacher 't1' trains on; got 2000000"),
    ("top-p-over-store", TEACHER + "base:\n  teacher: t1\n  kd: {top_p: 0.97}\n",
     "base.kd.top_p: must be <= logits.top_p_max (0.95)"),
    ("top-k-over-store", TEACHER + "base: {teacher: t1}\nsweeps:\n  - {kd.top_k: [50, 200]}\n",
     "sweeps[0].kd.top_k: must be <= logits.top_k_max (100)"),
    ("top-k-over-online-store", "teachers:\n  t1: {tokens: 2e6, online: {capture: true, top_k: 20}}\n"
     "base: {teacher: t1, tokens: 5e5, logits_source: online}\n",
     "base.kd.top_k: must be <= teachers.t1.online.top_k (20)"),
    ("online-capture-lacks-a-statistic", "teachers:\n  t1: {tokens: 2e6, online: {capture: true}}\n"
     "base: {teacher: t1, tokens: 5e5, logits_source: online, kd: {normalization: tail, temperature: 2}}\n",
     "base.kd: reads full-vocabulary statistics that teachers.t1.online's capture does not keep; add "
     "logits.gammas: 0.5 to the study"),
    ("online-capture-lacks-normkd", "teachers:\n  t1: {tokens: 2e6, online: {capture: true}}\n"
     "base: {teacher: t1, tokens: 5e5, logits_source: online, kd: {adaptive: normkd, normalization: tail}}\n",
     "add logits.t_norms: 2 to the study"),
    ("adakd-tail", TEACHER + "base:\n  teacher: t1\n  kd: {adaptive: adakd_h, normalization: tail}\n",
     "base.kd.normalization: tail is exact only at a temperature"),
    ("pretrained-with-scratch-fields", "teachers:\n  glm4: {pretrained: THUDM/glm-4-9b, tokens: 1e9}\n",
     "teachers.glm4.tokens: does not apply to a pretrained teacher"),
    ("pretrained-needs-tokenizer", "teachers:\n  glm4: {pretrained: THUDM/glm-4-9b}\nbase: {teacher: glm4}\n",
     "data.tokenizer: must be set when a student distils from the pretrained teacher 'glm4'"),
    ("tokens-below-one-batch", "base: {tokens: 1000}\n", "base.tokens: must be at least one batch"),
    ("micro-batch", "base: {batch_size: 16, micro_batch_size: 5}\n", "base.micro_batch_size: must divide batch_size 16, got 5"),
    ("warmup-both", "base:\n  lr_schedule: {warmup_frac: 0.1, warmup_steps: 10}\n", "base.lr_schedule: set warmup_frac or warmup_steps, not both"),
    ("wsd-fractions", "base:\n  lr_schedule: {kind: wsd, warmup_frac: 0.5, decay_frac: 0.6}\n",
     "base.lr_schedule: warm-up (244 steps) and decay do not fit in the run's 488 steps"),
    ("wsd-stable-and-decay", "base:\n  lr_schedule: {kind: wsd, stable_frac: 0.5, decay_frac: 0.2}\n",
     "base.lr_schedule: set stable_frac or decay_frac, not both"),
    ("warmup-too-long", "base:\n  lr_schedule: {warmup_steps: 1000}\n",
     "base.lr_schedule.warmup_steps: warm-up (1000 steps) must be shorter than the run (488 steps)"),
    ("period-steps-elsewhere", "sweeps:\n  - {alpha: [{kind: linear_inc, period_steps: 10}]}\n",
     "sweeps[0].alpha.period_steps: is only used by kind period (got kind linear_inc)"),
    ("adaptive-temperature", "base:\n  kd: {temperature: 2}\nsweeps:\n  - {kd.adaptive: [null, adakd_sd, wttm]}\n",
     "sweeps[0].kd.temperature: is not used with adaptive wttm (it sets its own); leave it at 1, got 2"),
    ("adakd-clip", "base:\n  kd: {adakd_tau_min: 2, adakd_tau_max: 1}\n",
     "base.kd.adakd_tau_max: must be >= adakd_tau_min (2), got 1"),
    ("period-steps", "base:\n  alpha: {kind: period}\n", "base.alpha.period_steps: is required for kind period"),
    ("betas-length", "base:\n  optimizer: {betas: [0.9]}\n", "base.optimizer.betas: must have 2 items"),
    ("seeds-dupe", "seeds: [0, 1, 1]\n", "seeds: must not repeat a seed, got 1 twice"),
    ("seeds-and-seed-sweep", "seeds: [0, 1]\nsweeps:\n  - {seed: [3]}\n", "sweeps[0].seed: cannot vary seed when seeds: is set"),
    ("teacher-keys", "teachers:\n  1: {size: d128l4}\n", "teachers: keys must be strings, got 1"),
    ("builtin-task", "eval:\n  builtin_tasks: [pdspace_nextlin]\n", "eval.builtin_tasks[0]: must be one of pdspace_nextline, pdspace_cloze"),
    ("grid-combination", "data: {tokenizer: gpt2}\nteachers:\n  t1: {tokens: 2e6, online: {capture: true}}\n  g: {pretrained: gpt2}\n"
     "base: {teacher: t1, tokens: 5e5}\ngrid:\n  teacher: [t1, g]\n  logits_source: [offline, online]\n",
     "grid[teacher=g,logits_source=online].logits_source: online logits need a teacher trained from scratch"),
    ("not-a-mapping", "- just\n- a list\n", "study.yaml: must be a mapping of sections"),
    ("invalid-yaml", "base:\n  tokens: 1e5\n   kd: {top_k: 5}\n", "study.yaml: invalid YAML at line 3, column 6: mapping values are not allowed here"),
    ("duplicate-key", "base:\n  tokens: 1e5\n  tokens: 2e5\n", "study.yaml: invalid YAML at line 3, column 3: found duplicate key 'tokens'"),
]


@pytest.mark.parametrize("text, expected", [(t, e) for _, t, e in BAD], ids=[i for i, _, _ in BAD])
def test_bad_study_names_the_dotted_path(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert expected in message
    assert_clean(message)


def test_one_error_is_one_line_and_several_are_listed(tmp_path):
    one = error_of(tmp_path, "base:\n  kd: {top_k: 0}\n")
    assert "\n" not in one
    several = error_of(tmp_path, "base:\n  kd: {top_k: 0, temperature: 0}\n  tokens: abc\n")
    lines = several.splitlines()
    assert lines[0].startswith("3 errors")
    assert {"base.kd.top_k", "base.kd.temperature", "base.tokens"} == {l.strip().split(":")[0] for l in lines[1:]}
    assert_clean(several)


def test_study_error_is_a_value_error_with_structured_errors(tmp_path):
    with pytest.raises(ValueError) as info:
        load_study(write(tmp_path, "base:\n  kd: {top_p: 2}\n"))
    assert info.value.errors == [("base.kd.top_p", "must be in (0, 1] (got 2)")]


def test_missing_file(tmp_path):
    with pytest.raises(StudyError) as info:
        load_study(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: file not found"


def test_missing_include_names_the_file():
    with pytest.raises(StudyError) as info:
        load_study(FIXTURES / "missing_include.yaml")
    message = str(info.value)
    assert "include: file not found: no_such_base.yaml" in message
    assert_clean(message)


def test_include_cycle_names_the_chain():
    with pytest.raises(StudyError) as info:
        load_study(FIXTURES / "cycle_a.yaml")
    assert str(info.value) == "include cycle: cycle_a.yaml -> cycle_b.yaml -> cycle_a.yaml"


def test_self_include_is_a_cycle(tmp_path):
    message = error_of(tmp_path, "include: study.yaml\n")
    assert message == "include cycle: study.yaml -> study.yaml"


# --------------------------------------------------------------------------------------------
# YAML quirks and types

def test_yaml_reads_exponents_as_numbers_and_only_true_false_as_booleans():
    data = parse_yaml("a: 5e-4\nb: 1e6\nc: 1.5E+3\nd: -2e-1\ne: yes\nf: true\ng: 2_000\nh: 0.95\n")
    assert data == {"a": 5e-4, "b": 1e6, "c": 1500.0, "d": -0.2, "e": "yes", "f": True, "g": 2000, "h": 0.95}


def test_numbers_coerce_only_where_exact(tmp_path):
    study = load_study(write(tmp_path, TEACHER + "base:\n  teacher: t1\n  tokens: 5e5\n"
                                               "  optimizer: {lr: 5e-4}\n  kd: {temperature: 2}\n"))
    assert study.base.tokens == 500_000 and isinstance(study.base.tokens, int)
    assert study.base.optimizer.lr == 5e-4
    assert study.base.kd.temperature == 2.0 and isinstance(study.base.kd.temperature, float)
    assert error_of(tmp_path, "base:\n  kd: {temperature: '2'}\n").startswith("base.kd.temperature: must be a number")


def test_defaults_fill_every_field_and_empty_file_is_valid(tmp_path):
    study = load_study(write(tmp_path, ""))
    assert study.name == "study"
    [trial] = expand(study)
    assert trial.trial_id == "base" and trial.role == "baseline"  # no teacher: LM-only
    cfg = trial.config
    assert set(cfg["optimizer"]) == {"lr", "weight_decay", "betas", "eps", "grad_clip"}
    assert set(cfg["lr_schedule"]) == {"kind", "warmup_frac", "warmup_steps", "stable_frac", "decay_frac",
                                       "min_ratio", "decay_shape"}
    assert set(cfg["data"]) == {"source", "text_field", "tokenizer", "vocab_size", "seq_len", "val_fraction",
                                "max_train_tokens", "max_documents", "max_corpus_bytes"}
    assert cfg["lr_schedule"]["warmup_frac"] is not None and cfg["micro_batch_size"] == cfg["batch_size"]
    assert all(field.description for field in RunConfig.model_fields.values())
    assert all(field.description for field in Study.model_fields.values())


# --------------------------------------------------------------------------------------------
# Expansion

def test_sweep_expands_values_times_seeds_plus_baselines():
    study = load_study(FIXTURES / "sweep_k.yaml")
    trials = expand(study)
    students = [t for t in trials if t.role == "student"]
    baselines = [t for t in trials if t.role == "baseline"]
    assert len(students) == (1 + 7) * 3  # base + 7 k values, 3 seeds each
    assert len(baselines) == 3  # every k shares its seed's baseline
    ids = [t.trial_id for t in trials]
    assert len(ids) == len(set(ids))
    assert {"base,seed=0", "top_k=50,seed=1", "top_k=1,seed=2", "baseline:student=d64l3,seed=0"} <= set(ids)
    by_id = {t.trial_id: t for t in trials}
    k50 = by_id["top_k=50,seed=1"]
    assert (k50.factor, k50.value, k50.config["logits"]["top_k"], k50.config["seed"]) == ("kd.top_k", "50", 50, 1)
    assert k50.baseline_hash == by_id["baseline:student=d64l3,seed=1"].config_hash == k50.config["baseline_hash"]
    # a sweep value equal to base is the same run under another readable id
    assert by_id["top_k=100,seed=0"].config_hash == by_id["base,seed=0"].config_hash


def test_expansion_is_stable():
    first = expand(load_study(FIXTURES / "sweep_k.yaml"))
    second = expand(load_study(FIXTURES / "sweep_k.yaml"))
    assert [(t.trial_id, t.config_hash, t.baseline_hash) for t in first] == \
           [(t.trial_id, t.config_hash, t.baseline_hash) for t in second]


def test_baseline_config_is_lm_only_and_matches_its_student():
    trials = {t.trial_id: t for t in expand(load_study(FIXTURES / "sweep_k.yaml"))}
    student, baseline = trials["top_k=5,seed=2"], trials["baseline:student=d64l3,seed=2"]
    assert baseline.config["kind"] == "baseline"
    assert baseline.config["alpha_schedule"]["alpha"] == 0
    assert baseline.config["kd"] is None and baseline.config["teacher"] is None and baseline.config["logits"] is None
    for key in ("student", "data", "tokens", "batch_size", "optimizer", "lr_schedule", "seed", "eval"):
        assert baseline.config[key] == student.config[key], key


def test_hash_follows_content_not_spelling(tmp_path):
    plain = expand(load_study(write(tmp_path, TEACHER + "base: {teacher: t1}\n", "a.yaml")))
    spelled = expand(load_study(write(tmp_path, TEACHER.replace("t1", "big") + "base:\n  teacher: big\n"
                                      "  optimizer: {lr: 3e-3}\n  alpha: {kind: constant, alpha: 0.9}\n", "b.yaml")))
    changed = expand(load_study(write(tmp_path, TEACHER + "base:\n  teacher: t1\n  optimizer: {lr: 2e-3}\n", "c.yaml")))
    assert plain[0].config_hash == spelled[0].config_hash  # defaults written out; teacher renamed
    assert plain[0].config_hash != changed[0].config_hash
    assert plain[1].config_hash != changed[1].config_hash  # the baseline follows the LR too


def test_alpha_zero_trial_is_the_baseline(tmp_path):
    trials = expand(load_study(write(tmp_path, TEACHER + "base: {teacher: t1}\nsweeps:\n  - {alpha: [0, 0.5, 1]}\n")))
    by_id = {t.trial_id: t for t in trials}
    assert by_id["alpha=0"].role == "baseline"
    assert by_id["alpha=0.5"].baseline_hash == by_id["alpha=0"].config_hash
    assert not any(t.trial_id.startswith("baseline:") for t in trials)  # no duplicate of alpha=0


def test_baselines_are_distinct_where_the_lm_run_differs(tmp_path):
    trials = expand(load_study(write(
        tmp_path, TEACHER + "base: {teacher: t1}\nsweeps:\n  - {lr_schedule.kind: [cosine, wsd]}\n"
                            "  - {kd.temperature: [0.5, 2]}\n")))
    baselines = sorted(t.trial_id for t in trials if t.role == "baseline")
    assert baselines == ["baseline:student=d64l3", "baseline:student=d64l3,lr_schedule.kind=wsd"]


def test_auto_baselines_off(tmp_path):
    trials = expand(load_study(write(tmp_path, TEACHER + "base: {teacher: t1}\nbaselines: {auto: false}\n")))
    assert [t.trial_id for t in trials] == ["base"]
    assert trials[0].baseline_hash is None


def test_grid_and_zipped_sweep_ids():
    trials = {t.trial_id: t for t in expand(load_study(FIXTURES / "grid_online.yaml"))}
    students = [i for i, t in trials.items() if t.role == "student"]
    assert sorted(students) == sorted([
        "logits_source=offline,temperature=1", "logits_source=offline,temperature=2",
        "logits_source=online,temperature=1", "logits_source=online,temperature=2",
        "window=first,logits_source.kind=online", "window=last,logits_source.kind=online",
    ])
    online = trials["logits_source=online,temperature=2"]
    assert online.factor == "logits_source,kd.temperature" and online.value == "online,2"
    assert online.config["logits"] == {"source": "online", "top_p": 0.95, "top_k": 50,
                                       "window": "last", "tokens": 500_000, "steps": None}
    assert trials["window=first,logits_source.kind=online"].config["logits"]["window"] == "first"
    assert "base" not in trials  # a grid replaces the base point
    assert len([t for t in trials.values() if t.role == "baseline"]) == 1


def test_sweep_values_replace_schedules_and_merge_into_sections(tmp_path):
    trials = {t.trial_id: t for t in expand(load_study(write(
        tmp_path, TEACHER + "base:\n  teacher: t1\n  kd: {top_k: 50, temperature: 2}\n"
                            "  alpha: {kind: wsd_alpha, alpha: 0.9, warmup_frac: 0.2}\n"
                            "sweeps:\n  - {alpha: [0.5, {kind: linear_inc}]}\n  - {kd: [{loss: mse}]}\n")))}
    assert trials["alpha=0.5"].config["alpha_schedule"]["kind"] == "constant"
    linear = trials["alpha={kind:linear_inc}"].config["alpha_schedule"]
    assert (linear["kind"], linear["alpha"], linear["warmup_frac"]) == ("linear_inc", 0.9, 0.1)  # defaults
    mse = trials["kd={loss:mse}"].config
    assert (mse["kd"]["kind"], mse["kd"]["temperature"], mse["logits"]["top_k"]) == ("mse", 2.0, 50)


def test_grid_over_seed_without_seeds(tmp_path):
    trials = expand(load_study(write(tmp_path, TEACHER + "base: {teacher: t1}\ngrid:\n  seed: [0, 1]\n")))
    assert [t.trial_id for t in trials] == ["seed=0", "seed=1", "baseline:student=d64l3,seed=0",
                                            "baseline:student=d64l3,seed=1"]


def test_no_seeds_means_one_run_at_base_seed(tmp_path):
    trials = expand(load_study(write(tmp_path, TEACHER + "base: {teacher: t1, seed: 4}\n")))
    assert [(t.trial_id, t.config["seed"]) for t in trials] == [("base", 4), ("baseline:student=d64l3", 4)]


# --------------------------------------------------------------------------------------------
# Includes and overrides

def test_include_merges_deep_and_the_including_file_wins():
    study = load_study(FIXTURES / "include_child.yaml")
    assert study.name == "include_child"  # not the included file's name
    assert study.description == "a base that other studies include"
    assert study.data.seq_len == 64 and study.base.tokens == 200_000
    assert study.base.optimizer.lr == 2e-3 and study.base.optimizer.weight_decay == 0.05
    assert study.base.kd.temperature == 1.0 and study.base.kd.top_k == 50
    assert study.seeds == [7]
    ids = {t.trial_id for t in expand(study)}
    assert {"base,seed=7", "student=d32l2,seed=7", "baseline:student=d32l2,seed=7"} <= ids


def test_overrides_apply_and_type_check():
    raw = load_study_dict(FIXTURES / "sweep_k.yaml")
    out = apply_overrides(raw, ["base.tokens=100000", "base.optimizer.lr=5e-4", "seeds=[0]",
                                "teachers.t1.tokens=1e6", "base.alpha.kind=linear_inc",
                                "grid.kd.temperature=[1, 2]", "name=quick"])
    assert raw["base"]["tokens"] == 500_000  # the input is not mutated
    study = validate_study(out)
    assert study.name == "quick" and study.base.tokens == 100_000 and study.base.optimizer.lr == 5e-4
    assert study.teachers["t1"].tokens == 1_000_000 and study.seeds == [0]
    assert study.base.alpha.kind == "linear_inc" and study.base.alpha.alpha == 0.9
    assert study.grid == {"kd.temperature": [1, 2]}
    with pytest.raises(StudyError, match=r"base.kd.topk: unknown key \(did you mean 'top_k'\?\)"):
        apply_overrides(raw, ["base.kd.topk=5"])
    with pytest.raises(StudyError, match=r"basse.tokens: unknown key 'basse' \(did you mean 'base'\?\)"):
        apply_overrides(raw, ["basse.tokens=5"])
    with pytest.raises(StudyError, match=r"--set: expected key=value, got 'base.tokens'"):
        apply_overrides(raw, ["base.tokens"])
    with pytest.raises(StudyError, match=r"base.tokens: must be a whole number, got 'lots'"):
        load_study(FIXTURES / "sweep_k.yaml", overrides=["base.tokens=lots"])


# --------------------------------------------------------------------------------------------
# Specs for the other units of work

def test_teacher_data_and_logits_specs():
    study = load_study(FIXTURES / "sweep_k.yaml")
    teachers = study.teacher_specs()
    assert list(teachers) == ["t1"]
    t1 = teachers["t1"]
    assert t1.config["origin"] == "scratch" and t1.config["tokens"] == 2_000_000
    assert t1.config["optimizer"]["lr"] == 4e-3
    assert all(t.config["teacher_hash"] == t1.config_hash for t in expand(study) if t.role == "student")
    assert study.data_spec()["source"] == "builtin:python-stdlib"
    store = study.logits_spec("t1")
    assert store.config["teacher_hash"] == t1.config_hash and store.config["num_tokens"] == 500_000
    assert (store.config["top_p_max"], store.config["top_k_max"]) == (0.95, 100)
    again = load_study(FIXTURES / "sweep_k.yaml", overrides=["logits.batch_size=64", "eval.limit=10"])
    assert again.logits_spec("t1").config_hash == store.config_hash  # throughput / eval only
    assert again.teacher_specs()["t1"].config_hash == t1.config_hash


def test_offline_store_keeps_every_statistic_its_students_read(tmp_path):
    # issue 15: tail at tau != 1 reads log U_(1/tau), NormKD with tail its exact normaliser, WTTM
    # log U_gamma; the planner adds each to the study's store. A study that needs none keeps the
    # store it had (same hash).
    plain = load_study(write(tmp_path, TEACHER + "base: {teacher: t1}\n", "plain.yaml"))
    study = load_study(write(tmp_path, TEACHER + "base: {teacher: t1}\nsweeps:\n"
                             "  - {kd.normalization: [tail], kd.temperature: [2]}\n"
                             "  - {kd.adaptive: [normkd], kd.normalization: [tail]}\n"
                             "  - {kd.adaptive: [wttm], kd.wttm_gamma: [0.7]}\n"
                             "  - {kd.temperature: [0.5]}\n"))
    store = study.logits_spec("t1").config
    assert store["gammas"] == [0.5, 0.7] and store["t_norms"] == [2.0]
    assert "t_norms" not in plain.logits_spec("t1").config
    assert plain.logits_spec("t1").config_hash == load_study(
        write(tmp_path, TEACHER + "base: {teacher: t1}\nsweeps:\n  - {kd.temperature: [0.5, 2]}\n",
              "renorm.yaml")).logits_spec("t1").config_hash  # renormalize at any tau needs nothing


# --------------------------------------------------------------------------------------------
# Shipped studies and the mirror of core's constants

@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_shipped_studies_validate_and_expand(path):
    trials = expand(load_study(path))
    ids = [t.trial_id for t in trials]
    assert trials and len(ids) == len(set(ids))
    assert ids == [t.trial_id for t in expand(load_study(path))]
    hashes = {t.config_hash for t in trials}
    assert all(t.baseline_hash in hashes for t in trials if t.role == "student")


def test_quickstart_shows_kd_against_baselines_for_three_sizes_and_two_seeds():
    trials = expand(load_study(ROOT / "studies" / "quickstart.yaml"))
    students = [t for t in trials if t.role == "student"]
    sizes = {t.config["student"] for t in students}
    assert len(sizes) >= 3
    for size in sizes:
        assert len({t.config["seed"] for t in students if t.config["student"] == size}) >= 2
    baseline_hashes = {t.config_hash for t in trials if t.role == "baseline"}
    assert all(t.baseline_hash in baseline_hashes for t in students)


def test_resolved_config_builds_core_configs():
    from core.config import DataSpec, EvalConfig, KDConfig
    from core.schedules import AlphaScheduleConfig, LRScheduleConfig
    from core.settings import build

    for trial in expand(load_study(FIXTURES / "grid_online.yaml")):
        cfg = trial.config
        build(DataSpec, cfg["data"])
        build(LRScheduleConfig, cfg["lr_schedule"])
        build(AlphaScheduleConfig, cfg["alpha_schedule"])
        build(EvalConfig, cfg["eval"])
        if cfg["kd"] is not None:
            build(KDConfig, cfg["kd"])


def test_study_module_imports_neither_torch_nor_ray():
    code = ("import sys; import orchestrator.study; "
            "assert not {'torch', 'ray'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
