"""Tests of implicit_gd, each against something independent of the code it tests:
central finite differences, direct per-sample linear solves, closed forms, the
order of convergence of Euler's method, and the inequalities the paper proves.

    python -m pytest -q
"""

import json
import math

import numpy as np
import pytest

import implicit_gd as ig
from implicit_gd import Params


def problem(N=8, d=4, m=16, seed=0):
    """A small instance: unit-norm inputs, the default initialisation."""
    X, y = ig.make_data(N, d, seed=seed)
    return ig.init_params(d, m, seed=seed), X, y


def rel_err(ours, ref):
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def assert_close(name, ours, ref, rtol):
    """Fail with ours against the reference and the largest difference."""
    err = rel_err(ours, ref)
    i = np.unravel_index(np.abs(np.asarray(ours) - ref).argmax(), np.shape(ref))
    assert err <= rtol, (f"{name}: max rel error {err:.3e} > {rtol:g} at {i}: "
                         f"ours {np.asarray(ours)[i]!r} vs reference {np.asarray(ref)[i]!r}")


def direct_equilibrium(params, X, gamma, Z):
    """Z solved row by row as a linear system, given the mask of Z:
    z_i = D_i (gamma A z_i + W x_i)  <=>  (I - gamma D_i A) z_i = D_i W x_i."""
    A, W, _ = params
    out = np.zeros_like(Z)
    for i in range(Z.shape[0]):
        D = (Z[i] > 0).astype(float)
        out[i] = np.linalg.solve(np.eye(A.shape[0]) - gamma * D[:, None] * A, D * (W @ X[i]))
    return out


# ---- model and equilibrium ----


def test_norm_bound_is_an_upper_bound_of_the_spectral_norm():
    for m in (1, 7, 64, 200):
        A = ig.init_params(3, m, seed=m).A
        exact = np.linalg.norm(A, 2)  # SVD, independent of the eigvalsh of A^T A used by norm_bound
        bound = ig.norm_bound(A)
        assert exact <= bound <= exact * (1 + 1e-9), (m, exact, bound)


def test_equilibrium_is_the_fixed_point_and_matches_the_direct_solve():
    params, X, _ = problem(N=10, d=4, m=24)
    Z, info = ig.equilibrium(params, X, 0.25, tol=1e-13)
    assert info["certified"] and info["rho"] < 1
    residual = Z - np.maximum(0.25 * Z @ params.A.T + X @ params.W.T, 0)
    assert np.abs(residual).max() <= 1e-12 * np.abs(Z).max()
    # 1e-12: the solve is certified to 1e-13 relative in Frobenius norm
    assert_close("Z vs direct linear solve", Z, direct_equilibrium(params, X, 0.25, Z), 1e-12)


def test_certified_bound_bounds_the_true_error():
    params, X, _ = problem(N=12, d=5, m=20, seed=3)
    gamma = 0.9 / ig.norm_bound(params.A)  # rho = 0.9: slow, so loose solves are far from exact
    Z_star, _ = ig.equilibrium(params, X, gamma, tol=1e-14)
    for tol in (1e-2, 1e-4, 1e-6, 1e-9):
        Z, info = ig.equilibrium(params, X, gamma, tol=tol)
        err = np.linalg.norm(Z - Z_star)
        # Z_star is itself within 1e-14 ||Z|| of the truth: allow that much
        assert err <= info["error_bound"] + 2e-14 * np.linalg.norm(Z), (tol, err, info)
        assert info["error_bound"] <= tol * np.linalg.norm(Z)


def test_certified_bound_holds_when_only_some_rows_are_iterated():
    params, X, _ = problem(N=40, d=5, m=20, seed=8)
    gamma = 0.8 / ig.norm_bound(params.A)
    Z_star, _ = ig.equilibrium(params, X, gamma, tol=1e-14)
    Z0 = Z_star + 1e-9 * np.random.default_rng(0).standard_normal(Z_star.shape)
    Z0[[3, 17]] += 5.0  # two rows far off: the others are certified after one sweep
    Z, info = ig.equilibrium(params, X, gamma, tol=1e-11, Z0=Z0)
    assert info["work"] < 0.5 * info["iterations"], info  # the row-wise sweeps were used
    err = np.linalg.norm(Z - Z_star)
    assert err <= info["error_bound"] + 2e-14 * np.linalg.norm(Z), (err, info)
    assert info["error_bound"] <= 1e-11 * np.linalg.norm(Z)


def test_early_sweeps_skip_the_bookkeeping_and_the_bound_still_holds(monkeypatch):
    params, X, _ = problem(N=64, d=8, m=96, seed=4)
    Z_star, _ = ig.equilibrium(params, X, 0.25, tol=1e-14)
    calls = []
    einsum = np.einsum
    monkeypatch.setattr(np, "einsum", lambda *a, **k: calls.append(1) or einsum(*a, **k))
    Z, info = ig.equilibrium(params, X, 0.25, tol=1e-12)
    monkeypatch.undo()
    assert len(calls) < info["iterations"], (len(calls), info)  # 2 per sweep with bookkeeping
    assert np.linalg.norm(Z - Z_star) <= info["error_bound"] + 2e-14 * np.linalg.norm(Z)


def test_adjoint_rows_with_zero_residual_are_zero():
    params, X, y = problem(N=10, d=4, m=12, seed=2)
    Z, _ = ig.equilibrium(params, X, 0.25, tol=1e-14)
    r = Z @ params.v - y
    r[[0, 4]] = 0.0
    G, _ = ig.adjoint(params, Z, r, 0.25, tol=1e-13)
    assert not G[[0, 4]].any()
    assert_close("G", G, ig.adjoint_direct(params, Z, r, 0.25), 1e-10)


