"""implicit_gd: gradient descent on an infinite-depth ReLU implicit network, in NumPy.

Reference implementation and correctness oracle of
    T. Gao and H. Gao, "Gradient Descent Optimizes Infinite-Depth ReLU Implicit
    Networks with Linear Widths", arXiv:2205.07463 (2022).

    python implicit_gd.py demo      # train, certify, summarise: a few seconds
    python -m pytest -q             # the test suite

One file of about 1750 lines, NumPy only, read top to bottom: notation -> input
checks -> model and equilibrium solver -> implicit gradient -> gradient descent and
gradient flow -> theory diagnostics -> demo and sweep -> bench -> golden vectors ->
command line.

Legend: N samples, d inputs, m width.
    X (N, d) inputs, one sample per row      y (N,) targets
    A (m, m) implicit weight                 W (m, d) input-injection weight
    v (m,)   output weight                   gamma > 0 fixed scale (not trained)
    Z (N, m) equilibrium features            H (N, m) pre-activations
    r (N,)   residual yhat - y               G (N, m) masked adjoint, G = diag(r) U
                                             U (N, m) adjoint per unit residual

The model (theta = (A, W, v)):
    H = gamma Z A^T + X W^T,   Z = relu(H),   yhat = Z v,   Phi = 0.5 ||yhat - y||^2

ReLU'(h) = 1[h > 0]: zero at the kink, everywhere in this file.

Some papers write the implicit layer as (gamma / sqrt(m)) A' with A'_ij ~ N(0, 1);
that is this model with gamma -> gamma / sqrt(m), and every equation is unchanged.
"""

import argparse
import json
import math
import numbers
import sys
import time
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

EPS = np.finfo(np.float64).eps
PARAM_NAMES = ("A", "W", "v")


class NotWellPosedError(ValueError):
    """gamma * ||A||_2 >= 1: the equilibrium is not certified to exist or be unique."""


class NotConvergedError(RuntimeError):
    """A fixed-point solve reached max_iter before its certified error met tol.

    Attributes: iterations (int), error_bound (float, the certified error reached).
    """

    def __init__(self, message, *, iterations, error_bound):
        super().__init__(message)
        self.iterations = iterations
        self.error_bound = error_bound


class TrainingError(RuntimeError):
    """Training stopped early.

    Attributes: step (the step that failed), reason (str), params (the last good
    Params: the last whose loss and gradient were computed, history["loss"][-1];
    the initial params if none was), history (the steps recorded so far).
    """

    def __init__(self, message, *, step, reason, params, history):
        super().__init__(message)
        self.step = step
        self.reason = reason
        self.params = params
        self.history = history


class Params(NamedTuple):
    """The trained parameters theta = (A, W, v); also the container of their gradients."""

    A: np.ndarray  # (m, m)
    W: np.ndarray  # (m, d)
    v: np.ndarray  # (m,)


# ---- input checks (every public function checks before it works) ----


def _array(name, x, ndim):
    """x as a finite float64 array with ndim dimensions, or an error that names it."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    a = a.astype(np.float64, copy=False)  # never written to: inputs stay as they are
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite entries (nan or inf)")
    return a


def _positive(name, x, integer=False):
    """x as a positive finite float (or int), or an error that names it."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(x, bool) or not isinstance(x, kind):
        what = "an integer" if integer else "a real number"
        raise TypeError(f"{name} must be {what}, got {x!r}")
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be positive and finite, got {x!r}")
    return int(x) if integer else float(x)


def _check_params(params):
    if not (isinstance(params, tuple) and len(params) == 3):
        raise TypeError(f"params must be Params(A, W, v), got {type(params).__name__}")
    A = _array("params.A", params[0], 2)
    W = _array("params.W", params[1], 2)
    v = _array("params.v", params[2], 1)
    m = A.shape[0]
    if A.shape != (m, m):
        raise ValueError(f"params.A must be square (m, m), got shape {A.shape}")
    if W.shape[0] != m:
        raise ValueError(f"params.W must have shape (m, d) = ({m}, d), got {W.shape}")
    if v.shape != (m,):
        raise ValueError(f"params.v must have shape (m,) = ({m},), got {v.shape}")
    return Params(A, W, v)


def _check_X(X, d):
    X = _array("X", X, 2)
    if X.shape[1] != d:
        raise ValueError(f"X must have shape (N, d) = (N, {d}) to match params.W, got {X.shape}")
    return X


def _check_y(y, N):
    y = _array("y", y, 1)
    if y.shape != (N,):
        raise ValueError(f"y must have shape (N,) = ({N},) to match X, got {y.shape}")
    return y


def _check_start(name, U, shape):
    if U is None:
        return None
    U = _array(name, U, 2)
    if U.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {U.shape}")
    return U


def _check_Z_r(Z, r, m):
    Z = _array("Z", Z, 2)
    if Z.shape[1] != m:
        raise ValueError(f"Z must have shape (N, m) = (N, {m}), got {Z.shape}")
    r = _array("r", r, 1)
    if r.shape != (Z.shape[0],):
        raise ValueError(f"r must have shape (N,) = ({Z.shape[0]},), got {r.shape}")
    return Z, r


def _check_train(train, name="train"):
    if not isinstance(train, (str, tuple, list)):
        raise TypeError(f"{name} must be a subset of {PARAM_NAMES}, got {train!r}")
    names = (train,) if isinstance(train, str) else tuple(train)
    bad = [t for t in names if t not in PARAM_NAMES]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"{name} must be a non-empty subset of {PARAM_NAMES}, got {train!r}")
    return tuple(t for t in PARAM_NAMES if t in names)


def _pow2(a):
    """2^e >= max |a| (1 if a is 0): dividing by it is exact, and keeps squares from under/overflow."""
    peak = float(np.abs(a).max())
    return math.ldexp(1.0, math.frexp(peak)[1]) if peak > 0 else 1.0


