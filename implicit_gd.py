"""implicit_gd: gradient descent on an infinite-depth ReLU implicit network, in NumPy.

Reference implementation and correctness oracle of T. Gao and H. Gao, "Gradient Descent
Optimizes Infinite-Depth ReLU Implicit Networks with Linear Widths", arXiv:2205.07463 (2022).
    python implicit_gd.py demo      # train, certify, summarise: about a second
    python -m pytest -q             # the test suite
Legend: N samples, d inputs, m width.
    X (N, d) inputs, one sample per row      y (N,)   targets
    A (m, m) implicit weight                 W (m, d) input-injection weight
    v (m,)   output weight                   gamma > 0, a fixed scale (not trained)
    Z (N, m) equilibrium features            H (N, m) pre-activations
    r (N,)   residual Z v - y                U (N, m) adjoint, row i = d yhat_i / d(W x_i)
    G (N, m) G = diag(r) U, the loss's adjoint
The model, theta = (A, W, v) (papers' (gamma / sqrt(m)) A' is gamma -> gamma / sqrt(m) here):
    H = gamma Z A^T + X W^T,   Z = relu(H),   yhat = Z v,   Phi = 0.5 ||yhat - y||^2
Conventions, for the whole file:
- ReLU'(h) = 1[h > 0], zero at the kink, everywhere: the mask is D = 1[H > 0].
- A solve certifies, with rho >= gamma ||A||_2 (< 1: well-posed): S is within error_bound <=
  tol ||S||_F of the exact S* (Frobenius; tol is relative). info: iterations (sweeps), delta
  (the last ||S_k - S_(k-1)||_F), error_bound, certified, rho, tol, and mask_certified.
- Bad input raises TypeError or ValueError naming the argument, before any work. Also
  NotWellPosedError (a ValueError): gamma ||A||_2 >= 1; NotConvergedError (a RuntimeError):
  a solve cannot certify tol; TrainingError (a RuntimeError): training stopped early;
  FloatingPointError: a computed quantity leaves the range below.
- Float64 at sane magnitudes: the largest |entry| of each input (X, y, A, W, v, Z0, U0; gamma,
  lr, t_end, dt) is in [2^-200, 2^200], or the array is 0, else ValueError naming it; X W^T, Z,
  r, U, G, dX and the gradients are checked once computed, else FloatingPointError. Why: sizes
  are below 2^40 and 1 / (1 - rho) <= 2^53, so the sums of products of in-range factors, the
  iterates (||z_i|| <= ||relu(b_i)|| / (1 - rho) < 2^273) and the squares in norms stay below
  2^1024; and a largest entry >= 2^-200 keeps norms and products (>= 2^-600) normal: only entries
  far below the largest underflow, each product by at most 2^-1074, which the certificates add.
- Rounding: a solve's stop rule uses a model of a sweep's (_fixed_point; README). What decides,
  mask_certified and the gradient's bound, rests on worst-case bounds only: |fl(a . b) - a . b|
  <= g(n) |a| . |b| + n 2^-1074 for n terms, g(n) = n u / (1 - n u), u = eps / 2.
- Inputs are never modified; randomness comes only from seeds.
Map: model and equilibrium, implicit gradient, GD and flow, diagnostics, "end of the copyable
core" (above it runs alone), cross-checks and data, demo and sweep, bench, golden, CLI."""

import math
import numbers
from typing import NamedTuple

import numpy as np

__version__ = "0.3.0"
EPS = float(np.finfo(np.float64).eps)
TINY = 2.0**-1074  # the smallest subnormal: what one product can lose to underflow
LOW, HIGH = 2.0**-200, 2.0**200  # the range of the largest |entry| (module docstring)
PARAM_NAMES = ("A", "W", "v")
A_VARIANCE, W_VARIANCE, V_VARIANCE = 1.0, 2.0, 1.0  # A_ij ~ N(0, 1/m), W_ij ~ N(0, 2/d), v ~ 1/m

class NotWellPosedError(ValueError):
    """gamma ||A||_2 >= 1: the equilibrium is not certified to exist or to be unique."""

class NotConvergedError(RuntimeError):
    """A solve did not certify tol: iterations; error_bound, reached; attainable_tol, the smallest
    tol float64 certifies here when rounding stopped it (None when max_iter ran out first)."""
    def __init__(self, message, **attributes):  # iterations, error_bound, attainable_tol
        super().__init__(message)
        self.__dict__.update({"attainable_tol": None, **attributes})

class TrainingError(RuntimeError):
    """Training stopped at `step` for `reason`: "ill-posed", "diverged", "solver floor" or "not
    converged". params: the last good ones (their loss is history["loss"][-1]); history: the
    steps before `step`; rho: the certified gamma ||A||_2 at `step`."""
    def __init__(self, message, **attributes):  # step, reason, params, history, rho
        super().__init__(message)
        self.__dict__.update(attributes)

class Params(NamedTuple):
    """theta = (A, W, v); also the container of their gradients."""
    A: np.ndarray  # (m, m)
    W: np.ndarray  # (m, d)
    v: np.ndarray  # (m,)

# ---- input checks, each naming the argument, and the range ----

def _in_range(name, a, error=ValueError):
    """a, if its largest |entry| is in [2^-200, 2^200] or a = 0; else `error`, naming it."""
    top = max(float(np.max(a)), -float(np.min(a)))  # max |a_ij|, without a copy of a
    if top != 0.0 and not LOW <= top <= HIGH:
        raise error(f"{name} is out of range: its largest |entry| is {top:.3g}, outside "
                    f"[2^-200, 2^200] = [{LOW:.3g}, {HIGH:.3g}]; rescale it")
    return a

def _array(name, x, shape, ranged=True):
    """x as a finite float64 array of that shape (None: any length on that axis), in range."""
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim != len(shape) or 0 in a.shape or any(n not in (None, k) for n, k in zip(shape,
                                                                                     a.shape)):
        want = ", ".join("n" if n is None else str(n) for n in shape) + "," * (len(shape) == 1)
        raise ValueError(f"{name} must be a non-empty array of shape ({want}), got {a.shape}")
    a = a.astype(np.float64, copy=False)  # never written to
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite entries (nan or inf)")
    return _in_range(name, a) if ranged else a

def _number(name, x, integer=False, zero=False, ranged=False):
    """x > 0 (>= 0 with zero) as a float or int: a Python or NumPy number, or a 0-d array."""
    v = np.asarray(x).item() if np.ndim(x) == 0 else None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral if integer else numbers.Real):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a real number'}, got {x!r}")
    if isinstance(v, numbers.Integral) and abs(v) > 2**1000:
        raise ValueError(f"{name} is an integer of {len(str(abs(v)))} digits, beyond float64")
    if not (math.isfinite(v) and (v >= 0 if zero else v > 0)):
        raise ValueError(f"{name} must be {'>= 0' if zero else 'positive'} and finite, got {x!r}")
    if ranged:
        _in_range(name, float(v))
    return int(v) if integer else float(v)

def _check_params(params):
    if not (isinstance(params, tuple) and len(params) == 3):
        raise TypeError(f"params must be Params(A, W, v), got {type(params).__name__}")
    m = np.shape(params[0])[0] if np.ndim(params[0]) else 0
    A = _array("params.A", params[0], (m, m))
    return Params(A, _array("params.W", params[1], (m, None)), _array("params.v", params[2], (m,)))

def _check_train(train, name="train"):
    names = (train,) if isinstance(train, str) else train
    if not (isinstance(names, (tuple, list)) and 0 < len(set(names)) == len(names) <= 3
            and set(names) <= set(PARAM_NAMES)):
        raise ValueError(f"{name} must be a non-empty subset of {PARAM_NAMES}, got {train!r}")
    return tuple(p for p in PARAM_NAMES if p in names)

def _g(n):
    """g(n) = n u / (1 - n u), u = eps / 2: the worst-case relative rounding of n terms."""
    return n * EPS / 2 / (1 - n * EPS / 2)

def _norm_up(a, rows=False):
    """An upper bound of ||a||_F (rows: of max_i ||a_i||): a sum of n squares is off by g(n)
    times itself and n 2^-1074 of underflow, and the root by an ulp."""
    n, sq = (a.shape[1], np.einsum("ij,ij->i", a, a).max()) if rows else (a.size, np.vdot(a, a))
    return math.sqrt(float(sq)) * (1 + _g(n + 2)) + math.sqrt(n * TINY)

# ---- the model and its certified equilibrium ----

def init_params(d, m, *, seed=0):
    """A_ij ~ N(0, 1/m), W_ij ~ N(0, 2/d), v_i ~ N(0, 1/m) (the VARIANCE constants): ||A||_2 ~ 2,
    so the default gamma = 0.25 gives gamma ||A||_2 ~ 0.5."""
    d, m = _number("d", d, integer=True), _number("m", m, integer=True)
    rng = np.random.default_rng(None if seed is None else _number("seed", seed, True, zero=True))
    A = rng.normal(0.0, math.sqrt(A_VARIANCE / m), (m, m))  # (m, m)
    W = rng.normal(0.0, math.sqrt(W_VARIANCE / d), (m, d))  # (m, d)
    v = rng.normal(0.0, math.sqrt(V_VARIANCE / m), m)  # (m,)
    return Params(A, W, v)

def norm_bound(A):
    """A certified upper bound of ||A||_2: sqrt(lambda_max(A^T A)) (1 + 2 m^2 eps). The factor
    covers forming A^T A (at most m eps ||A||_F^2 <= m^2 eps ||A||_2^2) and the eigensolver's
    backward error; squaring does not hurt the largest singular value, nor, in range, overflow."""
    A = _array("A", A, (None, None))  # (m, m)
    lam = np.linalg.eigvalsh(A.T @ A)[-1]  # one buffer twice: matmul uses syrk, half the work
    return math.sqrt(max(lam, 0.0)) * (1.0 + 2.0 * len(A) ** 2 * EPS)

def _rho(A, gamma, allow_ill_posed=False):
    """The certified rho >= gamma ||A||_2; NotWellPosedError if it is not below 1."""
    rho = gamma * norm_bound(A)
    if rho >= 1.0 and not allow_ill_posed:
        raise NotWellPosedError(f"not well-posed: gamma * ||A||_2 = {rho:.6g} >= 1 (gamma = "
                                f"{gamma:.6g}); lower gamma")
    return rho

def _fixed_point(f, S, rho, tol, max_iter, what, beta=0.0):
    """Certified Picard iteration S_k = f(S_(k-1)), for a map whose rows are rho-contractions:
        delta_k = ||S_k - S_(k-1)||,   e_k = (rho delta_k + nu ||S_k|| + beta) / (1 - rho)
    bounds the error (||S_k - S*|| <= rho ||S_(k-1) - S*|| + nu ||S_k|| + beta, and ||S_(k-1) -
    S*|| <= delta_k + ||S_k - S*||); stop at the first e_k <= tol ||S_k||. beta: the rounding
    of the map's data; nu ||S_k||: a sweep's, nu = eps (1 + sqrt(m) rho), a model (README) that
    steers the stop (_last_sweep bounds the last sweep for what decides). After 10 + 2 / (1 -
    rho) sweeps without a new low of delta, rounding has taken over (the floor): stop, naming
    the smallest tol certified on the way. f(S, out) writes f(S) into out; S is overwritten.
    Returns S_k, D = S_(k-1) - S_k and info. rho >= 1: uncertified."""
    nu = EPS * (1.0 + math.sqrt(S.shape[1]) * rho)
    patience = 10 + 2 / (1 - rho) if rho < 1 else max_iter
    new = np.empty_like(S)
    low, low_sweep, best = math.inf, 0, math.inf  # the smallest delta, its sweep, min e_k/||S_k||
    for sweep in range(1, max_iter + 1):
        f(S, new)
        S -= new  # S_(k-1) - S_k, in the buffer S_(k-1) no longer needs
        delta, size = math.sqrt(np.vdot(S, S)), math.sqrt(np.vdot(new, new))
        S, new = new, S
        bound = (rho * delta + nu * size + beta) / (1 - rho) if rho < 1 else math.inf
        if (bound if rho < 1 else delta) <= tol * size:
            return S, new, {"iterations": sweep, "delta": delta, "error_bound": bound,
                            "rho": rho, "certified": rho < 1, "tol": tol}
        if not math.isfinite(delta + size):
            raise NotConvergedError(f"{what}: the iterates overflowed at sweep {sweep} (rho = "
                                    f"{rho:.6g} >= 1)", iterations=sweep, error_bound=math.inf)
        best = min(best, bound / size) if size > 0 else best
        low, low_sweep = (delta, sweep) if delta < low else (low, low_sweep)
        if sweep - low_sweep > patience:
            break
    floor = sweep - low_sweep > patience  # rounding, not max_iter, stopped it
    attainable = float(f"{1.06 * best:.2g}") if floor else None  # rounded up: this tol certifies
    raise NotConvergedError(f"{what}: tol = {tol:.3g} not certified (rho = {rho:.6g}, certified "
                            f"error {best:.3g} of the norm): " + (
        f"the change per sweep stopped shrinking at sweep {low_sweep}: tol is below what "
        f"float64 can certify here, and the smallest tol it can certify is {attainable}"
        if floor else f"max_iter = {max_iter} sweeps ran out while the change still shrinks"),
        iterations=sweep, error_bound=bound, attainable_tol=attainable)

def _equilibrium(A, W, X, gamma, rho, tol, max_iter, Z0=None):
    """(Z, H, D, info) on checked inputs: the certified Z, the last sweep's H (for the mask) and
    D = Z_(k-1) - Z_k (for the worst-case bound)."""
    B = _in_range("X W^T", X @ W.T, FloatingPointError)  # (N, m)
    gAT = gamma * A.T  # (m, m)
    H = np.empty_like(B)  # (N, m) the pre-activation of the last sweep
    def picard(Z, out):
        np.maximum(np.add(np.matmul(Z, gAT, out=H), B, out=H), 0.0, out=out)  # relu(gZA^T + B)
    # B's rounding, made once, modelled as a sweep's: sqrt(d) eps || |X| |W|^T || (the worst
    # case for d <= 4). Where X W^T <= 0 in the worst case, Z* = 0 exactly.
    beta = math.sqrt(X.shape[1]) * EPS * float(np.linalg.norm(np.abs(X) @ np.abs(W).T))
    if B.max() + _B_error(X, W) <= 0:
        beta = 0.0
    if Z0 is None:
        Z = np.maximum(B, 0.0)  # (N, m)
    else:  # the box 0 <= z_ij <= ||relu(b_i)|| / (1 - rho) holds z_i*: projecting cannot hurt
        cap = np.linalg.norm(np.maximum(B, 0.0), axis=1, keepdims=True) / (1 - rho)
        Z = np.clip(Z0, 0.0, cap)  # (N, m)
    Z, D, info = _fixed_point(picard, Z, rho, tol, max_iter, "equilibrium", beta)
    return _in_range("Z", Z, FloatingPointError), H, D, info

def _B_error(X, W):
    """|fl(X W^T) - X W^T| <= g(d) max ||x_i|| max ||w_j|| + d 2^-1074, entrywise, worst case."""
    return _g(X.shape[1]) * _norm_up(X, rows=True) * _norm_up(W, rows=True) + X.shape[1] * TINY

def _last_sweep(S, D, gM, out, rho, extra=0.0):
    """A solve's last sweep, worst case: out = fl(S_(k-1) gM + c) (then masked, or relu, to S_k),
    gM = fl(gamma M), is within e + g(1) |out| of S_(k-1) gamma M + c entrywise, e = g(m + 2) max
    ||s_(k-1)|| max ||gM[:, j]|| + (sqrt(m) max ||s_(k-1)|| + m) 2^-1074 + extra (the product,
    gM, underflow; c's error), ||s_(k-1)|| <= ||s_k|| + delta. So ||S_k - S*|| <= (rho delta +
    ||R||) / (1 - rho), R that rounding. Returns (that, delta, e); 1 + 4 eps: these roundings."""
    m, delta = len(gM), _norm_up(D) * (1 + EPS)
    rows = _norm_up(S, rows=True) + delta
    e = _g(m + 2) * rows * _norm_up(gM.T, rows=True) + (math.sqrt(m) * rows + m) * TINY + extra
    R = math.sqrt(out.size) * e + _g(1) * _norm_up(out)
    return (rho * delta + R) / (1 - rho) * (1 + 4 * EPS), delta, e