def test_uniqueness_two_starts_give_the_same_equilibrium():
    params, X, _ = problem(N=8, d=4, m=16, seed=1)
    gamma = 0.8 / ig.norm_bound(params.A)
    Z_a, a = ig.equilibrium(params, X, gamma, tol=1e-13, Z0=np.zeros((8, 16)))
    Z_b, b = ig.equilibrium(params, X, gamma, tol=1e-13,
                            Z0=100.0 * np.random.default_rng(5).standard_normal((8, 16)))
    assert b["iterations"] > a["iterations"]  # the far start really was far
    assert np.linalg.norm(Z_a - Z_b) <= a["error_bound"] + b["error_bound"]


def test_predict_matches_the_direct_solve():
    params, X, _ = problem()
    Z, _ = ig.equilibrium(params, X, 0.25, tol=1e-14)
    yhat = direct_equilibrium(params, X, 0.25, Z) @ params.v
    assert_close("yhat", ig.predict(params, X, 0.25), yhat, 1e-11)  # default tol 1e-12 on Z


def test_zero_implicit_weight_is_a_two_layer_relu_network():
    params, X, y = problem(N=6, d=3, m=8)
    params = params._replace(A=np.zeros((8, 8)))
    Z, info = ig.equilibrium(params, X, 0.25)
    np.testing.assert_array_equal(Z, np.maximum(X @ params.W.T, 0))  # A = 0: Z = relu(X W^T)
    final, hist = ig.gradient_descent(params, X, y, 0.25, lr=0.05, steps=3)
    assert hist["loss"][-1] < hist["loss"][0] and np.isfinite(final.A).all()


# ---- implicit gradient ----


@pytest.mark.parametrize("N, d, m, gamma, seed", [
    (8, 4, 16, 0.25, 0),    # the default scale, m = 2 N
    (12, 3, 8, 0.25, 2),    # m < N
    (6, 5, 10, None, 4),    # near the edge: rho = 0.9
])
def test_gradient_matches_central_differences(N, d, m, gamma, seed):
    params, X, y = problem(N, d, m, seed)
    gamma = 0.9 / ig.norm_bound(params.A) if gamma is None else gamma
    h = 1e-6
    for direction_seed in range(3):
        check = ig.gradient_check(params, X, y, gamma, seed=direction_seed, h=h)
        # no pre-activation within reach of the step: |dH| <= h * O(1) here, so 1e3 h is safe
        assert check["min_abs_H"] > 1e3 * h, f"seed {seed} puts a kink within the FD step: {check}"
        # 1e-6: FD truncation O(h^2) ~ 1e-12, rounding eps/h ~ 1e-10, solve error tol/h = 1e-8
        for name in ("A", "W", "v"):
            assert check[name] <= 1e-6, f"{name}: rel error {check[name]:.3e} (all: {check})"


