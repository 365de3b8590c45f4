"""The results package imports no torch or ray, and none of core, orchestrator, analysis or the CLI:
both sides of the database depend on it, it depends on neither."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_results_imports_nothing_of_the_rest_of_pdspace():
    code = (
        "import sys\n"
        "import results, results.schema, results.engine, results.migrate, results.read, results.write\n"
        "import results.pairs, results.legacy\n"
        "results.init_db('sqlite://')  # runs the migrations: env.py and every revision are imported\n"
        "bad = [m for m in ('torch', 'ray', 'transformers', 'core', 'orchestrator', 'analysis', 'cli')\n"
        "       if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
