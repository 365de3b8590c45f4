"""`pdspace query` cannot write, on SQLite and on a real PostgreSQL server: the writes a user or an
attacker would try (DML, `COMMIT;` prefixes, DDL, ATTACH, several statements, switching the
transaction to read-write) are refused with one sentence, and every row is still there."""
from __future__ import annotations

import pytest

import results
from cli.main import main
from results import TrialRecord, UnitRecord
from results.sqltext import one_statement

UNITS = [UnitRecord("t", "teacher", {"kind": "teacher"}), UnitRecord("s", "student", {"kind": "student"})]
TRIALS = [TrialRecord("teacher:t1", "t"), TrialRecord("seed=0", "s", "seed", "0")]
TABLES = ("studies", "runs", "study_runs", "metrics", "evals", "artifacts", "kept_stats")


@pytest.fixture
def filled(db_url):
    results.init_db(db_url)
    results.register_study(db_url, "one", {"name": "one"}, "h", UNITS, TRIALS)
    rid = results.run_id_for(db_url, "s")
    for step in range(1, 61):
        results.record_metrics(db_url, rid, step, step * 10**9, {"loss": 5.0 - step / 100, "val_loss": 5.0})
    results.record_evals(db_url, rid, [{"step": 60, "tokens": 6 * 10**10, "task": "cloze", "metric": "acc",
                                        "value": 0.3, "stderr": 0.01}])
    results.record_artifact(db_url, rid, "export", "/a/s/export", num_bytes=10**13)
    results.record_kept_stats(db_url, results.run_id_for(db_url, "t"), [
        {"top_p": 0.95, "top_k": 100, "num_tokens": 10**11, "mean_kept_per_token": 20.0, "bytes_per_token": 60.0}])
    return db_url


def _snapshot(url: str) -> dict:
    """Every table's row count and its rows (the strongest "nothing changed")."""
    out = {}
    for table in TABLES:
        rows = results.query(url, f"SELECT * FROM {table} ORDER BY id")
        out[table] = rows.astype(str).values.tolist()
    out["schema"] = sorted(results.query(url, "SELECT 1 AS one FROM runs").columns)  # the query path itself works
    return out


ATTACKS_BOTH = [
    "DELETE FROM metrics",
    "DELETE FROM metrics WHERE id < 50 RETURNING id",
    "COMMIT; DELETE FROM metrics WHERE id < 50 RETURNING id",
    "ROLLBACK; DELETE FROM metrics RETURNING id",
    "END; DELETE FROM metrics",
    "SELECT 1; DELETE FROM metrics",
    "SELECT 1;\n-- a comment\nDELETE FROM metrics",
    "SELECT 1 /* ; */; UPDATE runs SET status = 'failed'",
    "UPDATE runs SET status = 'failed'",
    "UPDATE runs SET status = 'failed' RETURNING id",
    "INSERT INTO studies (name, spec, spec_hash, created_at) VALUES ('x', '{}', 'h', '2020-01-01')",
    "INSERT INTO studies (name, spec, spec_hash, created_at) VALUES ('x', '{}', 'h', '2020-01-01') RETURNING id",
    "WITH gone AS (DELETE FROM metrics RETURNING id) SELECT * FROM gone",
    "DROP TABLE metrics",
    "CREATE TABLE evil (x INTEGER)",
    "ALTER TABLE runs ADD COLUMN evil INTEGER",
    "CREATE INDEX evil ON metrics (value)",
    "ATTACH DATABASE '/tmp/pdspace-evil.db' AS evil",
    "/* hidden */ ATTACH '/tmp/pdspace-evil.db' AS evil",
    "DETACH DATABASE main",
    "VACUUM",
    "BEGIN; DELETE FROM metrics; COMMIT",
    "",
    ";",
]
ATTACKS_SQLITE = [
    "REPLACE INTO studies (id, name, spec, spec_hash, created_at) VALUES (1, 'x', '{}', 'h', '2020-01-01')",
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 7",
    "VACUUM INTO '/tmp/pdspace-evil-copy.db'",
    "SELECT load_extension('/tmp/evil')",
]
ATTACKS_POSTGRES = [
    "TRUNCATE metrics",
    "SET TRANSACTION READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; DELETE FROM metrics",
    "SET default_transaction_read_only = off; DELETE FROM metrics",
    "COMMIT; SET default_transaction_read_only = off; DELETE FROM metrics",
    "EXPLAIN ANALYZE DELETE FROM metrics",
    "SELECT nextval(pg_get_serial_sequence('metrics', 'id'))",
    "COPY metrics TO STDOUT",
    "COPY (SELECT 1) TO PROGRAM 'touch /tmp/pdspace-evil'",
    "DO $$ BEGIN DELETE FROM metrics; END $$",
    "SELECT $$;$$; DELETE FROM metrics",
    "SELECT E'\\';'; DELETE FROM metrics",
    "CREATE FUNCTION evil() RETURNS int AS 'SELECT 1' LANGUAGE sql",
    "CALL evil()",
]