def test_gradient_matches_full_finite_difference_jacobian_on_a_tiny_case():
    params, X, y = problem(N=3, d=2, m=4, seed=7)
    gamma, h = 0.3, 1e-6
    _, grads = ig.loss_and_grad(params, X, y, gamma, tol=1e-14)

    def loss(p):
        return ig.loss_and_grad(p, X, y, gamma, wrt=("v",), tol=1e-14)[0]

    for i, name in enumerate(("A", "W", "v")):
        fd = np.zeros_like(params[i])
        for idx in np.ndindex(params[i].shape):
            E = np.zeros_like(params[i])
            E[idx] = h
            fd[idx] = (loss(params._replace(**{name: params[i] + E}))
                       - loss(params._replace(**{name: params[i] - E}))) / (2 * h)
        # entrywise: absolute 1e-7 (rounding eps * Phi / h with Phi ~ 1) plus relative 1e-6
        np.testing.assert_allclose(grads[i], fd, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("gamma_frac", [0.05, 0.5, 0.95])
def test_adjoint_fixed_point_matches_direct_per_sample_solve(gamma_frac):
    params, X, y = problem(N=20, d=5, m=30, seed=11)
    gamma = gamma_frac / ig.norm_bound(params.A)
    _, grads, info = ig.loss_and_grad(params, X, y, gamma, tol=1e-13, return_info=True)
    G_direct = ig.adjoint_direct(params, info["Z"], info["r"], gamma)
    # 1e-10: the fixed point is certified to 1e-13 relative in Frobenius norm
    assert_close("G vs direct", info["G"], G_direct, 1e-10)
    _, direct = ig.loss_and_grad(params, X, y, gamma, tol=1e-13, method="direct")
    for name, ours, ref in zip("AWv", grads, direct):
        assert_close(f"d{name}", ours, ref, 1e-10)


@pytest.mark.parametrize("y_scale", [1.0, 1e3])  # the bound is absolute: large residuals too
def test_adjoint_certified_bound_bounds_the_true_error(y_scale):
    params, X, y = problem(N=15, d=4, m=25, seed=6)
    gamma = 0.85 / ig.norm_bound(params.A)
    Z, _ = ig.equilibrium(params, X, gamma, tol=1e-14)
    r = Z @ params.v - y_scale * y
    G_direct = ig.adjoint_direct(params, Z, r, gamma)
    for tol in (1e-2, 1e-5, 1e-8):
        G, info = ig.adjoint(params, Z, r, gamma, tol=tol)
        err = np.linalg.norm(G - G_direct)
        assert err <= info["error_bound"] + 1e-13 * np.linalg.norm(G_direct), (tol, err, info)
        assert info["error_bound"] <= tol * np.linalg.norm(G)


def test_frozen_parameters_get_no_gradient_and_do_not_move():
    params, X, y = problem()
    _, grads, info = ig.loss_and_grad(params, X, y, 0.25, wrt=("v",), return_info=True)
    assert grads.A is None and grads.W is None and info["adjoint"] is None
    np.testing.assert_array_equal(grads.v, info["Z"].T @ info["r"])  # dPhi/dv = Z^T r
    final, hist = ig.gradient_descent(params, X, y, 0.25, lr=0.05, steps=5, train=("W", "v"))
    np.testing.assert_array_equal(final.A, params.A)
    assert not np.array_equal(final.W, params.W) and not np.array_equal(final.v, params.v)
    assert hist["norm_refreshes"] == 1  # A frozen: its norm is never recomputed


# ---- training ----


def test_gd_decreases_monotonically_to_1e8_of_the_initial_loss():
    params, X, y = problem(N=8, d=6, m=24, seed=0)  # m = 3 N
    Z0, _ = ig.equilibrium(params, X, 0.25)
    lr = 0.5 / np.linalg.norm(Z0, 2) ** 2  # half the step the curvature in v allows
    _, hist = ig.gradient_descent(params, X, y, 0.25, lr=lr, steps=3000, target=1e-8)
    loss = hist["loss"]
    assert np.all(np.diff(loss) < 0), f"loss increased at steps {np.flatnonzero(np.diff(loss) >= 0)}"
    assert loss[-1] <= 1e-8 * loss[0], (loss[0], loss[-1], loss.size)


def test_pl_inequality_at_every_step():
    params, X, y = problem(N=10, d=5, m=20, seed=2)
    _, hist = ig.gradient_descent(params, X, y, 0.25, lr=0.02, steps=60, lambda_min=True)
    ratios = ig.pl_ratios(hist)
    # ||grad||^2 >= ||Z^T r||^2 >= 2 lambda_min Phi; 1e-12 below 1 allows rounding only
    assert ratios.min() >= 1 - 1e-12, ratios.min()
    assert np.all(hist["lambda_min"] > 0)  # m = 2 N: the certificate exists


def test_lambda_min_against_the_gram_matrix():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((6, 9))
    assert abs(ig.lambda_min(Z) - np.linalg.eigvalsh(Z @ Z.T)[0]) <= 1e-12 * np.linalg.norm(Z, 2) ** 2
    Z_thin = rng.standard_normal((9, 6))  # m < N: Z Z^T is singular
    assert ig.lambda_min(Z_thin) == 0.0
    assert abs(np.linalg.eigvalsh(Z_thin @ Z_thin.T)[0]) <= 1e-12 * np.linalg.norm(Z_thin, 2) ** 2


def test_running_rho_bound_is_above_the_exact_rho_at_every_step():
    params, X, y = problem(N=8, d=4, m=16, seed=3)
    gamma, lr, steps = 0.9 / ig.norm_bound(params.A), 0.1, 40
    _, hist = ig.gradient_descent(params, X, 4 * y, gamma, lr=lr, steps=steps)
    assert hist["norm_refreshes"] > 1  # the exact recomputation was exercised
    theta = params  # the same GD path by a plain loop, with the exact SVD norm at every step
    for k in range(steps + 1):
        exact = gamma * np.linalg.norm(theta.A, 2)
        assert exact <= hist["rho"][k] < 1, (k, exact, hist["rho"][k])
        _, g = ig.loss_and_grad(theta, X, 4 * y, gamma, method="direct")
        theta = Params(*(p - lr * q for p, q in zip(theta, g)))


def test_euler_gradient_flow_is_first_order():
    params, X, y = problem(N=5, d=3, m=10, seed=0)
    t_end, dt = 1.0, 0.05

    def theta(step):
        final, _ = ig.gradient_flow(params, X, y, 0.25, t_end=t_end, dt=step, tol=1e-14)
        return np.concatenate([p.ravel() for p in final])

    ref = theta(dt / 128)
    errors = [np.linalg.norm(theta(dt / 2**k) - ref) for k in range(3)]
    ratios = [errors[k] / errors[k + 1] for k in range(2)]
    # first order: halving dt halves the error (2 up to O(dt) terms and the reference's own error)
    assert all(1.7 <= q <= 2.3 for q in ratios), (errors, ratios)


def test_gradient_flow_history_is_indexed_by_time():
    params, X, y = problem()
    _, hist = ig.gradient_flow(params, X, y, 0.25, t_end=0.3, dt=0.07)  # 5 steps of 0.06
    np.testing.assert_allclose(hist["t"], np.linspace(0, 0.3, 6), rtol=0, atol=1e-15)
    assert hist["h"] == pytest.approx(0.06, rel=1e-15) and hist["loss"].size == 6


def test_gronwall_certificate_along_euler_gradient_flow():
    params, X, y = problem(N=10, d=5, m=20, seed=4)
    _, hist = ig.gradient_flow(params, X, y, 0.25, t_end=2.0, dt=0.01, lambda_min=True)
    bound = ig.gronwall_bound(hist["loss"][0], hist["lambda_min"], hist["h"])
    assert np.all(hist["loss"] <= bound * (1 + 1e-12)), (hist["loss"] / bound).max()
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]  # and the flow really moved


def test_linear_rate_and_gronwall_bound_closed_forms():
    t = np.linspace(0, 5, 11)
    assert ig.linear_rate(3.0 * np.exp(-0.7 * t), t) == pytest.approx(0.7, rel=1e-12)
    lam = np.full(11, 0.3)  # constant lambda_min: Phi(0) exp(-2 * 0.3 * t)
    np.testing.assert_allclose(ig.gronwall_bound(2.0, lam, 0.5), 2.0 * np.exp(-0.6 * t), rtol=1e-14)


