"""analysis.scaling: Chinchilla acceptance on Epoch AI's points, published constants, planted
parameters (with and without noise), bootstrap, degenerate inputs."""
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import scaling as S

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "chinchilla_epoch_points.csv"


def epoch_points():
    df = pd.read_csv(REFERENCE).sort_values("loss").iloc[:-5]  # drop the 5 highest-loss points
    N = df["Model Size"].to_numpy()
    D = df["Training FLOP"].to_numpy() / (6 * N)
    return N, D, df["loss"].to_numpy()


@pytest.fixture(scope="module")
def epoch_fit():
    N, D, L = epoch_points()
    t0 = time.perf_counter()
    fit = S.fit_chinchilla(N, D, L)
    return fit, time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE.exists(), reason="needs ../shared/reference")
def test_chinchilla_reproduces_epoch_refit(epoch_fit):
    fit, seconds = epoch_fit
    N, D, L = epoch_points()
    assert len(N) == 240 and fit.num_starts == 4500
    assert fit.status == "converged"
    p = fit.params
    assert p["E"] == pytest.approx(1.817, abs=0.01)
    assert p["alpha"] == pytest.approx(0.347, abs=0.01)
    assert p["beta"] == pytest.approx(0.367, abs=0.01)
    ref = S.chinchilla_law(N, D, **S.EPOCH_CHINCHILLA)
    assert np.max(np.abs(fit.predict(N, D) / ref - 1)) < 0.005
    assert seconds < 60  # bench/fit_chinchilla.py times it properly (target: 20 s on 2 cores)


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE.exists(), reason="needs ../shared/reference")
def test_varpro_cross_check_finds_the_same_optimum(epoch_fit):
    fit, _ = epoch_fit
    N, D, L = epoch_points()
    vp = S.fit_chinchilla(N, D, L, method="varpro")
    assert vp.method == "varpro" and vp.status == "converged"
    assert vp.loss == pytest.approx(fit.loss, rel=1e-6)
    assert np.max(np.abs(vp.predict(N, D) / fit.predict(N, D) - 1)) < 1e-4


def _planted_chinchilla(noise, seed=0):
    rng = np.random.default_rng(seed)
    N = np.repeat(np.geomspace(1e7, 3e9, 6), 6)
    D = np.tile(np.geomspace(2e8, 2e11, 6), 6)
    L = S.chinchilla_law(N, D, **S.HOFFMANN_CHINCHILLA) * np.exp(rng.normal(0, noise, N.size))
    return N, D, L


@pytest.mark.parametrize("noise,tol", [(0.0, 1e-6), (0.01, 0.01)])
def test_chinchilla_recovers_planted_parameters(noise, tol):
    N, D, L = _planted_chinchilla(noise)
    fit = S.fit_chinchilla(N, D, L)
    truth = S.chinchilla_law(N, D, **S.HOFFMANN_CHINCHILLA)
    assert np.max(np.abs(fit.predict(N, D) / truth - 1)) < tol
    if noise == 0:
        for k, v in S.HOFFMANN_CHINCHILLA.items():
            assert fit.params[k] == pytest.approx(v, rel=1e-3), k


def test_chinchilla_bootstrap_is_deterministic_and_covers_the_truth():
    N, D, L = _planted_chinchilla(0.01, seed=1)
    a = S.fit_chinchilla(N, D, L, method="varpro", bootstrap=40, seed=0)
    b = S.fit_chinchilla(N, D, L, method="varpro", bootstrap=40, seed=0)
    assert a.intervals == b.intervals and a.num_bootstrap == 40
    assert a.samples.shape == (40 - a.bootstrap_failed, 5) and a.resample == "points"
    for k in ("E", "A", "B", "alpha", "beta"):
        lo, hi = a.intervals[k]
        assert lo <= a.params[k] <= hi or np.isclose(lo, a.params[k]) or np.isclose(hi, a.params[k])
    lo, hi = a.predict_interval(1e9, 2e10)
    assert lo < S.chinchilla_law(1e9, 2e10, **S.HOFFMANN_CHINCHILLA) < hi


