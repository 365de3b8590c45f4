"""Scaling-law fits: a power law in N, the Chinchilla form and the distillation law (SCALING.md).

Symbols (as in the papers, used everywhere in this module):

    N    non-embedding parameters of the (student) model, a count
    D    training tokens, a count
    C    training FLOPs, C = 6·N·D
    L    validation cross-entropy in nats/token, measured against the data (not the teacher)
    L_T  the teacher's own validation loss; L_S a distilled student's
    E, A, B, alpha, beta, gamma   law constants (E in nats; A, B in nats at N or D = 1)

Every fit is deterministic: a fixed grid of starts, the summed Huber loss on log L, a batched
L-BFGS run from every start at once (numpy, analytic gradients), the best few end points polished
with scipy's L-BFGS-B, and the best kept. Bootstrap intervals resample clusters of points (a
run's evaluations together, `groups=`; each point alone without it) with a fixed seed; a refit
that does not converge is left out of the interval and counted (`bootstrap_failed`).
A hard failure (bad input) raises ValueError; a soft failure (no convergence) is `.status`.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import minimize, nnls
from scipy.special import expit

__all__ = [
    "FitResult",
    "PowerLawFit",
    "ChinchillaFit",
    "SupervisedLawFit",
    "DistillationLawFit",
    "fit_power_law",
    "fit_chinchilla",
    "fit_supervised_law",
    "fit_distillation_law",
    "power_law",
    "chinchilla_law",
    "supervised_law",
    "distillation_law",
    "compute_optimal",
    "EPOCH_CHINCHILLA",
    "HOFFMANN_CHINCHILLA",
    "BUSBRIDGE_SUPERVISED",
    "BUSBRIDGE_DISTILLATION",
]

# Published constants (SCALING.md).
HOFFMANN_CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
EPOCH_CHINCHILLA = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
BUSBRIDGE_SUPERVISED = {"E": 1.220, "A": 3355.0, "B": 18186.0, "alpha": 0.408, "beta": 0.431,
                        "gamma": 0.452}
BUSBRIDGE_DISTILLATION = {"A": 2243.0, "B": 24181.0, "alpha": 0.321, "beta": 0.637, "gamma": 0.764,
                          "c0": 2.549, "c1": 522.6, "f1": 0.090, "d1": 1.315}

F1_MIN = 1e-2  # SCALING.md: clip f1 >= 1e-2 (the break's sharpness) in the distillation fit


# --------------------------------------------------------------------------------------------
# The laws themselves (pure functions, any broadcastable arrays)
# --------------------------------------------------------------------------------------------

def power_law(N, *, E: float, A: float, alpha: float):
    """L(N) = E + A · N^(-alpha)."""
    return E + A * np.asarray(N, dtype=float) ** (-alpha)


def chinchilla_law(N, D, *, E: float, A: float, B: float, alpha: float, beta: float):
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022)."""
    N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    return E + A * N ** (-alpha) + B * D ** (-beta)


def supervised_law(N, D, *, E: float, A: float, B: float, alpha: float, beta: float, gamma: float):
    """L(N, D) = E + (A / N^alpha + B / D^beta)^gamma (Busbridge et al. 2025, supervised)."""
    N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    return E + (A * N ** (-alpha) + B * D ** (-beta)) ** gamma


def distillation_law(N_S, D_S, L_T, L_tilde_S, *, A: float, B: float, alpha: float, beta: float,
                     gamma: float, c0: float, c1: float, f1: float, d1: float):
    """Busbridge et al. (2025), eq. for the distilled student's loss.

    L_S = L_T + L_T^(-c0) · (1 + (L_T / (d1·L̃_S))^(1/f1))^(-c1·f1) · (A/N_S^alpha + B/D_S^beta)^gamma
    where L̃_S is the same student's supervised loss L(N_S, D_S).
    """
    N_S, D_S = np.asarray(N_S, dtype=float), np.asarray(D_S, dtype=float)
    L_T, L_tilde_S = np.asarray(L_T, dtype=float), np.asarray(L_tilde_S, dtype=float)
    v = (np.log(L_T) - math.log(d1) - np.log(L_tilde_S)) / f1
    gap = np.exp(-c1 * f1 * np.logaddexp(0.0, v))
    return L_T + L_T ** (-c0) * gap * (A * N_S ** (-alpha) + B * D_S ** (-beta)) ** gamma