def test_divergence_stops_with_the_step_and_keeps_the_last_good_params():
    params, X, y = problem(N=6, d=3, m=12, seed=0)
    with pytest.raises(ig.TrainingError) as e:
        ig.gradient_descent(params, X, y, 0.25, lr=100.0, steps=200, train=("W", "v"))
    err = e.value
    assert err.step >= 1 and f"step {err.step}" in str(err)
    assert err.history["loss"].size == err.step  # steps 0 .. step - 1 were computed
    assert all(np.isfinite(p).all() for p in err.params)
    last, _ = ig.loss_and_grad(err.params, X, y, 0.25)  # the last good params: loss recorded
    assert last == pytest.approx(err.history["loss"][-1], rel=1e-10)


def test_lost_well_posedness_stops_training():
    params, X, y = problem(N=6, d=3, m=12, seed=0)
    gamma = 0.9 / ig.norm_bound(params.A)
    with pytest.raises(ig.TrainingError, match="well-posed") as e:
        ig.gradient_descent(params, X, 30 * y, gamma, lr=0.5, steps=50)
    assert e.value.step == 1 and e.value.params is not None
    np.testing.assert_array_equal(e.value.params.A, params.A)  # step 0's params are the good ones


# ---- errors: named, typed, before any work ----


def _bad_calls():
    params, X, y = problem(N=4, d=3, m=5)
    nan_X = X.copy()
    nan_X[0, 0] = np.nan
    big = params._replace(A=10 * params.A)
    P = Params
    return [
        ("params.A", ValueError, lambda: ig.equilibrium(P(params.A[:, :4], params.W, params.v), X, 0.25)),
        ("params.W", ValueError, lambda: ig.equilibrium(P(params.A, params.W[:4], params.v), X, 0.25)),
        ("params.v", ValueError, lambda: ig.loss_and_grad(P(params.A, params.W, params.v[:3]), X, y, 0.25)),
        ("params", TypeError, lambda: ig.equilibrium((params.A, params.W), X, 0.25)),
        ("X", ValueError, lambda: ig.equilibrium(params, X[:, :2], 0.25)),
        ("X", ValueError, lambda: ig.equilibrium(params, X[0], 0.25)),
        ("X", ValueError, lambda: ig.equilibrium(params, nan_X, 0.25)),
        ("X", ValueError, lambda: ig.equilibrium(params, np.zeros((0, 3)), 0.25)),
        ("X", TypeError, lambda: ig.equilibrium(params, X.astype(complex), 0.25)),
        ("y", ValueError, lambda: ig.loss_and_grad(params, X, y[:3], 0.25)),
        ("y", ValueError, lambda: ig.loss_and_grad(params, X, np.full(4, np.inf), 0.25)),
        ("gamma", ValueError, lambda: ig.equilibrium(params, X, 0.0)),
        ("gamma", ValueError, lambda: ig.equilibrium(params, X, -1.0)),
        ("gamma", ValueError, lambda: ig.equilibrium(params, X, float("nan"))),
        ("gamma", TypeError, lambda: ig.equilibrium(params, X, "0.25")),
        ("tol", ValueError, lambda: ig.equilibrium(params, X, 0.25, tol=0.0)),
        ("max_iter", ValueError, lambda: ig.equilibrium(params, X, 0.25, max_iter=0)),
        ("max_iter", TypeError, lambda: ig.equilibrium(params, X, 0.25, max_iter=2.5)),
        ("Z0", ValueError, lambda: ig.equilibrium(params, X, 0.25, Z0=np.zeros((4, 4)))),
        ("lr", ValueError, lambda: ig.gradient_descent(params, X, y, 0.25, lr=0.0, steps=3)),
        ("lr", ValueError, lambda: ig.gradient_descent(params, X, y, 0.25, lr=-0.1, steps=3)),
        ("steps", ValueError, lambda: ig.gradient_descent(params, X, y, 0.25, lr=0.1, steps=0)),
        ("train", ValueError, lambda: ig.gradient_descent(params, X, y, 0.25, lr=0.1, steps=3, train=("B",))),
        ("dt", ValueError, lambda: ig.gradient_flow(params, X, y, 0.25, t_end=1.0, dt=0.0)),
        ("t_end", ValueError, lambda: ig.gradient_flow(params, X, y, 0.25, t_end=-1.0, dt=0.1)),
        ("method", ValueError, lambda: ig.loss_and_grad(params, X, y, 0.25, method="unrolled")),
        ("d", ValueError, lambda: ig.init_params(0, 5)),
        ("seed", ValueError, lambda: ig.init_params(3, 5, seed=-1)),
        ("seed", ValueError, lambda: ig.make_data(4, 3, seed=1.5)),
        ("m", TypeError, lambda: ig.init_params(3, 5.0)),
        ("A_norm", ValueError, lambda: ig.equilibrium(params, X, 0.25, A_norm=1e-6)),
        ("A_norm", ValueError, lambda: ig.equilibrium(params, X, 0.25, A_norm=-1.0)),
        ("train", TypeError, lambda: ig.gradient_descent(params, X, y, 0.25, lr=0.1, steps=3, train=None)),
        ("wrt", ValueError, lambda: ig.loss_and_grad(params, X, y, 0.25, wrt=())),
        ("r", ValueError, lambda: ig.adjoint_direct(params, np.ones((4, 5)), np.ones(6), 0.25)),
        ("Z", ValueError, lambda: ig.adjoint(params, np.ones((4, 3)), np.ones(4), 0.25)),
        ("t", ValueError, lambda: ig.linear_rate([1.0, 0.5], [2.0, 2.0])),
        ("h", ValueError, lambda: ig.gronwall_bound(1.0, [0.1, 0.1], -5.0)),
        ("loss0", ValueError, lambda: ig.gronwall_bound(float("nan"), [0.1, 0.1], 0.1)),
        ("history", ValueError, lambda: ig.pl_ratios({"loss": np.ones(2)})),
        ("steps", ValueError, lambda: ig.demo(N=4, d=2, steps=0, quiet=True)),
        ("gamma * ||A||_2", ig.NotWellPosedError, lambda: ig.equilibrium(big, X, 0.25)),
        ("gamma * ||A||_2", ig.NotWellPosedError, lambda: ig.gradient_descent(big, X, y, 0.25, lr=0.1, steps=3)),
    ]


