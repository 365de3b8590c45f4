"""End to end on CPU: tiny studies through Ray into the database, then analysis.

One teacher, its logits, KD students with paired LM-only baselines, evaluations; a rerun that
does nothing; a second study that reuses the first one's units and adds a failing trial; and
a two-worker Ray Train (DDP, gloo) trial whose losses match a one-process run.
"""
from __future__ import annotations

import time

import pytest
import yaml

from cli.main import run_and_summarise
from orchestrator.run import format_status
from orchestrator.study import validate_study
from results import query

pytestmark = pytest.mark.slow

TINY = {
    "data": {"vocab_size": 512, "seq_len": 32, "max_corpus_bytes": 1_500_000, "val_fraction": 0.1},
    "teachers": {"t1": {"size": "d32l2", "tokens": 120_000, "batch_size": 16, "optimizer": {"lr": 4e-3}}},
    "base": {"student": "d32l2", "teacher": "t1", "tokens": 30_000, "batch_size": 16, "alpha": 0.9},
    "seeds": [0, 1],
    "eval": {"every_tokens": 15_000, "heldout_sequences": 16, "task_examples": 40, "limit": 40},
    "resources": {"max_concurrent": 2, "max_retries": 0},
}


def _study(name, **changes):
    spec = yaml.safe_load(yaml.safe_dump(TINY))
    spec.update(changes)
    return validate_study(spec, name=name)


def _rows(url, sql):
    """The rows of a read-only query, as `pdspace query` runs it."""
    return list(query(url, sql).itertuples(index=False, name=None))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    return {"db_url": f"sqlite:///{root / 'pd.db'}", "artifacts": root / "artifacts"}


def test_tiny_study_through_ray_into_the_database(home, capsys):
    code = run_and_summarise([_study("tiny")], quiet=True, report=False, **home)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PD vs LM-only" in out
    url = home["db_url"]
    status = dict(_rows(url, "SELECT r.kind || ':' || sr.trial_id, r.status FROM study_runs sr "
                             "JOIN runs r ON r.id = sr.run_id"))
    assert len(status) == 7 and set(status.values()) == {"completed"}, status
    # every training run has per-step metrics and periodic held-out losses
    for kind in ("teacher", "student", "baseline"):
        n = _rows(url, "SELECT COUNT(*) FROM metrics m JOIN runs r ON r.id = m.run_id "
                       f"WHERE r.kind = '{kind}' AND m.name = 'val_loss'")[0][0]
        assert n >= 3, kind
    # KD students also measure agreement with their teacher
    assert _rows(url, "SELECT COUNT(*) FROM metrics m JOIN runs r ON r.id = m.run_id "
                      "WHERE r.kind = 'student' AND m.name = 'top1_agreement'")[0][0] >= 2
    evals = _rows(url, "SELECT task, value, stderr, step, tokens FROM evals")
    assert {e[0] for e in evals} == {"pdspace_nextline", "pdspace_cloze"}
    assert all(e[2] is not None and e[2] > 0 and e[4] > 0 for e in evals)
    # package versions and the resolved config travel with each run
    versions, config = _rows(url, "SELECT versions, config FROM runs WHERE kind = 'student' LIMIT 1")[0]
    assert "torch" in versions and "kd" in config
    # the logits store's kept-logits statistics are kept_stats rows, one per derivable (p, k)
    kept = _rows(url, "SELECT k.top_p, k.top_k, k.mean_kept_per_token, k.bytes_per_token FROM kept_stats k "
                      "JOIN runs r ON r.id = k.run_id WHERE r.kind = 'logits'")
    assert len(kept) >= 2 and all(0 < n <= k and b > 0 for _, k, n, b in kept), kept
    assert _rows(url, "SELECT COUNT(*) FROM metrics WHERE name LIKE 'kept_per_token%'")[0][0] == 0


def test_rerun_does_nothing(home, capsys):
    t0 = time.time()
    assert run_and_summarise([_study("tiny")], quiet=True, report=False, **home) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert time.time() - t0 < 30


