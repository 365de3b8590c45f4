"""bench/verdict_calibration.py end to end on a few replicates: the mini suite planned, registered
and read back, replicates through analysis.findings.check_suite agreeing with check_findings on
Results that hold the simulated losses, and the JSON the issue asks for."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_calibration_bench_runs_through_the_real_findings_code():
    res = subprocess.run([sys.executable, "bench/verdict_calibration.py", "--reps", "3", "--reps-effect", "1",
                          "--check", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["consistent"] is True  # check_suite on the simulated data = check_findings on Results
    from analysis.findings import FINDINGS

    assert set(out["findings"]) == {c.key for c in FINDINGS}
    for key, f in out["findings"].items():
        assert {"null_false_reproduced", "rates", "meets_floor", "null_region_max_reproduced"} <= set(f), key
        assert ("power_2sigma" in f) or ("power_at_zero" in f) or f["test"] == "not testable here"
        assert set(f["rates"]) == {"null", "θ=0σ", "θ=-3σ", "θ=-2σ", "θ=-1σ", "θ=+1σ", "θ=+2σ", "θ=+3σ"}
    assert out["findings"]["kld_nll"]["rates"]["null"] == {"not testable here": 1.0}
    assert "mc_error" in out and out["reps"] == {"null": 3, "other levels": 1}