@pytest.mark.parametrize("name, cls, call", _bad_calls(), ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_raises_a_named_error(name, cls, call):
    with pytest.raises(cls) as e:
        call()
    assert name in str(e.value), f"message does not name {name!r}: {e.value}"


def test_exception_classes():
    assert issubclass(ig.NotWellPosedError, ValueError)
    assert issubclass(ig.NotConvergedError, RuntimeError)
    assert issubclass(ig.TrainingError, RuntimeError)


def test_non_convergence_raises_with_the_bound_reached():
    params, X, _ = problem()
    with pytest.raises(ig.NotConvergedError, match="max_iter = 2") as e:
        ig.equilibrium(params, X, 0.25, tol=1e-12, max_iter=2)
    assert e.value.iterations == 2 and e.value.error_bound > 0


def test_ill_posed_on_request_is_reported_uncertified():
    params, X, _ = problem(N=6, d=3, m=8, seed=0)
    gamma = 1.2 / ig.norm_bound(params.A)  # rho = 1.2 > 1: no certificate (this seed converges)
    Z, info = ig.equilibrium(params, X, gamma, allow_ill_posed=True, max_iter=500)
    assert not info["certified"] and info["error_bound"] == math.inf and info["rho"] > 1
    residual = Z - np.maximum(gamma * Z @ params.A.T + X @ params.W.T, 0)
    assert np.abs(residual).max() <= 1e-10 * np.abs(Z).max()


# ---- purity and determinism ----


def test_inputs_are_not_modified_and_results_are_bit_reproducible():
    params, X, y = problem(N=6, d=3, m=12, seed=9)
    copies = [a.copy() for a in (*params, X, y)]
    Z0 = np.ones((6, 12))
    Z0_copy = Z0.copy()
    runs = []
    for _ in range(2):
        ig.equilibrium(params, X, 0.25, Z0=Z0)
        ig.loss_and_grad(params, X, y, 0.25, Z0=Z0, U0=Z0)
        gd = ig.gradient_descent(params, X, y, 0.25, lr=0.05, steps=5)
        gf = ig.gradient_flow(params, X, y, 0.25, t_end=0.2, dt=0.05)
        runs.append((gd, gf))
    for before, after in zip(copies, (*params, X, y)):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(Z0, Z0_copy)
    for (p1, h1), (p2, h2) in zip(*runs):
        for a, b in zip(p1, p2):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(h1["loss"], h2["loss"])
    for a, b in zip(ig.init_params(3, 7, seed=4), ig.init_params(3, 7, seed=4)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ig.init_params(3, 7, seed=4).A, ig.init_params(3, 7, seed=5).A)


def test_results_never_share_memory_with_inputs():
    params, X, y = problem()
    final, _ = ig.gradient_descent(params, X, y, 0.25, lr=0.05, steps=2, train=("v",))
    for p, q in zip(params, final):
        assert not np.shares_memory(p, q)
    np.testing.assert_array_equal(final.A, params.A)


def test_pl_ratio_is_inf_where_both_sides_vanish():
    hist = {"train": ("A", "W", "v"), "grad_norm": np.array([1.0, 0.0]),
            "loss": np.array([2.0, 0.0]), "lambda_min": np.array([0.25, 0.25])}
    np.testing.assert_array_equal(ig.pl_ratios(hist), [1.0, np.inf])  # 1 / (2 * 0.25 * 2)


def test_warm_start_gives_the_same_answer_with_less_work():
    params, X, y = problem(N=10, d=4, m=20, seed=1)
    cold = ig.gradient_descent(params, X, y, 0.25, lr=0.02, steps=20, warm_start=False)[1]
    warm = ig.gradient_descent(params, X, y, 0.25, lr=0.02, steps=20)[1]
    # both certified to tol = 1e-12: the losses agree to that order (x a few steps of growth)
    np.testing.assert_allclose(warm["loss"], cold["loss"], rtol=1e-9)
    assert warm["forward_iters"][1:].sum() < cold["forward_iters"][1:].sum()
    assert warm["adjoint_iters"][1:].sum() < cold["adjoint_iters"][1:].sum()


def test_extrapolation_is_exact_for_polynomials_and_per_row_degrees():
    rng = np.random.default_rng(3)
    c = rng.standard_normal((5, 4, 6))  # per entry of a (4, 6) array: a polynomial in t of degree 4

    def S(t, deg):  # the polynomial of degree deg at time t
        return sum(c[j] * t**j for j in range(deg + 1))

    def table(deg, order):  # backward differences at t = 0 from t = -order .. 0
        out = []
        for t in range(-order, 1):
            out = ig._differences(S(float(t), deg), out, order)
        return out

    for deg in range(4):  # through deg + 1 points, degree deg is reproduced at t = 1
        np.testing.assert_allclose(ig._extrapolate(table(deg, deg)), S(1.0, deg), rtol=1e-12, atol=1e-12)
    # degree 4 through 4 points: not exact
    assert np.abs(ig._extrapolate(table(4, 3)) - S(1.0, 4)).max() > 1e-3
    # per row: row i through the last i + 1 points only
    past = [S(-float(j), 3) for j in range(4)]  # t = 0, -1, -2, -3
    out = ig._extrapolate(table(3, 3), np.array([0, 1, 2, 3]))
    np.testing.assert_allclose(out[0], past[0][0], rtol=1e-12)  # degree 0: S_k
    np.testing.assert_allclose(out[1], 2 * past[0][1] - past[1][1], rtol=1e-12)
    np.testing.assert_allclose(out[2], 3 * past[0][2] - 3 * past[1][2] + past[2][2], rtol=1e-12)
    np.testing.assert_allclose(out[3], S(1.0, 3)[3], rtol=1e-12, atol=1e-12)  # degree 3: exact


def test_warm_start_history_counts_steps_since_each_rows_last_mask_flip():
    past = {"H": [], "G": [], "U": [], "gv": [], "F": [], "Z": None, "mask": None, "steady": None}
    grads = Params(None, None, None)
    for z1 in [1.0, 1.0, -1.0, -1.0, -1.0]:  # row 1's mask flips at step 2
        Z = np.array([[1.0, 1.0], [1.0, max(z1, 0.0)], [0.0, 1.0]])
        ig._remember(past, {"Z": Z, "H": Z, "U": None, "G": None}, grads)
    np.testing.assert_array_equal(past["steady"], [4, 2, 4])
    assert len(past["H"]) == 3  # H and its first two backward differences
    np.testing.assert_array_equal(past["H"][1], 0.0)  # the last two H are equal


def test_jump_rows_hold_the_energy_asked_for():
    D = np.zeros((4, 3))
    D[:, 0] = [3.0, 1.0, 0.0, math.sqrt(90.0)]  # squared row norms 9, 1, 0, 90
    np.testing.assert_array_equal(ig._jump_rows(D, energy=0.99), [3, 0])  # 99 of 100
    np.testing.assert_array_equal(ig._jump_rows(D, energy=1.0), [3, 0, 1])
    np.testing.assert_array_equal(ig._jump_rows(D, energy=0.99, most=1), [3])
    assert ig._jump_rows(np.zeros((4, 3))).size == 0


def test_demo_summary_certifies_its_claims():
    s = ig.demo(N=8, d=6, steps=2000, log_every=0, quiet=True)
    keys = {"loss_initial": float, "loss_final": float, "steps": int, "rho_max": float,
            "rate_observed": float, "rate_certified": float, "well_posed_throughout": bool,
            "gf_certificate_holds": bool, "seconds": float}
    for key, kind in keys.items():
        assert isinstance(s[key], kind), (key, s[key])
    json.dumps(s)  # machine-readable as it is
    assert s["m"] == 16 and s["reached_target"] and s["loss_final"] <= 1e-10 * s["loss_initial"]
    assert s["well_posed_throughout"] and s["rho_max"] < 1
    assert 0 < s["rate_certified"] <= s["rate_observed"]
    assert s["pl_holds"] and s["gf_certificate_holds"] and s["gf_certificate_max_ratio"] <= 1 + 1e-12
    assert s["gradcheck_max_error"] <= 1e-6


def test_sweep_lambda_min_vanishes_below_m_equals_N():
    out = ig.sweep(N=8, d=4, seeds=(0, 1), ratios=(0.5, 2), fractions=(0.3, 0.9), steps=300,
                   quiet=True)
    narrow, wide = out["width"]
    assert narrow["lambda_min_init"] == 0.0 and not narrow["pl_certificate"]  # rank m < N
    assert wide["lambda_min_init"] > 1e-3 and wide["pl_certificate"]
    for row in out["scale"]:
        assert row["well_posed_runs"] == row["runs"] == 2 and row["rho_max"] < 1
    # the certified rho starts at gamma ||A(0)||_2 = fraction and grows along training
    assert out["scale"][0]["rho_max"] >= 0.3 and out["scale"][1]["rho_max"] >= 0.9
    assert "PL cert" in ig.format_sweep(out)


def test_bench_reports_bounded_memory_at_a_small_size():
    out = ig.bench(N=32, m=48, d=8, repeats=1, warm_steps=4, quiet=True)
    for key in ("k_forward", "k_adjoint", "seconds", "t_gemm", "gemm_ratio", "peak_extra_bytes",
                "warm_cold_ratio", "warm_cold_ratio_first_20"):
        assert out[key] > 0, key
    words = 32 * 48 + 48 * 48
    assert out["peak_extra_bytes"] <= 8 * 8 * words
    # memory does not grow with the number of iterations (tol 1e-12 against 1e-4)
    assert out["peak_extra_bytes"] <= 1.1 * out["peak_extra_bytes_tol_1e-4"]


# ---- golden vectors ----


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    path = tmp_path_factory.mktemp("golden") / "golden.npz"
    assert ig.export_golden(path) == 6
    return path


def test_export_then_verify_passes(golden):
    rows, problems = ig.verify_golden(golden)
    assert not problems and len(rows) == 6 * len(ig.GOLDEN_OUTPUTS)
    assert all(passed for *_, passed in rows)
    assert ig.main(["verify", str(golden)]) == 0


def test_exported_values_agree_with_direct_solves(golden):
    """Every exported output against per-sample linear solves and a plain GD loop."""
    with np.load(golden, allow_pickle=False) as f:
        for c in range(int(f["meta/cases"])):
            get = lambda k: f[f"case{c}/{k}"]
            X, y, gamma = get("X"), get("y"), float(get("gamma"))
            params = Params(get("A"), get("W"), get("v"))
            Z = direct_equilibrium(params, X, gamma, get("Z"))
            assert_close(f"case{c}/Z", get("Z"), Z, 1e-11)  # 1e-11: solved to 1e-13, rho <= 0.95
            r = Z @ params.v - y
            assert float(get("loss")) == pytest.approx(0.5 * r @ r, rel=1e-11)
            G = ig.adjoint_direct(params, Z, r, gamma)
            for name, ref in zip("AWv", (gamma * G.T @ Z, G.T @ X, Z.T @ r)):
                assert_close(f"case{c}/d{name}", get(f"d{name}"), ref, 1e-10)
            theta, losses = params, []
            trained = [bool(t) for t in get("train")]
            for k in range(int(get("steps")) + 1):
                Z = direct_equilibrium(theta, X, gamma, ig.equilibrium(theta, X, gamma)[0])
                r = Z @ theta.v - y
                losses.append(0.5 * r @ r)
                if k == int(get("steps")):
                    break
                G = ig.adjoint_direct(theta, Z, r, gamma)
                grads = (gamma * G.T @ Z, G.T @ X, Z.T @ r)
                theta = Params(*(p - float(get("lr")) * g if t else p
                                 for p, g, t in zip(theta, grads, trained)))
            assert_close(f"case{c}/gd_loss", get("gd_loss"), np.array(losses), 1e-10)
            for name, p in zip("AWv", theta):
                assert_close(f"case{c}/gd_{name}", get(f"gd_{name}"), p, 1e-12)


def _rewrite(src, dst, change):
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    np.savez(dst, **arrays)


def test_verify_names_a_perturbed_gradient(golden, tmp_path):
    bad = tmp_path / "bad.npz"

    def perturb(a):
        a["case2/dW"] = a["case2/dW"].copy()
        a["case2/dW"][1, 0] += 1e-6 * np.abs(a["case2/dW"]).max()  # 100x the default rtol 1e-8

    _rewrite(golden, bad, perturb)
    rows, problems = ig.verify_golden(bad)
    failed = [(case, key) for case, key, _, passed in rows if not passed]
    assert failed == [("case2", "dW")] and not problems
    assert ig.main(["verify", str(bad)]) == 1


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("case1/dA"), "missing key case1/dA"),
    (lambda a: a.update({"case0/dv": a["case0/dv"][:-1]}), "case0/dv: shape"),
    (lambda a: a.update({"case3/y": np.array([object()] * 20, dtype=object)}), "case3/y"),
    (lambda a: a.update({"meta/cases": np.int64(5)}), "meta/cases = 5 does not match"),
    (lambda a: a.update({"meta/cases": np.int64(0)}), "meta/cases = 0 does not match"),
    (lambda a: a.update({"meta/version": np.int64(99)}), "meta/version is 99"),
    (lambda a: a.pop("meta/version"), "missing key meta/version"),
    (lambda a: a.update({"case1/gamma": np.array([0.1, 0.2])}), "case1/gamma: shape (2,)"),
    (lambda a: a.update({"case1/steps": np.int64(10**6)}), "case1/steps"),
    (lambda a: a.update({"case1/train": np.array([1.0, 1.0])}), "case1/train"),
    (lambda a: a.update({"case0/y": 1e200 * a["case0/y"]}), "case0: inputs refused"),
])
def test_verify_refuses_malformed_files_by_name(golden, tmp_path, change, message):
    bad = tmp_path / "bad.npz"
    _rewrite(golden, bad, change)
    rows, problems = ig.verify_golden(bad)
    assert any(message in p for p in problems), problems
    assert ig.main(["verify", str(bad)]) == 1