def _certify_forward(A, W, X, gamma, rho, Z, H, D):
    """(eZ, mask_certified), worst case. With X W^T's rounding as c's, ||Z_k - Z*|| <= eZ, and
    |H - H*| <= e + g(1) |H| + gamma |A (z_(k-1) - z*)| <= e + g(1) |H| + rho (delta + eZ): the
    mask 1[H > 0] is exact where |H| exceeds that, at every entry (an entrywise question)."""
    eZ, delta, e = _last_sweep(Z, D, gamma * A.T, H, rho, _B_error(X, W))
    return eZ, bool(np.abs(H).min() * (1 - _g(1)) > (e + rho * (delta + eZ)) * (1 + 4 * EPS))

def _forward_args(params, X, gamma, tol, max_iter, Z0, allow_ill_posed=False):
    A, W, v = _check_params(params)
    X = _array("X", X, (None, W.shape[1]))
    gamma, tol = _number("gamma", gamma, ranged=True), _number("tol", tol)
    max_iter = _number("max_iter", max_iter, integer=True)
    Z0 = None if Z0 is None else _array("Z0", Z0, (len(X), len(A)))
    return Params(A, W, v), X, gamma, _rho(A, gamma, allow_ill_posed), tol, max_iter, Z0

def equilibrium(params, X, gamma, *, tol=1e-12, max_iter=10_000, Z0=None, allow_ill_posed=False):
    """Z = relu(gamma Z A^T + X W^T) by certified Picard iteration: (Z, info).
        Z_k = relu(gamma Z_(k-1) A^T + X W^T),   Z_0 = relu(X W^T), or Z0 projected
    rho = gamma ||A||_2 < 1 makes each row's map z -> relu(gamma A z + W x_i) a rho-contraction
    (ReLU is 1-Lipschitz): Z exists, is unique, and Z_k -> Z at rate rho. Z0 is projected onto
    a box that holds Z (never further from it). info["mask_certified"]: no pre-activation is
    within its worst-case error of 0, so 1[H > 0] is exact; info["worst_case_bound"] bounds
    ||Z - Z*||_F with no rounding model (error_bound, the stop rule's, rests on one).
    allow_ill_posed: rho >= 1, uncertified (mask_certified False, worst_case_bound inf)."""
    (A, W, _), X, gamma, rho, tol, max_iter, Z0 = _forward_args(
        params, X, gamma, tol, max_iter, Z0, allow_ill_posed)
    Z, H, D, info = _equilibrium(A, W, X, gamma, rho, tol, max_iter, Z0)
    eZ, certified = _certify_forward(A, W, X, gamma, rho, Z, H, D) if rho < 1 else (math.inf,
                                                                                    False)
    return Z, {**info, "mask_certified": certified, "worst_case_bound": eZ}

# ---- the implicit gradient ----
#
# Differentiate the equilibrium z_i = relu(h_i), h_i = gamma A z_i + W x_i, with the mask
# D_i = diag(1[h_i > 0]):
#     dz_i = D_i (gamma dA z_i + gamma A dz_i + dW x_i + W dx_i)
#     (I - gamma D_i A) dz_i = D_i (gamma dA z_i + dW x_i + W dx_i)   (||gamma D_i A||_2 <= rho)
# Phi = 0.5 sum_i (v^T z_i - y_i)^2 changes by dPhi = sum_i r_i (v^T dz_i + z_i^T dv). The
# adjoint u_i, (I - gamma D_i A^T) u_i = D_i v, i.e. u_i = D_i (v + gamma A^T u_i), turns v^T dz_i
# into u_i^T (gamma dA z_i + dW x_i + W dx_i): row i of U is d yhat_i / d(W x_i), and does not
# depend on the residual. With G = diag(r) U, in batch:
#     U = 1[H > 0] * (1 v^T + gamma U A)
#     dPhi/dA = gamma G^T Z,   dPhi/dW = G^T X,   dPhi/dv = Z^T r,   dPhi/dX = G W
# Row i of U's fixed point is a rho-contraction too (||gamma D_i A^T||_2 <= rho). Nothing is
# unrolled: memory is O(N m + m^2) whatever the number of sweeps.
#
# The gradient's certificate (worst case; Frobenius norms). Z_k is within eZ of Z*, U_k within
# eU of U* (_last_sweep); when the mask is certified it is the exact one, so z_i - z_i* and
# u_i* live on D_i: with nv = max_i ||D_i v|| (only active units carry errors), r* = Z* v - y,
#     ||r_k - r*|| <= (eZ + g(m) ||Z_k||) nv + g(1) ||r_k|| = er      (fl(Z v) - y),
#     ||u_i*|| <= ||D_i v|| / (1 - rho),   ||G_k - G*|| <= max|r_i| eU + er nv / (1 - rho) = eG,
#     ||dA_k - dA*|| <= gamma (eG ||Z_k|| + (||G_k|| + eG) eZ),   ||dW_k - dW*|| <= eG ||X||,
#     ||dv_k - dv*|| <= eZ ||r_k|| + (||Z_k|| + eZ) er,           ||dX_k - dX*|| <= eG ||W||,
# each plus its product's rounding, g(n) times the norms multiplied (n summed over), and
# underflow. The bound stacks those of the gradients asked for. Where the mask is not
# certified it is inf: near a kink the loss may have no derivative, and ReLU'(0) = 0 decides.

def _adjoint(A, v, mask, gamma, rho, tol, max_iter, U0=None):
    """(U, D, info): U = mask * (1 v^T + gamma U A), certified, on checked inputs."""
    gA = gamma * A  # (m, m)
    def picard(U, out):
        np.multiply(np.add(np.matmul(U, gA, out=out), v, out=out), mask, out=out)  # D (1v^T + gUA)
    if U0 is None:
        U = mask * v  # (N, m)
    else:  # each row of U* has norm <= ||v|| / (1 - rho), and lives on the mask: project
        cap = np.linalg.norm(v) / (1 - rho)
        U = mask * np.clip(U0, -cap, cap)  # (N, m)
    U, D, info = _fixed_point(picard, U, rho, tol, max_iter, "adjoint")
    return _in_range("U", U, FloatingPointError), D, info

def _loss_and_grad(theta, X, y, gamma, rho, wrt, tol, max_iter, Z0=None, U0=None):
    """(loss, grads, s) on checked inputs and a certified rho; s: what the certificate and the
    next step need (Z, H, DZ, U, DU, G, r, and the solves' infos forward and adjoint)."""
    A, W, v = theta
    Z, H, DZ, forward = _equilibrium(A, W, X, gamma, rho, tol, max_iter, Z0)  # (N, m)
    r = _in_range("r", Z @ v - y, FloatingPointError)  # (N,) yhat - y
    loss = 0.5 * (r @ r)
    U = DU = G = adjoint = None
    if "A" in wrt or "W" in wrt:
        if isinstance(U0, str):  # "direct": per-sample solves (below the core), then certified
            U0 = _adjoint_direct(A, v, Z > 0, gamma)
        U, DU, adjoint = _adjoint(A, v, Z > 0, gamma, rho, tol, max_iter, U0)  # mask 1[H > 0]
        G = _in_range("G", r[:, None] * U, FloatingPointError)  # (N, m) G = diag(r) U
    grads = Params(gamma * (G.T @ Z) if "A" in wrt else None,  # dPhi/dA = gamma G^T Z
                   G.T @ X if "W" in wrt else None,  # dPhi/dW = G^T X
                   Z.T @ r if "v" in wrt else None)  # dPhi/dv = Z^T r
    for name, grad in zip(("dA", "dW", "dv"), grads):
        if grad is not None:
            _in_range(name, grad, FloatingPointError)
    return loss, grads, {"Z": Z, "H": H, "DZ": DZ, "U": U, "DU": DU, "G": G, "r": r,
                         "forward": forward, "adjoint": adjoint}

def _grad_bounds(theta, X, gamma, rho, s):
    """The worst-case error bounds of dA, dW, dv and dX (derivation above), and mask_certified;
    inf where the mask is not certified."""
    (A, W, v), Z, r, U, G = theta, s["Z"], s["r"], s["U"], s["G"]
    eZ, certified = _certify_forward(A, W, X, gamma, rho, Z, s["H"], s["DZ"])
    if not certified:
        return dict.fromkeys("AWvX", math.inf), False
    (N, m), d, nZ, nr = Z.shape, X.shape[1], _norm_up(Z), _norm_up(r)
    nv = _norm_up((Z > 0) * v, rows=True)  # max_i ||D_i v||
    er = (eZ + _g(m) * nZ) * nv + _g(1) * nr + math.sqrt(N) * m * TINY  # ||r_k - r*||
    bounds = {"v": eZ * nr + (nZ + eZ) * er + _g(N) * nZ * nr + math.sqrt(m) * N * TINY}
    if U is not None:
        eU, nG, nX, nW = _last_sweep(U, s["DU"], gamma * A, U, rho)[0], *map(_norm_up, (G, X, W))
        eG = np.abs(r).max() * eU + er * nv / (1 - rho) + _g(1) * nG + math.sqrt(N * m) * TINY
        bounds.update(A=gamma * (eG * nZ + (nG + eG) * eZ + _g(N + 1) * nG * nZ + m * N * TINY),
                      W=eG * nX + _g(N) * nG * nX + math.sqrt(m * d) * N * TINY,
                      X=eG * nW + _g(m) * nG * nW + math.sqrt(N * d) * m * TINY)
    return {p: bound * (1 + 8 * EPS) for p, bound in bounds.items()}, True  # the sums' rounding

def loss_and_grad(params, X, y, gamma, *, wrt=PARAM_NAMES, tol=1e-12, max_iter=10_000, Z0=None,
                  U0=None, method="fixed_point", return_info=False):
    """The square loss and its implicit gradient (derivation above): (loss, Params(dA, dW, dv)).
        Phi = 0.5 ||r||^2,   r = Z v - y,   U = 1[H > 0] * (1 v^T + gamma U A),   G = diag(r) U
        dPhi/dA = gamma G^T Z,   dPhi/dW = G^T X,   dPhi/dv = Z^T r,   dPhi/dX = G W
    wrt: the gradients wanted, the others are None (with ("v",) no adjoint is solved). Z0, U0:
    warm starts. method "direct": U from per-sample solves (adjoint_direct, below the copyable
    core), then certified by the fixed point. return_info adds a third result: Z, U, G, r, dX,
    forward and adjoint (the solves' infos), mask_certified, grad_error_bound (of the wrt
    gradients) and dX_error_bound: worst-case bounds (see above), inf off a certified mask."""
    (A, W, v), X, gamma, rho, tol, max_iter, Z0 = _forward_args(params, X, gamma, tol, max_iter, Z0)
    y, wrt = _array("y", y, (len(X),)), _check_train(wrt, "wrt")
    U0 = None if U0 is None else _array("U0", U0, (len(X), len(A)))
    if method != "fixed_point" and (method != "direct" or "_adjoint_direct" not in globals()):
        raise ValueError(f"method must be 'fixed_point', or 'direct' with the whole file (the "
                         f"cross-check is below the copyable core), got {method!r}")
    theta = Params(A, W, v)
    loss, grads, s = _loss_and_grad(theta, X, y, gamma, rho, wrt, tol, max_iter, Z0,
                                    "direct" if method == "direct" else U0)
    if not return_info:
        return loss, grads
    bounds, certified = _grad_bounds(theta, X, gamma, rho, s)
    dX = None if s["G"] is None else _in_range("dX", s["G"] @ W, FloatingPointError)  # (N, d)
    return loss, grads, {**{k: s[k] for k in ("Z", "U", "G", "r", "forward", "adjoint")},
                         "dX": dX, "mask_certified": certified,
                         "grad_error_bound": math.hypot(*(bounds[p] for p in wrt)),
                         "dX_error_bound": None if dX is None else bounds["X"]}

# ---- gradient descent and gradient flow ----
#
# GD: theta_(k+1) = theta_k - lr grad Phi(theta_k). GF: d theta / dt = -grad Phi(theta), by
# explicit Euler, n = ceil(t_end / dt) steps h = t_end / n, each a GD step with lr = h.
# Warm starts: each solve starts on the line through the last two solutions, Z_0 =
# relu(2 Z_k - Z_(k-1)) (the solver's projection is the relu) and U_0 = 2 U_k - U_(k-1).
# rho without an eigensolve per step: ||A_k||_2 <= ||A_ref||_2 + ||A_k - A_ref||_F (times
# 1 + 2 m^2 eps), A_ref the A of the last exact norm_bound, so all the change since counts.
# When the margin 1 - rho has halved since, rho is recomputed; if that reaches 1, we stop.

def gradient_descent(params, X, y, gamma, *, lr, steps, train=PARAM_NAMES, target=None,
                     tol=1e-12, max_iter=10_000, lambda_min=False, lambda_theta=False,
                     warm_start=True, log_every=0):
    """theta_(k+1) = theta_k - lr grad Phi(theta_k), at most `steps` steps: (theta_K, history).
    train: the parameters that move. target: stop once Phi_k <= target Phi_0. history: arrays
    with entry k at theta_k, loss, rho (certified), forward_iters and adjoint_iters (sweeps),
    grad_norm (of the whole trained gradient), lambda_min (if asked: lambda_min(Z_k Z_k^T), an
    SVD a step), lambda_theta (if asked: lambda_min(Theta_k), gradient_gram's, an eigensolve a
    step); and norm_refreshes, train. log_every > 0 prints a line every so many steps."""
    lr, steps = _number("lr", lr, ranged=True), _number("steps", steps, integer=True)
    return _train(params, X, y, gamma, lr, steps, train, target, tol, max_iter,
                  (lambda_min, lambda_theta), warm_start, log_every, lambda k: f"GD step {k}")

def gradient_flow(params, X, y, gamma, *, t_end, dt, train=PARAM_NAMES, target=None, tol=1e-12,
                  max_iter=10_000, lambda_min=False, lambda_theta=False, warm_start=True,
                  log_every=0):
    """d theta/dt = -grad Phi(theta) on [0, t_end] by explicit Euler: (theta(t_end), history).
        theta(t + h) = theta(t) - h grad Phi(theta(t)),   n = ceil(t_end / dt), h = t_end / n
    First order: halving dt halves the error at t_end. history: as GD's, and t = k h, h."""
    t_end, dt = _number("t_end", t_end, ranged=True), _number("dt", dt, ranged=True)
    n = max(1, math.ceil(t_end / dt * (1 - 4 * EPS)))  # 0.07 / 0.01 = 7.000000000000001: 7
    return _train(params, X, y, gamma, t_end / n, n, train, target, tol, max_iter,
                  (lambda_min, lambda_theta), warm_start, log_every,
                  lambda k: f"GF t {k * t_end / n:.4g}", flow=True)

