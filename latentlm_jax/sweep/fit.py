"""Scaling-law fits in numpy: L(C) = a·C^(−b) + c and L(N, D) = E + A/N^α + B/D^β.

Both are least squares on the log of the loss (a relative error, as scaling-law fits use: the
losses span a wide range and their noise grows with them). The inputs are normalised by their
geometric mean first, so the solver sees numbers near 1 whatever the FLOPs. The start comes from a
grid over the nonlinear parameters (c for L(C); α, β for L(N, D)), solving the rest by linear
least squares at each grid point, and Levenberg–Marquardt refines all parameters together.

Uncertainty: the standard errors of the Jacobian at the optimum, σ² (JᵀJ)⁻¹ with σ² the residual
variance (defined when there are more points than parameters), and optionally a bootstrap over
the points (the spread of the refitted parameters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass
class Fit:
    """A fitted law: parameter values, Jacobian standard errors (NaN when the points don't
    exceed the parameters) and bootstrap standard deviations (None unless asked for)."""

    law: str
    names: tuple[str, ...]
    values: np.ndarray
    errors: np.ndarray
    bootstrap: np.ndarray | None
    num_points: int
    rms_log_residual: float

    def __getitem__(self, name: str) -> float:
        return float(self.values[self.names.index(name)])

    def error(self, name: str) -> float:
        return float(self.errors[self.names.index(name)])

    def as_dict(self) -> dict:
        out = {"law": self.law, "num_points": self.num_points,
               "rms_log_residual": self.rms_log_residual}
        for i, n in enumerate(self.names):
            out[n] = float(self.values[i])
            out[f"{n}_err"] = float(self.errors[i])
            if self.bootstrap is not None:
                out[f"{n}_bootstrap_std"] = float(self.bootstrap[i])
        return out

    def describe(self) -> str:
        """``a = 1.2e+03 ± 40, b = 0.081 ± 0.002, ...`` (± the Jacobian standard error, and the
        bootstrap's in brackets when computed)."""
        parts = []
        for i, n in enumerate(self.names):
            text = f"{n} = {self.values[i]:.4g}"
            if np.isfinite(self.errors[i]):
                text += f" ± {self.errors[i]:.2g}"
            if self.bootstrap is not None and np.isfinite(self.bootstrap[i]):
                text += f" [bootstrap ± {self.bootstrap[i]:.2g}]"
            parts.append(text)
        return f"{self.law}: " + ", ".join(parts) + f" ({self.num_points} points)"


# ------------------------------------------------------------------------------ the solver
def levenberg_marquardt(residual: Callable[[np.ndarray], np.ndarray],
                        jacobian: Callable[[np.ndarray], np.ndarray], theta: np.ndarray,
                        iterations: int = 200, tol: float = 1e-12,
                        project: Callable[[np.ndarray], np.ndarray] = lambda t: t) -> np.ndarray:
    """Minimises ‖residual(θ)‖² over the θ that ``project`` leaves unchanged (each trial step is
    projected back onto them). A step whose residual is not finite counts as a failed step."""
    theta = np.asarray(theta, np.float64)
    r = residual(theta)
    cost, lam = float(r @ r), 1e-3
    for _ in range(iterations):
        j = jacobian(theta)
        jtj, g = j.T @ j, j.T @ r
        improved = False
        while lam < 1e12:
            step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -g)
            trial = project(theta + step)
            r_new = residual(trial)
            new = float(r_new @ r_new) if np.all(np.isfinite(r_new)) else np.inf
            if new < cost:
                improved = True
                theta, r, lam = trial, r_new, max(lam / 10, 1e-12)
                done = cost - new <= tol * max(cost, 1e-300)
                cost = new
                break
            lam *= 10
        if not improved or done:
            break
    return theta