def _attacks(url: str) -> list[str]:
    return ATTACKS_BOTH + (ATTACKS_SQLITE if url.startswith("sqlite") else ATTACKS_POSTGRES)


def test_query_refuses_every_write_and_keeps_every_row(filled):
    before = _snapshot(filled)
    assert len(before["metrics"]) == 120
    for sql in _attacks(filled):
        with pytest.raises(ValueError) as info:
            results.query(filled, sql)
        message = str(info.value)
        assert "\n" not in message and message, (sql, message)
        assert _snapshot(filled) == before, sql


def test_query_reads_what_a_user_asks(filled):
    assert results.query(filled, "SELECT COUNT(*) AS n FROM metrics")["n"].item() == 120
    # a colon, a percent sign and a semicolon inside literals are text, not parameters or statements
    got = results.query(filled, "SELECT trial_id FROM study_runs WHERE trial_id = 'teacher:t1' "
                                "OR trial_id LIKE 'seed=%' ORDER BY trial_id;")
    assert got["trial_id"].tolist() == ["seed=0", "teacher:t1"]
    assert results.query(filled, "SELECT ';' AS semi -- ; DELETE FROM metrics")["semi"].item() == ";"
    assert results.query(filled, "SELECT MAX(tokens) AS t FROM metrics")["t"].item() == 60 * 10**9
    assert results.query(filled, "SELECT bytes FROM artifacts")["bytes"].item() == 10**13
    assert results.query(filled, "WITH x AS (SELECT step FROM metrics) SELECT COUNT(*) AS n FROM x")["n"].item() == 120
    if filled.startswith("sqlite"):
        assert "name" in results.query(filled, "PRAGMA table_info(runs)")
    else:
        assert results.query(filled, "SHOW transaction_read_only").iloc[0, 0] == "on"


@pytest.mark.parametrize("sql", ["COMMIT; DELETE FROM metrics WHERE id < 50 RETURNING id", "DROP TABLE runs",
                                 "ATTACH 'x.db' AS x"])
def test_the_query_command_exits_2_with_one_sentence(filled, sql, capsys):
    before = _snapshot(filled)
    code = main(["--db", filled, "query", sql])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("pdspace: ") and err.count("\n") == 1 and "Traceback" not in err
    assert _snapshot(filled) == before


@pytest.mark.parametrize("sql, dialect, ok", [
    ("SELECT 1", "sqlite", True),
    ("SELECT 1;  -- done\n", "sqlite", True),
    ("SELECT 'a;b', \"c;d\"", "sqlite", True),
    ("SELECT [x;y] FROM t", "sqlite", True),
    ("SELECT `x;y` FROM t", "sqlite", True),
    ("SELECT 1 /* /* ; */ ; DELETE FROM t", "sqlite", False),  # SQLite's comments do not nest
    ("SELECT 1 /* /* ; */ ; DELETE FROM t */", "postgresql", True),  # PostgreSQL's do
    ("SELECT $tag$ ; $tag$", "postgresql", True),
    ("SELECT $1", "postgresql", True),
    ("SELECT E'\\'; DELETE'", "postgresql", True),
    ("SELECT 'it''s'; DELETE FROM t", "sqlite", False),
    ("SELECT 1;;", "sqlite", True),
    ("COPY t TO STDOUT", "postgresql", False),
])
def test_one_statement_knows_literals_and_comments(sql, dialect, ok):
    if ok:
        assert one_statement(sql, dialect)
    else:
        with pytest.raises(ValueError):
            one_statement(sql, dialect)