def _rng(seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
    return np.random.default_rng(seed)


# ---- model and equilibrium solver ----


def init_params(d, m, *, seed=0):
    """Default initialisation A_ij ~ N(0, 1/m), W_ij ~ N(0, 2/d), v_i ~ N(0, 1/m).

    ||A||_2 is about 2 for large m, so the default gamma = 0.25 gives gamma ||A||_2 ~ 0.5.

    Parameters
    ----------
    d, m : int
        Input dimension and width, both positive.
    seed : int or None
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    Params
        A (m, m), W (m, d), v (m,), float64.
    """
    d = _positive("d", d, integer=True)
    m = _positive("m", m, integer=True)
    rng = _rng(seed)
    A = rng.normal(0.0, math.sqrt(1.0 / m), (m, m))  # (m, m)
    W = rng.normal(0.0, math.sqrt(2.0 / d), (m, d))  # (m, d)
    v = rng.normal(0.0, math.sqrt(1.0 / m), m)  # (m,)
    return Params(A, W, v)


def make_data(N, d, *, seed=0):
    """The demo's data: unit-norm inputs and smooth targets y_i = sin(3 <u, x_i>).

    Parameters
    ----------
    N, d : int
        Samples and input dimension, both positive.
    seed : int or None
        Seed of ``numpy.random.default_rng``; u is a random unit vector drawn from it.

    Returns
    -------
    X : ndarray (N, d)
        Rows uniform on the unit sphere.
    y : ndarray (N,)
    """
    N = _positive("N", N, integer=True)
    d = _positive("d", d, integer=True)
    rng = _rng(seed)
    X = rng.standard_normal((N, d))  # (N, d)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    u = rng.standard_normal(d)  # (d,)
    u /= np.linalg.norm(u)
    y = np.sin(3.0 * X @ u)  # (N,)
    return X, y


def norm_bound(A):
    """Certified upper bound of the spectral norm: sqrt(lambda_max(A^T A)) (1 + 2 m^2 eps).

    The factor covers the rounding of forming A^T A (at most m eps ||A||_F^2 <= m^2 eps
    ||A||_2^2 in 2-norm) and the backward error of the symmetric eigensolver. eigvalsh of
    A^T A costs about half an SVD; squaring does not hurt the largest singular value.

    Parameters
    ----------
    A : array_like (m, m)

    Returns
    -------
    float
        An upper bound of ||A||_2, within about 2 m^2 eps of it.
    """
    A = _array("A", A, 2)
    m = max(A.shape)
    s = _pow2(A)  # ||A||_2 = s ||A / s||_2, and A / s is exact
    A = A / s
    lam = np.linalg.eigvalsh(A.T @ A)[-1]  # one buffer: NumPy's matmul then uses syrk, half the work
    return s * math.sqrt(max(lam, 0.0)) * (1.0 + 2.0 * m * m * EPS)


def _rho(A, gamma, A_norm, allow_ill_posed):
    """Certified rho = gamma * ||A||_2 (from A_norm, an upper bound of ||A||_2, if given)."""
    if A_norm is None:
        A_norm = norm_bound(A)
    else:
        if isinstance(A_norm, bool) or not isinstance(A_norm, numbers.Real) or not (
                math.isfinite(A_norm) and A_norm >= 0):
            raise ValueError(f"A_norm must be a finite number >= 0, got {A_norm!r}")
        column = float(np.sqrt(np.einsum("ij,ij->j", A, A)).max())  # max_j ||A e_j|| <= ||A||_2
        if A_norm < column:
            raise ValueError(f"A_norm = {A_norm:.6g} is not an upper bound of ||A||_2: the largest "
                             f"column norm of A is {column:.6g}")
        A_norm = float(A_norm)
    rho = gamma * A_norm
    if rho >= 1.0 and not allow_ill_posed:
        raise NotWellPosedError(
            f"not well-posed: gamma * ||A||_2 = {rho:.6g} >= 1 (gamma = {gamma:.6g}, "
            f"||A||_2 <= {A_norm:.6g}); lower gamma (or, in the API, pass allow_ill_posed=True "
            "to iterate uncertified)"
        )
    return rho


def _fixed_point(apply, U, rho, tol, max_iter, what, weights=None):
    """Picard iteration U_k = apply(U_{k-1}) for a map that acts row by row, each row a rho-contraction.

    Row i of the map depends on row i of U only (sample i's equilibrium, or its
    adjoint), so each row has its own certified bound
        e_i = rho / (1 - rho) * ||u_i^k - u_i^(k-1)||_2  >=  ||u_i^k - u_i*||_2
    from its last update, valid until the row moves again. With row weights w
    (default 1) the quantity certified is diag(w) U. Stop rule:
        sqrt(sum_i (w_i e_i)^2) <= tol ||diag(w) U_k||_F,
    which bounds ||diag(w) (U_k - U*)||_F (up to rounding in evaluating the map).
    A sweep updates only the rows with w_i e_i > tol ||diag(w) U_k||_F / sqrt(n), or all
    rows when more than half need it: with warm starts most rows are done early, and
    the few that are not (a ReLU mask flipped) do not cost full sweeps. If rho >= 1
    (allow_ill_posed) nothing is certified: e_i uses the factor 1 instead of
    rho / (1 - rho), and the bound reported is inf.

    Far from the stop, full sweeps skip that bookkeeping (the differences and the row
    norms, a tenth of a sweep's time). After the second sweep the median row contracts
    by q per sweep (observed between sweeps 1 and 2) and is n = log(its share / its
    bound) / log q sweeps from its share; until then most rows would be swept anyway, so
    the next n - 2 sweeps only apply the map. The stop rule and the bounds are only ever
    evaluated on sweeps that compute them, so skipping changes the cost, never the
    certificate.

    apply(U_rows, rows, out) writes the map of U_rows = U[rows] into out; U is overwritten
    (the caller passes its own copy). info: iterations (sweeps), work (row updates / n,
    in units of full sweeps: the cost), step (||diag(w) (U_k - U_(k-1))||_F, each row at its
    last update), error_bound (of ||diag(w) (U_k - U*)||_F), rho, certified, tol.
    """
    n = U.shape[0]
    w_max = 1.0 if weights is None or not weights.any() else float(weights.max())
    w2 = np.ones(n) if weights is None else (weights / w_max) ** 2  # (n,) scaled: no overflow
    rho = float(rho)
    certified = rho < 1.0
    factor = rho / (1.0 - rho) if certified else 1.0
    step2 = np.full(n, np.inf)  # (n,) ||u_i^k - u_i^(k-1)||^2 at each row's last update
    size2 = np.zeros(n)  # (n,) ||u_i^k||^2
    U_new = np.empty_like(U)  # (n, m)
    rows, work = slice(None), 0  # the rows to update: all, at first
    skip = 0  # sweeps left to skip
    for k in range(1, max_iter + 1):
        if skip:  # far from the stop: apply the map, nothing else (see above)
            apply(U, rows, U_new)
            U, U_new = U_new, U
            work += n
            skip -= 1
            continue
        if isinstance(rows, slice):  # all rows: two full buffers, swapped
            apply(U, rows, U_new)
            U -= U_new  # U_(k-1) - U_k, in the buffer U_(k-1) no longer needs
            diff, U, U_new = U, U_new, U  # U is U_k; diff's buffer takes U_(k+1) next sweep
            new = U
            work += n
        else:  # a few rows: gather, map, scatter
            new = U_new[: rows.size]
            apply(U[rows], rows, new)
            diff = U[rows] - new
            U[rows] = new
            work += rows.size
        prev2 = step2.copy() if k == 2 else None  # (n,) sweep 1's, for the rate
        step2[rows] = np.einsum("ij,ij->i", diff, diff)
        size2[rows] = np.einsum("ij,ij->i", new, new)
        step = math.sqrt(np.where(w2 > 0, w2 * step2, 0.0).sum())  # a row of weight 0 never counts
        size = math.sqrt(w2 @ size2)
        total = factor * step  # sqrt(sum_i (w_i e_i)^2)
        if not (math.isfinite(step) and math.isfinite(size)):
            raise NotConvergedError(f"{what}: the iterates overflowed float64 at sweep {k} "
                                    f"(rho = {rho:.6g}): are the inputs huge?",
                                    iterations=k, error_bound=math.inf)
        if total <= tol * size:  # homogeneous in w: the scaling of w does not change it
            bound = w_max * total if certified else math.inf
            return U, {"iterations": k, "work": work / n, "step": w_max * step, "error_bound": bound,
                       "rho": rho, "certified": certified, "tol": tol}
        rows = np.flatnonzero(factor**2 * w2 * step2 > (tol * size) ** 2 / n)  # w_i e_i > tol size / sqrt(n)
        if 2 * rows.size > n:
            rows = slice(None)
        if k == 2 and isinstance(rows, slice):  # the rate is known, and all rows are still swept
            live = w2 > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                q = math.sqrt(float(np.median(step2[live] / prev2[live])))  # median row's rate
            e = factor * math.sqrt(float(np.median(w2[live] * step2[live])))  # median row's bound
            if 0.0 < q < 0.9 and e > 0.0:
                ahead = math.log(tol * size / math.sqrt(n) / e) / math.log(q)  # sweeps to its share
                skip = min(max(0, math.ceil(ahead) - 2), max_iter - k - 1)
    raise NotConvergedError(
        f"{what}: not converged in max_iter = {max_iter} sweeps: error bound {total:.3e} > "
        f"tol * size = {tol * size:.3e} (rho = {rho:.6g}); raise max_iter, or tol if it is "
        "below the rounding floor (~1e-15)", iterations=max_iter, error_bound=w_max * total)


def equilibrium(params, X, gamma, *, tol=1e-12, max_iter=10_000, Z0=None, A_norm=None,
                allow_ill_posed=False):
    """Equilibrium features Z = relu(gamma Z A^T + X W^T), by certified Picard iteration.

        Z_k = relu(gamma Z_{k-1} A^T + X W^T),   Z_0 = Z0, default relu(X W^T)

    Well-posedness: rho = gamma ||A||_2 < 1 makes z -> relu(gamma A z + W x) a
    contraction, so Z exists, is unique, and Z_k -> Z linearly with rate rho.

    Stop rule: each row (sample) is its own contraction, with the certified bound
    e_i = rho/(1-rho) ||z_i^k - z_i^(k-1)|| >= ||z_i^k - z_i|| from its last update; stop
    at the first sweep with sqrt(sum_i e_i^2) <= tol ||Z_k||_F, which bounds ||Z_k - Z||_F.
    Rows already within their share are not updated again (see _fixed_point).

    Parameters
    ----------
    params : Params
        A (m, m), W (m, d), v (m,) (v is not used).
    X : array_like (N, d)
    gamma : float > 0
    tol : float > 0
        Relative tolerance of the certified error, default 1e-12.
    max_iter : int > 0
        Sweeps at most, default 10000.
    Z0 : array_like (N, m), optional
        Warm start.
    A_norm : float, optional
        A known upper bound of ||A||_2 (checked against the largest column norm);
        default norm_bound(A).
    allow_ill_posed : bool
        Iterate even if rho >= 1, uncertified.

    Returns
    -------
    Z : ndarray (N, m)
    info : dict
        iterations (sweeps), work (row updates / N), step (last ||Z_k - Z_(k-1)||_F),
        error_bound (certified ||Z_k - Z||_F; inf if not certified), rho, certified, tol.

    Raises
    ------
    NotWellPosedError
        rho >= 1 and not allow_ill_posed.
    NotConvergedError
        The stop rule is not met within max_iter sweeps.
    """
    A, W, _ = _check_params(params)
    X = _check_X(X, W.shape[1])
    gamma = _positive("gamma", gamma)
    tol = _positive("tol", tol)
    max_iter = _positive("max_iter", max_iter, integer=True)
    Z0 = _check_start("Z0", Z0, (X.shape[0], A.shape[0]))
    rho = _rho(A, gamma, A_norm, allow_ill_posed)
    Z, info = _equilibrium(A, W, X, gamma, rho, tol, max_iter, Z0)
    del info["H"]  # kept for warm starts inside training only
    return Z, info


def _equilibrium(A, W, X, gamma, rho, tol, max_iter, Z0):
    """equilibrium() on checked inputs."""
    B = X @ W.T  # (N, m) input injection
    s = _pow2(B)  # Z is homogeneous in X W^T: solve for Z / s (exact), away from under/overflow
    B = B / s
    gAT = gamma * A.T  # (m, m)
    H = np.empty_like(B)  # (N, m) each row's pre-activation at its last update (so Z = relu(H))

    def picard(Z, rows, out):  # H = gamma Z A^T + X W^T, out = relu(H), on the given rows
        full = isinstance(rows, slice)
        h = H[rows] if full else out  # all rows: write H in place (a view); a few: copy after
        np.matmul(Z, gAT, out=h)
        h += B[rows]
        if not full:
            H[rows] = h
        np.maximum(h, 0.0, out=out)

    Z = np.maximum(B, 0.0) if Z0 is None else Z0 / s  # (N, m)
    Z, info = _fixed_point(picard, Z, rho, tol, max_iter, "equilibrium")
    H *= s
    info.update(step=s * info["step"], error_bound=s * info["error_bound"], H=H)
    return s * Z, info


def predict(params, X, gamma, **solver):
    """Prediction yhat = Z v, Z the equilibrium.

    Parameters
    ----------
    params, X, gamma
        As in equilibrium; solver keywords are passed on to it.

    Returns
    -------
    ndarray (N,)
    """
    Z, _ = equilibrium(params, X, gamma, **solver)
    return Z @ np.asarray(params[2], dtype=np.float64)


# ---- implicit gradient ----
#
# Differentiate the equilibrium z_i = relu(h_i), h_i = gamma A z_i + W x_i, with
# D_i = diag(1[h_i > 0]) (the mask; 1[h > 0] = 1[z > 0] since z = relu(h)):
#
#     dz_i = D_i (gamma dA z_i + gamma A dz_i + dW x_i)
#     (I - gamma D_i A) dz_i = D_i (gamma dA z_i + dW x_i)      invertible: ||gamma D_i A||_2 <= rho < 1
#
# Phi = 0.5 sum_i (v^T z_i - y_i)^2 changes by dPhi = sum_i r_i (v^T dz_i + z_i^T dv).
# Define the adjoint a_i by (I - gamma D_i A)^T a_i = r_i v, so that r_i v^T dz_i =
# a_i^T D_i (gamma dA z_i + dW x_i); then g_i = D_i a_i satisfies a_i = r_i v + gamma A^T g_i:
#
#     g_i = D_i (r_i v + gamma A^T g_i),   in batch   G = 1[H > 0] * (r v^T + gamma G A)
#
#     dPhi = sum_i g_i^T (gamma dA z_i + dW x_i) + r_i z_i^T dv
#     dPhi/dA = gamma G^T Z,   dPhi/dW = G^T X,   dPhi/dv = Z^T r
#
# G is a linear fixed point with the same contraction factor rho (row i maps by
# g -> D_i (r_i v + gamma A^T g), Lipschitz gamma ||D_i A^T||_2 <= rho). Row i is linear
# in r_i, so we solve it per unit residual and scale:
#
#     U = 1[H > 0] * (1 v^T + gamma U A),   G = diag(r) U.
#
# Row i of U is u_i = D_i (I - gamma A^T D_i)^{-1} v = d yhat_i / d(W x_i): it depends on
# theta only, not on the residual, so along training it warm-starts far better than G
# (which moves with r); unlike Z it jumps where a ReLU mask flips. The Picard iteration on U
# is weighted by |r_i| so that the certified bound is the one on G:
# ||G_k - G||_F <= sqrt(sum_i (r_i e_i)^2) <= tol ||G_k||_F. Nothing is unrolled:
# memory is O(N m + m^2) whatever the number of iterations.


def adjoint(params, Z, r, gamma, *, tol=1e-12, max_iter=10_000, U0=None, A_norm=None,
            allow_ill_posed=False):
    """Masked adjoint G = 1[Z > 0] * (r v^T + gamma G A), solved as G = diag(r) U.

        U = 1[Z > 0] * (1 v^T + gamma U A),   certified Picard iteration weighted by |r|

    The stop rule is that of equilibrium with the error measured on G: stop when the
    certified bound of ||G_k - G||_F is <= tol ||G_k||_F. G is the adjoint for the given Z
    (its mask): the error of Z itself, certified by equilibrium, is not in this bound.

    Parameters
    ----------
    params : Params
        A (m, m), W (m, d), v (m,).
    Z : array_like (N, m)
        The equilibrium.
    r : array_like (N,)
        The residual Z v - y.
    gamma : float > 0
    tol, max_iter, A_norm, allow_ill_posed
        As in equilibrium.
    U0 : array_like (N, m), optional
        Warm start for U, default 1[Z > 0] * 1 v^T.

    Returns
    -------
    G : ndarray (N, m)
    info : dict
        As in equilibrium, for G, plus U (N, m), certified only as diag(|r|) U: rows with
        r_i = 0 are not refined.
    """
    A, _, v = _check_params(params)
    Z, r = _check_Z_r(Z, r, A.shape[0])
    gamma = _positive("gamma", gamma)
    tol = _positive("tol", tol)
    max_iter = _positive("max_iter", max_iter, integer=True)
    U0 = _check_start("U0", U0, Z.shape)
    rho = _rho(A, gamma, A_norm, allow_ill_posed)
    return _adjoint(A, v, Z, r, gamma, rho, tol, max_iter, U0)


def _adjoint(A, v, Z, r, gamma, rho, tol, max_iter, U0):
    """adjoint() on checked inputs."""
    mask = (Z > 0).astype(np.float64)  # (N, m) 1[H > 0]
    s = _pow2(v)  # U is linear in v: solve for U / s (exact), away from under/overflow
    vs = v / s  # (m,)
    gA = gamma * A  # (m, m)

    def picard(U, rows, out):  # out = 1[H > 0] * (1 v^T + gamma U A), on the given rows
        np.matmul(U, gA, out=out)
        out += vs
        out *= mask[rows]

    U = mask * vs if U0 is None else U0 / s  # (N, m)
    U, info = _fixed_point(picard, U, rho, tol, max_iter, "adjoint", weights=np.abs(r))
    U *= s
    info.update(step=s * info["step"], error_bound=s * info["error_bound"], U=U)
    return r[:, None] * U, info  # G = diag(r) U, (N, m)


def adjoint_direct(params, Z, r, gamma):
    """The same G by a direct solve per sample: (I - gamma D_i A)^T a_i = r_i v, g_i = D_i a_i.

    O(N m^3): the independent cross-check of adjoint() for small m.

    Parameters
    ----------
    params, Z, r, gamma
        As in adjoint.

    Returns
    -------
    G : ndarray (N, m)

    Raises
    ------
    NotWellPosedError
        rho >= 1 (then I - gamma D_i A may be singular).
    """
    A, _, v = _check_params(params)
    Z, r = _check_Z_r(Z, r, A.shape[0])
    gamma = _positive("gamma", gamma)
    _rho(A, gamma, None, False)
    return _adjoint_direct(A, v, Z, r, gamma)


def _adjoint_direct(A, v, Z, r, gamma):
    """adjoint_direct() on checked inputs."""
    m = A.shape[0]
    G = np.zeros_like(Z)  # (N, m)
    for i in range(Z.shape[0]):
        D = (Z[i] > 0).astype(np.float64)  # (m,) diagonal of D_i
        M = np.eye(m) - gamma * D[:, None] * A  # (m, m) I - gamma D_i A
        G[i] = D * np.linalg.solve(M.T, r[i] * v)
    return G


def loss_and_grad(params, X, y, gamma, *, wrt=PARAM_NAMES, tol=1e-12, max_iter=10_000,
                  Z0=None, U0=None, A_norm=None, method="fixed_point", return_info=False):
    """Square loss and its gradient by the implicit function theorem (derivation above).

        Phi = 0.5 ||Z v - y||^2,   r = Z v - y,   G = 1[H > 0] * (r v^T + gamma G A)
        dPhi/dA = gamma G^T Z,   dPhi/dW = G^T X,   dPhi/dv = Z^T r

    The gradient's error is that of the two certified solves: Z to tol, and G to tol
    given Z. Both solves use the same certified rho.

    Parameters
    ----------
    params : Params
        A (m, m), W (m, d), v (m,).
    X : array_like (N, d)
    y : array_like (N,)
    gamma : float > 0
    wrt : subset of ("A", "W", "v")
        The gradients wanted; the others come back as None. With ("v",) no adjoint is solved.
    tol, max_iter, A_norm
        As in equilibrium, for both solves.
    Z0, U0 : array_like (N, m), optional
        Warm starts of the equilibrium and of U (see adjoint).
    method : {"fixed_point", "direct"}
        The adjoint by certified Picard iteration, or by per-sample linear solves (small m).
    return_info : bool
        Also return the solves' details.

    Returns
    -------
    loss : float
    grads : Params
        dA (m, m), dW (m, d), dv (m,), or None for those not in wrt.
    info : dict, only with return_info
        Z (N, m), H (N, m) (the pre-activations of the last sweep: Z = relu(H)), G (N, m),
        U (N, m), r (N,), forward and adjoint (the solves' infos; adjoint and U are None
        if no adjoint was needed or method is "direct").

    Raises
    ------
    NotWellPosedError, NotConvergedError
        As in equilibrium.
    FloatingPointError
        The loss overflows float64.
    """
    A, W, v = _check_params(params)
    X = _check_X(X, W.shape[1])
    y = _check_y(y, X.shape[0])
    gamma = _positive("gamma", gamma)
    wrt = _check_train(wrt, "wrt")
    tol = _positive("tol", tol)
    max_iter = _positive("max_iter", max_iter, integer=True)
    shape = (X.shape[0], A.shape[0])
    Z0 = _check_start("Z0", Z0, shape)
    U0 = _check_start("U0", U0, shape)
    if method not in ("fixed_point", "direct"):
        raise ValueError(f"method must be 'fixed_point' or 'direct', got {method!r}")
    rho = _rho(A, gamma, A_norm, False)

    Z, forward = _equilibrium(A, W, X, gamma, rho, tol, max_iter, Z0)  # (N, m)
    H = forward.pop("H")  # (N, m) pre-activations of the last sweep
    r = Z @ v - y  # (N,)
    with np.errstate(over="ignore"):
        loss = 0.5 * float(r @ r)
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss overflowed float64 (Phi = {loss}, "
                                 f"max |r_i| = {np.abs(r).max():.3g})")
    G, backward = None, None
    if "A" in wrt or "W" in wrt:
        if method == "direct":
            G = _adjoint_direct(A, v, Z, r, gamma)  # (N, m), rho checked above
        else:
            G, backward = _adjoint(A, v, Z, r, gamma, rho, tol, max_iter, U0)  # (N, m)
    grads = Params(
        gamma * (G.T @ Z) if "A" in wrt else None,  # (m, m)
        G.T @ X if "W" in wrt else None,  # (m, d)
        Z.T @ r if "v" in wrt else None,  # (m,)
    )
    if return_info:
        U = backward.pop("U") if backward else None
        return loss, grads, {"Z": Z, "H": H, "G": G, "U": U, "r": r, "forward": forward,
                             "adjoint": backward}
    return loss, grads


# ---- gradient descent and gradient flow ----
#
# GD:  theta_{k+1} = theta_k - lr grad Phi(theta_k).
# GF:  d theta / dt = -grad Phi(theta), by explicit Euler with n = ceil(t_end / dt) equal
#      steps h = t_end / n <= dt; an Euler step is a GD step with lr = h, so both run
#      the same loop, and GF's history is indexed by t = k h.
#
# Warm starts. Each step starts both solves from a prediction made from the last ones
# (_warm_Z, _warm_U); the certificate is always that of the final Picard sweep, whatever
# the start. With backward differences nabla S_k = S_k - S_(k-1), the polynomial of
# degree p through the last p + 1 solutions predicts (Newton's formula)
#     S_(k+1) ~ S_k + nabla S_k + ... + nabla^p S_k,
# which is off by nabla^(p+1) S_(k+1): what the path does beyond degree p. For GD the
# parameters' part of it is known, since theta_(k+1) - theta_k = -step grad Phi(theta_k):
#     nabla^(p+1) theta_(k+1) = -step nabla^p grad Phi(theta_k),
#     grad_A = gamma G^T Z,  grad_W = G^T X,  grad_v = Z^T r.
# The path is not smooth where a ReLU mask flips: row i of G jumps when a mask of row i
# flips, so nabla^p G is concentrated in a few rows F (_jump_rows: 99% of its squared
# norm, at most 48 rows). Their direct effect, with Z at its last value
# (nabla^p (G^T Z) ~ (nabla^p G)^T Z), is a low-rank correction:
#     on H = gamma Z A^T + X W^T:   dH = -step (gamma^2 Z Z_F^T + X X_F^T) (nabla^p G)_F
#     on U = 1[H > 0] (1 v^T + gamma U A):
#                                   dU = -step 1[H > 0] (1 (nabla^p grad_v)^T
#                                                        + gamma^2 U (nabla^p G)_F^T Z_F)
# (leaving out the parameters that are not trained), which costs 2 |F| / m of a sweep.
# The rest of the change (Z's own response, through (I - gamma D A)^(-1)) is left to the
# Picard sweeps. Z starts at relu(H extrapolated (degree <= 2) + dH): the pre-activation
# extrapolates better than Z, which has a kink where a mask flips. U (not G: U does not
# move with the residual) extrapolates with degree <= 3, each row only through the steps
# since its mask last flipped, since U jumps at a flip.
#
# rho is certified along training without an eigensolve per step: with A_ref the A of
# the last exact norm_bound,
#     ||A_k||_2 <= ||A_ref||_2 + ||A_k - A_ref||_F,
# an O(m^2) upper bound (inflated by 1 + 2 m^2 eps for the rounding of the difference and
# of the norm), recomputed by norm_bound(A) when the margin 1 - gamma ||A||_2 has
# shrunk to half of its value at the last exact computation. If the exact rho reaches
# 1, training stops: the equilibrium is no longer certified to be well-posed.


def gradient_descent(params, X, y, gamma, *, lr, steps, train=PARAM_NAMES, target=None,
                     tol=1e-12, max_iter=10_000, lambda_min=False, warm_start=True, log_every=0):
    """Gradient descent theta_{k+1} = theta_k - lr grad Phi(theta_k), for at most `steps` steps.

    Parameters
    ----------
    params : Params
        theta_0: A (m, m), W (m, d), v (m,). Not modified; the result never shares memory with it.
    X : array_like (N, d)
    y : array_like (N,)
    gamma : float > 0
    lr : float > 0
    steps : int > 0
    train : subset of ("A", "W", "v")
        The parameters that move; the rest are frozen.
    target : float > 0, optional
        Stop early once Phi_k <= target Phi_0.
    tol, max_iter
        As in equilibrium, for every solve.
    lambda_min : bool
        Also record lambda_min(Z_k Z_k^T) (one SVD of Z per step).
    warm_start : bool
        Start each solve from a prediction made from the previous steps (False: cold).
    log_every : int >= 0
        Print a progress line every so many steps (0: quiet).

    Returns
    -------
    params : Params
        theta_K.
    history : dict
        Arrays with entry k at theta_k, k = 0..K (K = steps, or fewer with target): loss,
        rho (certified gamma ||A_k||_2), forward_iters and adjoint_iters (the solves' work
        in full sweeps), grad_norm (of the trained parameters), lambda_min (if asked);
        and norm_refreshes (exact norm computations), train.

    Raises
    ------
    NotWellPosedError
        gamma ||A_0||_2 >= 1, before any work.
    TrainingError
        The loss or parameters became non-finite, a solve failed, or well-posedness was
        lost; it carries the step, the reason, the last good params and the history.
    """
    lr = _positive("lr", lr)
    steps = _positive("steps", steps, integer=True)
    return _train(params, X, y, gamma, lr, steps, train, target, tol, max_iter, lambda_min,
                  warm_start, log_every, lambda k: f"GD step {k}")


def gradient_flow(params, X, y, gamma, *, t_end, dt, train=PARAM_NAMES, target=None,
                  tol=1e-12, max_iter=10_000, lambda_min=False, warm_start=True, log_every=0):
    """Gradient flow d theta/dt = -grad Phi(theta) on [0, t_end], by explicit Euler.

        theta(t + h) = theta(t) - h grad Phi(theta(t)),   n = ceil(t_end / dt), h = t_end / n <= dt

    First-order accurate: halving dt halves the error at t_end.

    Parameters
    ----------
    params, X, y, gamma, train, target, tol, max_iter, lambda_min, warm_start, log_every
        As in gradient_descent.
    t_end : float > 0
    dt : float > 0
        The largest Euler step.

    Returns
    -------
    params : Params
        theta(t_end) (or at the time target was reached).
    history : dict
        As in gradient_descent, plus t (the times k h) and h.

    Raises
    ------
    NotWellPosedError, TrainingError
        As in gradient_descent.
    """
    t_end = _positive("t_end", t_end)
    dt = _positive("dt", dt)
    n = max(1, math.ceil(t_end / dt * (1 - 4 * EPS)))  # t_end/dt = 10 (1 + eps) is 10 steps
    h = t_end / n
    try:
        params, history = _train(params, X, y, gamma, h, n, train, target, tol, max_iter, lambda_min,
                                 warm_start, log_every, lambda k: f"GF t {k * h:.4g}")
    except TrainingError as e:
        e.history.update(t=h * np.arange(e.history["loss"].size), h=h)
        raise
    history.update(t=h * np.arange(history["loss"].size), h=h)
    return params, history


def _differences(S, table, order):
    """The backward differences [S_k, nabla S_k, ..., nabla^q S_k], q <= order, from the
    new S_k and the table of S_(k-1):  nabla^j S_k = nabla^(j-1) S_k - nabla^(j-1) S_(k-1)."""
    new = [S]
    for j in range(min(len(table), order)):
        new.append(new[j] - table[j])
    return new


def _extrapolate(table, degree=None):
    """S_(k+1) ~ sum_(j <= p) nabla^j S_k: the polynomial of degree p through the last
    p + 1 points (Newton's backward formula), p = len(table) - 1, or per row p = degree[i]."""
    out = table[0].copy()
    for j in range(1, len(table)):
        np.add(out, table[j], out=out, where=True if degree is None else (degree >= j)[:, None])
    return out


def _jump_rows(D, energy=0.99, most=48):
    """The rows of D holding `energy` of its squared norm (at most `most` rows), largest first."""
    norms = np.einsum("ij,ij->i", D, D)  # (n,)
    order = np.argsort(norms)[::-1]
    total = float(norms.sum())
    if not total > 0.0:
        return order[:0]
    count = int(np.searchsorted(np.cumsum(norms[order]), energy * total)) + 1
    return order[: min(count, most)]


def _warm_Z(past, X, step, gamma, train):
    """Start of the forward solve: relu(H extrapolated + dH), see above (None: no history)."""
    H_table, G_table, Z = past["H"], past["G"], past["Z"]
    if not H_table:
        return None
    p = min(len(H_table) - 1, 2)
    H = _extrapolate(H_table[: p + 1])  # (N, m)
    if 1 <= p < len(G_table) and ("A" in train or "W" in train):
        D, F = G_table[p], past["F"][p]  # nabla^p G, its jump rows
        K = np.zeros((Z.shape[0], F.size))  # (N, |F|)
        if "A" in train:
            K += gamma**2 * (Z @ Z[F].T)
        if "W" in train:
            K += X @ X[F].T
        H -= step * (K @ D[F])
    return np.maximum(H, 0.0, out=H)


def _warm_U(past, step, gamma, train):
    """Start of the adjoint solve: U extrapolated row by row + dU, see above (None: no history)."""
    U_table, G_table, gv_table, Z = past["U"], past["G"], past["gv"], past["Z"]
    if not U_table:
        return None
    degree = np.minimum(past["steady"], len(U_table) - 1)  # (N,) back to the row's last flip
    U = _extrapolate(U_table, degree)  # (N, m)
    for p in range(1, min(len(U_table), len(G_table))):
        rows = np.flatnonzero(degree == p)
        if rows.size == 0:
            continue
        D, F = G_table[p], past["F"][p]  # nabla^p G, its jump rows
        dU = np.zeros((rows.size, U.shape[1]))  # (|rows|, m)
        if "v" in train:
            dU -= step * gv_table[p]  # nabla^(p+1) v, exact
        if "A" in train:
            dU -= step * gamma**2 * ((U_table[0][rows] @ D[F].T) @ Z[F])
        U[rows] += past["mask"][rows] * dU
    return U


def _remember(past, info, grads):
    """Add step k's solutions to the warm-start history (in place)."""
    mask = info["Z"] > 0  # (N, m)
    if past["mask"] is None:
        past["steady"] = np.zeros(mask.shape[0], dtype=int)
    else:  # rows whose mask did not change: one more step back to extrapolate through
        past["steady"] = np.where((mask == past["mask"]).all(axis=1), past["steady"] + 1, 0)
    past.update(Z=info["Z"], mask=mask, H=_differences(info["H"], past["H"], 2))
    if info["U"] is not None:  # an adjoint was solved (A or W trained)
        past["U"] = _differences(info["U"], past["U"], 3)
        past["G"] = _differences(info["G"], past["G"], 3)
        past["F"] = [None] + [_jump_rows(D) for D in past["G"][1:]]
    if grads.v is not None:
        past["gv"] = _differences(grads.v, past["gv"], 3)


def _train(params, X, y, gamma, step, steps, train, target, tol, max_iter, track_lambda,
           warm_start, log_every, where):
    """The loop of gradient_descent and gradient_flow (an Euler step is a GD step)."""
    theta = Params(*(p.copy() for p in _check_params(params)))  # frozen ones are returned too
    X = _check_X(X, theta.W.shape[1])
    y = _check_y(y, X.shape[0])
    gamma = _positive("gamma", gamma)
    train = _check_train(train)
    target = None if target is None else _positive("target", target)
    tol = _positive("tol", tol)
    max_iter = _positive("max_iter", max_iter, integer=True)
    if isinstance(log_every, bool) or not isinstance(log_every, numbers.Integral) or log_every < 0:
        raise ValueError(f"log_every must be a non-negative integer, got {log_every!r}")
    m = theta.A.shape[0]

    A_norm = ref_norm = norm_bound(theta.A)
    _rho(theta.A, gamma, A_norm, False)  # NotWellPosedError before any work if rho >= 1
    A_ref, margin = theta.A, 1.0 - gamma * A_norm  # A and 1 - rho at the last exact norm
    rec = {"loss": [], "rho": [], "forward_iters": [], "adjoint_iters": [], "grad_norm": []}
    if track_lambda:
        rec["lambda_min"] = []
    history = {"norm_refreshes": 1, "train": train}
    # for the warm starts: backward-difference tables of H, G, U, grad_v (newest first),
    # G's jump rows, the last Z and mask, and per row the steps since its mask last flipped
    past = {"H": [], "G": [], "U": [], "gv": [], "F": [], "Z": None, "mask": None, "steady": None}
    good = theta  # the last parameters whose loss and gradient were computed

    def stop(k, reason):
        history.update({key: np.array(val) for key, val in rec.items()})
        return TrainingError(f"training stopped at step {k}: {reason}", step=k, reason=reason,
                             params=good, history=history)

    for k in range(steps + 1):
        try:
            loss, grads, info = loss_and_grad(
                theta, X, y, gamma, wrt=train, tol=tol, max_iter=max_iter, A_norm=A_norm,
                Z0=_warm_Z(past, X, step, gamma, train) if warm_start else None,
                U0=_warm_U(past, step, gamma, train) if warm_start else None, return_info=True)
        except (NotConvergedError, FloatingPointError) as e:
            raise stop(k, str(e)) from e
        good = theta
        if warm_start:
            _remember(past, info, grads)
        rec["loss"].append(loss)
        rec["rho"].append(gamma * A_norm)
        rec["forward_iters"].append(info["forward"]["work"])
        rec["adjoint_iters"].append(info["adjoint"]["work"] if info["adjoint"] else 0.0)
        rec["grad_norm"].append(math.sqrt(sum(float(np.vdot(g, g)) for g in grads if g is not None)))
        if track_lambda:
            rec["lambda_min"].append(lambda_min(info["Z"]))
        done = k == steps or (target is not None and loss <= target * rec["loss"][0])
        if log_every and (k % log_every == 0 or done):
            lam = f"  lambda_min {rec['lambda_min'][-1]:.3e}" if track_lambda else ""
            print(f"{where(k)}: loss {loss:.6e}  rho {gamma * A_norm:.4f}  sweeps fwd/adj "
                  f"{rec['forward_iters'][-1]:.1f}/{rec['adjoint_iters'][-1]:.1f}{lam}", flush=True)
        if done:
            break

        new = Params(*(p if g is None else p - step * g for p, g in zip(theta, grads)))
        if not all(np.isfinite(p).all() for p in new):
            raise stop(k + 1, "the parameters became non-finite")
        if grads.A is not None:  # ||A_k||_2 <= ||A_ref||_2 + ||A_k - A_ref||_F
            A_norm = (ref_norm + float(np.linalg.norm(new.A - A_ref))) * (1.0 + 2.0 * m * m * EPS)
            if 1.0 - gamma * A_norm < 0.5 * margin:
                A_norm = ref_norm = norm_bound(new.A)
                A_ref = new.A
                margin = 1.0 - gamma * A_norm
                history["norm_refreshes"] += 1
                if not margin > 0.0:  # also when the norm is not finite
                    raise stop(k + 1, f"lost well-posedness: gamma * ||A||_2 = {gamma * A_norm:.6g} >= 1")
        theta = new

    history.update({key: np.array(val) for key, val in rec.items()})
    return theta, history


# ---- theory diagnostics ----


def lambda_min(Z):
    """Smallest eigenvalue of Z Z^T: sigma_min(Z)^2 if m >= N, else exactly 0 (rank <= m < N).

    The SVD of Z avoids squaring the condition number of the Gram matrix.

    Parameters
    ----------
    Z : array_like (N, m)

    Returns
    -------
    float
    """
    Z = _array("Z", Z, 2)
    N, m = Z.shape
    if m < N:
        return 0.0
    return float(np.linalg.svd(Z, compute_uv=False)[-1] ** 2)


def gradient_check(params, X, y, gamma, *, seed=0, h=1e-6, tol=1e-14):
    """Implicit gradient against central differences on one random unit direction E per parameter.

        fd = (Phi(theta + h E) - Phi(theta - h E)) / (2 h),   an = <grad_P Phi, E>
        error_P = |fd - an| / max(|fd|, |an|)

    Parameters
    ----------
    params, X, y, gamma
        As in loss_and_grad.
    seed : int
        Seed of the directions.
    h : float > 0
        The finite-difference step, default 1e-6.
    tol : float > 0
        Solver tolerance, default 1e-14, so the solve error tol Phi / h stays below 1e-8
        of the derivative.

    Returns
    -------
    dict
        "A", "W", "v": the relative errors; "max": the largest; "min_abs_H": min |H_ij|
        (no ReLU kink is straddled when it is much larger than h).
    """
    theta = _check_params(params)
    h = _positive("h", h)
    rng = np.random.default_rng(seed)
    loss, grads, info = loss_and_grad(theta, X, y, gamma, tol=tol, return_info=True)
    H = gamma * info["Z"] @ theta.A.T + np.asarray(X, dtype=np.float64) @ theta.W.T  # (N, m)
    out = {"min_abs_H": float(np.abs(H).min())}
    for i, name in enumerate(PARAM_NAMES):
        E = rng.standard_normal(theta[i].shape)
        E /= np.linalg.norm(E)

        def phi(s):
            moved = theta._replace(**{name: theta[i] + s * E})
            Z, _ = equilibrium(moved, X, gamma, tol=tol)
            r = Z @ moved.v - y
            return 0.5 * float(r @ r)

        fd = (phi(h) - phi(-h)) / (2.0 * h)
        an = float(np.vdot(grads[i], E))
        out[name] = abs(fd - an) / max(abs(fd), abs(an), np.finfo(float).tiny)
    out["max"] = max(out[n] for n in PARAM_NAMES)
    return out


def linear_rate(loss, t):
    """Observed linear rate: -slope of the least-squares line through (t_k, log loss_k).

    Phi_k ~ Phi_0 exp(-rate t_k); with t the step index it is a rate per GD step.

    Parameters
    ----------
    loss : array_like (n,)
        Positive.
    t : array_like (n,)
        Strictly increasing.

    Returns
    -------
    float
    """
    loss = _array("loss", loss, 1)
    t = _array("t", t, 1)
    if loss.shape != t.shape or loss.size < 2 or (loss <= 0).any():
        raise ValueError("loss must be positive, at least two values, shaped like t")
    if not (np.diff(t) > 0).all():
        raise ValueError("t must be strictly increasing")
    slope = np.polyfit(t, np.log(loss), 1)[0]
    return float(-slope)


def gronwall_bound(loss0, lambda_mins, h):
    """The PL certificate Phi(t_k) <= Phi(0) exp(-2 sum_{j<k} lambda_min(Z_j Z_j^T) h), k = 0..n.

    Exact for the flow (d Phi/dt = -||grad||^2 <= -||Z^T r||^2 <= -2 lambda_min Phi), with
    the integral as a left Riemann sum on the Euler grid (so it holds up to O(h) along
    Euler). Negative lambda_mins (rounding) count as 0.

    Parameters
    ----------
    loss0 : float >= 0
    lambda_mins : array_like (n + 1,)
        lambda_min(Z Z^T) at t_0 .. t_n.
    h : float > 0
        The time step.

    Returns
    -------
    ndarray (n + 1,)
    """
    loss0 = float(_array("loss0", loss0, 0))
    if loss0 < 0:
        raise ValueError(f"loss0 must be >= 0, got {loss0}")
    h = _positive("h", h)
    lam = np.maximum(_array("lambda_mins", lambda_mins, 1), 0.0)  # negative: rounding of a PSD eigenvalue
    integral = np.concatenate([[0.0], np.cumsum(lam[:-1]) * h])  # (n + 1,)
    return loss0 * np.exp(-2.0 * integral)


def pl_ratios(history):
    """PL ratios ||grad Phi_k||^2 / (2 lambda_min(Z_k Z_k^T) Phi_k): the inequality holds where >= 1.

    ||grad Phi||^2 >= ||dPhi/dv||^2 = r^T Z Z^T r >= 2 lambda_min(Z Z^T) Phi, so it holds
    whenever v is trained.

    Parameters
    ----------
    history : dict
        From gradient_descent or gradient_flow with lambda_min=True and v trained.

    Returns
    -------
    ndarray (K + 1,)
        inf where lambda_min Phi = 0.
    """
    if not isinstance(history, dict) or not {"train", "grad_norm", "loss"} <= history.keys():
        raise ValueError("history must be the history dict of gradient_descent or gradient_flow")
    if "v" not in history["train"]:
        raise ValueError("the PL inequality through the output layer needs v in history['train']")
    if "lambda_min" not in history:
        raise ValueError("history has no lambda_min: train with lambda_min=True")
    lower = 2.0 * history["lambda_min"] * history["loss"]
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 >= 0 holds: ratio inf
        return np.where(lower > 0, history["grad_norm"] ** 2 / lower, np.inf)


# ---- demo and sweep: the paper's two claims, runnable ----


def _say(quiet):
    return (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, **k, flush=True))