def _train(params, X, y, gamma, lr, steps, train, target, tol, max_iter, track, warm_start,
           log_every, where, flow=False):
    """The loop of gradient_descent and gradient_flow (flow: history has t, and h = lr)."""
    theta, X, gamma, rho, tol, max_iter, _ = _forward_args(params, X, gamma, tol, max_iter, None)
    theta = Params(*(p.copy() for p in theta))  # the result never shares memory
    y, train = _array("y", y, (len(X),)), _check_train(train)
    target = None if target is None else _number("target", target)
    log_every = _number("log_every", log_every, integer=True, zero=True)
    rho_ref = rho  # NotWellPosedError came before any work
    A_ref, m = theta.A, len(theta.A)
    keys = ("loss", "rho", "forward_iters", "adjoint_iters", "grad_norm") + tuple(
        key for key, on in zip(("lambda_min", "lambda_theta"), track) if on)
    history = {"norm_refreshes": 1, "train": train, **{key: [] for key in keys}}
    good, past = theta, []  # the last params whose loss is recorded; the last two solutions
    def finish():
        history.update({key: np.array(history[key]) for key in keys})
        if flow:
            history.update(t=lr * np.arange(len(history["loss"])), h=lr)
        return history
    def stop(k, reason, detail, rho=math.nan):
        return TrainingError(f"training stopped at {where(k)}: {reason}: {detail}", step=k,
                             reason=reason, params=good, history=finish(), rho=rho)
    for k in range(steps + 1):
        Z0 = U0 = None
        if warm_start and past:  # past[-1]: the last solutions, past[0] the ones before
            (Z1, U1), (Z2, U2) = past[-1], past[0]
            Z0 = 2 * Z1 - Z2 if len(past) == 2 else Z1
            if U1 is not None:
                U0 = 2 * U1 - U2 if len(past) == 2 else U1
        try:
            loss, grads, s = _loss_and_grad(theta, X, y, gamma, rho, train, tol, max_iter, Z0, U0)
        except NotConvergedError as e:
            raise stop(k, "solver floor" if e.attainable_tol else "not converged", e, rho) from e
        except FloatingPointError as e:
            raise stop(k, "diverged", e, rho) from e
        good, past = theta, past[-1:] + [(s["Z"], s["U"])]
        row = [loss, rho, s["forward"]["iterations"], s["adjoint"]["iterations"] if s["adjoint"]
               else 0, math.hypot(*(np.linalg.norm(g) for g in grads if g is not None))]
        if track[0]:
            row.append(lambda_min(s["Z"]))
        if track[1]:
            row.append(float(np.linalg.eigvalsh(_theta_gram(X, gamma, s["Z"], s["U"], train))[0]))
        for key, value in zip(keys, row):
            history[key].append(value)
        done = k == steps or (target is not None and loss <= target * history["loss"][0])
        if log_every and (k % log_every == 0 or done):
            print(f"{where(k)}: loss {loss:.6e}  rho {rho:.4f}  sweeps fwd/adj {row[2]}/{row[3]}"
                  + "".join(f"  {key} {value:.3e}" for key, value in zip(keys[5:], row[5:])),
                  flush=True)
        if done:
            break
        new = Params(*(p if g is None else p - lr * g for p, g in zip(theta, grads)))
        try:  # in range: |p - lr g| <= 2^201 2^200 cannot overflow, but may leave the range
            new = _check_params(new)
        except ValueError as e:
            raise stop(k + 1, "diverged", e) from e
        if grads.A is not None:  # ||A_(k+1)||_2 <= ||A_ref||_2 + ||A_(k+1) - A_ref||_F
            rho = (rho_ref + gamma * _norm_up(new.A - A_ref) * (1 + EPS)) * (1 + 2 * m * m * EPS)
            if 1 - rho < (1 - rho_ref) / 2:  # the margin has halved: recompute it exactly
                rho = rho_ref = _rho(new.A, gamma, allow_ill_posed=True)
                A_ref, history["norm_refreshes"] = new.A, history["norm_refreshes"] + 1
                if rho >= 1:
                    raise stop(k + 1, "ill-posed", f"gamma * ||A||_2 = {rho:.6g} >= 1", rho)
        theta = new
    return theta, finish()

# ---- theory diagnostics ----

def lambda_min(Z):
    """lambda_min(Z Z^T) = sigma_min(Z)^2, by an SVD (no squared condition number); exactly 0
    when Z's numerical rank is below N: m < N, or sigma_min <= sigma_max max(N, m) eps, the
    tolerance of NumPy's matrix_rank (below it, sigma_min is rounding noise)."""
    Z = _array("Z", Z, (None, None))
    if Z.shape[1] < Z.shape[0]:
        return 0.0
    s = np.linalg.svd(Z, compute_uv=False)
    return 0.0 if s[-1] <= s[0] * max(Z.shape) * EPS else float(s[-1] ** 2)

def _theta_gram(X, gamma, Z, U, train):
    """Theta for the trained subset, from the solves (gradient_gram's formula)."""
    ZZ = Z @ Z.T  # (N, N)
    Theta = ZZ.copy() if "v" in train else np.zeros_like(ZZ)
    if U is not None:
        Theta += (U @ U.T) * (("W" in train) * (X @ X.T) + ("A" in train) * gamma**2 * ZZ)
    return Theta

def gradient_gram(params, X, gamma, *, train=PARAM_NAMES, tol=1e-12, max_iter=10_000):
    """The Gram matrix of the whole gradient, over the trained parameters: (N, N)
        Theta = (U U^T) * (X X^T [W] + gamma^2 Z Z^T [A]) + Z Z^T [v]        (* entrywise)
    Row i of U, u_i = d yhat_i / d(W x_i), does not depend on y: the gradient of yhat_i is u_i
    x_i^T in W, gamma u_i z_i^T in A and z_i in v, so Theta_ij = <grad yhat_i, grad yhat_j>
    and ||grad Phi||^2 = r^T Theta r exactly. Theta - Z Z^T is positive semidefinite: its PL
    constant lambda_min(Theta) is never below the output layer's lambda_min(Z Z^T)."""
    theta, X, gamma, rho, tol, max_iter, _ = _forward_args(params, X, gamma, tol, max_iter, None)
    train = _check_train(train)  # y = 0: U does not depend on it
    s = _loss_and_grad(theta, X, np.zeros(len(X)), gamma, rho, train, tol, max_iter)[2]
    return _theta_gram(X, gamma, s["Z"], s["U"], train)

def pl_ratios(history, gram="Z"):
    """||grad Phi_k||^2 / (2 lambda_k Phi_k), >= 1 where the PL inequality holds. gram "Z":
    lambda_k = lambda_min(Z_k Z_k^T), as ||grad Phi||^2 >= ||dPhi/dv||^2 = r^T Z Z^T r when v is
    trained; "theta": lambda_min(Theta_k), as ||grad Phi||^2 = r^T Theta r. The ratio is inf
    where lambda_k Phi_k <= 0 (nothing to check)."""
    key = {"Z": "lambda_min", "theta": "lambda_theta"}.get(gram, gram)
    if key not in history or (gram == "Z" and "v" not in history.get("train", ())):
        raise ValueError(f"history must come from training with {key}=True" + " and v trained"
                         * (gram == "Z") + f", and gram be 'Z' or 'theta' (got {gram!r})")
    lower = 2.0 * history[key] * history["loss"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lower > 0, history["grad_norm"] ** 2 / lower, np.inf)

def gronwall_bound(loss0, lambda_mins, h):
    """Phi(t_k) <= Phi(0) exp(-2 sum_(j<k) lambda_j h), k = 0..n, lambda_j the PL constant of
    either Gram matrix (lambda_min or lambda_theta of a history): the certificate, exact for
    the flow (dPhi/dt = -||grad||^2 <= -2 lambda Phi) with the integral as a left Riemann sum
    on the Euler grid, so along Euler it holds up to O(h)."""
    loss0, h = _number("loss0", loss0, zero=True), _number("h", h)
    lam = np.maximum(_array("lambda_mins", lambda_mins, (None,), ranged=False), 0.0)  # < 0: 0
    return loss0 * np.exp(-2.0 * h * np.concatenate([[0.0], np.cumsum(lam[:-1])]))  # (n + 1,)

# ---- the infinite-width kernel ----
#
# K = lim_(m -> inf) Z Z^T / m at initialisation, A_ij ~ N(0, a / m), W_ij ~ N(0, w / d) (a, w:
# A_VARIANCE, W_VARIANCE). Unit k's pre-activations over the samples, h_ik = gamma sum_l A_kl
# z_il + sum_j W_kj x_ij, are in the limit jointly Gaussian with covariance
#     S = gamma^2 a K + b,   b = (w / d) X X^T
# (the solve applies A, never A^T: the tying leaves this limit as it is, as the suite measures),
# so K = F(S), F the ReLU expectation E[relu(h_ik) relu(h_jk)], with s_i = sqrt(S_ii):
#     F(S)_ij = s_i s_j (sin t + (pi - t) cos t) / (2 pi),   cos t = S_ij / (s_i s_j)
# (0 where s_i s_j = 0, a zero row of X; cos t clipped to [-1, 1] against rounding). On the
# diagonal t = 0, F(S)_ii = S_ii / 2: K_ii = b_ii / (2 - gamma^2 a) in closed form. With it
# fixed, entry ij's map moves with K_ij alone, with slope gamma^2 a (pi - t) / (2 pi) in [0, q],
# q = gamma^2 a / 2 < 1: a contraction entrywise, so in Frobenius norm, and _fixed_point
# certifies it with rho = q. beta: b's rounding and F's dozen steps, (d / 2 + 16) eps s_i s_j an
# entry (a model with margin; the suite checks it against extended precision). The finite
# network needs more, gamma ||A||_2 < 1: with ||A||_2 ~ 2 sqrt(a), gamma below about 0.5.

def kernel(X, gamma, *, tol=1e-12, max_iter=10_000):
    """K = F(gamma^2 a K + (w / d) X X^T), the limit of Z Z^T / m at initialisation: (K, info),
    info the solve's (rho is q = gamma^2 a / 2) and lambda_0 = lambda_min(K), the PL constant
    the width claim rests on."""
    X, gamma = _array("X", X, (None, None)), _number("gamma", gamma, ranged=True)
    tol, max_iter = _number("tol", tol), _number("max_iter", max_iter, integer=True)
    q, (N, d) = gamma**2 * A_VARIANCE / 2, X.shape
    if q >= 1:
        raise ValueError(f"gamma must be below sqrt(2 / A_VARIANCE) = "
                         f"{math.sqrt(2 / A_VARIANCE):.6g} for K to exist, got {gamma!r}")
    b = (W_VARIANCE / d) * (X @ X.T)  # (N, N)
    Kd = np.diag(b) / (2 - 2 * q)  # (N,) K_ii, in closed form
    ss = 2 * np.sqrt(np.outer(Kd, Kd))  # (N, N) s_i s_j, S_ii = 2 K_ii
    def F(K, out):  # F(gamma^2 a K + b), the diagonal in closed form
        c = np.divide(2 * q * K + b, ss, out=np.zeros_like(b), where=ss > 0).clip(-1, 1)
        t = np.arccos(c)  # (N, N)
        np.multiply(ss, (np.sin(t) + (np.pi - t) * c) / (2 * np.pi), out=out)
        np.fill_diagonal(out, Kd)
    beta = (d / 2 + 16) * EPS * float(np.linalg.norm(ss))
    K, _, info = _fixed_point(F, np.diag(Kd), q, tol, max_iter, "kernel", beta)
    return K, {**info, "lambda_0": float(np.linalg.eigvalsh(K)[0])}

# ---- end of the copyable core ----

# Below the core: the tools around it, with the standard library's help.
import argparse, hashlib, json, os, sys, time, timeit, zipfile, zlib  # noqa: E401, E402

# ---- cross-checks and data ----

def _adjoint_direct(A, v, mask, gamma):
    """U by a direct solve per sample, (I - gamma D_i A^T) u_i = D_i v."""
    U = np.zeros(mask.shape)  # (N, m)
    for i, D in enumerate(mask.astype(np.float64)):  # D: the diagonal of D_i
        U[i] = np.linalg.solve(np.eye(len(A)) - gamma * D[:, None] * A.T, D * v)
    return U

def _adjoint_args(params, Z, r, gamma):
    A, _, v = _check_params(params)
    Z = _array("Z", Z, (None, len(A)))
    return A, v, Z > 0, _array("r", r, (len(Z),)), _number("gamma", gamma, ranged=True)

def adjoint(params, Z, r, gamma, *, tol=1e-12, max_iter=10_000, U0=None):
    """G = diag(r) U, U = 1[Z > 0] * (1 v^T + gamma U A) for a given Z and r, by the core's
    certified Picard iteration from U0: (G, info), info U's. Z's own error is not in it."""
    A, v, mask, r, gamma = _adjoint_args(params, Z, r, gamma)
    U0 = None if U0 is None else _array("U0", U0, mask.shape)
    U, _, info = _adjoint(A, v, mask, gamma, _rho(A, gamma), _number("tol", tol),
                          _number("max_iter", max_iter, integer=True), U0)
    return _in_range("G", r[:, None] * U, FloatingPointError), info

def adjoint_direct(params, Z, r, gamma):
    """The same G by per-sample linear solves, O(N m^3): the independent cross-check."""
    A, v, mask, r, gamma = _adjoint_args(params, Z, r, gamma)
    _rho(A, gamma)  # rho >= 1: I - gamma D_i A^T may be singular
    return _in_range("G", r[:, None] * _adjoint_direct(A, v, mask, gamma), FloatingPointError)

def predict(params, X, gamma, *, tol=1e-12, max_iter=10_000, Z0=None):
    """yhat = Z v, Z the certified equilibrium."""
    (A, W, v), X, gamma, rho, tol, max_iter, Z0 = _forward_args(params, X, gamma, tol, max_iter, Z0)
    Z = _equilibrium(A, W, X, gamma, rho, tol, max_iter, Z0)[0]
    return _in_range("yhat", Z @ v, FloatingPointError)  # (N,)

def _tightest(solve, tol):
    """(solve(t), t): t = tol, or the tightest tol float64 certifies here if looser (to 1e-6)."""
    while True:
        try:
            return solve(tol), tol
        except (NotConvergedError, TrainingError) as e:
            cause = e.__cause__ if isinstance(e, TrainingError) else e  # the solve's error
            floor = getattr(cause, "attainable_tol", None)
            if floor is None or floor <= tol or floor > 1e-6:
                raise
            tol = floor

def gradient_check(params, X, y, gamma, *, seed=0, h=1e-6, tol=1e-14):
    """The implicit gradient against central differences on a random unit direction E per
    parameter: error_P = |fd - an| / max(|fd|, |an|), fd = (Phi(P + h E) - Phi(P - h E)) / 2h,
    an = <dPhi/dP, E>. Returns the errors ("A", "W", "v", "max"), min_abs_H, mask_certified;
    without the last, a pre-activation is at a kink, which FD straddle: the errors are nan."""
    theta = _check_params(params)
    h, rng = _number("h", h), np.random.default_rng(_number("seed", seed, True, zero=True))
    (_, grads, info), tol = _tightest(lambda t: loss_and_grad(theta, X, y, gamma, tol=t,
                                                               return_info=True), tol)
    H = gamma * info["Z"] @ theta.A.T + np.asarray(X, dtype=np.float64) @ theta.W.T  # (N, m)
    out = {"min_abs_H": float(np.abs(H).min()), "mask_certified": info["mask_certified"]}
    for name, p, g in zip(PARAM_NAMES, theta, grads):
        E = rng.standard_normal(p.shape)
        E /= np.linalg.norm(E)
        phi = [_tightest(lambda t: loss_and_grad(theta._replace(**{name: p + s * E}), X, y,
                                                 gamma, wrt="v", tol=t)[0], tol)[0]
               for s in (h, -h)]
        fd, an = (phi[0] - phi[1]) / (2.0 * h), float(np.vdot(g, E))
        out[name] = abs(fd - an) / max(abs(fd), abs(an), np.finfo(float).tiny) \
            if info["mask_certified"] else math.nan
    out["max"] = max(out[p] for p in PARAM_NAMES)
    return out

def linear_rate(loss, t):
    """The observed linear rate: minus the slope of the least-squares line through
    (t_k, log loss_k), so loss_k ~ loss_0 exp(-rate t_k)."""
    loss, t = _array("loss", loss, (None,)), _array("t", t, (None,))
    if loss.shape != t.shape or len(loss) < 2 or (loss <= 0).any():
        raise ValueError("loss must be positive, at least two values, shaped like t")
    if not (np.diff(t) > 0).all():
        raise ValueError("t must be strictly increasing")
    return float(-np.polyfit(t, np.log(loss), 1)[0])

