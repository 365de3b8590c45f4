"""Artifacts that heal, end to end on CPU through Ray: a study's logits store deleted, the study run
again with a new student: the store is rebuilt (one line says why), the new student completes, the
units that were fine are reused. Then `pdspace gc` removes the store whose students are all done,
and a later run does not rebuild it for nothing."""
from __future__ import annotations

import shutil

import pytest
import yaml

from cli.main import main, run_and_summarise
from orchestrator.study import validate_study
from results import query

pytestmark = pytest.mark.slow

TINY = {
    "data": {"vocab_size": 512, "seq_len": 32, "max_corpus_bytes": 1_500_000, "val_fraction": 0.1},
    "teachers": {"t1": {"size": "d32l2", "tokens": 40_000, "batch_size": 16, "optimizer": {"lr": 4e-3}}},
    "base": {"student": "d32l2", "teacher": "t1", "tokens": 12_000, "batch_size": 16, "alpha": 0.9},
    "seeds": [0],
    "eval": {"every_tokens": 6_000, "heldout_sequences": 8, "builtin_tasks": []},
    "resources": {"max_concurrent": 2, "max_retries": 0},
}


def _study(**changes):
    spec = yaml.safe_load(yaml.safe_dump(TINY))
    spec.update(changes)
    return validate_study(spec, name="heal")


def _rows(url, sql):
    return list(query(url, sql).itertuples(index=False, name=None))


def test_a_deleted_logits_store_is_rebuilt_for_a_new_student(tmp_path, capsys, monkeypatch):
    home = {"db_url": f"sqlite:///{tmp_path / 'pd.db'}", "artifacts": tmp_path / "artifacts"}
    assert run_and_summarise([_study()], quiet=True, report=False, **home) == 0
    url = home["db_url"]
    (logits_hash,) = _rows(url, "SELECT config_hash FROM runs WHERE kind = 'logits'")[0]
    store = home["artifacts"] / "logits" / logits_hash / "store"
    assert store.is_dir()
    shutil.rmtree(store)  # freed to save disk, say
    capsys.readouterr()

    code = run_and_summarise([_study(sweeps=[{"alpha": [0.5]}])], quiet=True, report=False, **home)
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"logits:t1: its logits store {store} is missing; running it again" in out
    assert store.is_dir()
    attempts = dict(_rows(url, "SELECT sr.trial_id, r.attempts FROM study_runs sr JOIN runs r ON r.id = sr.run_id "
                               "WHERE r.status = 'completed'"))
    assert attempts["logits:t1"] == 2  # rebuilt
    assert attempts["alpha=0.5,seed=0"] == 1  # the new student, completed
    assert attempts["teacher:t1"] == 1 and attempts["base,seed=0"] == 1  # fine, so reused
    assert _rows(url, "SELECT COUNT(*) FROM runs WHERE status != 'completed'")[0][0] == 0

    # every student of the store is done: gc lists it (dry run), then removes it
    monkeypatch.setenv("PDSPACE_HOME", str(home["artifacts"]))
    assert main(["--db", url, "gc"]) == 0
    assert str(store) in capsys.readouterr().out and store.is_dir()
    assert main(["--db", url, "gc", "--yes"]) == 0
    assert "freed" in capsys.readouterr().out and not store.exists()
    # nothing left to run needs the store: it is not rebuilt
    assert run_and_summarise([_study(sweeps=[{"alpha": [0.5]}])], quiet=True, report=False, **home) == 0
    assert "nothing to run" in capsys.readouterr().out and not store.exists()