def compute_optimal(params: Mapping[str, float], C):
    """Compute-optimal (N_opt, D_opt) under C = 6·N·D for Chinchilla params (SCALING.md §2).

    N_opt = G·(C/6)^a, D_opt = (C/6)^b / G, G = (alpha·A / (beta·B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta). C in FLOPs; returns arrays of counts.
    """
    A, B, alpha, beta = params["A"], params["B"], params["alpha"], params["beta"]
    if alpha <= 0 or beta <= 0 or A <= 0 or B <= 0:
        raise ValueError(f"compute_optimal needs positive A, B, alpha, beta; got {dict(params)}")
    C = np.asarray(C, dtype=float)
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    return G * (C / 6.0) ** a, (C / 6.0) ** b / G


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitResult:
    """What every fit returns.

    params:    the law's constants by name (E, A, B, alpha, beta, ...).
    status:    "converged", or "not_converged: <why>" (a soft failure; params are the best found).
    loss:      the objective at the optimum (summed Huber loss on log L).
    num_points, num_starts: what the fit used.
    intervals: {name: (lo, hi)} percentile bootstrap intervals when requested, else {}.
    samples:   (converged draws, num_params) bootstrap parameter draws in `params` order, or None.
    num_bootstrap: resamples drawn; bootstrap_failed: how many of their refits did not converge
               (left out of samples and intervals, and reported).
    resample:  what the bootstrap resampled: "runs" (clusters: a run's evaluations together) or
               "points" (no cluster labels given); "" without bootstrap.
    """

    law: str
    params: dict[str, float]
    status: str
    loss: float
    num_points: int
    num_starts: int
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: np.ndarray | None = field(default=None, repr=False, compare=False)
    ci: float = 0.95
    method: str = "lbfgs"
    num_bootstrap: int = 0
    bootstrap_failed: int = 0
    resample: str = ""

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    def sample_params(self) -> list[dict[str, float]]:
        """The bootstrap draws as a list of params dicts (empty without bootstrap)."""
        if self.samples is None:
            return []
        names = list(self.params)
        return [dict(zip(names, map(float, row))) for row in self.samples]

    def _band(self, fn: Callable[[dict, int], np.ndarray], ci: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Percentile band of fn(draw's params, draw's index) over the bootstrap draws."""
        draws = self.sample_params()
        if not draws:
            raise ValueError(f"{self.law} fit has no bootstrap samples; fit with bootstrap=n first")
        q = 100 * (1 - (ci or self.ci)) / 2
        with _diverged_draws_quiet():
            preds = np.stack([fn(p, i) for i, p in enumerate(draws)])
            return np.nanpercentile(preds, q, axis=0), np.nanpercentile(preds, 100 - q, axis=0)


@dataclass(frozen=True)
class PowerLawFit(FitResult):
    def predict(self, N):
        """L at N (any array shape)."""
        with _diverged_draws_quiet():
            return power_law(N, **self.params)

    def predict_interval(self, N, ci: float | None = None):
        return self._band(lambda p, _: power_law(N, **p), ci)


@dataclass(frozen=True)
class ChinchillaFit(FitResult):
    def predict(self, N, D):
        """L at (N, D), broadcast."""
        with _diverged_draws_quiet():
            return chinchilla_law(N, D, **self.params)

    def predict_interval(self, N, D, ci: float | None = None):
        return self._band(lambda p, _: chinchilla_law(N, D, **p), ci)

    def compute_optimal(self, C):
        """(N_opt, D_opt) at compute C (FLOPs) under C = 6ND."""
        return compute_optimal(self.params, C)


@dataclass(frozen=True)
class SupervisedLawFit(FitResult):
    """inputs: what the fit saw (N, D, L, groups, delta, theta: the raw optimum), so that a
    distillation-law bootstrap can refit this first stage on each resample too."""

    inputs: dict | None = field(default=None, repr=False, compare=False)

    def predict(self, N, D):
        with _diverged_draws_quiet():
            return supervised_law(N, D, **self.params)

    def predict_interval(self, N, D, ci: float | None = None):
        return self._band(lambda p, _: supervised_law(N, D, **p), ci)


@dataclass(frozen=True)
class DistillationLawFit(FitResult):
    """params: the distillation constants; supervised: the supervised law's (for L̃_S);
    supervised_samples: with a two-stage bootstrap, each kept draw's supervised constants
    (rows match `samples`, columns in `supervised` order), so bands carry both stages."""

    supervised: dict[str, float] = field(default_factory=dict)
    supervised_samples: np.ndarray | None = field(default=None, repr=False, compare=False)

    def predict(self, N_S, D_S, L_T):
        """The distilled student's loss L_S for student size N_S, tokens D_S, teacher loss L_T."""
        with _diverged_draws_quiet():
            L_tilde = supervised_law(N_S, D_S, **self.supervised)
            return distillation_law(N_S, D_S, L_T, L_tilde, **self.params)

    def predict_interval(self, N_S, D_S, L_T, ci: float | None = None):
        if self.supervised_samples is None:
            L_tilde = supervised_law(N_S, D_S, **self.supervised)
            return self._band(lambda p, _: distillation_law(N_S, D_S, L_T, L_tilde, **p), ci)
        firsts = [dict(zip(self.supervised, map(float, row))) for row in self.supervised_samples]
        return self._band(lambda p, i: distillation_law(N_S, D_S, L_T, supervised_law(N_S, D_S, **firsts[i]),
                                                        **p), ci)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------

def _positive(name: str, values, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if n is not None and arr.size != n:
        raise ValueError(f"{name} has {arr.size} values, expected {n} (one per point)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; found {int((~np.isfinite(arr)).sum())} non-finite values")
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be positive; found {int((arr <= 0).sum())} values <= 0 "
                         f"(first: {arr[arr <= 0][0]!r})")
    return arr


def _check_count(law: str, n: int, num_params: int) -> None:
    if n <= num_params:
        raise ValueError(f"{law} fit needs more points than its {num_params} parameters; got {n}")


# --------------------------------------------------------------------------------------------
# Huber loss and the objectives (batched over starts: theta (S, p); weights (S, n) or (n,))
# --------------------------------------------------------------------------------------------

def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _lse2(z1, z2):
    m = np.maximum(z1, z2)
    e1, e2 = np.exp(z1 - m), np.exp(z2 - m)
    s = e1 + e2
    return m + np.log(s), e1 / s, e2 / s


def _lse3(z1, z2, z3):
    m = np.maximum(np.maximum(z1, z2), z3)
    e1, e2, e3 = np.exp(z1 - m), np.exp(z2 - m), np.exp(z3 - m)
    s = e1 + e2 + e3
    return m + np.log(s), e1 / s, e2 / s, e3 / s


def _obj_power(theta, data, w, delta, grad=True):
    """theta = (a, e, alpha): log L = LSE(a - alpha·log N, e)."""
    x, l = data["x"], data["l"]
    a, e, al = (theta[:, i:i + 1] for i in range(3))
    lse, s1, s2 = _lse2(a - al * x, np.broadcast_to(e, (theta.shape[0], x.size)))
    r = lse - l
    f = (w * _huber(r, delta)).sum(1)
    if not grad:
        return f, None
    psi = w * np.clip(r, -delta, delta)
    ps1 = psi * s1
    g = np.stack([ps1.sum(1), (psi * s2).sum(1), -(ps1 @ x)], axis=1)
    return f, g


def _obj_chinchilla(theta, data, w, delta, grad=True):
    """theta = (a, b, e, alpha, beta): log L = LSE(a - alpha·log N, b - beta·log D, e)."""
    x, y, l = data["x"], data["y"], data["l"]
    a, b, e, al, be = (theta[:, i:i + 1] for i in range(5))
    lse, s1, s2, s3 = _lse3(a - al * x, b - be * y, np.broadcast_to(e, (theta.shape[0], x.size)))
    r = lse - l
    f = (w * _huber(r, delta)).sum(1)
    if not grad:
        return f, None
    psi = w * np.clip(r, -delta, delta)
    ps1, ps2 = psi * s1, psi * s2
    g = np.stack([ps1.sum(1), ps2.sum(1), (psi * s3).sum(1), -(ps1 @ x), -(ps2 @ y)], axis=1)
    return f, g


def _obj_supervised(theta, data, w, delta, grad=True):
    """theta = (a, b, e, alpha, beta, gamma): log L = LSE(e, gamma·LSE(a - alpha·x, b - beta·y))."""
    x, y, l = data["x"], data["y"], data["l"]
    a, b, e, al, be, ga = (theta[:, i:i + 1] for i in range(6))
    u, s1, s2 = _lse2(a - al * x, b - be * y)
    lse, t1, t2 = _lse2(np.broadcast_to(e, u.shape), ga * u)
    r = lse - l
    f = (w * _huber(r, delta)).sum(1)
    if not grad:
        return f, None
    psi = w * np.clip(r, -delta, delta)
    pt2g = psi * t2 * ga
    q1, q2 = pt2g * s1, pt2g * s2
    g = np.stack([q1.sum(1), q2.sum(1), (psi * t1).sum(1), -(q1 @ x), -(q2 @ y),
                  (psi * t2 * u).sum(1)], axis=1)
    return f, g


def _obj_distillation(theta, data, w, delta, grad=True):
    """theta = (a, b, alpha, beta, gamma, c0, c1, f1, log d1); residual on log L_S.

    log L_S = LSE(log L_T, Q),  Q = -c0·lT - c1·f1·softplus(v/f1) + gamma·LSE(a - alpha·x, b - beta·y),
    v = log L_T - log d1 - log L̃_S.
    """
    x, y, l, lT, lTil = data["x"], data["y"], data["l"], data["lT"], data["lTil"]
    a, b, al, be, ga, c0, c1, f1, ld1 = (theta[:, i:i + 1] for i in range(9))
    u, s1, s2 = _lse2(a - al * x, b - be * y)
    v = lT - ld1 - lTil
    vf = v / f1
    sp = np.logaddexp(0.0, vf)
    sg = expit(vf)
    Q = -c0 * lT - c1 * f1 * sp + ga * u
    lse, _, q = _lse2(np.broadcast_to(lT, Q.shape), Q)
    r = lse - l
    f = (w * _huber(r, delta)).sum(1)
    if not grad:
        return f, None
    pq = w * np.clip(r, -delta, delta) * q  # d f / d Q per point
    pqg = pq * ga
    g = np.stack([
        (pqg * s1).sum(1), (pqg * s2).sum(1), -((pqg * s1) @ x), -((pqg * s2) @ y), (pq * u).sum(1),
        -(pq @ lT), -(pq * f1 * sp).sum(1), -(pq * c1 * (sp - sg * vf)).sum(1), (pq * c1 * sg).sum(1),
    ], axis=1)
    return f, g


# --------------------------------------------------------------------------------------------
# The optimiser: L-BFGS batched over starts (numpy), then scipy L-BFGS-B polish
# --------------------------------------------------------------------------------------------

# Backtracking schedule: the full step, then blocks of 1, 1, 2, 4, 8, 24 halvings (40 in all).
_LS_BLOCKS = (0, 1, 1, 2, 4, 8, 24)


def _batched_lbfgs(fg, X0: np.ndarray, *, lower=None, upper=None, maxiter: int = 300, m: int = 10,
                   ftol: float = 1e-10, gtol: float = 1e-8):
    """Minimise S independent problems at once: fg(X (S,p), idx, grad) -> (f (S,), g (S,p) or None).

    Standard two-loop L-BFGS with an Armijo backtracking line search, each start with its own
    memory and step; bounds are handled by projection (a start at a bound does not move past it).
    `idx` tells fg which rows of the batch are being evaluated (for per-start data weights).
    Returns X, f, g, converged (S,) bool.
    """
    X = np.array(X0, dtype=float)
    S, p = X.shape
    lo = np.full(p, -np.inf) if lower is None else np.asarray(lower, dtype=float)
    hi = np.full(p, np.inf) if upper is None else np.asarray(upper, dtype=float)
    X = np.clip(X, lo, hi)
    all_idx = np.arange(S)
    f, g = fg(X, all_idx, True)
    Smem = np.zeros((S, m, p))
    Ymem = np.zeros((S, m, p))
    rho = np.zeros((S, m))
    gamma = np.ones(S)
    fresh = np.ones(S, dtype=bool)  # no curvature pairs yet: take a scaled gradient step
    active = np.isfinite(f)
    converged = np.zeros(S, dtype=bool)

    def proj_grad(Xa, ga):
        pg = ga.copy()
        pg[(Xa <= lo) & (ga > 0)] = 0.0
        pg[(Xa >= hi) & (ga < 0)] = 0.0
        return pg

    for _ in range(maxiter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        Xa, fa, ga = X[idx], f[idx], g[idx]
        # two-loop recursion (slots with rho = 0 are empty and do nothing)
        q = ga.copy()
        alph = np.zeros((idx.size, m))
        for j in range(m - 1, -1, -1):
            alph[:, j] = rho[idx, j] * np.einsum("ij,ij->i", Smem[idx, j], q)
            q -= alph[:, j:j + 1] * Ymem[idx, j]
        q *= gamma[idx, None]
        for j in range(m):
            beta = rho[idx, j] * np.einsum("ij,ij->i", Ymem[idx, j], q)
            q += Smem[idx, j] * (alph[:, j] - beta)[:, None]
        d = -q
        d[(Xa <= lo) & (d < 0)] = 0.0
        d[(Xa >= hi) & (d > 0)] = 0.0
        gd = np.einsum("ij,ij->i", ga, d)
        bad = ~(gd < 0) | fresh[idx]
        if bad.any():  # not a descent direction (or no memory yet): scaled steepest descent
            pg = proj_grad(Xa[bad], ga[bad])
            nrm = np.sqrt(np.einsum("ij,ij->i", pg, pg))
            d[bad] = -pg / np.maximum(nrm, 1e-300)[:, None]  # unit step first, as L-BFGS-B does
            rho[idx[bad]] = 0.0
            gamma[idx[bad]] = 1.0
            gd = np.einsum("ij,ij->i", ga, d)
        Xn = np.empty_like(Xa)
        fn = np.full(idx.size, np.inf)
        gn = np.empty_like(ga)
        # Armijo backtracking, vectorised: the full step first (usually accepted, with its
        # gradient), then blocks of halvings evaluated together (values only); each row takes
        # the longest step of its block that decreases f enough.
        todo = np.arange(idx.size)
        halvings = 0
        for block in _LS_BLOCKS:
            if block == 0:
                ts = np.ones(1)
            else:
                ts = 0.5 ** np.arange(halvings + 1, halvings + block + 1)
            halvings += max(block, 0)
            nt = ts.size
            cand = np.clip(Xa[todo][:, None, :] + ts[None, :, None] * d[todo][:, None, :], lo, hi)
            flat = cand.reshape(-1, p)
            fc, gc = fg(flat, np.repeat(idx[todo], nt), block == 0)
            fc = fc.reshape(-1, nt)
            step_gd = np.einsum("ij,itj->it", ga[todo], cand - Xa[todo][:, None, :])
            okt = np.isfinite(fc) & (fc <= fa[todo][:, None] + 1e-4 * np.minimum(step_gd, 0.0))
            ok = okt.any(1)
            first = np.argmax(okt, axis=1)
            rows = todo[ok]
            Xn[rows] = cand[ok, first[ok]]
            fn[rows] = fc[ok, first[ok]]
            if block == 0:
                gn[rows] = gc[ok]
            elif rows.size:
                gn[rows] = fg(Xn[rows], idx[rows], True)[1]
            todo = todo[~ok]
            if todo.size == 0:
                break
        failed = np.zeros(idx.size, dtype=bool)
        failed[todo] = True  # line search found no decrease: a (numerical) minimum along d
        okk = ~failed
        s_new = Xn[okk] - Xa[okk]
        y_new = gn[okk] - ga[okk]
        sy = np.einsum("ij,ij->i", s_new, y_new)
        yy = np.einsum("ij,ij->i", y_new, y_new)
        upd = idx[okk]
        good = (yy > 1e-300) & (sy > 1e-12 * yy) & (sy > 1e-300)  # keeps rho = 1/sy and gamma finite
        u = upd[good]
        Smem[u] = np.roll(Smem[u], -1, axis=1)
        Ymem[u] = np.roll(Ymem[u], -1, axis=1)
        rho[u] = np.roll(rho[u], -1, axis=1)
        Smem[u, -1] = s_new[good]
        Ymem[u, -1] = y_new[good]
        rho[u, -1] = 1.0 / sy[good]
        gamma[u] = sy[good] / yy[good]
        fresh[u] = False
        fold = fa[okk]
        X[upd], f[upd], g[upd] = Xn[okk], fn[okk], gn[okk]
        # a steepest-descent step says little about convergence: judge only quasi-Newton steps
        small_f = ~bad[okk] & ((fold - fn[okk]) <= ftol * np.maximum(np.abs(fold), np.abs(fn[okk])))
        small_g = np.abs(proj_grad(Xn[okk], gn[okk])).max(1) <= gtol
        done = small_f | small_g
        converged[upd[done]] = True
        active[upd[done]] = False
        active[idx[failed]] = False
        converged[idx[failed]] = np.abs(proj_grad(Xa[failed], ga[failed])).max(1) <= 1e3 * gtol
    return X, f, g, converged


def _polish(fg, x0, bounds):
    """scipy L-BFGS-B from x0 with tight tolerances; returns (x, f, ok, message, max|grad|)."""
    def fun(t):
        fv, gv = fg(t[None, :], None)
        return float(fv[0]), gv[0]

    res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-15, "gtol": 1e-10})
    g = res.jac
    if bounds is not None:
        g = g.copy()
        for i, (lo, hi) in enumerate(bounds):
            if (lo is not None and res.x[i] <= lo and g[i] > 0) or (hi is not None and res.x[i] >= hi and g[i] < 0):
                g[i] = 0.0
    return res.x, float(res.fun), bool(res.success), str(res.message), float(np.abs(g).max())


