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
        assert set(f) == {"accuracy", "loss"}, key  # every finding calibrated on both metrics
        for metric, e in f.items():
            assert {"null_false_reproduced", "mc_error", "rates", "meets_floor", "null_region_max_reproduced"} <= set(e)
            assert ("power_2sigma" in e) or ("power_at_zero" in e) or e["test"] == "not testable here"
            assert set(e["rates"]) == {"null", "θ=0σ", "θ=-3σ", "θ=-2σ", "θ=-1σ", "θ=+1σ", "θ=+2σ", "θ=+3σ"}
        assert "accuracy pts" in f["accuracy"]["test"] or f["accuracy"]["test"] == "not testable here"
    assert out["findings"]["kld_nll"]["loss"]["rates"]["null"] == {"not testable here": 1.0}
    assert out["findings"]["kld_nll"]["accuracy"]["rates"]["null"] == {"not testable here": 1.0}
    assert "mc_error" in out and out["reps"] == {"null": 3, "other levels": 1}
    assert out["accuracy_noise"]["limit"] == 200 and len(out["accuracy_noise"]["tasks"]) == 2