def make_data(N, d, *, seed=0):
    """The demo's data: rows of X uniform on the unit sphere, y_i = sin(3 <u, x_i>), u too."""
    N, d = _number("N", N, integer=True), _number("d", d, integer=True)
    rng = np.random.default_rng(None if seed is None else _number("seed", seed, True, zero=True))
    X = rng.standard_normal((N, d))  # (N, d)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    u = rng.standard_normal(d)  # (d,)
    return X, np.sin(3.0 * X @ (u / np.linalg.norm(u)))  # (N,)

# ---- demo and sweep: the paper's two claims, runnable ----

MAX_EULER_STEPS = 10**6  # the demo refuses a dt that asks for more

def _say(quiet):
    return (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))

def _fits(what, N, d, m, extra=0):
    """Refuse a run whose estimated peak memory, about 12 (N m + m^2) float64 words for the
    solves, the parameters and their copies (one loss_and_grad: at most 5), and the data, is
    over half of this machine's (ValueError)."""
    words = 12 * (N * m + m * m) + 2 * d * (N + m) + extra
    try:
        half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2
    except (ValueError, OSError, AttributeError):  # not a POSIX machine: do not guess
        return
    if 8 * words > half:
        raise ValueError(f"{what} needs about {8 * words / 2**30:.3g} GiB, over half of this "
                         f"machine's {2 * half / 2**30:.3g} GiB: make it smaller")

def demo(*, N=32, d=16, m=None, gamma=0.25, lr=None, steps=3000, target=1e-10, t_end=None,
         dt=None, seed=0, log_every=100, plot=None, quiet=False):
    """Train a linear-width network by GD and by the Euler gradient flow, certifying as it goes:
    the infinite-width kernel's lambda_0 against lambda_min(Z0 Z0^T) / m; a gradient check; GD
    with its observed linear rate beside the PL rates 2 lr min_k lambda_min of Z Z^T and of
    Theta, and both PL inequalities at every step; the flow against both Gronwall bounds. m is
    2 N, lr 1 / ||Z(0)||_2^2 (the curvature in v), t_end half GD's time and dt lr / 2 by
    default. Returns the summary (keys in the README); "passed" is its verdict."""
    say, start = _say(quiet), time.perf_counter()
    N, d = _number("N", N, integer=True), _number("d", d, integer=True)
    m = 2 * N if m is None else _number("m", m, integer=True)
    steps, target = _number("steps", steps, integer=True), _number("target", target)
    gamma, log_every = _number("gamma", gamma), 0 if quiet else log_every
    lr, t_end, dt = (None if x is None else _number(name, x)
                     for name, x in (("lr", lr), ("t_end", t_end), ("dt", dt)))
    if lr is not None and dt is None and lr / 2 == 0.0:
        raise ValueError(f"lr = {lr:g} is too small: the Euler step lr / 2 underflows to 0")
    _fits(f"demo with N = {N}, d = {d}, m = {m}", N, d, m)
    plot_error = None
    if plot:
        try:
            import matplotlib  # noqa: F401  (now, so that a missing one is said at once)
        except ImportError:
            plot_error = "matplotlib is not installed: pip install matplotlib"
    (X, y), params = make_data(N, d, seed=seed), init_params(d, m, seed=seed)
    title = f"N = {N}, d = {d}, m = {m}, gamma = {gamma:g}, seed = {seed}"
    say(f"implicit_gd demo: {title} (m / N = {m / N:g})\ndata: x_i uniform on the unit "
        "sphere, y_i = sin(3 <u, x_i>) for a random unit u\ninit: A ~ N(0, 1/m), W ~ N(0, 2/d), "
        f"v ~ N(0, 1/m); certified gamma ||A(0)||_2 <= {_rho(params.A, gamma):.4f}"
        + (f"\nplot: {plot_error} (the run goes on without it)" if plot_error else ""))
    Z0, _ = equilibrium(params, X, gamma)
    if not Z0.any():
        raise ValueError("Z(0) = 0: every ReLU unit is off at initialisation, so the gradient "
                         "is 0 and GD cannot move; change the seed, d or m")
    lr_source, lr = ("given", lr) if lr else ("1 / ||Z(0)||_2^2", 1 / np.linalg.norm(Z0, 2) ** 2)
    euler = (t_end or 0.5 * steps * lr) / (dt or 0.5 * lr)  # at most; GD may stop earlier
    if euler > MAX_EULER_STEPS:
        raise ValueError(f"dt = {dt:g} asks for up to {euler:.3g} Euler steps (t_end / dt), "
                         f"over {MAX_EULER_STEPS:.0e}: use a larger dt")
    step = float(np.median(timeit.repeat(lambda: loss_and_grad(params, X, y, gamma), number=1,
                                         repeat=3)))  # a cold step: warm ones cost less
    estimate = (steps + min(euler, steps)) * step
    if estimate > 30:
        say(f"estimated time: up to about {estimate:.0f} s ({steps} GD and {min(euler, steps):.0f} "
            "Euler steps at most, a step timed 3 times; GD stops at its target)")
    lambda_0 = kernel(X, gamma)[1]["lambda_0"]
    say(f"kernel: lambda_0 = lambda_min(K) = {lambda_0:.3e}, K = lim Z0 Z0^T / m; at m = {m}, "
        f"lambda_min(Z0 Z0^T) / (m lambda_0) = {lambda_min(Z0) / (m * lambda_0):.3f}")
    check = gradient_check(params, X, y, gamma, seed=seed)
    say("gradient check (central differences, h = 1e-6, random directions): " + (
        f"max rel error {check['max']:.1e} (A {check['A']:.1e}, W {check['W']:.1e}, v "
        f"{check['v']:.1e}); min |H_ij| = {check['min_abs_H']:.1e}" if check["mask_certified"]
        else "not evaluated: a pre-activation is at a ReLU kink, where the loss has no derivative")
        + f"\nGD: lr = {lr:.4g} ({lr_source}), until loss <= {target:g} loss(0) or {steps} steps")
    why, failure, gf_failure, rho_lost = {}, None, None, 0.0  # why: each early stop's cause
    try:
        final, hist = gradient_descent(params, X, y, gamma, lr=lr, steps=steps, target=target,
                                       lambda_min=True, lambda_theta=True, log_every=log_every)
    except TrainingError as e:
        final, hist, failure, why["GD"] = e.params, e.history, str(e), e.reason
        rho_lost = e.rho if e.reason == "ill-posed" else 0.0  # the step that lost it counts
        say(f"GD stopped: {e}")
    loss, lam, k = hist["loss"], hist["lambda_min"], len(hist["loss"]) - 1
    rho_max, rate_cert, up = max(float(hist["rho"].max()), rho_lost), 2 * lr * lam.min(), loss > 0
    rate_theta = 2 * lr * max(float(hist["lambda_theta"].min()), 0.0)
    rate_obs = linear_rate(loss[up], np.flatnonzero(up)) if up.sum() > 1 else math.nan
    pl, pl_theta = pl_ratios(hist)[lam > 0], pl_ratios(hist, "theta")
    pl_holds = bool((pl >= 1.0).all()) if pl.size else None  # None: lambda_min = 0, no certificate
    # r tends to Theta's bottom eigenvector, so its ratio tends to 1: 1e-9 allows the rounding
    # of both sides (each certified to about 1e-12) and of the eigensolve
    theta_holds = bool((pl_theta >= 1.0 - 1e-9).all())
    exact = [gamma * float(np.linalg.norm(p.A, 2)) for p in (params, final)]  # by an SVD
    stopped = f" (step {k + 1} stopped it)" if failure else ""  # as "stopped at GD step k + 1"
    say(f"GD: loss {loss[0]:.4e} -> {loss[-1]:.4e} (ratio {loss[-1] / loss[0]:.1e}) in {k} steps"
        f"{stopped};"
        f" max certified gamma ||A||_2 = {rho_max:.4f}: " + ("well-posed at every step" if rho_max
                                                               < 1 else "NOT well-posed") +
        f" ({hist['norm_refreshes']} exact norm computations; exact {exact[0]:.4f} at step 0, "
        f"{exact[1]:.4f} at step {k})\nGD: linear rate per step: observed {rate_obs:.3e} (slope "
        f"of log loss); PL rates 2 lr min_k lambda_min (the flow's, no guarantee for GD): Theta "
        f"{rate_theta:.3e}, Z Z^T " + (f"{rate_cert:.3e}" if rate_cert > 0 else
                                       "none (lambda_min(Z Z^T) = 0: Z has rank below N)")
        + f"\nGD: PL inequality ||grad||^2 >= 2 lambda_min Phi at every step: Theta "
        f"{'yes' if theta_holds else 'NO'} (smallest ratio {pl_theta.min():.5g}), "
        f"Z Z^T " + ("not evaluated (lambda_min = 0 throughout)" if pl_holds is None else
                     f"{'yes' if pl_holds else 'NO'} (smallest ratio {pl.min():.3g})"))
    t_end, dt = t_end or 0.5 * max(k, 1) * lr, dt or 0.5 * lr
    say(f"GF: explicit Euler, dt = {dt:.4g}, t_end = {t_end:.4g}")
    try:
        _, gf = gradient_flow(params, X, y, gamma, t_end=t_end, dt=dt, lambda_min=True,
                              lambda_theta=True, log_every=2 * log_every)
    except TrainingError as e:
        gf, gf_failure, why["GF"] = e.history, str(e), e.reason
        say(f"GF stopped: {e}")
    bound, bound_theta = (gronwall_bound(gf["loss"][0], gf[key], gf["h"]) for key in
                          ("lambda_min", "lambda_theta"))
    worst = float(np.max(gf["loss"][1:] / bound_theta[1:])) if len(bound) > 1 else math.nan
    gf_holds = None if len(bound) < 2 else bool(worst <= 1.0 + 1e-12)  # 1e-12: rounding
    # The flow's loss falls at the rate -||grad||^2; an Euler step that raises it, or (where
    # the certificate fails) moves it by more than half off -h ||grad||^2, is too large.
    change, flow = np.diff(gf["loss"]), -gf["h"] * gf["grad_norm"][:-1] ** 2
    off = np.abs(change - flow) > 0.5 * np.abs(flow) if gf_holds is False else change > 0
    if off.any() and gf_failure is None:
        j, why["GF"] = int(np.argmax(off)), "Euler step too large"
        gf_failure = (f"Euler step too large: the step at t = {gf['t'][j]:.4g} changed the loss "
                      f"by {change[j]:.3g}, where the flow's rate gives {flow[j]:.3g}; use a "
                      f"smaller dt than {gf['h']:.4g}")
    t_reached = float(gf["h"] * (len(gf["loss"]) - 1))
    say(f"GF: loss(t = {t_reached:.4g}) / loss(0) = {gf['loss'][-1] / gf['loss'][0]:.2e}; "
        "Gronwall certificate Phi(t) <= Phi(0) exp(-2 int_0^t lambda_min(Theta)) (so the weaker "
        "one with Z Z^T): " + (
            "not evaluated (no step taken)" if gf_holds is None else
            f"{'yes' if gf_holds else 'NO'} at all {len(bound) - 1} times t > 0 (max Phi / "
            f"bound = {worst:.3g})") + ("" if gf_failure is None else f"; {gf_failure}"))
    reached = bool(loss[-1] <= target * loss[0])
    if plot and plot_error is None:
        steps_exact = _exact_rho(params, X, y, gamma, lr, k, log_every or 100)
        plot_error = _plot(plot, title, hist, gf, (bound, bound_theta), lr, steps_exact, (
            f"lambda_0 = lambda_min(K) = {lambda_0:.3g}\nlambda_min(Z0 Z0^T) / (m lambda_0) = "
            f"{lambda_min(Z0) / (m * lambda_0):.3f}\n\nGD's linear rate per step:\n  observed "
            f"{rate_obs:.3g}\n  PL rate of Theta {rate_theta:.3g}\n  PL rate of Z Z^T "
            f"{rate_cert:.3g}\n(2 lr min_k lambda_min: the flow's rates, no guarantee for GD)"))
    s = {"N": N, "d": d, "m": m, "gamma": gamma, "seed": seed, "lr": lr, "steps": k,
         "loss_initial": float(loss[0]), "loss_final": float(loss[-1]), "reached_target": reached,
         "rho_max": rho_max, "well_posed_throughout": rho_max < 1, "rate_observed": rate_obs,
         "rate_certified": float(rate_cert), "lambda_min_min": float(lam.min()),
         "rate_pl_theta": rate_theta, "lambda_0": lambda_0, "width_ratio": lambda_min(Z0) / (
             m * lambda_0), "rho_exact": exact,
         "pl_holds": pl_holds, "pl_theta_holds": theta_holds, "failure": failure,
         "gradcheck_max_error": check["max"],
         "gf_t_end": t_reached, "gf_dt": gf["h"], "gf_failure": gf_failure,
         "gf_loss_final": float(gf["loss"][-1]), "gf_certificate_holds": gf_holds,
         "gf_certificate_max_ratio": worst, "plot": str(plot) if plot and not plot_error else
         None, "plot_error": plot_error, "seconds": time.perf_counter() - start,
         "passed": reached and rho_max < 1 and not why and False not in (pl_holds, theta_holds,
                                                                           gf_holds)}
    speed = ("no rate (fewer than two losses)" if not math.isfinite(rate_obs) else
             f"observed rate {rate_obs / rate_theta:.1f}x the Theta PL rate" + (
                 f", {rate_obs / rate_cert:.1f}x the Z Z^T one" if rate_cert > 0 else
                 "; no certified rate from Z Z^T (lambda_min = 0)") if rate_theta > 0 else
             "no certified rate (lambda_min = 0)")
    verdict = {None: "not evaluated", True: "held", False: "FAILED"}
    say(f"summary: {'reached' if reached else 'did NOT reach'} {target:g} of the initial loss in "
        f"{k} GD steps{stopped}; {'well-posed throughout' if rho_max < 1 else 'NOT well-posed'}; "
        f"{speed}; "
        f"PL with Theta {verdict[theta_holds]}, with Z Z^T {verdict[pl_holds]}; Gronwall "
        f"certificate {verdict[gf_holds]}" + "".join(
            f"; {run}: {cause}" for run, cause in why.items()) + f"; {s['seconds']:.1f} s"
        + (f"\nplot written to {plot}" if s["plot"] else f"\nplot: {plot_error}" if plot else ""))
    return s