def test_verify_refuses_files_that_are_not_npz_archives(golden, tmp_path):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(golden.read_bytes()[:1000])
    single = tmp_path / "single.npy"
    np.save(single, np.ones(3))
    for path in (truncated, single, tmp_path / "absent.npz"):
        rows, problems = ig.verify_golden(path)
        assert not rows and len(problems) == 1 and str(path) in problems[0], problems
        assert ig.main(["verify", str(path)]) == 1


def test_cli_rejects_bad_values_by_name(capsys, tmp_path):
    for argv, name in ((["demo", "--n", "0"], "--n"), (["demo", "--seed", "-1"], "--seed"),
                       (["verify", "x.npz", "--rtol", "nan"], "--rtol")):
        with pytest.raises(SystemExit) as e:
            ig.main(argv)
        assert e.value.code == 2 and name in capsys.readouterr().err, argv
    assert ig.main(["demo", "--n", "6", "--gamma", "5", "--json"]) == 2
    captured = capsys.readouterr()
    assert "not well-posed" in captured.err
    assert "not well-posed" in json.loads(captured.out.splitlines()[-1])["error"]
    assert ig.main(["export", str(tmp_path / "no" / "such" / "dir.npz")]) == 2
    assert "No such file" in capsys.readouterr().err


# ---- scale, failure paths and a foreign implementation ----


