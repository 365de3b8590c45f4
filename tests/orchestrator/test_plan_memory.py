"""`pdspace plan` prints every unit's estimated peak memory per device (core.memory) and refuses,
with exit 2 and the numbers, a study whose unit cannot fit the declared resources.gpu_memory_gb;
`pdspace run` refuses it before any work. GPU resources that a worker cannot use are refused."""
from __future__ import annotations

import json

import pytest

from cli.main import main
from core.memory import GB, pretrained_teacher, training_memory
from orchestrator.plan import build_plan
from orchestrator.study import load_study

V = 151_552
GLM_CONFIG = {"architectures": ["GlmForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 40,
              "intermediate_size": 13696, "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
              "vocab_size": V, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def _study(tmp_path, resources: str, *, teacher_config: dict | None = GLM_CONFIG) -> str:
    teacher = tmp_path / "glm"
    teacher.mkdir(exist_ok=True)
    if teacher_config is not None:
        (teacher / "config.json").write_text(json.dumps(teacher_config))
    f = tmp_path / "mem.yaml"
    f.write_text(f"""
name: mem
data: {{tokenizer: {teacher}, vocab_size: {V}, seq_len: 4096}}
teachers: {{glm: {{pretrained: {teacher}}}}}
base: {{student: 330M, teacher: glm, tokens: 1_000_000_000, batch_size: 16, micro_batch_size: 4}}
logits: {{batch_size: 4}}
eval: {{builtin_tasks: [], heldout_sequences: 64}}
resources: {resources}
""")
    return str(f)


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_prints_memory_per_gpu_and_it_fits(tmp_path, capsys):
    code, out, err = _run(capsys, "plan", _study(tmp_path, "{gpus_per_trial: 1, gpu_memory_gb: 80}"))
    assert code == 0, err
    assert "mem/dev" in out and "40.5GB" in out and "21.4GB" in out  # KD student (teacher on board), baseline
    assert "resources.gpu_memory_gb = 80: every unit fits" in out
    assert "largest base: 40.5 GB = weights 1.3 + optimizer 2.7 + teacher 19.1" in out


def test_plan_refuses_a_unit_larger_than_the_declared_gpu(tmp_path, capsys):
    code, out, err = _run(capsys, "plan", _study(tmp_path, "{gpus_per_trial: 1, gpu_memory_gb: 35}"))
    assert code == 2
    assert "mem/dev" in out  # the table first, then the refusal
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("pdspace: mem: base: needs ~40.5 GB = weights 1.3 + optimizer 2.7 + teacher 19.1")
    assert "more than resources.gpu_memory_gb = 35 GB; lower micro_batch_size" in err
    assert "baseline" not in err and "logits:glm" not in err  # 21.4 and 30.1 GB fit


def test_an_extraction_too_large_for_the_gpu_names_its_batch(tmp_path, capsys):
    study = _study(tmp_path, "{gpus_per_trial: 1, gpu_memory_gb: 45}")
    code, _, err = _run(capsys, "plan", study, "--set", "logits.batch_size=16")  # 16 x 4096 x V bf16 logits
    assert code == 2
    assert err.startswith("pdspace: mem: logits:glm: needs ~45.0 GB = weights 18.8 + logits 19.9")
    assert "lower logits.batch_size" in err


def test_run_refuses_it_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PDSPACE_HOME", str(tmp_path / "home"))
    code, _, err = _run(capsys, "--db", str(tmp_path / "r.db"), "run",
                        _study(tmp_path, "{gpus_per_trial: 1, gpu_memory_gb: 35}"))
    assert code == 2 and "gpu_memory_gb = 35" in err
    assert list((tmp_path / "home").iterdir()) == []  # no data, no lock, no Ray


def test_nothing_is_refused_without_a_declared_memory(tmp_path, capsys):
    code, out, _ = _run(capsys, "plan", _study(tmp_path, "{gpus_per_trial: 1}"))
    assert code == 0 and "gpu_memory_gb" not in out


def test_the_plan_estimates_each_unit_on_one_of_its_workers(tmp_path):
    plan = build_plan(load_study(_study(tmp_path, "{gpus_per_trial: 1, workers_per_trial: 8}")))
    units = {u.kind: u for u in plan.units}
    teacher = pretrained_teacher("glm", GLM_CONFIG)
    # 16 sequences over 8 workers: 2 per worker, below the study's micro-batch of 4
    student = training_memory("330M", V, 4096, 2, workers=8, teacher=teacher, heldout_sequences=64)
    baseline = training_memory("330M", V, 4096, 2, workers=8)
    assert units["student"].estimate["memory_bytes"] == student.peak_bytes
    assert units["baseline"].estimate["memory_bytes"] == baseline.peak_bytes
    assert units["logits"].estimate["memory_bytes"] > teacher.weight_bytes  # extraction: weights + logits
    assert baseline.peak_bytes / GB == pytest.approx(15.8, abs=0.05)


def test_an_unknown_pretrained_teacher_is_flagged_not_counted(tmp_path, capsys):
    code, out, _ = _run(capsys, "plan", _study(tmp_path, "{gpus_per_trial: 1}", teacher_config=None))
    assert code == 0
    assert "GB+?" in out and "teacher glm's weights are not counted" in out


@pytest.mark.parametrize("resources, message", [
    ("{gpus_per_trial: 2}", "resources.gpus_per_trial: must be at most 1"),
    ("{gpus_per_trial: 0.5, workers_per_trial: 2}", "resources.gpus_per_trial: must be 1 with several workers"),
    ("{gpu_memory_gb: 80}", "resources.gpu_memory_gb: applies to GPU trials only"),
    ("{gpus_per_trial: 1, gpu_memory_gb: 0}", "resources.gpu_memory_gb"),
])
def test_resources_a_worker_cannot_use_are_refused(tmp_path, capsys, resources, message):
    code, _, err = _run(capsys, "validate", _study(tmp_path, resources))
    assert code == 2 and message in err, err
