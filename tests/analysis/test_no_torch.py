"""analysis never imports torch or ray (DESIGN.md: users run it where neither is installed), nor the
orchestrator or the CLI: it reads the database through the results package only."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_analysis_imports_neither_torch_nor_ray_nor_the_orchestrator():
    code = (
        "import sys\n"
        "import analysis.results, analysis.tables, analysis.scaling, analysis.figures, analysis.fits\n"
        "import analysis.external, analysis.report, analysis.commands, analysis.findings, analysis.suite\n"
        "import analysis.summary, analysis.study_figures\n"
        "bad = [m for m in ('torch', 'ray', 'transformers', 'orchestrator', 'cli') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