def test_solvers_are_exact_at_extreme_scales():
    """Z is homogeneous in X W^T and U linear in v: a scaled problem gives the scaled answer,
    with no squared norm underflowing into a false certificate."""
    params, X, y = problem(N=8, d=4, m=16, seed=0)
    Z, info = ig.equilibrium(params, X, 0.25, tol=1e-13)
    for s in (1e-165, 1e150):
        Z_s, info_s = ig.equilibrium(params, s * X, 0.25, tol=1e-13)
        assert_close(f"Z at scale {s:g}", Z_s / s, Z, 1e-12)
        assert 0 < info_s["error_bound"] / s <= 1e-13 * np.linalg.norm(Z_s / s)  # (norm of Z_s underflows)
    A = params.A
    for s in (1e-200, 1e200):
        assert ig.norm_bound(s * A) == pytest.approx(s * np.linalg.norm(A, 2), rel=1e-9)
    r = Z @ params.v - y
    G, _ = ig.adjoint(params._replace(v=1e-170 * params.v), Z, r, 0.25, tol=1e-13)
    assert_close("G at v scale 1e-170", G / 1e-170, ig.adjoint_direct(params, Z, r, 0.25), 1e-10)


@pytest.mark.parametrize("solve", ["equilibrium", "adjoint"])
def test_info_bound_is_rho_over_one_minus_rho_times_the_step(solve):
    params, X, y = problem(N=10, d=4, m=12, seed=5)
    Z, info = ig.equilibrium(params, X, 0.25, tol=1e-10)
    if solve == "adjoint":
        _, info = ig.adjoint(params, Z, 1e3 * (Z @ params.v - y), 0.25, tol=1e-10)
    rho = info["rho"]
    assert info["error_bound"] == pytest.approx(rho / (1 - rho) * info["step"], rel=1e-12)
    assert isinstance(info["error_bound"], float) and info["step"] > 0


