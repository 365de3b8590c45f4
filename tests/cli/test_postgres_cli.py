"""The CLI on a real PostgreSQL server (tests/conftest.py's throw-away cluster): the paper's
reference CSV imports (it failed with "integer out of range" while tokens were 32-bit), re-imports
in place, and reads back through `pdspace results`, `status` and `query`."""
from __future__ import annotations

from pathlib import Path

from cli.main import main

REFERENCE = Path(__file__).resolve().parents[2] / "analysis" / "reference" / "peng2025_results.csv"


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_reference_csv_imports_into_postgres(pg_url, capsys):
    code, out, err = _run(capsys, "--db", pg_url, "import", str(REFERENCE), "--study", "paper")
    assert code == 0, err
    n = int(out.split()[1])
    assert n > 10
    code, out, err = _run(capsys, "--db", pg_url, "query", "SELECT COUNT(*) AS runs, MAX(e.tokens) AS tokens "
                          "FROM runs r JOIN evals e ON e.run_id = r.id")
    assert code == 0, err
    assert int(out.split()[-1]) > 2**31  # 10^11-token runs: what a 32-bit column refused
    code, _, err = _run(capsys, "--db", pg_url, "import", str(REFERENCE), "--study", "paper")  # in place
    assert code == 0, err
    code, out, err = _run(capsys, "--db", pg_url, "query", "SELECT COUNT(*) AS n FROM runs")
    assert code == 0 and int(out.split()[-1]) == n
    code, out, err = _run(capsys, "--db", pg_url, "results", "paper", "--format", "csv")
    assert code == 0 and len(out.strip().splitlines()) == n + 1, err
    code, out, err = _run(capsys, "--db", pg_url, "status", "paper")
    assert code == 0 and f"{n} runs: {n} completed" in out, err