def _plot(path, title, hist, gf, bounds, lr, exact, notes):
    """The run as a figure, GD and the flow on one time axis t = k lr, to the flow's end."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, 3, figsize=(15, 8))
    k, t = np.arange(len(hist["loss"])), gf["t"]
    shared = k * lr <= t[-1]  # GD up to the flow's end: a shared, stated t
    ax[0, 0].semilogy(k[shared] * lr, hist["loss"][shared], label="GD, t = k lr")
    ax[0, 0].semilogy(t, gf["loss"], "--", label="Euler gradient flow")
    for key, name in (("lambda_theta", "Theta"), ("lambda_min", "Z Z^T")):
        rate = 2 * max(hist[key].min(), 0.0)  # per unit time: 2 lr min lambda / lr
        ax[0, 0].semilogy(t, hist["loss"][0] * np.exp(-rate * t), ":", label=f"PL rate of "
                          f"{name}: 2 min lambda = {rate:.3g}")
    ax[0, 1].semilogy(t, gf["loss"], label="Euler gradient flow")
    for bound, name in zip(bounds, ("Z Z^T", "Theta")):
        ax[0, 1].semilogy(t, bound, "--", label=f"Gronwall: Phi(0) exp(-2 int lambda_min({name}))")
    ax[0, 2].plot(k, hist["rho"], label="certified bound of gamma ||A_k||_2 (running)")
    ax[0, 2].plot(*zip(*exact), "o", label="exact gamma ||A_k||_2 (an SVD) at the logged steps")
    ax[0, 2].axhline(1.0, color="k", lw=0.8, ls=":", label="1: the edge of well-posedness")
    ax[0, 2].set_ylim(0, 1.05)
    for key, name in (("lambda_theta", "Theta_k"), ("lambda_min", "Z_k Z_k^T")):
        ax[1, 0].semilogy(k, np.maximum(hist[key], 1e-300), label=f"lambda_min({name})")
        ax[1, 1].semilogy(k, pl_ratios(hist, key), label=f"with {name}")
    ax[1, 1].axhline(1.0, color="k", lw=0.8, ls=":", label="1: the PL inequality's edge")
    labels = [(f"GD and gradient flow, to t = {t[-1]:.3g} (the flow's end)", "time t", "loss"),
              ("gradient flow", "time t", "loss"),
              ("well-posedness", "GD step k", "gamma ||A_k||_2"),
              ("PL constants", "GD step k", "lambda_min"),
              ("PL ratio ||grad||^2 / (2 lambda_min Phi)", "GD step k", "ratio (>= 1)")]
    for a, label, where in zip(ax.flat, labels, ["center right", "lower left"] + ["best"] * 3):
        a.set(**dict(zip(("title", "xlabel", "ylabel"), label)))
        a.legend(fontsize=7, loc=where)
    ax[1, 2].axis("off")
    ax[1, 2].text(0.05, 0.95, notes, va="top", family="monospace", fontsize=9)
    fig.suptitle(f"Implicit ReLU network, GD and gradient flow ({title}; lr = {lr:.3g})")
    return _save(fig, path)

def _exact_rho(params, X, y, gamma, lr, steps, every):
    """[(k, gamma ||A_k||_2)] by an SVD at k = 0, every, 2 every, ..., steps: the run's GD
    replayed in segments of `every` steps (for the figure only)."""
    out, theta, k = [(0, gamma * float(np.linalg.norm(params.A, 2)))], params, 0
    while k < steps:
        theta = gradient_descent(theta, X, y, gamma, lr=lr, steps=min(every, steps - k))[0]
        k += min(every, steps - k)
        out.append((k, gamma * float(np.linalg.norm(theta.A, 2))))
    return out

def _save(fig, path):
    """fig to path (150 dpi PNG, or PDF/SVG by the extension): None, or the error."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=150)
    except (OSError, ValueError) as e:  # an unwritable path, an unknown format
        return f"cannot write {path}: {e}"
    finally:
        plt.close(fig)
    return None

def _run(params, X, y, gamma, steps, target):
    """One sweep run: GD with lr = 1 / ||Z(0)||_2^2 until Phi <= target Phi(0). A run that
    cannot start (Z(0) = 0: the gradient is 0) or stops early counts as not reached."""
    Z0, _ = equilibrium(params, X, gamma)
    final, hist, reason = params, None, "Z(0) = 0" if not Z0.any() else None
    if reason is None:
        try:
            final, hist = gradient_descent(params, X, y, gamma, steps=steps, target=target,
                                           lr=1.0 / np.linalg.norm(Z0, 2) ** 2)
        except TrainingError as e:
            final, hist, reason = e.params, e.history, e.reason
    loss = hist["loss"] if hist is not None else np.ones(1)
    return {"lambda_min": lambda_min(Z0), "ok": reason != "ill-posed", "ratio": loss[-1] / loss[0],
            "rate": linear_rate(loss, np.arange(len(loss))) if len(loss) > 1 else math.nan,
            "hit": len(loss) - 1 if reason is None and loss[-1] <= target * loss[0] else None,
            "rho": float(hist["rho"].max()) if hist is not None else gamma * norm_bound(params.A),
            "rho_end": gamma * float(np.linalg.norm(final.A, 2)),
            "sweeps": float(hist["forward_iters"].mean()) if hist is not None else math.nan}

def _mean(values):
    finite = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(finite)) if finite else math.nan

def sweep(*, N=16, d=8, seeds=(0, 1, 2), ratios=(0.25, 0.5, 1, 2, 4, 8),
          fractions=(0.1, 0.3, 0.5, 0.7, 0.9, 0.97), steps=1500, target=1e-8, quiet=False):
    """The paper's two claims as tables over seeds. Width: m = ratio N, gamma = 0.25: lambda_min
    (Z(0) Z(0)^T), the PL certificate (lambda_min > 0 for every seed), the rate per step (lr =
    1 / ||Z(0)||_2^2), steps to target. Scale: m = 2 N, gamma = fraction / ||A(0)||_2: max
    certified and exact final gamma ||A||_2, runs well-posed, loss ratio, sweeps per step."""
    say, start = _say(quiet), time.perf_counter()
    N, d = _number("N", N, integer=True), _number("d", d, integer=True)
    steps, widths = _number("steps", steps, integer=True), [max(1, round(r * N)) for r in ratios]
    runs = len(seeds) * (len(ratios) + len(fractions))  # seeds: a sequence, maybe a range
    if not runs:
        raise ValueError("seeds must not be empty, nor both ratios and fractions")
    _fits(f"sweep with N = {N} and {len(seeds)} seeds", N, d, max(widths + [2 * N]),
          100 * runs)  # and about 100 words of results a run
    cost = {}  # seconds of one cold loss and gradient at each width, the best of 3
    for m in set(widths + [2 * N]):
        p, (X, y) = init_params(d, m, seed=0), make_data(N, d, seed=0)
        cost[m] = min(timeit.repeat(lambda: loss_and_grad(p, X, y, 0.25), number=1, repeat=3))
    estimate = 0.6 * steps * len(seeds) * (sum(map(cost.get, widths)) + len(fractions) *
                                           cost[2 * N])  # a warm step costs ~0.6 of a cold one
    if estimate > 30:
        say(f"estimated time: up to about {estimate:.0f} s, if all {runs} runs take all "
            f"{steps} steps (most stop earlier, at their target)")
    seeds, width, scale = list(seeds), [], []
    say(f"width sweep: N = {N}, d = {d}, gamma = 0.25, seeds {seeds}, up to {steps} GD steps")
    for ratio, m in zip(ratios, widths):
        rs = [_run(init_params(d, m, seed=s), *make_data(N, d, seed=s), 0.25, steps, target)
              for s in seeds]
        hit = [r["hit"] for r in rs]
        width.append({"m_over_N": ratio, "m": m, "lambda_min_init": _mean(r["lambda_min"] for r
                                                                          in rs),
                      "pl_certificate": min(r["lambda_min"] for r in rs) > 0,
                      "rate_observed": _mean(r["rate"] for r in rs), "reached": len(hit) -
                      hit.count(None), "steps_to_target": None if None in hit else np.mean(hit),
                      "rho_max": max(r["rho"] for r in rs)})
        say(f"  m/N = {ratio:g}: lambda_min(Z0 Z0^T) {width[-1]['lambda_min_init']:.2e}, "
            f"reached {width[-1]['reached']}/{len(seeds)}")
    say(f"gamma sweep: N = {N}, m = {2 * N}, d = {d}, gamma = fraction / ||A(0)||_2")
    for frac in fractions:
        gammas = [frac / norm_bound(init_params(d, 2 * N, seed=s).A) for s in seeds]
        rs = [_run(init_params(d, 2 * N, seed=s), *make_data(N, d, seed=s), g, steps, target)
              for s, g in zip(seeds, gammas)]
        scale.append({"fraction": frac, "gamma": float(np.mean(gammas)), "runs": len(rs),
                      "rho_max": max(r["rho"] for r in rs),
                      "rho_end_exact": max(r["rho_end"] for r in rs),
                      "well_posed_runs": sum(r["ok"] for r in rs),
                      "loss_ratio_final": math.exp(_mean(math.log(r["ratio"]) for r in rs)),
                      "forward_sweeps_per_step": _mean(r["sweeps"] for r in rs)})
        say(f"  gamma ||A(0)||_2 = {frac:g}: max certified rho {scale[-1]['rho_max']:.4f}, "
            f"well-posed in {scale[-1]['well_posed_runs']}/{len(rs)} runs")
    return {"N": N, "d": d, "seeds": seeds, "steps": steps, "target": target, "width": width,
            "scale": scale, "seconds": time.perf_counter() - start}

def format_sweep(result):
    """The two tables of sweep() as text."""
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
    lines += ["", f"Scale (N = {result['N']}, m = {2 * result['N']}, gamma = fraction / "
              f"||A(0)||_2, until {result['target']:g} of the initial loss or {result['steps']} "
              "steps):", "  gamma||A(0)||  gamma   max certified gamma||A(t)||  exact at end  "
              "well-posed  loss/loss0  sweeps/step"]
    for r in result["scale"]:
        lines.append(f"  {r['fraction']:<13g} {r['gamma']:.4f}  {r['rho_max']:>27.4f}  "
                     f"{r['rho_end_exact']:>12.4f}  {r['well_posed_runs']:>4d}/{r['runs']:<5d}  "
                     f"{r['loss_ratio_final']:>10.2e}  {r['forward_sweeps_per_step']:>11.1f}")
    return "\n".join(lines)

# ---- widths: the title claim, a width linear in N, across N ----

def _crossing(ratios, values, level=0.5):
    """The smallest m / N at which values reach level, linear in log(m / N) between grid
    points; None if never."""
    for k, (r, v) in enumerate(zip(ratios, values)):
        if v >= level:
            return float(r) if k == 0 else float(np.exp(np.interp(
                level, [values[k - 1], v], [math.log(ratios[k - 1]), math.log(r)])))
    return None

def _alpha(Ns, crossings):
    """alpha in m* ~ N^alpha, m* = crossing N: the least-squares slope in log-log (nan if the
    crossings of fewer than 2 N are known)."""
    pts = [(math.log(N), math.log(c * N)) for N, c in zip(Ns, crossings) if c is not None]
    return float(np.polyfit(*zip(*pts), 1)[0]) if len(pts) > 1 else math.nan

def widths(*, Ns=(16, 32, 64, 128, 256), d=16, gamma=0.25, ratios=(1, 1.5, 2, 3, 4, 6, 8),
           seeds=(0, 1, 2), train_max_N=64, target=1e-8, cap=1000, quiet=False):
    """The width claim across N. For each N and seed s (make_data(N, d, s), init_params(d, m,
    s)): lambda_0 = lambda_min(K) and the ratio lambda_min(Z0 Z0^T) / (m lambda_0) at m = ratio
    N; m*(N) / N, the smallest ratio at which every seed's reaches 1/2; alpha in m* ~ N^alpha,
    m* interpolated in log(m / N) at its crossing of 1/2 (per seed too, for the spread). Then GD
    at m*(N) for N <= train_max_N, seed seeds[0], lr = 1 / ||Z(0)||_2^2, for 2 ln(1 / target) /
    (2 lr lambda_min(Theta_0)) steps, at most cap: its observed rate beside the PL rates 2 lr
    min_k lambda_min of Z Z^T and of Theta; "reached" target, else "still converging at rate"
    (the last quarter's, at least a tenth of Theta's), else "stalled"."""
    say, start = _say(quiet), time.perf_counter()
    d, gamma, seeds = _number("d", d, integer=True), _number("gamma", gamma), list(seeds)
    Ns, ratios = [_number("N", N, integer=True) for N in Ns], [_number("ratio", r) for r in ratios]
    target, cap = _number("target", target), _number("cap", cap, integer=True)
    if len(Ns) < 2 or not seeds or ratios != sorted(ratios):
        raise ValueError("widths needs two N or more, a seed, and ratios in increasing order")
    lam0 = {(N, s): kernel(make_data(N, d, seed=s)[0], gamma)[1]["lambda_0"] for N in Ns
            for s in seeds}
    done = {}  # the timed samples below are kept
    def ratio(N, r, s):  # lambda_min(Z0 Z0^T) / (m lambda_0)
        if (N, r, s) not in done:
            m = max(1, round(r * N))
            Z0 = equilibrium(init_params(d, m, seed=s), make_data(N, d, seed=s)[0], gamma)[0]
            done[N, r, s] = lambda_min(Z0) / (m * lam0[N, s])
        return done[N, r, s]
    cost = [time.perf_counter()]  # 3 samples of the largest Z0: ~ m^3 (norm_bound) + N m^2
    for s in (seeds * 3)[:3]:
        ratio(Ns[-1], ratios[-1], s)
        cost.append(time.perf_counter())
    m1 = ratios[-1] * Ns[-1]
    estimate = float(np.median(np.diff(cost))) * len(seeds) * sum(
        ((r * N) ** 3 + N * (r * N) ** 2) / (m1**3 + Ns[-1] * m1**2) for N in Ns for r in ratios)
    trained = [N for N in Ns if N <= train_max_N]
    if trained:  # and 3 samples of a cold GD step at the largest trained N and m, ~ N m^2
        (X, y), p = make_data(trained[-1], d, seed=0), init_params(d, round(ratios[-1] * trained[
            -1]), seed=0)
        step = float(np.median(timeit.repeat(lambda: loss_and_grad(p, X, y, gamma), number=1,
                                             repeat=3)))
        estimate += step * cap * sum((N / trained[-1]) ** 3 for N in trained)
    if estimate > 30:
        say(f"estimated time: up to about {estimate:.0f} s (medians of 3 timed solves and 3 "
            f"timed GD steps; GD at most {cap} steps)")
    rows, training = [], []
    for N in Ns:
        grid = np.array([[ratio(N, r, s) for r in ratios] for s in seeds])  # (seeds, ratios)
        every = [r for r, col in zip(ratios, grid.T) if (col >= 0.5).all()]
        rows.append({"N": N, "lambda_0": float(np.mean([lam0[N, s] for s in seeds])),
                     "ratio": grid.mean(0).tolist(), "ratio_seeds": grid.tolist(),
                     "m_star_over_N": every[0] if every else None,
                     "crossing": _crossing(ratios, grid.min(0)),
                     "crossing_seeds": [_crossing(ratios, row) for row in grid]})
        say(f"  N = {N}: lambda_0 {rows[-1]['lambda_0']:.2e}, m*/N {rows[-1]['m_star_over_N']}")
        if N <= train_max_N:
            training.append(_widths_gd(N, d, round((every or ratios)[0 if every else -1] * N),
                                       gamma, seeds[0], target, cap))
            say(f"  GD at N = {N}, m = {training[-1]['m']}: {training[-1]['outcome']}")
    alpha = _alpha(Ns, [row["crossing"] for row in rows])
    spread = [_alpha(Ns, [row["crossing_seeds"][k] for row in rows]) for k in range(len(seeds))]
    verdict = (f"{'linear' if abs(alpha - 1) <= 0.25 else 'NOT linear'} in N: alpha = {alpha:.2f}"
               f" (seeds {', '.join(f'{a:.2f}' for a in spread)})")
    return {"d": d, "gamma": gamma, "seeds": seeds, "ratios": ratios, "rows": rows,
            "alpha": alpha, "alpha_seeds": spread, "verdict": verdict, "training": training,
            "target": target, "cap": cap, "seconds": time.perf_counter() - start}

