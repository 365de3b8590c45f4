"""Columnar export: a study's runs, metrics, evals and kept_stats as Parquet files, streamed in
chunks (one row group per chunk), that pandas (and DuckDB, where installed) open; `pdspace results
--format parquet` still writes its table; on SQLite and PostgreSQL."""
from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

import results
from cli.main import main
from results import TrialRecord, UnitRecord
from results.export import export_study


@pytest.fixture
def study_db(db_url):
    results.init_db(db_url)
    results.register_study(db_url, "s", {"name": "s"}, "h",
                           [UnitRecord("t", "logits", {"kind": "logits"}),
                            UnitRecord("a", "student", {"kind": "student", "kd": {"kind": "kld"}, "tags": [1, 2]})],
                           [TrialRecord("logits:t1", "t"), TrialRecord("seed=0", "a", "seed", "0")])
    results.register_study(db_url, "other", {}, "h", [UnitRecord("o", "baseline", {})], [TrialRecord("o", "o")])
    a, t, o = (results.run_id_for(db_url, h) for h in "ato")
    for step in range(1, 501):
        results.record_metrics(db_url, a, step, step * 10**9, {"loss": 1.0 / step, "lr": None})
    results.record_metrics(db_url, o, 1, 1, {"loss": 9.0})
    results.record_evals(db_url, a, [{"step": 500, "tokens": 5 * 10**11, "task": "cloze", "metric": "acc",
                                      "value": 0.4, "stderr": 0.01, "extra": {"seed": 3}}])
    results.record_kept_stats(db_url, t, [{"top_p": 0.95, "top_k": 100, "num_tokens": 10**11,
                                           "mean_kept_per_token": 20.0, "bytes_per_token": 60.0}])
    return db_url


def test_export_streams_every_row_in_chunks(study_db, tmp_path):
    out = export_study(study_db, "s", tmp_path / "x", chunk_rows=128)
    assert {k: n for k, (_, n) in out.items()} == {"runs": 2, "metrics": 1000, "evals": 1, "kept_stats": 1}
    meta = pq.ParquetFile(out["metrics"][0]).metadata
    assert meta.num_row_groups == 8  # 1000 rows in chunks of 128: streamed, never all in memory
    m = pd.read_parquet(out["metrics"][0])
    assert len(m) == 1000 and m["tokens"].max() == 500 * 10**9 and m["value"].isna().sum() == 500
    assert set(m["run_id"]) == {results.run_id_for(study_db, "a")}  # the other study's rows stay out
    runs = pd.read_parquet(out["runs"][0])
    assert list(runs["trial_id"]) == ["logits:t1", "seed=0"] and '"kd": {"kind": "kld"}' in runs["config"][1]
    ev = pd.read_parquet(out["evals"][0])
    assert ev["extra"].item() == '{"seed": 3}' and ev["tokens"].item() == 5 * 10**11
    assert pd.read_parquet(out["kept_stats"][0])["num_tokens"].item() == 10**11
    assert not list((tmp_path / "x").glob("*.tmp"))


def test_duckdb_opens_the_export(study_db, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    out = export_study(study_db, "s", tmp_path / "x")
    n = duckdb.sql(f"SELECT COUNT(*) FROM '{out['metrics'][0]}' m JOIN '{out['runs'][0]}' r USING (run_id)").fetchall()[0]
    assert n[0] == 1000


def test_export_and_parquet_results_through_the_cli(study_db, tmp_path, capsys):
    assert main(["--db", study_db, "export", "s", "--out", str(tmp_path / "e")]) == 0
    assert "metrics.parquet (1,000 rows)" in capsys.readouterr().out
    assert main(["--db", study_db, "results", "s", "--format", "parquet", "--out", str(tmp_path / "r.parquet")]) == 0
    assert list(pd.read_parquet(tmp_path / "r.parquet")["trial_id"]) == ["logits:t1", "seed=0"]
    capsys.readouterr()
    assert main(["--db", study_db, "export", "nope", "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert "no study named 'nope'" in err and err.count("\n") == 1
    (tmp_path / "file").write_text("x")
    assert main(["--db", study_db, "export", "s", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
