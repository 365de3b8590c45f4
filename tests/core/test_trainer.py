"""The trainer: loss goes down on real text, exact resume, non-finite refusal, DDP, export."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from core.data import DataSpec, prepare_data
from core.config import OptimizerConfig
from core.losses import KDConfig
from core.schedules import AlphaScheduleConfig, LRScheduleConfig
from core.models import build_model
from core.trainer import NonFiniteLossError, TrainConfig, example_order, train
from core.types import SparseTeacherBatch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    spec = DataSpec(vocab_size=512, seq_len=32, max_corpus_bytes=400_000)
    return prepare_data(spec, root)


def _collect():
    rows = []

    def report(kind, payload):
        if kind == "metrics" and "lm_loss" in payload:
            rows.append(payload)

    return rows, report


def test_example_order_is_a_permutation_per_epoch():
    order = example_order(10, seed=3, start=0, count=30)
    for epoch in range(3):
        assert sorted(order[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    # any window can be computed directly
    assert np.array_equal(example_order(10, 3, 7, 9), order[7:16])


def test_loss_goes_down_on_stdlib_text(data, tmp_path):
    model = build_model("d32l2", data.vocab_size, data.seq_len, seed=0)
    rows, report = _collect()
    cfg = TrainConfig(tokens=60 * 16 * data.seq_len, batch_size=16, optimizer=OptimizerConfig(lr=3e-3), log_every_steps=5,
                      lr_schedule=LRScheduleConfig(kind="cosine", warmup_steps=5))
    result = train(cfg, model, data, run_dir=tmp_path, report=report)
    assert result.steps == 60
    first, last = rows[0]["lm_loss"], rows[-1]["lm_loss"]
    assert last < first - 0.5, (first, last)
    # exported in Hugging Face format, loadable by AutoModelForCausalLM
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(result.export_dir)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    assert (result.export_dir / "tokenizer.json").exists()


class _FakeTeacher:
    """A teacher signal from a fixed random model, for KD paths in trainer tests."""

    def __init__(self, vocab_size: int, k: int = 8):
        self.vocab_size, self.k = vocab_size, k

    def __call__(self, example_ids, sequence_ids, input_ids):
        # per-sequence seeds: the same sequence gets the same teacher in any batch split
        logits = torch.stack([
            torch.randn(input_ids.shape[1], self.vocab_size, generator=torch.Generator().manual_seed(int(s)))
            for s in sequence_ids
        ])
        logp = torch.log_softmax(logits, -1)
        vals, idx = logp.topk(self.k, dim=-1)
        return SparseTeacherBatch(idx, vals, {})


def test_resume_reproduces_an_unbroken_run(data, tmp_path):
    cfg = TrainConfig(tokens=12 * 8 * data.seq_len, batch_size=8, micro_batch_size=4, optimizer=OptimizerConfig(lr=3e-3),
                      log_every_steps=1, checkpoint_every_steps=5, kd=KDConfig(kind="kld"),
                      alpha_schedule=AlphaScheduleConfig(alpha=0.5))
    teacher = _FakeTeacher(data.vocab_size)
    full, report_full = _collect()
    train(cfg, build_model("d32l2", data.vocab_size, data.seq_len, seed=1), data,
          run_dir=tmp_path / "full", teacher=teacher, report=report_full, export=False)

    class Crash(Exception):
        pass

    part, report_part = _collect()

    def crash_after_7(kind, payload):
        report_part(kind, payload)
        if kind == "metrics" and payload.get("step") == 7:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, build_model("d32l2", data.vocab_size, data.seq_len, seed=1), data,
              run_dir=tmp_path / "broken", teacher=teacher, report=crash_after_7, export=False)
    resumed, report_resumed = _collect()
    # a fresh model object: everything must come from the checkpoint taken at step 5
    result = train(cfg, build_model("d32l2", data.vocab_size, data.seq_len, seed=99), data,
                   run_dir=tmp_path / "broken", teacher=teacher, report=report_resumed, export=False)
    assert result.resumed_from_step == 5
    assert [r["step"] for r in resumed] == list(range(6, 13))
    for r in resumed:
        ref = full[r["step"] - 1]
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-6, abs=1e-7)
        assert r["kd_loss"] == pytest.approx(ref["kd_loss"], rel=1e-6, abs=1e-7)


def test_micro_batch_split_does_not_change_the_step(data, tmp_path):
    losses = []
    for micro in (8, 2):
        rows, report = _collect()
        cfg = TrainConfig(tokens=3 * 8 * data.seq_len, batch_size=8, micro_batch_size=micro,
                          log_every_steps=1, kd=KDConfig(kind="kld"),
                          alpha_schedule=AlphaScheduleConfig(alpha=0.9))
        train(cfg, build_model("d32l2", data.vocab_size, data.seq_len, seed=2), data,
              run_dir=tmp_path / str(micro), teacher=_FakeTeacher(data.vocab_size), report=report, export=False)
        losses.append([r["loss"] for r in rows])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_nonfinite_steps_are_refused_then_the_run_fails(data, tmp_path):
    cfg = TrainConfig(tokens=20 * 4 * data.seq_len, batch_size=4, log_every_steps=1,
                      checkpoint_every_steps=2, nonfinite_from_step=4, max_nonfinite_steps=3)
    model = build_model("d32l2", data.vocab_size, data.seq_len, seed=0)
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        train(cfg, model, data, run_dir=tmp_path, export=False)
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 4  # the last good checkpoint
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_kd_needs_a_teacher(data, tmp_path):
    cfg = TrainConfig(tokens=4 * data.seq_len * 4, batch_size=4, kd=KDConfig(),
                      alpha_schedule=AlphaScheduleConfig(alpha=0.5))
    with pytest.raises(ValueError, match="no teacher"):
        train(cfg, build_model("d32l2", data.vocab_size, data.seq_len), data, run_dir=tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, data_path, run_dir, out):
    import torch.distributed as dist

    from core.data import PackedData

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    data = PackedData.open(data_path)
    rows, report = _collect()
    cfg = TrainConfig(tokens=4 * 8 * data.seq_len, batch_size=8, log_every_steps=1)
    train(cfg, build_model("d32l2", data.vocab_size, data.seq_len, seed=5), data, run_dir=run_dir,
          report=report, export=False)
    if rank == 0:
        torch.save([r["loss"] for r in rows], out)
    dist.destroy_process_group()


def test_two_process_gloo_ddp_matches_one_process(data, tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(data.path), str(tmp_path / "ddp"), str(out)), nprocs=2)
    ddp_losses = torch.load(out)
    rows, report = _collect()
    cfg = TrainConfig(tokens=4 * 8 * data.seq_len, batch_size=8, log_every_steps=1)
    train(cfg, build_model("d32l2", data.vocab_size, data.seq_len, seed=5), data, run_dir=tmp_path / "one",
          report=report, export=False)
    np.testing.assert_allclose(ddp_losses, [r["loss"] for r in rows], rtol=1e-5)


class _Payload:
    """An object a pickle-based checkpoint would construct (i.e. code run at load time)."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_are_data_not_code(data, tmp_path):
    from core.trainer import load_checkpoint

    cfg = TrainConfig(tokens=4 * 8 * data.seq_len, batch_size=8, checkpoint_every_steps=2)
    train(cfg, build_model("d32l2", data.vocab_size, data.seq_len, seed=0), data, run_dir=tmp_path, export=False)
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)  # loads as plain data
    assert state["step"] == 4 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    evil = tmp_path / "evil" / "checkpoint"
    evil.mkdir(parents=True)
    torch.save({"model": {}, "payload": _Payload()}, evil / "state.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        load_checkpoint(evil)


@pytest.mark.parametrize("kind", ["kld", "tvd"])
def test_fused_and_reference_loss_paths_train_alike(data, tmp_path, kind):
    """The trainer's default fused LM head + loss and the reference path (full logits, then
    distillation_loss) give the same losses step by step, up to float rounding."""
    rows = {}
    for fused in (True, False):
        cfg = TrainConfig(tokens=6 * 8 * data.seq_len, batch_size=8, micro_batch_size=4, log_every_steps=1,
                          kd=KDConfig(kind=kind), alpha_schedule=AlphaScheduleConfig(alpha=0.5), fused_loss=fused)
        got, report = _collect()
        train(cfg, build_model("d32l2", data.vocab_size, data.seq_len, seed=3), data, run_dir=tmp_path / str(fused),
              teacher=_FakeTeacher(data.vocab_size), report=report, export=False)
        rows[fused] = got
    for a, b in zip(rows[True], rows[False]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["kd_loss"] == pytest.approx(b["kd_loss"], rel=1e-4)
    assert len(rows[True]) == 6