def test_compute_optimal_frontier():
    p = S.EPOCH_CHINCHILLA
    C = np.array([1e21, 1e23])
    N, D = S.compute_optimal(p, C)
    assert np.allclose(6 * N * D, C)
    # the frontier minimises L along C = 6ND
    for c, n in zip(C, N):
        grid = n * np.geomspace(0.5, 2, 41)
        losses = S.chinchilla_law(grid, c / (6 * grid), **p)
        assert np.argmin(losses) == 20
    with pytest.raises(ValueError):
        S.compute_optimal({**p, "alpha": 0.0}, C)


@pytest.mark.parametrize("noise,tol", [(0.0, 1e-6), (0.01, 0.03)])
def test_power_law_recovers_planted_parameters(noise, tol):
    rng = np.random.default_rng(3)
    N = np.geomspace(1e6, 1e10, 10)
    truth = S.power_law(N, E=1.7, A=300.0, alpha=0.3)
    fit = S.fit_power_law(N, truth * np.exp(rng.normal(0, noise, N.size)), bootstrap=30 if noise else 0)
    assert fit.status == "converged"
    assert np.max(np.abs(fit.predict(N) / truth - 1)) < tol
    if noise:
        assert set(fit.intervals) == {"E", "A", "alpha"}


def test_busbridge_check_values():
    sup = S.supervised_law(546e6, 20 * 546e6, **S.BUSBRIDGE_SUPERVISED)
    assert sup == pytest.approx(2.5149, abs=5e-4)
    for L_T, L_S in ((2.0, 2.3755), (2.4, 2.4754)):
        got = S.distillation_law(546e6, 20 * 546e6, L_T, sup, **S.BUSBRIDGE_DISTILLATION)
        assert got == pytest.approx(L_S, abs=5e-4)
    # the law cannot express a student beating its teacher
    L_T = np.linspace(1.0, 4.0, 50)
    assert np.all(S.distillation_law(546e6, 1e10, L_T, sup, **S.BUSBRIDGE_DISTILLATION) >= L_T)


def _supervised_grid():
    N = np.geomspace(5e7, 2e9, 6)
    D = np.geomspace(2e9, 5e10, 5)
    NN, DD = (a.ravel() for a in np.meshgrid(N, D))
    return NN, DD


@pytest.mark.parametrize("noise,tol", [(0.0, 1e-6), (0.005, 0.01)])
def test_supervised_law_recovers_planted_predictions(noise, tol):
    NN, DD = _supervised_grid()
    truth = S.supervised_law(NN, DD, **S.BUSBRIDGE_SUPERVISED)
    L = truth * np.exp(np.random.default_rng(4).normal(0, noise, NN.size))
    fit = S.fit_supervised_law(NN, DD, L)
    assert fit.status == "converged"
    assert np.max(np.abs(fit.predict(NN, DD) / truth - 1)) < tol


@pytest.mark.parametrize("noise,tol", [(0.0, 1e-4), (0.003, 0.006)])
def test_distillation_law_recovers_planted_predictions(noise, tol):
    L_T = np.array([1.8, 2.1, 2.4, 2.7, 3.0, 3.4])  # both sides of the capacity-gap break
    N3, D3, T3 = (a.ravel() for a in np.meshgrid(np.geomspace(5e7, 2e9, 4), np.geomspace(2e9, 5e10, 3), L_T))
    L_tilde = S.supervised_law(N3, D3, **S.BUSBRIDGE_SUPERVISED)
    truth = S.distillation_law(N3, D3, T3, L_tilde, **S.BUSBRIDGE_DISTILLATION)
    L_S = truth * np.exp(np.random.default_rng(5).normal(0, noise, N3.size))
    fit = S.fit_distillation_law(N3, D3, T3, L_S, supervised=S.BUSBRIDGE_SUPERVISED)
    assert fit.params["f1"] >= S.F1_MIN
    assert np.max(np.abs(fit.predict(N3, D3, T3) / truth - 1)) < tol
    assert np.all(fit.predict(N3, D3, T3) >= T3)