def _widths_gd(N, d, m, gamma, seed, target, cap):
    """One GD run of widths: rates per step, and its outcome."""
    (X, y), params = make_data(N, d, seed=seed), init_params(d, m, seed=seed)
    lr = 1.0 / np.linalg.norm(equilibrium(params, X, gamma)[0], 2) ** 2
    rate0 = 2 * lr * float(np.linalg.eigvalsh(gradient_gram(params, X, gamma))[0])
    steps, stop = min(cap, math.ceil(2 * math.log(1 / target) / rate0)), None
    try:
        hist = gradient_descent(params, X, y, gamma, lr=lr, steps=steps, target=target,
                                lambda_min=True, lambda_theta=True)[1]
    except TrainingError as e:
        hist, stop = e.history, f"stopped: {e.reason}"
    loss, k = hist["loss"], len(hist["loss"]) - 1
    rate = linear_rate(loss, np.arange(k + 1)) if k > 0 else math.nan
    end = linear_rate(loss[3 * k // 4:], np.arange(3 * k // 4, k + 1)) if k > 3 else math.nan
    theta = 2 * lr * float(hist["lambda_theta"].min())
    outcome = stop or ("reached" if loss[-1] <= target * loss[0] else f"still converging at rate "
                       f"{end:.2e}" if end >= 0.1 * theta else f"stalled (rate {end:.1e})")
    return {"N": N, "m": m, "lr": lr, "steps": k, "rate_observed": rate, "outcome": outcome,
            "rate_pl_Z": 2 * lr * float(hist["lambda_min"].min()), "rate_pl_theta": theta}

def format_widths(result):
    """widths() as text."""
    lines = [f"lambda_min(Z0 Z0^T) / (m lambda_0), mean over seeds {result['seeds']} (d = "
             f"{result['d']}, gamma = {result['gamma']:g}); m*/N: every seed at 1/2 or more",
             "     N  lambda_0  m/N = " + "  ".join(f"{r:>4g}" for r in result["ratios"])
             + "   m*/N"]
    for row in result["rows"]:
        lines.append(f"  {row['N']:>4d}  {row['lambda_0']:.2e}        " + "  ".join(
            f"{v:>4.2f}" for v in row["ratio"]) + "   " + (f"{row['m_star_over_N']:g}" if
                                                             row["m_star_over_N"] else "> all"))
    lines += [result["verdict"], "", f"GD at m*(N), seed {result['seeds'][0]}, to "
              f"{result['target']:g} of the initial loss (rates per step; PL: 2 lr min_k "
              "lambda_min):", "     N     m  steps  observed  PL Z Z^T  PL Theta  outcome"]
    lines += [f"  {t['N']:>4d}  {t['m']:>4d}  {t['steps']:>5d}  {t['rate_observed']:>8.2e}  "
              f"{t['rate_pl_Z']:>8.2e}  {t['rate_pl_theta']:>8.2e}  {t['outcome']}"
              for t in result["training"]]
    return "\n".join(lines)

def _plot_widths(path, result):
    """The ratio against m / N, a curve per N (the seeds' range shaded): None, or the error."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in result["rows"]:
        line, = ax.plot(result["ratios"], row["ratio"], "o-", label=f"N = {row['N']}")
        seeds = np.array(row["ratio_seeds"])
        ax.fill_between(result["ratios"], seeds.min(0), seeds.max(0), color=line.get_color(),
                        alpha=0.15)
    ax.axhline(0.5, color="k", lw=0.8, ls=":", label="1/2, which defines m*(N)")
    ax.set(xscale="log", xlabel="m / N", ylabel="lambda_min(Z0 Z0^T) / (m lambda_0)", ylim=(0, 1),
           title=f"d = {result['d']}, gamma = {result['gamma']:g}: {result['verdict']}")
    ax.set_xticks(result["ratios"], [f"{r:g}" for r in result["ratios"]])
    ax.legend(fontsize=8)
    return _save(fig, path)

# ---- bench: the cost of one loss + gradient against the GEMM-bound limit ----

def _peak_words(fn, words):
    """Peak memory fn allocates (tracemalloc, which NumPy reports to), in units of `words`."""
    import tracemalloc
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return (tracemalloc.get_traced_memory()[1] - base) / 8 / words
    finally:
        tracemalloc.stop()

def bench(*, N=1024, m=1024, d=64, repeats=5, seed=0, pairs=3, quiet=False):
    """One loss_and_grad against the limit (K_f + K_b + 3) t_gemm, where K_f, K_b are its sweeps
    (each one (N x m)(m x m) product), 3 counts gamma G^T Z, G^T X and X W^T generously, and
    t_gemm is one product, timed interleaved with it: gemm_ratio. Also its peak memory at 12
    and about 32 sweeps, warm against cold GD in wall time (medians of `pairs` alternating
    runs) at N/4, m/2 over 40 steps and at the demo's problem to its target."""
    say, start, gamma = _say(quiet), time.perf_counter(), 0.25
    repeats, pairs = _number("repeats", repeats, True), _number("pairs", pairs, True)
    _fits(f"bench with N = {N}, m = {m}", N, d, m)
    (X, y), params = make_data(N, d, seed=seed), init_params(d, m, seed=seed)
    def cost(n, mm, dd):  # seconds of one cold loss_and_grad, the median of 3
        p, (Xc, yc) = init_params(dd, mm, seed=seed), make_data(n, dd, seed=seed)
        return float(np.median(timeit.repeat(lambda: loss_and_grad(p, Xc, yc, gamma), number=1,
                                             repeat=3)))
    _, _, info = loss_and_grad(params, X, y, gamma, return_info=True)  # also warms BLAS up
    t, t_quarter, t_demo = cost(N, m, d), cost(max(1, N // 4), max(1, m // 2), d), cost(32, 64, 16)
    say(f"bench: N = {N}, m = {m}, d = {d}, gamma = {gamma}, tol = 1e-12, median of {repeats}; "
        f"estimated time about {(repeats + 6) * t + pairs * 82 * t_quarter:.0f} s, and up to "
        f"{pairs * 6000 * t_demo:.0f} s more at the demo's problem (a cold step timed 3 times)\n"
        f"  timing one loss_and_grad against one product, {repeats} times interleaved ...")
    Z, out = np.random.default_rng(seed).standard_normal((N, m)), np.empty((N, m))  # (N, m)
    k_f, k_b = info["forward"]["iterations"], info["adjoint"]["iterations"]
    t_gemm, t_norm, t = [], [], []
    for _ in range(repeats):  # interleaved: all three see the same load
        t_gemm.append(np.median(timeit.repeat(lambda: np.matmul(Z, params.A.T, out=out),
                                              number=1, repeat=3)))
        t_norm.append(timeit.timeit(lambda: norm_bound(params.A), number=1))
        t.append(timeit.timeit(lambda: loss_and_grad(params, X, y, gamma), number=1))
    t_gemm, t_norm, t = (float(np.median(ts)) for ts in (t_gemm, t_norm, t))
    ratio, norm_share = t / ((k_f + k_b + 3) * t_gemm), t_norm / ((k_f + k_b + 3) * t_gemm)
    say(f"  one (N x m)(m x m) product: {t_gemm * 1e3:.2f} ms; norm_bound(A): {t_norm * 1e3:.1f} ms"
        f"\n  loss_and_grad: {t * 1e3:.1f} ms, K_f = {k_f}, K_b = {k_b} sweeps; time / ((K_f + "
        f"K_b + 3) t_gemm) = {ratio:.3f}, of which norm_bound(A) {norm_share:.3f}")
    say("  peak memory of one loss_and_grad at tol 1e-4 and 1e-12 ...")
    memory = {}  # in (N m + m^2) float64 words, and the sweeps
    for tol in (1e-4, 1e-12):
        solves = loss_and_grad(params, X, y, gamma, tol=tol, return_info=True)[2]
        memory[tol] = (_peak_words(lambda: loss_and_grad(params, X, y, gamma, tol=tol),
                                   N * m + m * m),
                       solves["forward"]["iterations"] + solves["adjoint"]["iterations"])
    say("  peak extra memory of one loss_and_grad: " + ", ".join(
        f"{w:.2f} (N m + m^2) words at tol {tol:g} ({s} sweeps)" for tol, (w, s) in memory.items()))

    def warm_cold(n, mm, dd, steps, target):
        """Median wall time of GD warm over cold, in `pairs` alternating runs; sweep ratio."""
        (Xw, yw), pw = make_data(n, dd, seed=seed), init_params(dd, mm, seed=seed)
        Zw, _ = equilibrium(pw, Xw, gamma)
        say(f"  warm against cold GD at N = {n}, m = {mm}, d = {dd}, {pairs} pairs ...")
        if not Zw.any():  # every unit off: no gradient, lr = 1 / ||Z(0)||^2 undefined
            say("  warm/cold: not run: Z(0) = 0 (every ReLU unit off at initialisation)")
            return math.nan, math.nan
        lr = 1.0 / np.linalg.norm(Zw, 2) ** 2
        ratios, hist, seconds = [], {}, {}
        for _ in range(pairs):
            for warm in (True, False):
                tick = time.perf_counter()
                hist[warm] = gradient_descent(pw, Xw, yw, gamma, lr=lr, steps=steps,
                                              target=target, warm_start=warm)[1]
                seconds[warm] = time.perf_counter() - tick
            ratios.append(seconds[True] / seconds[False])
        h, per_step = hist[True], {w: (h["forward_iters"][1:] + h["adjoint_iters"][1:]).mean()
                                   for w, h in hist.items()}
        say(f"  warm/cold GD at N = {n}, m = {mm}, d = {dd}, {len(h['loss']) - 1} steps: wall "
            f"time {np.median(ratios):.3f} (pairs: {', '.join(f'{q:.3f}' for q in ratios)}); "
            f"sweeps per step {per_step[True]:.2f} warm, {per_step[False]:.2f} cold")
        return float(np.median(ratios)), float(per_step[True] / per_step[False])

    time_ratio, sweep_ratio = warm_cold(max(1, N // 4), max(1, m // 2), d, 40, None)
    time_ratio_demo, sweep_ratio_demo = warm_cold(32, 64, 16, 3000, 1e-10)
    return {"N": N, "m": m, "d": d, "repeats": repeats, "k_forward": k_f, "k_adjoint": k_b,
            "seconds_loss_and_grad": t, "t_gemm": t_gemm, "t_norm_bound": t_norm,
            "gemm_ratio": ratio, "gemm_ratio_norm_bound": norm_share, "peak_extra_words_tol_1e-4":
            memory[1e-4][0], "peak_extra_words": memory[1e-12][0], "sweeps_tol_1e-4":
            memory[1e-4][1], "sweeps": memory[1e-12][1], "warm_cold_time_ratio": time_ratio,
            "warm_cold_sweep_ratio": sweep_ratio, "warm_cold_time_ratio_demo": time_ratio_demo,
            "warm_cold_sweep_ratio_demo": sweep_ratio_demo, "seconds": time.perf_counter() - start}

# ---- golden vectors: export for other implementations, verify theirs ----
#
# A plain .npz (zip of .npy members, never unpickled), format version 1:
#   meta/version () = 1, meta/cases () = C                                    integers
#   case{c}/A (m, m), W (m, d), v (m,), X (N, d), y (N,), gamma ()            inputs
#   case{c}/Z (N, m), yhat (N,), loss (), dA (m, m), dW (m, d), dv (m,)       outputs at theta
#   case{c}/dX (N, d), dPhi/dX = G W: optional (older files lack it; verify names it unchecked)
#   optional, all or none, a GD trajectory: case{c}/train (3,) (1 where A, W, v move), lr (),
#     steps (), gd_A, gd_W, gd_v (theta after `steps` steps), gd_loss (steps + 1,)
#   optional: case{c}/tol (), the tolerance the writer solved to
# Arrays are real numbers (bool, int or float, any byte order), .npy format 1.0 or 2.0. Any
# other key is a problem, named.

GOLDEN_VERSION = 1
INPUTS, OUTPUTS = ("A", "W", "v", "X", "y", "gamma"), ("Z", "yhat", "loss", "dA", "dW", "dv", "dX")
GD_INPUTS, GD_OUTPUTS = ("train", "lr", "steps"), ("gd_A", "gd_W", "gd_v", "gd_loss")
UNCHECKED_IF_ABSENT = ("dX",)  # outputs that older files lack: named as not checked
CASE_KEYS = INPUTS + OUTPUTS + GD_INPUTS + GD_OUTPUTS + ("tol",)
REFERENCE_TOL = 1e-13  # the tolerance export solves at, and verify first tries
KINK_NOTE = "at a ReLU kink: compared under ReLU'(0) = 0"
# verify's work model of a case, in multiply-adds (~0.05 ns each here): a fixed 2^25 (reading
# its members, the Python around it: ~1.5 ms), two eigensolves for rho (4 m^3), and per GD step
# a fixed 2^22, the N m d products, and (2 S + 2) passes of N m (m + 10): S sweeps a solve can
# need (_sweeps), for the equilibrium and the adjoint, and the gradients' products
CASE_WORK = "2^25 + 4 m^3 + (steps + 1) (2^22 + 4 N m d + (2 S + 2) N m (m + 10))"
DIRECTORY_FACTOR = 16  # the zip's directory, parsed, takes up to ~16 times its bytes in memory

def _canonical_cases(seed=0):
    """The canonical cases, [(name, inputs)]: a kink (a dead unit), frozen parameters, m = N and
    m < N, a tiny gamma, the edge of well-posedness with an oscillating spectrum."""
    specs = [  # name, N, d, m, gamma, the parameters GD trains, lr, steps (0: no trajectory)
        ("tiny", 3, 2, 4, 0.25, PARAM_NAMES, 0.05, 3), ("tiny gamma", 8, 3, 16, 0.01, (), 0, 0),
        ("near the edge, oscillating", 16, 4, 8, 0.25, (), 0, 0),
        ("m < N", 20, 5, 8, 0.25, (), 0, 0), ("A frozen", 10, 4, 24, 0.25, ("W", "v"), 0.02, 5),
        ("medium", 64, 16, 128, 0.25, (), 0, 0),
        ("dead unit", 8, 3, 10, 0.25, PARAM_NAMES, 0.02, 3),
        ("W frozen", 10, 4, 24, 0.25, ("A", "v"), 0.02, 5),
        ("v frozen", 10, 4, 24, 0.25, ("A", "W"), 0.02, 5), ("m = N", 12, 4, 12, 0.25, (), 0, 0)]
    cases = []
    for c, (name, N, d, m, gamma, train, lr, steps) in enumerate(specs):
        rng = np.random.default_rng(seed + c)  # no BLAS or libm below: the same bits anywhere
        X = rng.standard_normal((N, d))  # (N, d)
        X /= np.sqrt((X * X).sum(axis=1, keepdims=True))
        y = rng.standard_normal(N)  # (N,)
        A, W, v = init_params(d, m, seed=seed + c)
        if name.startswith("near"):  # spectrum of gamma A: -0.96 once, -0.48: Picard oscillates
            A = -(0.96 / (2 * gamma)) * (np.eye(m) + 1.0 / m)
        if name == "dead unit":  # unit 0 gets no input and feeds no unit: H[:, 0] = 0 exactly
            A[0, :], A[:, 0], W[0] = 0.0, 0.0, 0.0
        case = {"A": A, "W": W, "v": v, "X": X, "y": y, "gamma": np.float64(gamma)}
        if steps:
            case.update(train=np.array([float(p in train) for p in PARAM_NAMES]),
                        lr=np.float64(lr), steps=np.int64(steps))
        cases.append((name, case))
    return cases

def _golden_outputs(case, tol):
    """A case's outputs from its inputs (the API checks them), and whether its mask is certified.
    Z comes from the gradient's own solve."""
    (A, W, v), X, gamma, rho, tol, max_iter, _ = _forward_args(
        Params(case["A"], case["W"], case["v"]), case["X"], case["gamma"], tol, 10_000, None)
    y = _array("y", case["y"], (len(X),))
    theta = Params(A, W, v)
    loss, grads, s = _loss_and_grad(theta, X, y, gamma, rho, PARAM_NAMES, tol, max_iter)
    certified = _grad_bounds(theta, X, gamma, rho, s)[1]
    out = {"Z": s["Z"], "yhat": s["Z"] @ v, "loss": np.float64(loss), "dA": grads.A,
           "dW": grads.W, "dv": grads.v, "dX": s["G"] @ W}
    if "train" in case:
        train = tuple(p for p, t in zip(PARAM_NAMES, case["train"]) if t)
        final, hist = gradient_descent(theta, X, y, gamma, lr=case["lr"], steps=case["steps"],
                                       train=train, tol=tol)
        out.update(gd_A=final.A, gd_W=final.W, gd_v=final.v, gd_loss=hist["loss"])
    return out, certified

def export_golden(path, seed=0, inputs_only=False):
    """Write the canonical cases to path; inputs_only: the inputs alone. Returns their number."""
    cases = _canonical_cases(_number("seed", seed, integer=True, zero=True))
    arrays = {"meta/version": np.int64(GOLDEN_VERSION), "meta/cases": np.int64(len(cases))}
    for c, (_, case) in enumerate(cases):
        if not inputs_only:  # at 1e-13, or the tightest tol float64 certifies (near the edge)
            (outputs, _), tol = _tightest(lambda t: _golden_outputs(case, t), REFERENCE_TOL)
            case = {**case, **outputs, "tol": tol}
        arrays.update({f"case{c}/{key}": np.asarray(value) for key, value in case.items()})
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return len(cases)

def _directory_bytes(path):
    """The size of a zip's central directory, from its end record (zip64's too); None if the
    record is not found (zipfile then says why)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 22 - 65535))  # the end record, 22 bytes, and its comment
        tail = f.read()
        i = tail.rfind(b"PK\x05\x06")
        if i < 0 or len(tail) < i + 22:
            return None
        size = int.from_bytes(tail[i + 12:i + 16], "little")
        if size == 0xFFFFFFFF and i >= 20 and tail[i - 20:i - 16] == b"PK\x06\x07":  # zip64
            f.seek(int.from_bytes(tail[i - 12:i - 4], "little"))
            record = f.read(56)
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                size = int.from_bytes(record[40:48], "little")
    return size

def _members(zf, max_bytes, problems, total=0):
    """Every member's .npy header, read and checked before any data: {key: (info, shape)}.
    A member counts its uncompressed size, the larger of its header's and the zip's."""
    members = {}
    for info in zf.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        try:
            if info.flag_bits & 1 or info.compress_type not in (0, 8):  # stored or deflated
                raise ValueError(f"compression method {info.compress_type}" + (
                    ", encrypted" if info.flag_bits & 1 else "") + " is not supported")
            with zf.open(info) as f:  # the header only: a few hundred bytes
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f".npy format version {version} is not 1.0 or 2.0")
                shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                                   np.lib.format.read_array_header_2_0)(f)
        except (ValueError, OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error) as e:
            problems.append(f"{key}: not a readable .npy member ({e})")
            continue
        if dtype.hasobject or dtype.kind not in "biuf":
            problems.append(f"{key}: dtype {dtype} is not a real number type")
            continue
        size = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        total += max(size, info.file_size)
        members[key] = (info, shape)
    if total > max_bytes:
        problems.append(f"refused: the members hold {total / 2**20:.4g} MB uncompressed, over "
                        f"max_mb = {max_bytes / 2**20:g}")
        return {}
    return members

def _fingerprint(case, keys):
    """SHA-256 of a case's inputs as float64: equal exactly when the inputs are identical."""
    return hashlib.sha256(b"".join(str(np.shape(case[k])).encode() + np.asarray(
        case[k], np.float64).tobytes() for k in keys)).digest()

def verify_golden(path, rtol=1e-8, *, canonical=False, max_mb=64, max_work=3e11):
    """error = max |ours - theirs| / max |ours| per case and quantity, ours recomputed from the
    file's inputs at the tightest tol certified: 1e-13 where float64 allows, and there the
    limit is rtol, else max(rtol, 10 solve_tol). At a ReLU kink: compared under ReLU'(0) = 0.
    NaN in theirs: error nan, a failure. Before any data is read, a file is refused (a named
    problem) over max_mb, counting the members uncompressed, DIRECTORY_FACTOR times the zip's
    directory, and a case's solve (eight (N, m) float64 arrays), or over max_work, the sum of
    CASE_WORK (the sweeps S from each case's certified rho: one eigensolve, before any sweep).
    A case without all its outputs, or with Z not (N, m), is not solved; one without dX (an
    older file) is, and dX is named in not_checked. Returns a dict: passed; rows, (case,
    quantity, error, limit, passed, note); problems, each a named line; cases, per solved case
    solve_tol, kink, canonical (its canonical name, or None) and canonical_note (always a
    sentence), not_checked; canonical: reproduced, missing, and reasons {name: why not}. Raises
    OSError or ValueError if path is not a readable .npz at all."""
    rtol, max_mb, max_work = map(_number, ("rtol", "max_mb", "max_work"), (rtol, max_mb, max_work))
    if not os.path.isfile(path):
        raise OSError(f"{path}: " + ("a directory" if os.path.isdir(path) else "no such file"))
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            kind = "a single .npy array, not" if f.read(6) == b"\x93NUMPY" else "not"
        raise ValueError(f"{path}: {kind} an .npz (zip) archive")
    rows, problems, cases, prints, seen, max_bytes = [], [], {}, {}, {}, max_mb * 2**20
    canonical_count = len(_canonical_cases())  # case0, ...: where export writes them
    directory = _directory_bytes(path) or 0
    if DIRECTORY_FACTOR * directory > max_bytes:  # zipfile would parse it all, at once
        problems.append(f"refused: the zip's directory is {directory / 2**20:.4g} MB, and "
                        f"parsed ({DIRECTORY_FACTOR}x) over max_mb = {max_mb:g}: too many members")
        return _report(rows, problems, cases, prints, seen, canonical)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as e:
        raise ValueError(f"{path}: not a readable zip archive ({e})") from None
    with zf:
        members = _members(zf, max_bytes, problems, DIRECTORY_FACTOR * directory)

        def get(key, shape=None, problems=problems):
            if key not in members:
                problems.append(f"missing key {key}")
                return None
            try:
                with zf.open(members[key][0]) as f:
                    a = np.lib.format.read_array(f, allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                problems.append(f"{key}: cannot be read ({e})")
                return None
            if shape is not None and a.shape != shape:
                problems.append(f"{key}: shape {a.shape}, expected {shape}")
                return None
            return a
        names = [] if problems and not members else _case_names(  # an empty zip: meta/ missing
            members, get, problems, max_work, max_bytes)
        for c, name in enumerate(names):
            gd = [f"{name}/{k}" in members for k in GD_INPUTS + GD_OUTPUTS]
            if any(gd) and not all(gd[:3]):
                problems.append(f"{name}: a GD trajectory needs all of {', '.join(GD_INPUTS)}")
                continue
            gd = all(gd[:3])  # then the outputs must be there too
            keys = INPUTS + GD_INPUTS * gd
            case = {k: get(f"{name}/{k}", () if k in ("gamma", "lr", "steps") else None)
                    for k in keys}
            if c < canonical_count:  # where export writes canonical case c: its bits
                seen[name] = {k: _fingerprint(case, [k]) for k in keys if case[k] is not None}
            if any(value is None for value in case.values()):
                continue
            prints.update({_fingerprint(case, INPUTS): name, _fingerprint(case, keys): name})
            outputs = OUTPUTS + GD_OUTPUTS * gd  # all there, and Z (N, m), before solving:
            absent = [k for k in outputs if f"{name}/{k}" not in members]  # Z bounds the memory
            unchecked = [k for k in absent if k in UNCHECKED_IF_ABSENT]
            absent = [k for k in absent if k not in unchecked]
            shape = np.shape(case["X"])[:1] + np.shape(case["A"])[:1]
            if absent or members[f"{name}/Z"][1] != shape:
                problems.append(f"{name}: not solved: " + (f"missing {', '.join(absent)}" if absent
                                else f"Z: shape {members[name + '/Z'][1]}, expected {shape}"))
                continue
            try:
                if gd and (case["train"].shape != (3,) or not set(case["train"].flat) <= {0, 1}):
                    raise ValueError(f"train must be 3 entries of 0 or 1, got {case['train']!r}")
                (ours, certified), tol = _tightest(lambda t: _golden_outputs(case, t),
                                                   REFERENCE_TOL)
            except (TypeError, ValueError, ArithmeticError, RuntimeError) as e:
                problems.append(f"{name}: inputs refused: {e}")
                continue
            limit = rtol if tol == REFERENCE_TOL else max(rtol, 10 * tol)
            cases[name] = {"solve_tol": tol, "kink": not certified, "canonical": None,
                           "canonical_note": "not a canonical case: its inputs are no canonical "
                           "case's, bit for bit", "not_checked": unchecked}
            for key in unchecked:
                del ours[key]
            for key, value in ours.items():
                theirs = get(f"{name}/{key}", np.shape(value))
                if theirs is not None:  # in place: no more memory
                    err = _relative_error(value, theirs.astype(np.float64, copy=False))
                    note = [] if certified or key in ("Z", "yhat", "loss", "dv") else [
                        KINK_NOTE if err <= limit else "differs at a ReLU kink"]
                    note += [] if tol == REFERENCE_TOL else [f"solved to {tol:g}: limit {limit:g}"]
                    note += ["theirs holds NaN"] if math.isnan(err) else []
                    rows.append((name, key, err, limit, err <= limit, "; ".join(note)))
    return _report(rows, problems, cases, prints, seen, canonical)

def _relative_error(ours, theirs):
    """max |ours - theirs| / max |ours|, nan where theirs has a nan; theirs is overwritten."""
    with np.errstate(invalid="ignore", over="ignore"):
        theirs -= ours
        err = float(np.abs(theirs, out=theirs).max())
    return err / (max(float(ours.max()), -float(ours.min())) or 1.0)

def _report(rows, problems, cases, prints, seen, canonical):
    """verify_golden's result: for each canonical case, the file's case with its inputs bit for
    bit (prints), whether it is reproduced, and if not, why (seen: the bits of case0, ...)."""
    reproduced, missing, reasons = [], [], {}
    for c, (canon, case) in enumerate(_canonical_cases()):
        keys = [k for k in INPUTS + GD_INPUTS if k in case]
        name, at = prints.get(_fingerprint(case, keys)), f"case{c}"
        failing = [f"{r[1]} (error {r[2]:.3g}, limit {r[3]:g})" for r in rows
                   if r[0] == name and not r[4]]
        own = [p for p in problems if name and p.startswith((f"{name}:", f"{name}/"))]
        if name in cases and not failing and not own:
            reproduced.append(canon)
            cases[name].update(canonical=canon, canonical_note=f"reproduces {canon!r}")
            continue
        if name is not None:
            why = f"{name} has its inputs; " + "; ".join(
                [f"it fails {', '.join(failing)}"] * bool(failing) + own)
            if name in cases:
                cases[name].update(canonical=canon, canonical_note=f"not reproduced: {why}")
        elif at in seen:
            differ = [k for k in keys if k in seen[at] and seen[at][k] != _fingerprint(case, [k])]
            lack = [k for k in keys if k not in seen[at]]
            what = "; ".join([f"differs in {', '.join(differ)}"] * bool(differ) +
                             [f"lacks {', '.join(lack)}"] * bool(lack))
            why = f"no case has its inputs bit for bit; {at}, where export writes it, {what}"
            if at in cases:
                cases[at]["canonical_note"] = f"not a canonical case: against {canon!r}, it {what}"
        elif not seen:
            why = "not compared: no case was read (see the problems)"
        else:
            why = f"no case has its inputs bit for bit, and the file has no {at} to compare"
        missing.append(canon)
        reasons[canon] = why
    if canonical and missing:
        problems.append("canonical cases missing or failing: " + "; ".join(
            f"{canon!r} ({reasons[canon]})" for canon in missing))
    return {"passed": bool(rows) and not problems and all(r[4] for r in rows), "rows": rows,
            "problems": problems, "cases": cases,
            "canonical": {"reproduced": reproduced, "missing": missing, "reasons": reasons}}

def _sweeps(rho, tol=REFERENCE_TOL, max_iter=10_000):
    """S, the sweeps one solve can need, retry included, at rate rho (_fixed_point's stop rules).
    From a cold start delta_1 <= 2 ||S*|| and delta_k <= rho^(k-1) delta_1. It certifies tol by
    k_tol = log(tol (1 - rho) / 4) / log(rho), unless rounding blocks it: delta reaches float64's
    floor by k_floor = 1 + log(eps / 2) / log(rho), and it stops patience = 10 + 2 / (1 - rho)
    sweeps later; _tightest then solves again at the tol it certified, in no more sweeps. Each
    try stops at max_iter: S <= max(min(max_iter, k_tol), 2 min(max_iter, k_floor + patience))."""
    rho = max(rho, EPS)
    k_tol = math.log(tol * (1 - rho) / 4) / math.log(rho)
    k_floor = 1 + math.log(EPS / 2) / math.log(rho) + 10 + 2 / (1 - rho)
    return math.ceil(max(min(max_iter, k_tol), 2 * min(max_iter, k_floor)))

def _case_names(members, get, problems, max_work, max_bytes):
    """The case prefixes, if meta/ agrees with the file and the limits hold (else [])."""
    version, count = get("meta/version", ()), get("meta/cases", ())
    present = sorted({key.split("/")[0] for key in members if key.startswith("case")},
                     key=lambda prefix: (len(prefix), prefix))  # case2 before case10
    if version is None or count is None:
        return []
    if version.dtype.kind not in "iu" or version != GOLDEN_VERSION:
        problems.append(f"meta/version is {version.item()!r}; this verify reads the integer "
                        f"{GOLDEN_VERSION}")
        return []
    if count.dtype.kind not in "iu" or not 1 <= count <= len(present) or \
            set(present) != {f"case{c}" for c in range(int(count))}:
        wanted = "case0/..." + (f" to case{int(count) - 1}/..." if count.dtype.kind in "iu" and
                                2 <= count <= 10**6 else "")
        found = ", ".join(f"{p}/..." for p in present[:4]) + ", ..." * (len(present) > 4)
        problems.append(f"meta/cases = {count.item()!r} does not match the file: expected the "
                        f"keys {wanted} (case{{c}}/A, W, ...); found {len(present)} case "
                        f"prefixes: {found or 'none'}")
        return []
    names = [f"case{c}" for c in range(int(count))]
    problems += [f"{key}: unknown key (a case holds {', '.join(CASE_KEYS)})" for key in
                 members if key not in ("meta/version", "meta/cases") and key.partition("/")[2]
                 not in CASE_KEYS]
    sizes = []  # N, m, d, steps; then the work with one sweep a solve: a bound from below
    for name in names:
        steps = get(f"{name}/steps", ()) if f"{name}/steps" in members else 0
        steps = max(float(steps), 0.0) if steps is not None and np.isfinite(steps) else 0.0
        (m, _), (N, d) = ((members.get(f"{name}/{k}", (None, ()))[1] + (0, 0))[:2] for k in "AX")
        if 64 * N * m > max_bytes:  # a solve and its certificate: eight (N, m) arrays at once
            problems.append(f"refused: {name} needs eight ({N}, {m}) float64 arrays to solve, "
                            f"{64 * N * m / 2**20:.4g} MB, over max_mb = {max_bytes / 2**20:g}")
            return []
        sizes.append((N, m, d, steps))
    def work(sweeps):  # CASE_WORK
        return sum(2**25 + 4 * m**3 + (steps + 1) * (2**22 + 4 * N * m * d + (2 * S + 2) * N * m *
                   (m + 10)) for (N, m, d, steps), S in zip(sizes, sweeps))
    rhos, sweeps = None, [1] * len(names)  # first one sweep a solve: a bound before reading A
    for _ in range(2):
        if work(sweeps) > max_work:
            worst = None if rhos is None else max(range(len(names)), key=sweeps.__getitem__)
            problems.append(f"refused: the cases need {CASE_WORK} = {work(sweeps):.3g} multiply-"
                            f"adds{' at least' * (rhos is None)}, over max_work = {max_work:g}"
                            + ("" if worst is None else f" (S = {sweeps[worst]} sweeps in "
                               f"{names[worst]}, whose certified rho is {rhos[worst]:.6g})"))
            return []
        if rhos is None:  # the sweeps from each case's certified rho, before any sweep
            rhos = [_case_rho(get, name) if all(f"{name}/{k}" in members for k in OUTPUTS[:6])
                    else math.nan for name in names]  # not solved without its outputs
            sweeps = [_sweeps(rho) if 0 <= rho < 1 else 0 for rho in rhos]
    return names

def _case_rho(get, name):
    """gamma norm_bound(A) of a case, the solve's own rho; nan where the inputs would be refused
    (the solve then names why, before any sweep)."""
    quiet = []
    A, gamma = get(f"{name}/A", problems=quiet), get(f"{name}/gamma", (), problems=quiet)
    try:
        return _number("gamma", gamma) * norm_bound(A)
    except (TypeError, ValueError, ArithmeticError):
        return math.nan

# ---- one call for another project's tests ----

CHECKED = ("Z", "yhat", "loss", "dA", "dW", "dv", "dX")  # what fn may return

def check_implementation(fn, *, rtol=1e-8, step=None):
    """Another implementation against the oracle, on every canonical case, in one call:
        fn(inputs) -> {"Z": ..., "dA": ..., ...}   any of Z, yhat, loss, dA, dW, dv, dX
        step(inputs, lr, train) -> {"A": ..., "W": ..., "v": ...}   one GD step (optional)
    inputs: A, W, v, X, y as float64 arrays (copies), gamma a float. Values: anything
    numpy.asarray takes (torch: t.detach().cpu().numpy(); JAX: np.asarray(x)). step is run
    `steps` times on the cases with a trajectory, with train a tuple such as ("W", "v"); a
    frozen parameter must come back bit for bit. error = max |ours - theirs| / max |ours|, as
    verify's: at most rtol, or max(rtol, 10 tol) where float64 certifies only a looser tol.
    On a mismatch, AssertionError with a line per failing (case, quantity): error, limit and
    cause; also if fn returns none of them, or a key not among them. Returns the report:
    passed, rtol, cases {case: {quantity: {error, limit, note}}}, not_returned."""
    __tracebackhide__ = True  # pytest: show the caller's line and the message
    rtol = _number("rtol", rtol)
    if not callable(fn) or not (step is None or callable(step)):
        raise TypeError(f"fn must be callable, and step callable or None: got {fn!r}, {step!r}")
    cases, kinks = {}, set()
    for name, case in _canonical_cases():
        (ours, certified), tol = _tightest(lambda t: _golden_outputs(case, t), REFERENCE_TOL)
        limit = rtol if tol == REFERENCE_TOL else max(rtol, 10 * tol)
        inputs = {**{k: np.array(case[k], np.float64) for k in "AWvXy"},
                  "gamma": float(case["gamma"])}
        theirs = fn({k: np.copy(a) for k, a in inputs.items()})
        unknown = set(theirs) - set(CHECKED) if isinstance(theirs, dict) else {"(not a dict)"}
        if unknown:
            raise AssertionError(f"fn returned {sorted(unknown)} for case {name!r}: it returns a"
                                 f" dict of some of {', '.join(CHECKED)}")
        theirs = {q: a for q, a in theirs.items() if a is not None}
        if step is not None and "train" in case:
            theirs.update(_steps(step, name, case, inputs))
        cases[name] = {q: _compare(ours[q], theirs[q], limit) for q in ours if q in theirs}
        kinks |= set() if certified else {name}
    returned = {q for case in cases.values() for q in case}
    if not returned & set(CHECKED):
        raise AssertionError(f"fn returned none of {', '.join(CHECKED)}: nothing was checked")
    bad = {(name, q) for name, case in cases.items() for q, row in case.items()
           if not row["error"] <= row["limit"]}  # a nan fails
    lines = []
    for name, case in cases.items():
        for q, row in case.items():
            row["note"] = _cause(name, q, bad, cases, kinks) if (name, q) in bad else \
                KINK_NOTE if name in kinks and q[:2] in ("dA", "dW", "dX", "gd") else ""
            if (name, q) in bad:
                lines.append(f"{name} / {q}: error {row['error']:.3g} > {row['limit']:g}: "
                             + row["note"])
    missing = [q for q in CHECKED if q not in returned]
    if lines:
        raise AssertionError(f"{len(lines)} (case, quantity) differ from the oracle (not "
                             f"returned: {', '.join(missing) or 'none'}):\n  " + "\n  ".join(lines))
    return {"passed": True, "rtol": rtol, "cases": cases, "not_returned": missing}

def _compare(ours, value, limit):
    """{error, limit} (verify's error; inf, and the shape, for another shape than ours)."""
    theirs = np.array(value, dtype=np.float64)  # a copy: _relative_error overwrites it
    if theirs.shape != np.shape(ours):
        return {"error": math.inf, "limit": limit, "shape": theirs.shape}
    return {"error": _relative_error(ours, theirs), "limit": limit}

def _cause(name, q, bad, cases, kinks):
    """Why (case, q) fails, from the case's other quantities (the forward pass, the backward)
    and from q in the other cases: a kink explains q only if q passes wherever there is none."""
    forward = [k for k in ("Z", "yhat", "loss") if k in cases[name]]
    wrong = [k for k in forward if (name, k) in bad]
    if q.startswith("gd_"):
        return "the GD step differs" + "; the gradients differ too" * any(
            (name, k) in bad for k in ("dA", "dW", "dv"))
    if q in forward or wrong:
        return "the forward pass differs" + f" ({', '.join(wrong)})" * (q not in forward)
    if name in kinks and q in ("dA", "dW", "dX") and not any(
            (other, q) in bad for other in cases if other not in kinks):
        return ("differs at a ReLU kink: this case has H_ij = 0 exactly, and the oracle uses "
                "ReLU'(0) = 0")
    others = [k for k in ("dA", "dW", "dX") if k != q and k in cases[name]]
    formula = {"dA": "dA = gamma G^T Z", "dW": "dW = G^T X", "dX": "dX = G W"}.get(q)
    if formula and others and not any((name, k) in bad for k in others):
        return f"{' and '.join(others)} agree, so G does: {formula} differs"
    return (f"the forward pass agrees ({', '.join(forward)}), the backward differs" if forward
            else "the backward pass differs") + " (a ReLU kink here too)" * (name in kinks)

def _steps(step, name, case, inputs):
    """gd_A, gd_W, gd_v after case["steps"] steps of `step` from the inputs' theta; a frozen
    parameter that moves fails at once, named."""
    train = tuple(p for p, t in zip(PARAM_NAMES, case["train"]) if t)
    theta = {p: inputs[p] for p in PARAM_NAMES}
    for _ in range(int(case["steps"])):
        new = step({**{k: np.copy(a) for k, a in inputs.items()}, **{p: np.copy(a) for p, a in
                                                                     theta.items()}},
                   float(case["lr"]), train)
        new = {p: np.asarray(new[p], np.float64) for p in PARAM_NAMES}
        for p in set(PARAM_NAMES) - set(train):
            if new[p].tobytes() != theta[p].tobytes():
                raise AssertionError(f"{name} / gd_{p}: step moved {p}, which is frozen in this "
                                     f"case (train = {train})")
        theta = new
    return {"gd_" + p: theta[p] for p in PARAM_NAMES}

# ---- command line ----

def _integer(text):
    """An integer option: 1000 or an integral float spelling such as 1e3; 1.5 is refused."""
    try:
        value = float(text)
        if value.is_integer():
            return int(text) if text.strip().lstrip("+-").isdigit() else int(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"must be an integer (1000 or 1e3), got {text!r}")

def _parser():
    p = argparse.ArgumentParser(
        description="Gradient descent on an infinite-depth ReLU implicit "
        "network (Gao & Gao, arXiv:2205.07463): reference implementation and correctness oracle.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, help, seed=True):
        s = sub.add_parser(name, help=help, description=help)
        if seed:
            s.add_argument("--seed", type=_integer, default=0, help="random seed >= 0 (default 0)")
        s.add_argument("--json", action="store_true", help="print a JSON summary as the last "
                       "line ('error' if it fails; null for a number that is not finite)")
        return s

    s = add("demo", "train a linear-width network by GD and gradient flow, certify, summarise. "
            "Its cost grows like steps N m^2: about 1 s at the defaults, minutes at --n 200")
    s.add_argument("--n", type=_integer, default=32, help="samples N (default 32)")
    s.add_argument("--d", type=_integer, default=16, help="input dimension d (default 16)")
    s.add_argument("--m", type=_integer, default=None, help="width m (default 2 N)")
    s.add_argument("--gamma", type=float, default=0.25, help="scale gamma (default 0.25)")
    s.add_argument("--lr", type=float, default=None, help="GD step (default 1/||Z(0)||_2^2)")
    s.add_argument("--steps", type=_integer, default=3000, help="GD steps at most (default 3000)")
    s.add_argument("--dt", type=float, default=None, help="Euler step (default lr / 2)")
    s.add_argument("--plot", metavar="PATH", help="write the figure of the run: PNG, or PDF/SVG "
                   "by the extension (needs matplotlib; exit 1 if it cannot be written)")
    s = add("sweep", "width and gamma sweeps: the paper's two claims as tables (about 8 s; the "
            "cost grows like seeds steps N^3)")
    s.add_argument("--n", type=_integer, default=16, help="samples N (default 16)")
    s.add_argument("--d", type=_integer, default=8, help="input dimension d (default 8)")
    s.add_argument("--seeds", type=_integer, default=3, help="seeds per row (default 3)")
    s.add_argument("--steps", type=_integer, default=1500, help="GD steps per run (default 1500)")
    s = add("widths", "the title claim across N: lambda_min(Z0 Z0^T) / (m lambda_0) against m / N "
            "for N = 16 to 256, alpha in m* ~ N^alpha, and GD beside both PL rates (about 20 s)")
    s.add_argument("--d", type=_integer, default=16, help="input dimension d (default 16)")
    s.add_argument("--seeds", type=_integer, default=3, help="seeds per N (default 3)")
    s.add_argument("--plot", metavar="PATH", help="write the ratio against m / N, a curve per N "
                   "(needs matplotlib; exit 1 if it cannot be written)")
    s = add("bench", "cost of one loss + gradient against the GEMM-bound limit (about 25 s; "
            "50 s with one BLAS thread)")
    s.add_argument("--n", type=_integer, default=1024, help="samples N (default 1024)")
    s.add_argument("--m", type=_integer, default=1024, help="width m (default 1024)")
    s.add_argument("--d", type=_integer, default=64, help="input dimension d (default 64)")
    s.add_argument("--repeats", type=_integer, default=5, help="timed calls (default 5)")
    s = add("export", "write the canonical golden test vectors (.npz)")
    s.add_argument("path", help="output .npz file")
    s.add_argument("--inputs-only", action="store_true", help="the inputs alone, to fill in")
    s = add("verify", "recompute a golden .npz file's outputs from its inputs and compare (exit "
            "0 pass, 1 problems or mismatches, 2 unreadable file or bad arguments)", seed=False)
    s.add_argument("path", help="an .npz file in the export key scheme")
    s.add_argument("--rtol", type=float, default=1e-8, help="pass when max|ours - theirs| / "
                   "max|ours| <= rtol (default 1e-8, for float64; 1e-5 for float32)")
    s.add_argument("--canonical", action="store_true", help="fail unless the file holds every "
                   "canonical case (export's), with bit-identical inputs")
    s.add_argument("--max-mb", type=float, default=64, help="refuse files holding more than "
                   f"this, uncompressed (the zip's directory counts {DIRECTORY_FACTOR} times), or "
                   "a case needing more in 8 (N, m) arrays (default 64)")
    s.add_argument("--max-work", type=float, default=3e11, help="refuse files needing more "
                   f"multiply-adds than this, the sum over cases of {CASE_WORK}, S the sweeps a "
                   "solve can need from the case's certified rho (default 3e11: 15 s here, 30 s "
                   "under load)")
    return p

def _finite(x):
    """x with every float that is not finite replaced by None: standard JSON."""
    if isinstance(x, (dict, list, tuple)):
        return {k: _finite(v) for k, v in x.items()} if isinstance(x, dict) else [*map(_finite, x)]
    return None if isinstance(x, float) and not math.isfinite(x) else x

def _verify_cli(args):
    report = verify_golden(args.path, rtol=args.rtol, canonical=args.canonical,
                           max_mb=args.max_mb, max_work=args.max_work)
    cases, canon = report["cases"], report["canonical"]
    label = {name: f"{name} {case['canonical'] or ''}".rstrip() for name, case in cases.items()}
    width = max(map(len, label.values()), default=4)
    print(f"{'case':<{width}} {'quantity':<8} {'max rel error':>13}  result (rtol {args.rtol:g})")
    for case, key, err, limit, passed, note in report["rows"]:
        print(f"{label[case]:<{width}} {key:<8} {err:>13.2e}  {'pass' if passed else 'FAIL'}"
              + (f"  ({note})" if note else ""))
    unchecked = {}
    for name, case in cases.items():
        for key in case["not_checked"]:
            unchecked.setdefault(key, []).append(name)
    for key, names in unchecked.items():
        print(f"not checked: {key}, absent from {', '.join(names[:3])}{', ...' * (len(names) > 3)}"
              f" ({len(names)} of {len(cases)} cases): files before 0.3.0 lack it")
    print("".join(f"problem: {problem}\n" for problem in report["problems"]), end="")
    done, missing = len(canon["reproduced"]), canon["missing"]
    print(f"canonical cases reproduced: {done} of {done + len(missing)}" + "".join(
        f"\n  not reproduced: {name!r}: {canon['reasons'][name]}" for name in missing))
    failed = [f"{case}/{key}" for case, key, *_, passed, _ in report["rows"] if not passed]
    print("verify: " + ("passed" if report["passed"] else f"FAILED ({len(failed)} quantities "
                        f"failed, {len(report['problems'])} problems)"))
    errors = [r[2] for r in report["rows"]]
    return int(not report["passed"]), {
        "path": args.path, "rtol": args.rtol, "passed": report["passed"], "failed": failed,
        "problems": report["problems"], "checked": len(report["rows"]), "cases": cases,
        "not_checked": unchecked, "canonical": canon, "max_error": math.nan if any(
            map(math.isnan, errors)) else max(errors, default=None)}

def main(argv=None):
    """The command line, `python implicit_gd.py {demo,sweep,widths,bench,export,verify} ...`.
    Returns the exit status: 0 success; 1 a check failed (demo: target not reached, a certificate
    failed or a run stopped early; verify: problems or mismatches) or the plot could not be
    written; 2 bad arguments, refused or unreadable input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        if e.code and "--json" in argv:
            print(json.dumps({"error": "invalid arguments (see the message above)"}))
        raise
    start, status = time.perf_counter(), 0
    try:
        if args.command == "demo":
            out = demo(N=args.n, d=args.d, m=args.m, gamma=args.gamma, lr=args.lr,
                       steps=args.steps, dt=args.dt, seed=args.seed, plot=args.plot)
            status = 0 if out["passed"] and out["plot_error"] is None else 1
        elif args.command == "sweep":
            out = sweep(N=args.n, d=args.d, seeds=range(args.seed, args.seed + args.seeds),
                        steps=args.steps)
            print(format_sweep(out))
        elif args.command == "widths":
            try:  # said before the run, as the demo does
                import matplotlib  # noqa: F401
                plot_error = None
            except ImportError:
                plot_error = "matplotlib is not installed: pip install matplotlib"
            out = widths(d=args.d, seeds=range(args.seed, args.seed + args.seeds))
            print(format_widths(out))
            if args.plot:
                out["plot_error"] = plot_error or _plot_widths(args.plot, out)
                print(f"plot: {out['plot_error']}" if out["plot_error"] else
                      f"plot written to {args.plot}")
                status = int(out["plot_error"] is not None)
        elif args.command == "bench":
            out = bench(N=args.n, m=args.m, d=args.d, repeats=args.repeats, seed=args.seed)
        elif args.command == "export":
            out = {"path": args.path, "cases": export_golden(args.path, seed=args.seed,
                                                             inputs_only=args.inputs_only)}
            print(f"wrote {out['cases']} cases to {args.path}")
        else:
            status, out = _verify_cli(args)
    except (TypeError, ValueError, ArithmeticError, RuntimeError, OSError, MemoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(e)}))
        return 2
    if args.json:
        print(json.dumps(_finite({**out, "seconds": time.perf_counter() - start})))
    return status

if __name__ == "__main__":
    sys.exit(main())