def test_demo_quiet_prints_nothing_and_reports_a_failed_gradient_flow(capsys):
    s = ig.demo(N=8, d=4, steps=50, t_end=30.0, dt=3.0, quiet=True)  # dt = 3: GF blows up
    assert capsys.readouterr().out == ""
    assert s["gf_failure"] is not None and not s["gf_certificate_holds"]
    assert s["gf_t_end"] < 30.0  # the time it reached, not the one asked for
    with pytest.raises(ValueError, match="Z\\(0\\) = 0"):
        ig.demo(N=4, d=2, m=1, seed=6, quiet=True)  # every unit off at this seed


def test_sweep_survives_runs_that_cannot_start():
    out = ig.sweep(N=4, d=2, seeds=(6,), ratios=(0.25,), fractions=(0.5,), steps=20, quiet=True)
    row = out["width"][0]  # m = 1, seed 6: Z(0) = 0, no gradient
    assert row["reached"] == 0 and row["steps_to_target"] is None and math.isnan(row["rate_observed"])


def test_verify_reports_nan_outputs_and_bad_counts(golden, tmp_path, capsys):
    bad = tmp_path / "nan.npz"
    _rewrite(golden, bad, lambda a: a.update({"case0/dA": np.full_like(a["case0/dA"], np.nan)}))
    assert ig.main(["verify", str(bad), "--json"]) == 1
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["failed"] == ["case0/dA"] and out["max_error"] is None  # inf: not standard JSON
    for count in (np.float64(np.nan), np.int64(10**12)):
        _rewrite(golden, bad, lambda a: a.update({"meta/cases": count}))
        rows, problems = ig.verify_golden(bad)
        assert not rows and "meta/cases" in problems[0]


def float32_implementation(A, W, v, X, y, gamma, lr, steps, train):
    """Another implementation, in float32: Picard to a fixed count, per-sample adjoint solves."""
    A, W, v, X, y = (np.asarray(a, np.float32) for a in (A, W, v, X, y))
    gamma, lr = np.float32(gamma), np.float32(lr)
    out, losses = {}, []
    for k in range(steps + 1):
        Z = np.zeros((X.shape[0], A.shape[0]), np.float32)
        for _ in range(400):  # rho <= 0.95: 0.95^400 is far below float32 eps
            Z = np.maximum(gamma * Z @ A.T + X @ W.T, 0)
        r = Z @ v - y
        eye = np.eye(len(v), dtype=np.float32)
        G = np.stack([(z > 0) * np.linalg.solve((eye - gamma * (z > 0)[:, None] * A).T, ri * v)
                      for z, ri in zip(Z, r)])  # (I - gamma D_i A)^T a_i = r_i v, g_i = D_i a_i
        grads = (gamma * G.T @ Z, G.T @ X, Z.T @ r)
        losses.append(0.5 * r @ r)
        if k == 0:
            out.update(Z=Z, yhat=Z @ v, loss=losses[0], dA=grads[0], dW=grads[1], dv=grads[2])
        if k < steps:
            A, W, v = (p - lr * g if t else p for p, g, t in zip((A, W, v), grads, train))
    out.update(gd_A=A, gd_W=W, gd_v=v, gd_loss=np.array(losses))
    return out


def test_verify_a_float32_implementation_with_a_looser_rtol(golden, tmp_path):
    theirs = tmp_path / "float32.npz"

    def recompute(a):
        for c in range(int(a["meta/cases"])):
            get = lambda k: a[f"case{c}/{k}"]
            outs = float32_implementation(get("A"), get("W"), get("v"), get("X"), get("y"), get("gamma"),
                                          get("lr"), int(get("steps")), [bool(t) for t in get("train")])
            a.update({f"case{c}/{k}": np.asarray(val) for k, val in outs.items()})

    _rewrite(golden, theirs, recompute)
    rows, problems = ig.verify_golden(theirs, rtol=1e-5)  # float32: eps 6e-8, x conditioning (2e-7 seen)
    worst = max(r[2] for r in rows)
    assert not problems and all(passed for *_, passed in rows), worst
    assert worst > 1e-8  # and the float64 default would have caught the float32 arithmetic