def demo(*, N=32, d=16, m=None, gamma=0.25, lr=None, steps=3000, target=1e-10, t_end=None,
         dt=None, seed=0, log_every=100, plot=None, quiet=False):
    """Train a linear-width implicit network by GD and by gradient flow, certifying as it goes.

    Prints the setting, a gradient check, GD progress, the observed and the certified
    (2 lr min_k lambda_min) linear rates, the PL inequality at every step, and an Euler
    gradient flow checked against the Gronwall certificate.

    Parameters
    ----------
    N, d : int
        Samples (default 32) and input dimension (default 16).
    m : int, optional
        Width, default 2 N.
    gamma : float
        Default 0.25.
    lr : float, optional
        Default 1 / ||Z(0)||_2^2, the curvature of Phi in v at initialisation.
    steps : int
        GD steps at most; GD stops at Phi <= target Phi(0).
    target : float
        Default 1e-10.
    t_end, dt : float, optional
        Gradient flow horizon and step; default half the time GD took, and lr / 2.
    seed : int
    log_every : int
        Progress lines every so many steps.
    plot : str, optional
        Write a PNG there (needs matplotlib).
    quiet : bool
        Print nothing.

    Returns
    -------
    dict
        The summary (keys in the README), JSON-serialisable.
    """
    say = _say(quiet)
    log_every = 0 if quiet else log_every
    start = time.perf_counter()
    steps, target = _positive("steps", steps, integer=True), _positive("target", target)
    if plot:
        try:
            import matplotlib  # noqa: F401  (checked first, so a missing one is said before the run)
        except ImportError:
            print("--plot needs matplotlib: pip install matplotlib (the run goes on without the plot)",
                  file=sys.stderr)
    lr, t_end, dt = (None if x is None else _positive(name, x)
                     for name, x in (("lr", lr), ("t_end", t_end), ("dt", dt)))
    m = 2 * N if m is None else m
    X, y = make_data(N, d, seed=seed)
    params = init_params(d, m, seed=seed)
    gamma = _positive("gamma", gamma)
    rho0 = _rho(params.A, gamma, None, False)  # NotWellPosedError before any work
    say(f"implicit_gd demo: N = {N} samples, d = {d}, m = {m} (m / N = {m / N:g}), "
        f"gamma = {gamma:g}, seed = {seed}")
    say("data: x_i uniform on the unit sphere, y_i = sin(3 <u, x_i>) for a random unit u")
    say(f"init: A ~ N(0, 1/m), W ~ N(0, 2/d), v ~ N(0, 1/m); certified gamma ||A(0)||_2 <= {rho0:.4f}")
    Z0, _ = equilibrium(params, X, gamma)
    if not Z0.any():
        raise ValueError("Z(0) = 0: every ReLU unit is off at initialisation, so the gradient is 0 "
                         "and GD cannot move; change the seed, d or m")
    lr_source = "given" if lr is not None else "1 / ||Z(0)||_2^2"
    lr = 1.0 / np.linalg.norm(Z0, 2) ** 2 if lr is None else lr

    check = gradient_check(params, X, y, gamma, seed=seed)
    say(f"gradient check (central differences, h = 1e-6, random directions): max rel error "
        f"{check['max']:.1e} (A {check['A']:.1e}, W {check['W']:.1e}, v {check['v']:.1e}); "
        f"min |H_ij| = {check['min_abs_H']:.1e}" + (" >> h: no kink straddled" if check["min_abs_H"] > 1e-4
                                                    else ", within 100 h: a kink may spoil it"))

    say(f"GD: lr = {lr:.4g} ({lr_source}), until loss <= {target:g} loss(0) or {steps} steps")
    failure = None
    try:
        final, hist = gradient_descent(params, X, y, gamma, lr=lr, steps=steps, target=target,
                                       lambda_min=True, log_every=log_every)
    except TrainingError as e:
        final, hist, failure = e.params, e.history, e.reason
        say(f"GD stopped: {e}")
    loss = hist["loss"]
    k = loss.size - 1
    rate_obs = linear_rate(loss, np.arange(loss.size)) if k > 0 else 0.0
    rate_cert = 2.0 * lr * float(hist["lambda_min"].min())
    pl = pl_ratios(hist)
    well_posed = failure is None and bool((hist["rho"] < 1.0).all())
    say(f"GD: loss {loss[0]:.4e} -> {loss[-1]:.4e} (ratio {loss[-1] / loss[0]:.1e}) in {k} steps; "
        f"well-posed at every step: {'yes' if well_posed else 'NO'} (max certified gamma ||A||_2 = "
        f"{hist['rho'].max():.4f}, {hist['norm_refreshes']} exact norm computations)")
    say(f"GD: linear rate per step: observed {rate_obs:.3e} (slope of log loss), certified "
        f"{rate_cert:.3e} (2 lr min_k lambda_min(Z_k Z_k^T), the PL rate); min lambda_min = "
        f"{hist['lambda_min'].min():.3e}")
    say(f"GD: PL inequality ||grad||^2 >= 2 lambda_min(Z Z^T) Phi at every step: "
        f"{'yes' if (pl >= 1.0).all() else 'NO'} (smallest ratio {pl.min():.3g})")

    t_end = 0.5 * max(k, 1) * lr if t_end is None else t_end
    dt = 0.5 * lr if dt is None else dt
    say(f"GF: explicit Euler, dt = {dt:.4g}, t_end = {t_end:.4g}")
    gf_failure = None
    try:
        _, gf = gradient_flow(params, X, y, gamma, t_end=t_end, dt=dt, lambda_min=True,
                              log_every=2 * log_every)
    except TrainingError as e:
        gf, gf_failure = e.history, e.reason
        say(f"GF stopped: {e}")
    bound = gronwall_bound(gf["loss"][0], gf["lambda_min"], gf["h"])
    worst = float(np.max(gf["loss"][1:] / bound[1:], initial=0.0))  # t > 0 (at 0 the ratio is 1)
    gf_holds = gf_failure is None and worst <= 1.0 + 1e-12  # 1e-12: rounding of the loss and exp
    t_reached = float(gf["h"] * (gf["loss"].size - 1))
    say(f"GF: loss(t = {t_reached:.4g}) / loss(0) = {gf['loss'][-1] / gf['loss'][0]:.2e}; Gronwall certificate "
        f"Phi(t) <= Phi(0) exp(-2 int_0^t lambda_min) at all {gf['loss'].size} times: "
        f"{'yes' if gf_holds else 'NO'} (max over t > 0 of Phi / bound = {worst:.3g})")

    seconds = time.perf_counter() - start
    summary = {
        "N": N, "d": d, "m": m, "gamma": gamma, "seed": seed, "lr": lr,
        "loss_initial": float(loss[0]), "loss_final": float(loss[-1]), "steps": int(k),
        "reached_target": bool(loss[-1] <= target * loss[0]), "rho_max": float(hist["rho"].max()),
        "rate_observed": rate_obs, "rate_certified": rate_cert,
        "lambda_min_min": float(hist["lambda_min"].min()), "pl_holds": bool((pl >= 1.0).all()),
        "well_posed_throughout": well_posed, "failure": failure,
        "gradcheck_max_error": check["max"], "gf_t_end": t_reached, "gf_dt": gf["h"], "gf_failure": gf_failure,
        "gf_loss_final": float(gf["loss"][-1]), "gf_certificate_holds": gf_holds,
        "gf_certificate_max_ratio": worst, "plot": None, "seconds": seconds,
    }
    speed = (f"observed rate {rate_obs / rate_cert:.1f}x the certified one" if rate_cert > 0 else
             "no certified rate (lambda_min = 0)")
    say(f"summary: {'reached' if summary['reached_target'] else 'did NOT reach'} {target:g} of the "
        f"initial loss in {k} GD steps, {'well-posed throughout' if well_posed else 'NOT well-posed'}, "
        f"{speed}, Gronwall certificate {'held' if gf_holds else 'FAILED'}"
        f"{'' if gf_failure is None else ' (gradient flow stopped: ' + gf_failure + ')'}; {seconds:.1f} s")
    if plot and _plot(plot, hist, gf, bound):
        summary["plot"] = str(plot)
        say(f"plot written to {plot}")
    return summary