def test_distillation_law_accepts_supervised_data():
    NN, DD = (a.ravel() for a in np.meshgrid(np.geomspace(5e7, 2e9, 4), np.geomspace(2e9, 5e10, 3)))
    L = S.supervised_law(NN, DD, **S.BUSBRIDGE_SUPERVISED)
    sup = S.fit_supervised_law(NN, DD, L)
    T = np.full(NN.size, 2.2)
    L_S = S.distillation_law(NN, DD, T, L, **S.BUSBRIDGE_DISTILLATION)
    a = S.fit_distillation_law(NN, DD, T, L_S, supervised=sup)
    assert a.supervised == pytest.approx(sup.params)
    with pytest.raises(ValueError, match="supervised"):
        S.fit_distillation_law(NN, DD, T, L_S, supervised={"E": 1.0})


@pytest.mark.parametrize("args,match", [
    (([1e6, 2e6, 3e6], [1e9] * 3, [3.0, 2.9, 2.8]), "more points than its 5 parameters"),
    (([1e6, -2e6] * 4, [1e9] * 8, [3.0] * 8), "N must be positive"),
    (([1e6] * 8, [1e9] * 8, [3.0] * 7 + [0.0]), "L must be positive"),
    (([1e6] * 8, [1e9] * 7, [3.0] * 8), "D has 7 values, expected 8"),
    (([1e6] * 8, [1e9] * 8, [3.0] * 7 + [np.nan]), "L must be finite"),
])
def test_degenerate_inputs_raise_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        S.fit_chinchilla(*args)


def test_unknown_method_and_flat_data():
    N, D, L = _planted_chinchilla(0.0)
    with pytest.raises(ValueError, match="method"):
        S.fit_chinchilla(N, D, L, method="adam")
    # constant losses are representable (A, B -> 0): a fit, not a crash
    fit = S.fit_power_law(np.geomspace(1e6, 1e9, 6), np.full(6, 2.5))
    assert fit.predict(1e7) == pytest.approx(2.5, rel=1e-3)


def test_log_space_params_past_float_range_are_inf_not_an_error():
    """A diverged bootstrap refit can leave a log-coefficient beyond 709; math.exp raised
    OverflowError there and the report lost the whole fit ("Not fitted: math range error" on the
    mini suite's distillation_law study)."""
    from analysis.scaling import _distillation_params, _supervised_params

    sup = _supervised_params([800.0, 1.0, 0.0, 0.5, 0.4, 1.0])
    assert sup["A"] == float("inf") and sup["B"] == pytest.approx(np.e) and sup["E"] == 1.0
    dis = _distillation_params([1.0, 900.0, 0.5, 0.4, 1.0, 0.0, 1.0, 0.1, 750.0])
    assert dis["B"] == float("inf") and dis["d1"] == float("inf") and dis["A"] == pytest.approx(np.e)


def _runs_with_evaluations(seed=1):
    """5 runs (one size each), each evaluated at 5 token counts; a run's evaluations share its seed's
    offset (they move together), as a real run's do."""
    rng = np.random.default_rng(seed)
    N = np.repeat(np.geomspace(1e7, 3e9, 5), 5)
    D = np.tile(np.geomspace(2e9, 2e11, 5), 5)
    run = np.repeat(np.arange(5), 5)
    L = S.chinchilla_law(N, D, **S.HOFFMANN_CHINCHILLA) * np.exp(rng.normal(0, 0.02, 5)[run]
                                                                  + rng.normal(0, 0.003, N.size))
    return N, D, L, run