def test_failed_trial_is_recorded_and_the_rest_completes(home, capsys):
    study = _study("tiny_fail", sweeps=[{"nonfinite_from_step": [3]}], seeds=[0])
    code = run_and_summarise([study], quiet=True, report=False, **home)
    assert code == 1
    url = home["db_url"]
    rows = dict(_rows(url, "SELECT sr.trial_id, r.status || '|' || COALESCE(r.error, '') FROM study_runs sr "
                           "JOIN studies s ON s.id = sr.study_id JOIN runs r ON r.id = sr.run_id "
                           "WHERE s.name = 'tiny_fail'"))
    failed = rows.pop("nonfinite_from_step=3,seed=0")
    assert failed.startswith("failed|") and "non-finite" in failed
    assert all(v.startswith("completed") for v in rows.values()), rows
    shown = format_status(url, "tiny_fail")
    assert "failed" in shown and "non-finite" in shown
    # the units shared with study 'tiny' were reused, not retrained: one attempt each
    attempts = _rows(url, "SELECT MAX(attempts) FROM runs WHERE status = 'completed'")[0][0]
    assert attempts == 1


def test_two_worker_ddp_trial_matches_one_worker(tmp_path):
    losses = {}
    for workers in (1, 2):
        spec = yaml.safe_load(yaml.safe_dump(TINY))
        spec.pop("teachers")
        spec["base"] = {"student": "d32l2", "tokens": 8 * 16 * 32, "batch_size": 16}
        spec["seeds"] = [0]
        spec["eval"] = {"heldout_sequences": 8, "builtin_tasks": []}
        spec["resources"] = {"workers_per_trial": workers, "max_retries": 0}
        url = f"sqlite:///{tmp_path / f'w{workers}.db'}"
        code = run_and_summarise([validate_study(spec, name=f"ddp{workers}")], db_url=url,
                                 artifacts=tmp_path / f"a{workers}", quiet=True, report=False)
        assert code == 0
        losses[workers] = [v for (v,) in _rows(url, "SELECT value FROM metrics WHERE name = 'lm_loss' ORDER BY step")]
    assert len(losses[1]) >= 1
    assert losses[2] == pytest.approx(losses[1], rel=1e-4)


def test_a_folder_of_studies_runs_as_one_schedule(tmp_path, capsys):
    """Two studies sharing a teacher and its logits: one Ray session, shared units run once, each
    study registered with its own trial ids and summary."""
    home = {"db_url": f"sqlite:///{tmp_path / 'pd.db'}", "artifacts": tmp_path / "artifacts"}
    one = {"seeds": [0], "base": {**TINY["base"], "tokens": 15_000}}
    a, b = _study("suite_a", **one), _study("suite_b", **one, sweeps=[{"alpha": [0.5]}])
    assert run_and_summarise([a, b], quiet=False, report=False, **home) == 0
    out = capsys.readouterr().out
    assert "2 studies: " in out and "as one schedule" in out
    assert "study suite_a" in out and "study suite_b" in out  # each study's summary
    url = home["db_url"]
    assert _rows(url, "SELECT COUNT(*) FROM runs WHERE kind = 'teacher'")[0][0] == 1
    per_study = dict(_rows(url, "SELECT s.name, COUNT(*) FROM study_runs sr JOIN studies s ON s.id = sr.study_id "
                                "JOIN runs r ON r.id = sr.run_id WHERE r.status = 'completed' GROUP BY s.name"))
    assert per_study["suite_a"] >= 5 and per_study["suite_b"] > per_study["suite_a"]
    assert _rows(url, "SELECT COUNT(*) FROM runs WHERE status != 'completed'")[0][0] == 0
    # nothing left: a second call runs nothing
    assert run_and_summarise([a, b], quiet=False, report=False, **home) == 0
    assert "nothing to run" in capsys.readouterr().out