def jacobian_errors(j: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Standard errors σ·sqrt(diag((JᵀJ)⁻¹)); NaN when there are no more points than parameters
    or JᵀJ is singular."""
    n, p = j.shape
    if n <= p:
        return np.full(p, np.nan)
    cov = covariance(j, r)
    return np.sqrt(np.maximum(np.diag(cov), 0.0))


def covariance(j: np.ndarray, r: np.ndarray) -> np.ndarray:
    n, p = j.shape
    if n <= p:
        return np.full((p, p), np.nan)
    try:
        inv = np.linalg.inv(j.T @ j)
    except np.linalg.LinAlgError:
        return np.full((p, p), np.nan)
    return inv * float(r @ r) / (n - p)


def _bootstrap(fit_fn: Callable[[np.ndarray], np.ndarray | None], n: int, num_params: int,
               resamples: int, seed: int = 0) -> np.ndarray | None:
    """Std of ``fit_fn(indices)`` over resamples of the points with replacement."""
    if resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        if len(np.unique(idx)) <= num_params:
            continue
        values = fit_fn(idx)
        if values is not None and np.all(np.isfinite(values)):
            draws.append(values)
    if len(draws) < 2:
        return np.full(num_params, np.nan)
    return np.std(np.asarray(draws), axis=0, ddof=1)


# ------------------------------------------------------------------------------ L(C)
def _power_law_raw(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fits log y ≈ log(c + exp(la − b·x)) on normalised x; returns (θ, J, r)."""
    lmin = float(y.min())

    def predict(t):
        return t[2] + np.exp(t[0] - t[1] * x)

    def residual(t):
        p = predict(t)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(p > 0, np.log(y) - np.log(np.where(p > 0, p, 1.0)), np.inf)

    def jacobian(t):
        e = np.exp(t[0] - t[1] * x)
        p = t[2] + e
        return np.stack([-e / p, x * e / p, -1.0 / p], axis=1)

    # c in [0, min L) (q = 1: no offset); for each, log(y − c) = la − b·x by least squares
    cs = lmin * (1.0 - np.geomspace(1e-4, 1.0, 80))[:, None]
    ly = np.log(y[None, :] - cs)
    xm, lym = x.mean(), ly.mean(axis=1, keepdims=True)
    slope = ((x - xm) * (ly - lym)).sum(axis=1) / max(float(((x - xm) ** 2).sum()), 1e-300)
    la = lym[:, 0] - slope * xm
    pred = cs + np.exp(la[:, None] - (-slope)[:, None] * x[None, :])
    cost = ((np.log(y)[None, :] - np.log(pred)) ** 2).sum(axis=1)
    k = int(np.nanargmin(cost))
    best = np.array([la[k], -slope[k], cs[k, 0]])
    def project(t):  # an irreducible loss in [0, min L): a loss is not negative
        return np.array([t[0], t[1], np.clip(t[2], 0.0, lmin * (1 - 1e-9))])

    theta = levenberg_marquardt(residual, jacobian, best, project=project)
    return theta, jacobian(theta), residual(theta)


def fit_power_law(compute: np.ndarray, loss: np.ndarray, bootstrap: int = 0) -> Fit:
    """Fits L(C) = a·C^(−b) + c to ``(compute, loss)`` (at least 3 points, loss > 0)."""
    compute, loss = np.asarray(compute, np.float64), np.asarray(loss, np.float64)
    if compute.size < 3:
        raise ValueError(f"L(C) has 3 parameters; got {compute.size} points")
    if np.any(compute <= 0) or np.any(loss <= 0):
        raise ValueError("L(C) needs positive compute and loss")
    log_c0 = float(np.mean(np.log(compute)))
    x = np.log(compute) - log_c0
    theta, j, r = _power_law_raw(x, loss)
    cov = covariance(j, r)
    la, b, c = theta
    a = float(np.exp(la + b * log_c0))  # a·C^(−b) = exp(la)·(C/C0)^(−b)
    # delta method: ∂a/∂la = a, ∂a/∂b = a·log C0
    grad = np.array([a, a * log_c0, 0.0])
    a_err = float(np.sqrt(max(grad @ cov @ grad, 0.0))) if np.all(np.isfinite(cov)) else np.nan
    errors = np.array([a_err, *np.sqrt(np.maximum(np.diag(cov)[1:], 0.0))])
    if compute.size <= 3:
        errors = np.full(3, np.nan)

    def refit(idx):
        t, _, _ = _power_law_raw(x[idx], loss[idx])
        return np.array([np.exp(t[0] + t[1] * log_c0), t[1], t[2]])

    boot = _bootstrap(refit, compute.size, 3, bootstrap)
    return Fit("L(C) = a·C^(-b) + c", ("a", "b", "c"), np.array([a, b, c]), errors, boot,
               int(compute.size), float(np.sqrt(np.mean(r**2))))


def power_law(fit: Fit, compute: np.ndarray) -> np.ndarray:
    return fit["a"] * np.asarray(compute, np.float64) ** (-fit["b"]) + fit["c"]


# ------------------------------------------------------------------------------ L(N, D)
def _chinchilla_raw(n: np.ndarray, d: np.ndarray, y: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fits log y ≈ log(E + exp(la − α·n) + exp(lb − β·d)) with n, d normalised logs."""

    def parts(t):
        return np.exp(t[1] - t[2] * n), np.exp(t[3] - t[4] * d)

    def residual(t):
        u, v = parts(t)
        p = t[0] + u + v
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(p > 0, np.log(y) - np.log(np.where(p > 0, p, 1.0)), np.inf)

    def jacobian(t):
        u, v = parts(t)
        p = t[0] + u + v
        return np.stack([-1 / p, -u / p, n * u / p, -v / p, d * v / p], axis=1)

    # for each (α, β) on a grid, E, A, B by linear least squares (normal equations, batched)
    alpha, beta = (g.ravel() for g in np.meshgrid(np.linspace(0.05, 2.0, 40),
                                                  np.linspace(0.05, 2.0, 40), indexing="ij"))
    design = np.stack([np.ones((alpha.size, n.size)), np.exp(-alpha[:, None] * n[None, :]),
                       np.exp(-beta[:, None] * d[None, :])], axis=2)  # [G, points, 3]
    xtx = np.einsum("gpi,gpj->gij", design, design) + 1e-12 * np.eye(3)
    coef = np.linalg.solve(xtx, np.einsum("gpi,p->gi", design, y)[..., None])[..., 0]
    pred = np.einsum("gpi,gi->gp", design, coef)
    ok = (coef[:, 1] > 0) & (coef[:, 2] > 0) & np.all(pred > 0, axis=1)
    best = None
    if np.any(ok):
        with np.errstate(invalid="ignore", divide="ignore"):
            cost = np.where(ok, ((np.log(y)[None] - np.log(np.where(pred > 0, pred, 1.0))) ** 2
                                 ).sum(axis=1), np.inf)
        g = int(np.argmin(cost))
        best = np.array([coef[g, 0], np.log(coef[g, 1]), alpha[g], np.log(coef[g, 2]), beta[g]])
    if best is None:
        raise ValueError("L(N, D): no start with positive A and B (loss does not fall with both "
                         "N and D)")
    def project(t):  # E in [0, min L)
        return np.array([np.clip(t[0], 0.0, y.min() * (1 - 1e-9)), *t[1:]])

    theta = levenberg_marquardt(residual, jacobian, project(best), project=project)
    return theta, jacobian(theta), residual(theta)


def fit_chinchilla(params: np.ndarray, tokens: np.ndarray, loss: np.ndarray,
                   bootstrap: int = 0) -> Fit:
    """Fits L(N, D) = E + A/N^α + B/D^β (at least 5 points spanning ≥ 2 N and ≥ 2 D)."""
    params, tokens, loss = (np.asarray(v, np.float64) for v in (params, tokens, loss))
    if loss.size < 5 or len(np.unique(params)) < 2 or len(np.unique(tokens)) < 2:
        raise ValueError("L(N, D) needs ≥ 5 points spanning ≥ 2 sizes and ≥ 2 token budgets")
    ln0, ld0 = float(np.mean(np.log(params))), float(np.mean(np.log(tokens)))
    n, d = np.log(params) - ln0, np.log(tokens) - ld0
    theta, j, r = _chinchilla_raw(n, d, loss)
    cov = covariance(j, r)

    def to_user(t):
        e, la, alpha, lb, beta = t
        return np.array([e, np.exp(la + alpha * ln0), alpha, np.exp(lb + beta * ld0), beta])

    values = to_user(theta)
    # delta method for A = exp(la + α·ln0), B = exp(lb + β·ld0)
    g = np.zeros((5, 5))
    g[0, 0] = g[2, 2] = g[4, 4] = 1.0
    g[1, 1], g[1, 2] = values[1], values[1] * ln0
    g[3, 3], g[3, 4] = values[3], values[3] * ld0
    errors = (np.sqrt(np.maximum(np.diag(g @ cov @ g.T), 0.0)) if np.all(np.isfinite(cov))
              else np.full(5, np.nan))

    def refit(idx):
        if len(np.unique(n[idx])) < 2 or len(np.unique(d[idx])) < 2:
            return None
        try:
            t, _, _ = _chinchilla_raw(n[idx], d[idx], loss[idx])
        except ValueError:
            return None
        return to_user(t)

    boot = _bootstrap(refit, loss.size, 5, bootstrap)
    return Fit("L(N, D) = E + A/N^alpha + B/D^beta", ("E", "A", "alpha", "B", "beta"), values,
               errors, boot, int(loss.size), float(np.sqrt(np.mean(r**2))))


def chinchilla(fit: Fit, params: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return (fit["E"] + fit["A"] / np.asarray(params, np.float64) ** fit["alpha"]
            + fit["B"] / np.asarray(tokens, np.float64) ** fit["beta"])


# ------------------------------------------------------------------------------ frontier
def pareto_frontier(compute: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the points no cheaper point beats: the lowest loss reached at each compute,
    sorted by compute."""
    compute, loss = np.asarray(compute, np.float64), np.asarray(loss, np.float64)
    order = np.lexsort((loss, compute))
    keep, best = [], np.inf
    for i in order:
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.asarray(keep, np.int64)


def binned_frontier(compute: np.ndarray, loss: np.ndarray, bins: int = 24) -> np.ndarray:
    """The frontier of many curve points: the lowest loss in each of ``bins`` log-spaced compute
    bins, then :func:`pareto_frontier` of those (one point per bin at most, so the dense late
    parts of the curves don't outweigh the rest)."""
    compute, loss = np.asarray(compute, np.float64), np.asarray(loss, np.float64)
    if compute.size == 0:
        return np.zeros(0, np.int64)
    edges = np.geomspace(compute.min(), compute.max() * (1 + 1e-9), bins + 1)
    which = np.clip(np.searchsorted(edges, compute, side="right") - 1, 0, bins - 1)
    picked = [np.flatnonzero(which == b)[np.argmin(loss[which == b])]
              for b in range(bins) if np.any(which == b)]
    picked = np.asarray(picked, np.int64)
    return picked[pareto_frontier(compute[picked], loss[picked])]