def test_cluster_bootstrap_copying_points_does_not_narrow_the_interval():
    """Resampling runs: four copies of every evaluation give the same interval. Resampling points
    treats the copies as independent evidence and narrows it."""
    N, D, L, run = _runs_with_evaluations()
    one = S.fit_chinchilla(N, D, L, bootstrap=30, seed=0, groups=run)
    four = S.fit_chinchilla(*(np.tile(a, 4) for a in (N, D, L)), bootstrap=30, seed=0, groups=np.tile(run, 4))
    assert one.resample == "runs" and one.bootstrap_failed == four.bootstrap_failed
    for k in ("alpha", "beta", "E"):
        assert four.intervals[k] == pytest.approx(one.intervals[k], rel=1e-4), k
    pts = S.fit_chinchilla(N, D, L, bootstrap=30, seed=0)
    pts4 = S.fit_chinchilla(*(np.tile(a, 4) for a in (N, D, L)), bootstrap=30, seed=0)
    width = {k: np.diff(f.intervals["alpha"])[0] for k, f in (("runs", one), ("points", pts), ("points4", pts4))}
    assert width["points4"] < 0.8 * width["points"] and width["points"] < width["runs"]


def test_cluster_weights_resample_whole_clusters():
    W = S.cluster_weights(6, ["a", "a", "b", "b", "b", "c"], 50, np.random.default_rng(0))
    assert W.shape == (50, 6)
    assert (W[:, 0] == W[:, 1]).all() and (W[:, 2] == W[:, 4]).all()  # a cluster's points weigh alike
    assert (W[:, [0, 2, 5]].sum(1) == 3).all()  # three clusters drawn per resample


def _distillation_data():
    NN, DD = (a.ravel() for a in np.meshgrid(np.geomspace(5e7, 2e9, 4), np.geomspace(2e9, 5e10, 3)))
    rng = np.random.default_rng(7)
    L = S.supervised_law(NN, DD, **S.BUSBRIDGE_SUPERVISED) * np.exp(rng.normal(0, 0.003, NN.size))
    T = np.repeat([1.9, 2.3, 2.8], NN.size)
    N3, D3 = np.tile(NN, 3), np.tile(DD, 3)
    L_tilde = S.supervised_law(N3, D3, **S.BUSBRIDGE_SUPERVISED)
    L_S = S.distillation_law(N3, D3, T, L_tilde, **S.BUSBRIDGE_DISTILLATION) * np.exp(rng.normal(0, 0.003, N3.size))
    return (NN, DD, L), (N3, D3, T, L_S)


def test_distillation_bootstrap_refits_both_stages():
    (NN, DD, L), (N3, D3, T, L_S) = _distillation_data()
    sup = S.fit_supervised_law(NN, DD, L)
    two = S.fit_distillation_law(N3, D3, T, L_S, supervised=sup, bootstrap=12, seed=0)
    kept = two.num_bootstrap - two.bootstrap_failed
    assert two.num_bootstrap == 12 and two.supervised_samples.shape == (kept, 6) and kept > 0
    assert np.ptp(two.supervised_samples[:, list(sup.params).index("E")]) > 0  # the first stage moves
    lo, hi = two.predict_interval(N3[:3], D3[:3], T[:3])
    assert np.all(lo <= hi)
    fixed = S.fit_distillation_law(N3, D3, T, L_S, supervised=dict(sup.params), bootstrap=12, seed=0)
    assert fixed.supervised_samples is None  # published constants: nothing to refit


def test_bootstrap_refits_that_do_not_converge_are_counted_and_left_out(monkeypatch):
    real = S._batched_lbfgs

    def half_fail(*args, **kwargs):
        X, f, g, conv = real(*args, **kwargs)
        conv = conv.copy()
        conv[::2] = False
        return X, f, g, conv

    monkeypatch.setattr(S, "_batched_lbfgs", half_fail)
    rng = np.random.default_rng(3)
    N = np.geomspace(1e6, 1e10, 10)
    fit = S.fit_power_law(N, S.power_law(N, E=1.7, A=300.0, alpha=0.3) * np.exp(rng.normal(0, 0.01, 10)),
                          bootstrap=20)
    assert fit.num_bootstrap == 20 and fit.bootstrap_failed == 10 and fit.samples.shape == (10, 3)
    from analysis.report import bootstrap_text

    assert "10 of 20 refits did not converge" in bootstrap_text(fit)