@dataclass(frozen=True)
class _Optimum:
    x: np.ndarray
    f: float
    status: str
    ends: np.ndarray  # the best distinct end points of the batched run (for warm starts)


def _multistart(obj, data, starts: np.ndarray, delta: float, *, bounds=None, n_polish: int = 4,
                maxiter: int = 200, ftol: float = 1e-6) -> _Optimum:
    """Batched L-BFGS from every start (to a loose tolerance: it only ranks the basins), then a
    tight scipy L-BFGS-B polish of the n_polish best distinct end points; the best polished wins."""
    n = data["l"].size
    w1 = np.ones(n)

    def fg(X, idx, grad=True):
        return obj(X, data, w1, delta, grad)

    lower = upper = None
    if bounds is not None:
        lower = [-np.inf if b[0] is None else b[0] for b in bounds]
        upper = [np.inf if b[1] is None else b[1] for b in bounds]
    X, f, g, conv = _batched_lbfgs(fg, starts, lower=lower, upper=upper, maxiter=maxiter, ftol=ftol)
    f = np.where(np.isfinite(f), f, np.inf)
    order = np.argsort(f, kind="stable")
    # the best few distinct end points (distinct in rounded parameters) go to the polish
    picked: list[int] = []
    seen: set[tuple] = set()
    for i in order:
        if not np.isfinite(f[i]):
            break
        key = tuple(np.round(X[i], 3))
        if key in seen:
            continue
        seen.add(key)
        picked.append(int(i))
        if len(picked) >= n_polish:
            break
    if not picked:
        raise ValueError("the objective is not finite at any start; check the inputs")
    best = None
    for i in picked:
        x, fv, ok, msg, gmax = _polish(fg, X[i], bounds)
        if best is None or fv < best[1]:
            best = (x, fv, ok, msg, gmax)
    x, fv, ok, msg, gmax = best
    # Huber is C1, so the gradient vanishes at a minimum; L-BFGS-B's "abnormal line search" near
    # a kink of the Hessian with a tiny gradient is a converged fit for our purposes.
    scale = max(1.0, abs(fv))
    status = "converged" if (ok or gmax <= 1e-6 * scale * n) else f"not_converged: {msg} (max |grad| {gmax:.2e})"
    return _Optimum(x=x, f=fv, status=status, ends=X[picked])