def _plot(path, hist, gf, bound):
    """Plot log loss against GD step and GF time, and the certified rho; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # said before the run
        return False
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].semilogy(hist["loss"])
    ax[0].set(xlabel="GD step k", ylabel="loss", title="GD")
    ax[1].semilogy(gf["t"], gf["loss"], label="Euler GF")
    ax[1].semilogy(gf["t"], bound, "--", label="Phi(0) exp(-2 int lambda_min)")
    ax[1].set(xlabel="time t", title="gradient flow")
    ax[1].legend()
    ax[2].plot(hist["rho"])
    ax[2].axhline(1.0, color="k", lw=0.8)
    ax[2].set(xlabel="GD step k", ylabel="certified gamma ||A||_2", ylim=(0, 1.05), title="well-posedness")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as e:  # an unwritable path, an unknown image format
        print(f"--plot: cannot write {path}: {e}", file=sys.stderr)
        return False
    finally:
        plt.close(fig)
    return True


def _run(params, X, y, gamma, steps, target):
    """One sweep run: GD with lr = 1 / ||Z(0)||_2^2 until Phi <= target Phi(0).

    Returns a dict: lambda_min at init, observed rate (nan with fewer than two losses),
    steps to target (None if not reached), max certified rho, exact rho at the end,
    well_posed, loss ratio, forward sweeps per step; a run that cannot start (Z(0) = 0:
    the gradient is 0) or fails counts as not reached.
    """
    Z0, _ = equilibrium(params, X, gamma)
    final, fail, hist = params, None, None
    if not Z0.any():
        fail = "Z(0) = 0: every unit is off and the gradient is 0"
    else:
        try:
            final, hist = gradient_descent(params, X, y, gamma, lr=1.0 / np.linalg.norm(Z0, 2) ** 2,
                                           steps=steps, target=target)
        except TrainingError as e:
            final, hist, fail = e.params, e.history, e.reason
    loss = hist["loss"] if hist is not None else np.ones(1)
    return {"lambda_min": lambda_min(Z0),
            "rate": linear_rate(loss, np.arange(loss.size)) if loss.size > 1 else math.nan,
            "hit": loss.size - 1 if fail is None and loss[-1] <= target * loss[0] else None,
            "rho": float(hist["rho"].max()) if hist is not None else gamma * norm_bound(params.A),
            "rho_end": gamma * float(np.linalg.norm(final.A, 2)), "ok": "well-posed" not in (fail or ""),
            "ratio": float(loss[-1] / loss[0]),
            "sweeps": float(hist["forward_iters"].mean()) if hist is not None else math.nan}


def _mean(values):
    """Mean of the finite values (nan if none)."""
    finite = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(finite)) if finite else math.nan


def sweep(*, N=16, d=8, seeds=(0, 1, 2), ratios=(0.25, 0.5, 1, 2, 4, 8),
          fractions=(0.1, 0.3, 0.5, 0.7, 0.9, 0.97), steps=1500, target=1e-8, quiet=False):
    """The paper's two claims as tables, each row averaged over seeds.

    Width: m = ratio N; lambda_min(Z(0) Z(0)^T), whether the PL certificate exists
    (lambda_min > 0 for every seed), the observed linear rate per step with
    lr = 1 / ||Z(0)||_2^2, steps to Phi <= target Phi(0), max certified gamma ||A||_2.
    Scale: m = 2 N, gamma = fraction / ||A(0)||_2, GD until target; max certified
    gamma ||A(t)||_2 (the running upper bound) and the exact gamma ||A||_2 at the end
    (SVD), runs well-posed throughout, final loss / initial (geometric mean), forward
    sweeps per step.

    Parameters
    ----------
    N, d : int
    seeds : tuple of int
    ratios : tuple of float
        m / N of the width table.
    fractions : tuple of float
        gamma ||A(0)||_2 of the scale table.
    steps : int
        GD steps at most per run.
    target : float
    quiet : bool

    Returns
    -------
    dict
        N, d, seeds, steps, target, and the rows of "width" and "scale" (see format_sweep).
    """
    say = _say(quiet)
    width, scale = [], []
    say(f"width sweep: N = {N}, d = {d}, gamma = 0.25, seeds {list(seeds)}, up to {steps} GD steps")
    for ratio in ratios:
        m = max(1, round(ratio * N))
        runs = [_run(init_params(d, m, seed=seed), *make_data(N, d, seed=seed), 0.25, steps, target)
                for seed in seeds]
        hit = [r["hit"] for r in runs]
        width.append({"m_over_N": ratio, "m": m, "lambda_min_init": _mean(r["lambda_min"] for r in runs),
                      "pl_certificate": min(r["lambda_min"] for r in runs) > 0,
                      "rate_observed": _mean(r["rate"] for r in runs),
                      "steps_to_target": None if None in hit else float(np.mean(hit)),
                      "reached": sum(h is not None for h in hit), "rho_max": max(r["rho"] for r in runs)})
        say(f"  m/N = {ratio:g}: lambda_min(Z0 Z0^T) {width[-1]['lambda_min_init']:.2e}, "
            f"reached {width[-1]['reached']}/{len(seeds)}")
    say(f"gamma sweep: N = {N}, m = {2 * N}, d = {d}, gamma = fraction / ||A(0)||_2, up to {steps} GD steps")
    for frac in fractions:
        runs, gammas = [], []
        for seed in seeds:
            params = init_params(d, 2 * N, seed=seed)
            gammas.append(frac / norm_bound(params.A))
            runs.append(_run(params, *make_data(N, d, seed=seed), gammas[-1], steps, target))
        ok = sum(r["ok"] for r in runs)
        scale.append({"fraction": frac, "gamma": float(np.mean(gammas)),
                      "rho_max": max(r["rho"] for r in runs), "rho_end_exact": max(r["rho_end"] for r in runs),
                      "well_posed_runs": ok, "runs": len(runs),
                      "loss_ratio_final": math.exp(_mean(math.log(r["ratio"]) for r in runs)),
                      "forward_sweeps_per_step": _mean(r["sweeps"] for r in runs)})
        say(f"  gamma ||A(0)||_2 = {frac:g}: max certified rho {scale[-1]['rho_max']:.4f}, "
            f"well-posed in {ok}/{len(runs)} runs")
    return {"N": N, "d": d, "seeds": list(seeds), "steps": steps, "target": target,
            "width": width, "scale": scale}


def format_sweep(result):
    """The two tables of sweep() as text.

    Parameters
    ----------
    result : dict
        From sweep.

    Returns
    -------
    str
    """
    lines = [f"Width (N = {result['N']}, gamma = 0.25, lr = 1/||Z(0)||_2^2, mean over seeds "
             f"{result['seeds']}; target {result['target']:g} of the initial loss in "
             f"{result['steps']} steps):",
             "  m/N     m   lambda_min(Z0 Z0^T)  PL cert  rate/step  steps to target  max rho"]
    for r in result["width"]:
        hit = f"{r['steps_to_target']:.0f}" if r["steps_to_target"] is not None else \
            f"not reached ({r['reached']}/{len(result['seeds'])})"
        lines.append(f"  {r['m_over_N']:<5g} {r['m']:>5d}   {r['lambda_min_init']:>17.3e}  "
                     f"{'yes' if r['pl_certificate'] else 'no':>7}  {r['rate_observed']:>9.2e}  "
                     f"{hit:>15}  {r['rho_max']:.3f}")
    lines += ["", f"Scale (N = {result['N']}, m = {2 * result['N']}, gamma = fraction / ||A(0)||_2, "
              f"until {result['target']:g} of the initial loss or {result['steps']} steps):",
              "  gamma||A(0)||  gamma   max certified gamma||A(t)||  exact at end  well-posed  "
              "loss/loss0  sweeps/step"]
    for r in result["scale"]:
        lines.append(f"  {r['fraction']:<13g} {r['gamma']:.4f}  {r['rho_max']:>27.4f}  {r['rho_end_exact']:>12.4f}  "
                     f"{r['well_posed_runs']:>4d}/{r['runs']:<5d}  {r['loss_ratio_final']:>10.2e}  "
                     f"{r['forward_sweeps_per_step']:>11.1f}")
    return "\n".join(lines)


# ---- bench: the cost of one loss + gradient against the GEMM-bound limit ----


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _peak_bytes(fn):
    """Peak bytes allocated while fn runs, above those before (tracemalloc, which NumPy reports to)."""
    import tracemalloc
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def bench(*, N=1024, m=1024, d=64, repeats=5, seed=0, warm_steps=100, quiet=False):
    """Time loss_and_grad against the limit (K_f + K_b + 3) t_gemm; its scaling, memory, warm starts.

    K_f, K_b: the forward and adjoint work in full (N x m)(m x m) sweeps; the 3 are
    gamma G^T Z, G^T X (and X W^T), counted generously; t_gemm: the median time of one
    (N x m)(m x m) product, interleaved with the timed calls. gemm_ratio = time /
    ((K_f + K_b + 3) t_gemm). Warm starts: sweeps per GD step warm over cold (the same
    path), over warm_steps steps from initialisation at (N/4, m/2) (warm_cold_ratio), over
    the first 20 of them (warm_cold_ratio_first_20: the hard phase, where v and the
    residual move fast), and over the demo's problem trained to 1e-10; warm_cold_time_ratio
    is the wall time of the warm_steps run over the cold one (one run each: noisy).

    Parameters
    ----------
    N, m, d : int
        Default 1024, 1024, 64.
    repeats : int
        Timed calls; medians are reported.
    seed : int
    warm_steps : int
        Default 100.
    quiet : bool

    Returns
    -------
    dict
        k_forward, k_adjoint, seconds, t_gemm, gemm_ratio, peak_extra_bytes,
        warm_cold_ratio and the other numbers printed.
    """
    say = _say(quiet)
    gamma = 0.25
    X, y = make_data(N, d, seed=seed)
    params = init_params(d, m, seed=seed)
    say(f"bench: N = {N}, m = {m}, d = {d}, gamma = {gamma}, tol = 1e-12, median of {repeats}")
    Z = np.random.default_rng(seed).standard_normal((N, m))  # (N, m)
    out = np.empty((N, m))  # (N, m)
    _, _, info = loss_and_grad(params, X, y, gamma, return_info=True)  # also warms up BLAS
    k_f, k_b = info["forward"]["work"], info["adjoint"]["work"]
    t_gemm, t_norm, t = [], [], []
    for _ in range(repeats):  # interleaved, so that all three see the same machine load
        t_gemm.append(_median_time(lambda: np.matmul(Z, params.A.T, out=out), 3))
        t_norm.append(_median_time(lambda: norm_bound(params.A), 1))
        t.append(_median_time(lambda: loss_and_grad(params, X, y, gamma), 1))
    t_gemm, t_norm, t = (float(np.median(ts)) for ts in (t_gemm, t_norm, t))
    say(f"  one (N x m)(m x m) product: {t_gemm * 1e3:.2f} ms; norm_bound(A): {t_norm * 1e3:.1f} ms")
    ratio = t / ((k_f + k_b + 3) * t_gemm)
    norm_share = t_norm / ((k_f + k_b + 3) * t_gemm)  # the certificate's eigensolve, in the same units
    say(f"  loss_and_grad: {t * 1e3:.1f} ms, K_f = {k_f:.2f}, K_b = {k_b:.2f} sweeps "
        f"({info['forward']['iterations']} and {info['adjoint']['iterations']} iterations); "
        f"time / ((K_f + K_b + 3) t_gemm) = {ratio:.3f}, of which norm_bound(A) {norm_share:.3f}")

    def per_call(n, mm):
        Xs, ys = make_data(n, d, seed=seed)
        ps = init_params(d, mm, seed=seed)
        return _median_time(lambda: loss_and_grad(ps, Xs, ys, gamma), max(1, repeats // 2))

    sizes = sorted({max(1, N // 4), max(1, N // 2), N})
    t_N = [per_call(n, m) for n in sizes]
    exp_N = float(np.polyfit(np.log(sizes), np.log(t_N), 1)[0]) if len(sizes) > 1 else math.nan
    say(f"  time against N (m = {m}): " + ", ".join(f"{n}: {s * 1e3:.0f} ms" for n, s in zip(sizes, t_N))
        + f"; exponent {exp_N:.2f}")
    widths = sorted({max(1, m // 4), max(1, m // 2), m})
    t_m = [per_call(N, mm) for mm in widths]
    exp_m = float(np.polyfit(np.log(widths), np.log(t_m), 1)[0]) if len(widths) > 1 else math.nan
    say(f"  time against m (N = {N}): " + ", ".join(f"{w}: {s * 1e3:.0f} ms" for w, s in zip(widths, t_m))
        + f"; exponent {exp_m:.2f}")

    words = N * m + m * m
    peak = _peak_bytes(lambda: loss_and_grad(params, X, y, gamma))
    peak_loose = _peak_bytes(lambda: loss_and_grad(params, X, y, gamma, tol=1e-4))
    _, _, loose = loss_and_grad(params, X, y, gamma, tol=1e-4, return_info=True)
    say(f"  peak extra memory: {peak / 8 / words:.2f} (N m + m^2) float64 words at tol 1e-12 "
        f"({info['forward']['iterations'] + info['adjoint']['iterations']} iterations), "
        f"{peak_loose / 8 / words:.2f} at tol 1e-4 ({loose['forward']['iterations'] + loose['adjoint']['iterations']})")

    def warm_over_cold(n, mm, dd, steps, target):
        """Mean sweeps (forward + adjoint) per GD step after the first, warm / cold start:
        over all the steps, and over the first 20."""
        Xw, yw = make_data(n, dd, seed=seed)
        pw = init_params(dd, mm, seed=seed)
        Zw, _ = equilibrium(pw, Xw, gamma)
        if not Zw.any():
            say(f"  warm start at N = {n}, m = {mm}: skipped, Z(0) = 0 (every unit off)")
            return math.nan, math.nan, math.nan
        lr = 1.0 / np.linalg.norm(Zw, 2) ** 2
        sweeps, seconds = [], []  # per step after the first, and the run's time: warm, then cold
        for warm in (True, False):
            start = time.perf_counter()
            _, h = gradient_descent(pw, Xw, yw, gamma, lr=lr, steps=steps, target=target, warm_start=warm)
            seconds.append(time.perf_counter() - start)
            sweeps.append(h["forward_iters"][1:] + h["adjoint_iters"][1:])
        w, c = sweeps
        k = min(20, w.size)
        say(f"  warm start, GD at N = {n}, m = {mm}, d = {dd}, lr = 1/||Z(0)||_2^2, {w.size} steps: "
            f"{w.mean():.2f} sweeps per step warm, {c.mean():.2f} cold, ratio {w.mean() / c.mean():.3f} "
            f"(first {k} steps: {w[:k].mean() / c[:k].mean():.3f}); time {seconds[0]:.1f} s warm, "
            f"{seconds[1]:.1f} s cold")
        return float(w.mean() / c.mean()), float(w[:k].mean() / c[:k].mean()), seconds[0] / seconds[1]

    short, first, short_time = warm_over_cold(max(1, N // 4), max(1, m // 2), d, warm_steps, None)
    whole, _, _ = warm_over_cold(32, 64, 16, 3000, 1e-10)  # the demo's problem, trained to 1e-10
    return {"N": N, "m": m, "d": d, "repeats": repeats, "k_forward": k_f, "k_adjoint": k_b,
            "iterations_forward": info["forward"]["iterations"],
            "iterations_adjoint": info["adjoint"]["iterations"], "seconds": t, "t_gemm": t_gemm,
            "t_norm_bound": t_norm, "gemm_ratio": ratio,
            "gemm_ratio_norm_bound": norm_share, "exponent_N": exp_N, "exponent_m": exp_m,
            "peak_extra_bytes": int(peak), "peak_extra_words_per_Nm_m2": peak / 8 / words,
            "peak_extra_bytes_tol_1e-4": int(peak_loose), "warm_cold_ratio": short,
            "warm_cold_ratio_first_20": first, "warm_cold_time_ratio": short_time,
            "warm_cold_ratio_demo_to_convergence": whole}


# ---- golden vectors: export for other implementations, verify theirs ----
#
# Key scheme of the .npz (all float64 except the int64 counts; no object arrays):
#   meta/version (=1), meta/cases (=C)
#   case{c}/A (m, m), W (m, d), v (m,), X (N, d), y (N,), gamma ()               inputs
#   case{c}/tol ()  the tolerance the writer solved to (verify always solves at 1e-13)
#   case{c}/Z (N, m), yhat (N,), loss (), dA (m, m), dW (m, d), dv (m,)         outputs at theta
#   case{c}/train (3,)  1.0 where A, W, v (in that order) are trained by the GD steps
#   case{c}/lr (), case{c}/steps ()                                               GD settings
#   case{c}/gd_A, gd_W, gd_v (theta after `steps` GD steps), gd_loss (steps + 1,)
# Gradients are always the full dPhi/dA, dPhi/dW, dPhi/dv; train freezes only in GD.

GOLDEN_VERSION = 1
GOLDEN_INPUTS = ("A", "W", "v", "X", "y", "gamma", "tol", "train", "lr", "steps")
GOLDEN_OUTPUTS = ("Z", "yhat", "loss", "dA", "dW", "dv", "gd_A", "gd_W", "gd_v", "gd_loss")
GOLDEN_SCALARS = ("gamma", "tol", "lr", "steps", "loss")
REFERENCE_TOL = 1e-13  # the tolerance export and verify solve at


def _golden_case(A, W, v, X, y, gamma, train, lr, steps, tol=REFERENCE_TOL):
    """One golden case: the inputs, and every output recomputed from them (the API checks them)."""
    params = Params(A, W, v)
    loss, grads, info = loss_and_grad(params, X, y, gamma, tol=tol, return_info=True)
    final, hist = gradient_descent(params, X, y, gamma, lr=lr, steps=steps, train=train, tol=tol)
    return {
        "A": A, "W": W, "v": v, "X": X, "y": y, "gamma": np.float64(gamma), "tol": np.float64(tol),
        "train": np.array([float(p in train) for p in PARAM_NAMES]), "lr": np.float64(lr),
        "steps": np.int64(steps), "Z": info["Z"], "yhat": info["Z"] @ v, "loss": np.float64(loss),
        "dA": grads.A, "dW": grads.W, "dv": grads.v, "gd_A": final.A, "gd_W": final.W,
        "gd_v": final.v, "gd_loss": hist["loss"],
    }


def _golden_cases(seed=0):
    """The exported cases: tiny, small gamma, near the well-posedness edge, m < N, a frozen A, medium."""
    specs = [  # (N, d, m, gamma (None: 0.95 / ||A||_2), train, lr, steps)
        (3, 2, 4, 0.25, PARAM_NAMES, 0.05, 3),
        (8, 3, 16, 0.01, PARAM_NAMES, 0.02, 3),
        (8, 4, 12, None, PARAM_NAMES, 0.01, 3),
        (20, 5, 8, 0.25, PARAM_NAMES, 0.01, 3),
        (10, 4, 24, 0.25, ("W", "v"), 0.02, 5),
        (64, 16, 128, 0.25, PARAM_NAMES, 0.002, 3),
    ]
    cases = []
    for c, (N, d, m, gamma, train, lr, steps) in enumerate(specs):
        X, y = make_data(N, d, seed=seed + c)
        A, W, v = init_params(d, m, seed=seed + c)
        gamma = 0.95 / norm_bound(A) if gamma is None else gamma
        cases.append(_golden_case(A, W, v, X, y, gamma, train, lr, steps))
    return cases


def export_golden(path, seed=0):
    """Write the golden test vectors (key scheme above) to path.

    Six cases: tiny, gamma = 0.01, gamma ||A||_2 = 0.95, m < N, A frozen, medium; each
    solved at REFERENCE_TOL = 1e-13.

    Parameters
    ----------
    path : str or path-like
        The .npz file to write.
    seed : int

    Returns
    -------
    int
        The number of cases.
    """
    cases = _golden_cases(seed)
    arrays = {"meta/version": np.int64(GOLDEN_VERSION), "meta/cases": np.int64(len(cases))}
    for c, case in enumerate(cases):
        arrays.update({f"case{c}/{key}": np.asarray(val) for key, val in case.items()})
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return len(cases)


def _relative_error(ours, theirs):
    """max |ours - theirs| / max |ours| (the max-norm relative error; absolute if ours is all 0)."""
    scale = float(np.abs(ours).max()) if ours.size else 0.0
    err = float(np.abs(ours - theirs).max()) if ours.size else 0.0
    err = err / scale if scale > 0 else err
    return err if math.isfinite(err) else math.inf  # nan or inf in theirs: infinitely wrong


def verify_golden(path, rtol=1e-8):
    """Recompute every output of a golden file from its inputs and compare.

        error = max |ours - theirs| / max |ours|      per case and quantity

    Never unpickles.

    Parameters
    ----------
    path : str or path-like
        An .npz file in the key scheme above, ours or another implementation's.
    rtol : float > 0
        Pass when error <= rtol; default 1e-8 (float64), 1e-5 for float32 (a float32
        implementation in the tests reaches 2e-7).

    Returns
    -------
    rows : list of (case, quantity, error, passed)
    problems : list of str
        What could not be checked, each named: an unreadable file, a wrong version or
        case count, a missing key, a wrong shape or dtype, an object array, inputs the
        API refuses. The file passes when problems is empty, rows is not, and every
        error <= rtol.
    """
    rtol = _positive("rtol", rtol)
    rows, problems = [], []
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a text file lands here too
        return rows, [f"{path}: is not a readable .npz archive ({type(e).__name__}: {e})"]
    if not isinstance(data, np.lib.npyio.NpzFile):
        return rows, [f"{path}: holds a single array (.npy), not an .npz archive of named arrays"]
    with data:
        def get(key, shape=None):
            if key not in data.files:
                problems.append(f"missing key {key}")
                return None
            try:
                a = data[key]
            except (ValueError, OSError, EOFError, MemoryError, zipfile.BadZipFile, zlib.error) as e:
                problems.append(f"{key}: cannot be read ({e})")  # object arrays land here
                return None
            if a.dtype.kind not in "biuf":
                problems.append(f"{key}: dtype {a.dtype} is not a real number type")
            elif shape is not None and a.shape != shape:
                problems.append(f"{key}: shape {a.shape}, expected {shape}")
            else:
                return a
            return None

        version, count = get("meta/version", ()), get("meta/cases", ())
        if version is None or count is None:
            return rows, problems
        if version.dtype.kind not in "iu" or version != GOLDEN_VERSION:
            return rows, problems + [f"meta/version is {version.item()!r}; this verify reads the "
                                     f"integer {GOLDEN_VERSION}"]
        present = sorted({key.split("/")[0] for key in data.files if key.startswith("case")})
        if (count.dtype.kind not in "iu" or not 1 <= count <= len(present)
                or present != sorted(f"case{c}" for c in range(int(count)))):
            return rows, problems + [f"meta/cases = {count.item()!r} does not match the cases in the "
                                     f"file {present}"]
        for c in range(int(count)):
            case = {key: get(f"case{c}/{key}", () if key in GOLDEN_SCALARS else None)
                    for key in GOLDEN_INPUTS + GOLDEN_OUTPUTS}
            if any(val is None for val in case.values()):
                continue
            if case["train"].shape != (3,) or not np.isin(case["train"], (0, 1)).all():
                problems.append(f"case{c}/train: must be 3 entries of 0 or 1, got {case['train']!r}")
                continue
            if not (1 <= case["steps"] <= 1000 and case["steps"] == int(case["steps"])):
                problems.append(f"case{c}/steps: must be an integer from 1 to 1000, got {case['steps']}")
                continue
            if not (0 < case["tol"] < 1):
                problems.append(f"case{c}/tol: must be in (0, 1), got {case['tol']}")
                continue
            train = tuple(p for p, t in zip(PARAM_NAMES, case["train"]) if t)
            try:
                ours = _golden_case(case["A"], case["W"], case["v"], case["X"], case["y"],
                                    float(case["gamma"]), train, float(case["lr"]), int(case["steps"]))
            except (TypeError, ValueError, ArithmeticError, RuntimeError) as e:
                problems.append(f"case{c}: inputs refused: {e}")
                continue
            for key in GOLDEN_OUTPUTS:
                theirs = case[key]
                if theirs.shape != np.shape(ours[key]):
                    problems.append(f"case{c}/{key}: shape {theirs.shape}, expected {np.shape(ours[key])}")
                    continue
                err = _relative_error(np.asarray(ours[key]), theirs.astype(np.float64))
                rows.append((f"case{c}", key, err, err <= rtol))
    return rows, problems


# ---- command line ----


def _cli_number(kind, low=0):
    """An argparse type: an int or a finite float > low (>= 0 for low=None, a seed)."""
    what = "an integer" if kind is int else "a number"

    def parse(text):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if not math.isfinite(x) or (x < 0 if low is None else x <= low):
            need = ">= 0" if low is None else "> 0" if kind is int else "positive and finite"
            raise argparse.ArgumentTypeError(f"must be {what} {need}, got {text!r}"
                                             if kind is int else f"must be {need}, got {text!r}")
        return x
    return parse


def _parser():
    pos_int, pos_float = _cli_number(int), _cli_number(float)
    p = argparse.ArgumentParser(
        description="Gradient descent on an infinite-depth ReLU implicit network (Gao & Gao, "
                    "arXiv:2205.07463): reference implementation and correctness oracle.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, help, seed=True):
        s = sub.add_parser(name, help=help, description=help)
        if seed:
            s.add_argument("--seed", type=_cli_number(int, low=None), default=0,
                           help="random seed, an integer >= 0 (default 0)")
        s.add_argument("--json", action="store_true",
                       help="print a JSON summary as the last line (an 'error' key if it fails; "
                            "null for a non-finite number)")
        return s

    s = add("demo", "train a linear-width network by GD and gradient flow, certify, summarise")
    s.add_argument("--n", type=pos_int, default=32, help="samples N (default 32)")
    s.add_argument("--d", type=pos_int, default=16, help="input dimension d (default 16)")
    s.add_argument("--m", type=pos_int, default=None, help="width m (default 2 N)")
    s.add_argument("--gamma", type=pos_float, default=0.25, help="scale gamma (default 0.25)")
    s.add_argument("--lr", type=pos_float, default=None, help="GD step (default 1 / ||Z(0)||_2^2)")
    s.add_argument("--steps", type=pos_int, default=3000, help="at most this many GD steps (default 3000)")
    s.add_argument("--plot", metavar="PATH", help="write a PNG of the run (needs matplotlib; exit 1 "
                                                  "if it cannot be written)")
    s = add("sweep", "width and gamma sweeps: the paper's two claims as tables")
    s.add_argument("--n", type=pos_int, default=16, help="samples N (default 16)")
    s.add_argument("--d", type=pos_int, default=8, help="input dimension d (default 8)")
    s.add_argument("--seeds", type=pos_int, default=3, help="seeds per row, seed .. seed + seeds - 1 (default 3)")
    s.add_argument("--steps", type=pos_int, default=1500, help="GD steps per run at most (default 1500)")
    s = add("bench", "cost of one loss + gradient against the GEMM-bound limit")
    s.add_argument("--n", type=pos_int, default=1024, help="samples N (default 1024)")
    s.add_argument("--m", type=pos_int, default=1024, help="width m (default 1024)")
    s.add_argument("--d", type=pos_int, default=64, help="input dimension d (default 64)")
    s.add_argument("--repeats", type=pos_int, default=5, help="timed runs, median reported (default 5)")
    s = add("export", "write golden test vectors (.npz) for other implementations")
    s.add_argument("path", help="output .npz file")
    s = add("verify", "recompute a golden .npz file's outputs from its inputs and compare", seed=False)
    s.add_argument("path", help="a .npz file in the export key scheme")
    s.add_argument("--rtol", type=pos_float, default=1e-8,
                   help="pass when max|ours - theirs| / max|ours| <= rtol (default 1e-8, for float64; "
                        "use 1e-5 for float32)")
    return p


def _finite(x):
    """x with every non-finite float replaced by None, so that the JSON is standard."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(argv=None):
    """The command line: ``python implicit_gd.py {demo,sweep,bench,export,verify} ...``.

    Parameters
    ----------
    argv : list of str, optional
        Default sys.argv[1:].

    Returns
    -------
    int
        Exit status: 0 success, 1 a failed check (demo target or certificate, verify),
        2 bad arguments or input.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        if e.code and "--json" in argv:
            print(json.dumps({"error": "invalid arguments (see the message above)"}))
        raise
    status = 0
    try:
        if args.command == "demo":
            out = demo(N=args.n, d=args.d, m=args.m, gamma=args.gamma, lr=args.lr, steps=args.steps,
                       seed=args.seed, plot=args.plot)
            ok = out["reached_target"] and out["well_posed_throughout"] and out["gf_certificate_holds"]
            status = 0 if ok and (out["plot"] is not None or not args.plot) else 1
        elif args.command == "sweep":
            start = time.perf_counter()
            out = sweep(N=args.n, d=args.d, seeds=tuple(range(args.seed, args.seed + args.seeds)),
                        steps=args.steps)
            out["seconds"] = time.perf_counter() - start
            print(format_sweep(out))
        elif args.command == "bench":
            out = bench(N=args.n, m=args.m, d=args.d, repeats=args.repeats, seed=args.seed)
        elif args.command == "export":
            out = {"path": args.path, "cases": export_golden(args.path, seed=args.seed)}
            print(f"wrote {out['cases']} cases to {args.path}")
        else:
            rows, problems = verify_golden(args.path, rtol=args.rtol)
            print(f"{'case':<7} {'quantity':<9} {'max rel error':>13}  result (rtol {args.rtol:g})")
            for case, key, err, passed in rows:
                print(f"{case:<7} {key:<9} {err:>13.2e}  {'pass' if passed else 'FAIL'}")
            for problem in problems:
                print(f"problem: {problem}")
            failed = [f"{case}/{key}" for case, key, _, passed in rows if not passed]
            status = 1 if failed or problems or not rows else 0
            print("verify: " + ("passed" if status == 0 else
                                f"FAILED (quantities failed: {len(failed)}, problems: {len(problems)})"))
            out = {"path": args.path, "rtol": args.rtol, "passed": status == 0, "failed": failed,
                   "problems": problems, "checked": len(rows),
                   "max_error": max((r[2] for r in rows), default=None)}
    except (TypeError, ValueError, ArithmeticError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(e)}))
        return 2
    if args.json:
        print(json.dumps(_finite(out)))
    return status


if __name__ == "__main__":
    sys.exit(main())