def cluster_weights(n: int, groups, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) bootstrap weights that resample clusters, not points: each resample draws as
    many clusters as there are, with replacement, and every point weighs as often as its
    cluster was drawn. groups: (n,) cluster labels (a run's id: its evaluations move together);
    None makes every point its own cluster (the plain point bootstrap). Copying a cluster's
    points therefore scales its weights and leaves every refit, and the interval, unchanged."""
    if groups is None:
        labels, G = np.arange(n), n
    else:
        groups = np.asarray(groups).reshape(-1)
        if groups.size != n:
            raise ValueError(f"groups has {groups.size} labels, expected {n} (one per point)")
        _, labels = np.unique(groups, return_inverse=True)
        G = int(labels.max()) + 1
    counts = np.stack([np.bincount(rng.integers(0, G, G), minlength=G) for _ in range(n_boot)])
    return counts[:, labels].astype(float)


def _refit(obj, data, x0: np.ndarray, W: np.ndarray, delta: float, bounds=None, maxiter: int = 400,
           row_data: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Refit the objective once per row of the weights W (n_boot, n), batched, every row started
    from x0 (the full-data optimum). row_data: data arrays that differ per row, (n_boot, n) (the
    distillation law's L̃_S when its first stage is refitted too). Returns (n_boot, p) raw
    parameters and (n_boot,) ok: the refit converged to a finite optimum."""
    def fg(X, idx, grad=True):
        d = data if row_data is None else {**data, **{k: v[idx] for k, v in row_data.items()}}
        return obj(X, d, W[idx], delta, grad)

    lower = upper = None
    if bounds is not None:
        lower = [-np.inf if b[0] is None else b[0] for b in bounds]
        upper = [np.inf if b[1] is None else b[1] for b in bounds]
    X0 = np.repeat(np.asarray(x0, dtype=float)[None, :], W.shape[0], axis=0)
    X, f, _, converged = _batched_lbfgs(fg, X0, lower=lower, upper=upper, maxiter=maxiter)
    ok = converged & np.isfinite(f) & np.all(np.isfinite(X), axis=1)
    return X, ok


def _bootstrap(obj, data, x_best: np.ndarray, delta: float, n_boot: int, seed: int, bounds=None,
               groups=None, maxiter: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Refit on n_boot cluster resamples (cluster_weights; seeded), batched, each started from the
    full-data optimum. Returns (n_boot, p) raw parameters and which refits converged."""
    W = cluster_weights(data["l"].size, groups, n_boot, np.random.default_rng(seed))
    return _refit(obj, data, x_best, W, delta, bounds, maxiter)


def _boot_result(raw: np.ndarray, ok: np.ndarray, to_params, ci: float) -> dict:
    """FitResult's bootstrap fields: the converged draws as samples (a refit that did not converge
    is left out of the interval and counted in bootstrap_failed, never kept silently)."""
    samples = np.array([list(to_params(t).values()) for t in raw[ok]]).reshape(int(ok.sum()), -1)
    names = list(to_params(raw[0]).keys())
    if samples.shape[0]:
        intervals = _intervals(samples, names, ci)
    else:
        intervals = {k: (float("nan"), float("nan")) for k in names}
    return {"samples": samples, "intervals": intervals, "num_bootstrap": int(raw.shape[0]),
            "bootstrap_failed": int((~ok).sum())}


@contextlib.contextmanager
def _diverged_draws_quiet():
    """A bootstrap refit of a poorly identified law can diverge to inf (or NaN for every draw of a
    parameter): the percentile interval is then inf or NaN, which the report prints and flags; a
    non-converged fit's predictions overflow away from its data. Keep numpy's arithmetic warnings
    about those off the user's terminal (predictions, bands and fits all go through here)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _intervals(samples: np.ndarray, names: Sequence[str], ci: float) -> dict[str, tuple[float, float]]:
    q = 100 * (1 - ci) / 2  # called inside the fits, whose wrapper keeps diverged draws quiet
    lo = np.nanpercentile(samples, q, axis=0)
    hi = np.nanpercentile(samples, 100 - q, axis=0)
    return {k: (float(a), float(b)) for k, a, b in zip(names, lo, hi)}


def _grid(*axes: Sequence[float]) -> np.ndarray:
    return np.array(list(itertools.product(*axes)), dtype=float)


# --------------------------------------------------------------------------------------------
# Public fits
# --------------------------------------------------------------------------------------------

def _one_blas_thread(fn):
    """Run a fit with BLAS/LAPACK on one thread. scipy's L-BFGS-B makes thousands of tiny LAPACK
    calls; with OpenBLAS threads on a busy machine each call can wait milliseconds for its
    threads (measured: 50× slower on 2 shared cores), and the batched objective gains nothing
    from them either. Starts and bootstrap refits that diverge are expected (they are dropped or
    give an inf/NaN interval), so numpy's warnings about them are kept quiet."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            from threadpoolctl import threadpool_limits
            one_thread = threadpool_limits(limits=1, user_api="blas")
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (lm-eval)
            one_thread = contextlib.nullcontext()
        with one_thread, _diverged_draws_quiet():
            return fn(*args, **kwargs)
    return wrapper


@_one_blas_thread
def fit_power_law(N, L, *, delta: float = 1e-3, bootstrap: int = 0, seed: int = 0,
                  ci: float = 0.95, groups=None) -> PowerLawFit:
    """Fit L(N) = E + A·N^(-alpha) (SCALING.md §1) with the Chinchilla recipe in one variable.

    N: (n,) parameter counts; L: (n,) losses in nats. Huber(delta) on log L summed over points,
    starts alpha ∈ {0, 0.5, …, 2}, e = log E ∈ {-1, -0.5, …, 1}, a = log A ∈ {0, 5, …, 25}.
    groups: (n,) cluster labels (run ids) the bootstrap resamples; None: every point alone.
    """
    N = _positive("N", N)
    L = _positive("L", L, N.size)
    _check_count("power-law", N.size, 3)
    data = {"x": np.log(N), "l": np.log(L)}
    # theta = (a, e, alpha)
    starts = _grid(np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5), np.arange(0, 2.5, 0.5))
    opt = _multistart(_obj_power, data, starts, delta)

    def to_params(t):
        return {"E": _exp(t[1]), "A": _exp(t[0]), "alpha": float(t[2])}

    boot = {}
    if bootstrap:
        raw, ok = _bootstrap(_obj_power, data, opt.x, delta, bootstrap, seed, groups=groups)
        boot = {**_boot_result(raw, ok, to_params, ci), "resample": _unit(groups)}
    return PowerLawFit(law="power", params=to_params(opt.x), status=opt.status, loss=opt.f,
                       num_points=N.size, num_starts=len(starts), ci=ci, **boot)


# Hoffmann et al. / Epoch AI start grid: 5·5·5·6·6 = 4500 starts
CHINCHILLA_GRID = {
    "alpha": np.arange(0, 2.5, 0.5),
    "beta": np.arange(0, 2.5, 0.5),
    "e": np.arange(-1, 1.5, 0.5),
    "a": np.arange(0, 30, 5.0),
    "b": np.arange(0, 30, 5.0),
}


def _chinchilla_params(t) -> dict[str, float]:
    a, b, e, al, be = (float(v) for v in t)
    with np.errstate(over="ignore"):  # a diverged bootstrap refit gives inf, not an exception
        E, A, B = (float(np.exp(v)) for v in (e, a, b))
    return {"E": E, "A": A, "B": B, "alpha": al, "beta": be}


@_one_blas_thread
def fit_chinchilla(N, D, L, *, method: str = "lbfgs", delta: float = 1e-3, bootstrap: int = 0,
                   seed: int = 0, ci: float = 0.95, groups=None) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Approach 3; SCALING.md §2).

    N: (n,) parameters; D: (n,) tokens; L: (n,) losses in nats.
    method="lbfgs": minimise sum_i Huber_delta(LSE(a - alpha·log N_i, b - beta·log D_i, e) - log L_i)
    from all 4500 grid starts (batched L-BFGS), polish the best few with scipy L-BFGS-B, keep the best.
    method="varpro": the grid-free cross-check — for fixed (alpha, beta) the law is linear in
    (E, A, B) ≥ 0, so a non-negative (IRLS-weighted) least-squares solve gives the profile; a 2-D
    search over (alpha, beta) finds its minimum, then one L-BFGS-B polish of the same objective.
    bootstrap=n: n refits on resampled clusters (groups: (n,) run ids; None: each point alone;
    seeded), started from the full-data optimum; `.intervals` holds the percentile intervals at
    level `ci` over the refits that converged (`.bootstrap_failed` counts the others).
    """
    N = _positive("N", N)
    D = _positive("D", D, N.size)
    L = _positive("L", L, N.size)
    _check_count("Chinchilla", N.size, 5)
    data = {"x": np.log(N), "y": np.log(D), "l": np.log(L)}
    if method == "lbfgs":
        g = CHINCHILLA_GRID
        # theta order (a, b, e, alpha, beta); starts enumerated as Epoch AI did
        starts = np.array([(a, b, e, al, be) for al, be, e, a, b in
                           itertools.product(g["alpha"], g["beta"], g["e"], g["a"], g["b"])])
        opt = _multistart(_obj_chinchilla, data, starts, delta)
        num_starts = len(starts)
    elif method == "varpro":
        opt = _varpro_chinchilla(data, delta)
        num_starts = 1
    else:
        raise ValueError(f"method must be 'lbfgs' or 'varpro', got {method!r}")
    boot = {}
    if bootstrap:
        raw, ok = _bootstrap(_obj_chinchilla, data, opt.x, delta, bootstrap, seed, groups=groups)
        boot = {**_boot_result(raw, ok, _chinchilla_params, ci), "resample": _unit(groups)}
    return ChinchillaFit(law="chinchilla", params=_chinchilla_params(opt.x), status=opt.status,
                         loss=opt.f, num_points=N.size, num_starts=num_starts, ci=ci, method=method,
                         **boot)


def _varpro_profile(data, delta: float, alpha: float, beta: float, iters: int = 30):
    """min over E, A, B ≥ 0 of the summed Huber loss on log L at fixed (alpha, beta).

    Gauss-Newton on log(X·θ) with IRLS weights for the Huber loss (w = min(1, delta/|r|)),
    each step a non-negative least-squares solve. Returns (f, (E, A, B)).
    """
    Lobs = np.exp(data["l"])
    X = np.stack([np.ones_like(Lobs), np.exp(-alpha * data["x"]), np.exp(-beta * data["y"])], axis=1)
    scale = X.max(0)
    Xs = X / scale
    w = np.ones_like(Lobs)
    pred = Lobs.copy()
    theta = None
    fbest, best = np.inf, None
    for _ in range(iters):
        r = np.log(pred) - data["l"] if theta is not None else np.zeros_like(Lobs)
        target = pred * (1.0 - r)  # linearised log: r' ≈ (X θ - target) / pred
        rw = np.sqrt(w) / pred
        theta, _ = nnls(Xs * rw[:, None], target * rw)
        pred = np.maximum(Xs @ theta, 1e-12)
        r = np.log(pred) - data["l"]
        fv = float(_huber(r, delta).sum())
        if fv < fbest - 1e-15:
            fbest, best = fv, theta / scale
        elif fv >= fbest:
            pass
        w = np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
    return fbest, best


def _varpro_chinchilla(data, delta: float) -> _Optimum:
    grid = np.arange(0.05, 2.0001, 0.05)
    prof = np.array([[_varpro_profile(data, delta, a, b, iters=12)[0] for b in grid] for a in grid])
    i, j = np.unravel_index(np.argmin(prof), prof.shape)

    def p(v):
        if v[0] <= 0 or v[1] <= 0:
            return np.inf
        return _varpro_profile(data, delta, v[0], v[1])[0]

    res = minimize(p, [grid[i], grid[j]], method="Nelder-Mead",
                   options={"xatol": 1e-6, "fatol": 1e-12, "maxiter": 2000})
    al, be = res.x
    _, (E, A, B) = _varpro_profile(data, delta, al, be)
    x0 = np.array([math.log(max(A, 1e-12)), math.log(max(B, 1e-12)), math.log(max(E, 1e-12)), al, be])
    n = data["l"].size

    def fg(X, idx, grad=True):
        return _obj_chinchilla(X, data, np.ones(n), delta, grad)

    x, fv, ok, msg, gmax = _polish(fg, x0, None)
    status = "converged" if (ok or gmax <= 1e-6 * max(1.0, abs(fv)) * n) else f"not_converged: {msg}"
    return _Optimum(x=x, f=fv, status=status, ends=x[None, :])


def _exp(v: float) -> float:
    """exp of a log-space parameter; inf past float range (a diverged bootstrap refit can put a
    log-coefficient beyond 709, where math.exp raises and would lose the whole fit)."""
    return math.exp(v) if v < 709.0 else math.inf


def _supervised_params(t) -> dict[str, float]:
    a, b, e, al, be, ga = (float(v) for v in t)
    return {"E": _exp(e), "A": _exp(a), "B": _exp(b), "alpha": al, "beta": be, "gamma": ga}


SUPERVISED_BOUNDS = [(None, None), (None, None), (None, None), (0.0, None), (0.0, None), (1e-3, None)]


@_one_blas_thread
def fit_supervised_law(N, D, L, *, delta: float = 1e-4, bootstrap: int = 0, seed: int = 0,
                       ci: float = 0.95, groups=None) -> SupervisedLawFit:
    """Fit L(N, D) = E + (A/N^alpha + B/D^beta)^gamma (Busbridge et al. 2025; SCALING.md §3).

    Huber(delta = 1e-4) on log L summed over points; L-BFGS-B from a grid of
    alpha, beta ∈ {0.25, 0.5, 1}, gamma ∈ {0.25, 0.5, 1}, e ∈ {-1, 0, 1}, a, b ∈ {0, 5, 10, 15}.
    groups: (n,) cluster labels (run ids) the bootstrap resamples; None: every point alone.
    """
    N = _positive("N", N)
    D = _positive("D", D, N.size)
    L = _positive("L", L, N.size)
    _check_count("supervised-law", N.size, 6)
    data = {"x": np.log(N), "y": np.log(D), "l": np.log(L)}
    starts = _grid([0.0, 5.0, 10.0, 15.0], [0.0, 5.0, 10.0, 15.0], [-1.0, 0.0, 1.0],
                   [0.25, 0.5, 1.0], [0.25, 0.5, 1.0], [0.25, 0.5, 1.0])
    opt = _multistart(_obj_supervised, data, starts, delta, bounds=SUPERVISED_BOUNDS)
    boot = {}
    if bootstrap:
        raw, ok = _bootstrap(_obj_supervised, data, opt.x, delta, bootstrap, seed, bounds=SUPERVISED_BOUNDS,
                             groups=groups)
        boot = {**_boot_result(raw, ok, _supervised_params, ci), "resample": _unit(groups)}
    inputs = {"N": N, "D": D, "L": L, "groups": None if groups is None else np.asarray(groups).reshape(-1),
              "delta": delta, "theta": np.asarray(opt.x, dtype=float)}
    return SupervisedLawFit(law="supervised", params=_supervised_params(opt.x), status=opt.status,
                            loss=opt.f, num_points=N.size, num_starts=len(starts), ci=ci, inputs=inputs,
                            **boot)


def _distillation_params(t) -> dict[str, float]:
    a, b, al, be, ga, c0, c1, f1, ld1 = (float(v) for v in t)
    return {"A": _exp(a), "B": _exp(b), "alpha": al, "beta": be, "gamma": ga,
            "c0": c0, "c1": c1, "f1": f1, "d1": _exp(ld1)}


DISTILLATION_BOUNDS = [(None, None), (None, None), (0.0, None), (0.0, None), (1e-3, None),
                       (None, None), (0.0, None), (F1_MIN, None), (None, None)]


@_one_blas_thread
def fit_distillation_law(N_S, D_S, L_T, L_S, *, supervised, delta: float = 1e-4,
                         bootstrap: int = 0, seed: int = 0, ci: float = 0.95,
                         groups=None) -> DistillationLawFit:
    """Fit the distillation law (Busbridge et al. 2025; SCALING.md §3) on (N_S, D_S, L_T, L_S).

    supervised: where L̃_S = L(N_S, D_S) comes from — a SupervisedLawFit, a tuple (N, D, L) or
    (N, D, L, groups) of supervised runs to fit first with fit_supervised_law, or a params
    mapping (E, A, B, alpha, beta, gamma; e.g. BUSBRIDGE_SUPERVISED).
    Huber(delta = 1e-4) on log L_S summed over points; L-BFGS-B from a grid of starts with f1 ≥ 1e-2.
    bootstrap=n: n two-stage refits. Each resample draws the supervised runs' clusters and the
    distilled runs' clusters (groups: (n,) run ids; None: each point alone), refits the supervised
    law on the first, recomputes L̃_S from that refit and refits the distillation law on the
    second, so the interval carries the first stage's uncertainty. Only with a params mapping
    (published constants) is the first stage fixed. A resample counts as failed
    (`bootstrap_failed`) when either refit does not converge.
    """
    N_S = _positive("N_S", N_S)
    D_S = _positive("D_S", D_S, N_S.size)
    L_T = _positive("L_T", L_T, N_S.size)
    L_S = _positive("L_S", L_S, N_S.size)
    _check_count("distillation-law", N_S.size, 9)
    first: SupervisedLawFit | None = None
    if isinstance(supervised, SupervisedLawFit):
        first = supervised
    elif isinstance(supervised, Mapping):
        missing = {"E", "A", "B", "alpha", "beta", "gamma"} - set(supervised)
        if missing:
            raise ValueError(f"supervised params are missing {sorted(missing)}")
    elif isinstance(supervised, (tuple, list)) and len(supervised) in (3, 4):
        first = fit_supervised_law(*supervised[:3], groups=supervised[3] if len(supervised) == 4 else None)
    else:
        raise ValueError("supervised must be a SupervisedLawFit, a params mapping or a tuple (N, D, L[, groups])")
    keys = ("E", "A", "B", "alpha", "beta", "gamma")
    sup = dict(first.params) if first is not None else {k: float(supervised[k]) for k in keys}
    L_tilde = supervised_law(N_S, D_S, **sup)
    data = {"x": np.log(N_S), "y": np.log(D_S), "l": np.log(L_S), "lT": np.log(L_T),
            "lTil": np.log(L_tilde)}
    # theta = (a, b, alpha, beta, gamma, c0, c1, f1, log d1)
    starts = _grid([2.0, 8.0], [2.0, 10.0], [0.3, 0.6], [0.3, 0.6], [0.5, 1.0],
                   [0.0, 2.5], [10.0, 500.0], [0.05, 0.3], [0.0, 0.3])
    opt = _multistart(_obj_distillation, data, starts, delta, bounds=DISTILLATION_BOUNDS)
    boot = {}
    if bootstrap:
        rng = np.random.default_rng(seed)
        row_data, ok1, X1 = None, np.ones(bootstrap, dtype=bool), None
        if first is not None and first.inputs is not None:  # refit the first stage on each resample
            si = first.inputs
            sdata = {"x": np.log(si["N"]), "y": np.log(si["D"]), "l": np.log(si["L"])}
            W1 = cluster_weights(si["L"].size, si["groups"], bootstrap, rng)
            X1, ok1 = _refit(_obj_supervised, sdata, si["theta"], W1, si["delta"], SUPERVISED_BOUNDS)
            lt = np.stack([np.log(supervised_law(N_S, D_S, **_supervised_params(t))) for t in X1])
            ok1 &= np.all(np.isfinite(lt), axis=1)
            row_data = {"lTil": np.where(np.isfinite(lt), lt, data["lTil"][None, :])}
        W2 = cluster_weights(N_S.size, groups, bootstrap, rng)
        raw, ok2 = _refit(_obj_distillation, data, opt.x, W2, delta, DISTILLATION_BOUNDS, row_data=row_data)
        ok = ok1 & ok2
        boot = {**_boot_result(raw, ok, _distillation_params, ci), "resample": _unit(groups)}
        if X1 is not None:
            boot["supervised_samples"] = np.array([list(_supervised_params(t).values()) for t in X1[ok]]
                                                  ).reshape(int(ok.sum()), len(sup))
    return DistillationLawFit(law="distillation", params=_distillation_params(opt.x),
                              status=opt.status, loss=opt.f, num_points=N_S.size,
                              num_starts=len(starts), ci=ci, supervised=sup, **boot)


def _unit(groups) -> str:
    return "points" if groups is None else "runs"
