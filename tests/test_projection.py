"""The box-constrained projections against independent solvers (SciPy LP / QP)."""

import numpy as np
import pytest
from keras import ops
from scipy.optimize import linprog, minimize

from keras_dyart.projection import project_to_hyperplane


def lp_linf(x, w, c):
    """min t s.t. |δ_j| <= t, w·δ = c − w·x, 0 <= x + δ <= 1 (variables δ, t)."""
    d = len(x)
    cost = np.r_[np.zeros(d), 1.0]
    a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
    a_eq = np.r_[w, 0.0][None]
    bounds = [(-xi, 1 - xi) for xi in x] + [(0, None)]
    res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=a_eq, b_eq=[c - w @ x],
                  bounds=bounds, method="highs")
    return res


def qp_l2(x, w, c):
    d = len(x)
    res = minimize(lambda v: 0.5 * v @ v, np.zeros(d), jac=lambda v: v,
                   constraints=[{"type": "eq", "fun": lambda v: w @ v - (c - w @ x),
                                 "jac": lambda v: w}],
                   bounds=[(-xi, 1 - xi) for xi in x], method="SLSQP",
                   options={"ftol": 1e-14, "maxiter": 500})
    return res


def random_problems(seed, n=40, d=6):
    rng = np.random.RandomState(seed)
    x = rng.uniform(0, 1, (n, d))
    x[rng.rand(n, d) < 0.15] = 0.0                        # points on the box faces
    x[rng.rand(n, d) < 0.15] = 1.0
    w = rng.randn(n, d)
    w[rng.rand(n, d) < 0.15] = 0.0                        # some zero normal coordinates
    z = rng.uniform(0, 1, (n, d))                         # a box point on each plane ...
    c = (w * z).sum(1)
    c[: n // 4] += rng.choice([-1, 1], n // 4) * 10.0      # ... except a few infeasible ones
    return x, w, c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linf_projection_matches_lp(seed):
    x, w, c = random_problems(seed)
    delta = ops.convert_to_numpy(project_to_hyperplane(
        x.astype("float32"), w.astype("float32"), c.astype("float32"), "linf"))
    for i in range(len(x)):
        z = x[i] + delta[i]
        assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
        res = lp_linf(x[i], w[i], c[i])
        if res.status == 0:
            assert w[i] @ z == pytest.approx(c[i], abs=1e-4)
            assert np.abs(delta[i]).max() == pytest.approx(res.fun, rel=1e-4, abs=1e-5)
        else:
            # infeasible: the step goes to the box corner closest to the plane along w
            side = np.sign(c[i] - w[i] @ x[i])
            corner = np.where(side * w[i] > 0, 1.0, np.where(side * w[i] < 0, 0.0, x[i]))
            np.testing.assert_allclose(z, corner, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l2_projection_matches_qp(seed):
    x, w, c = random_problems(seed)
    delta = ops.convert_to_numpy(project_to_hyperplane(
        x.astype("float32"), w.astype("float32"), c.astype("float32"), "l2"))
    checked = 0
    for i in range(len(x)):
        z = x[i] + delta[i]
        assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
        if lp_linf(x[i], w[i], c[i]).status != 0:
            continue
        res = qp_l2(x[i], w[i], c[i])
        assert res.success
        assert w[i] @ z == pytest.approx(c[i], abs=1e-4)
        assert np.linalg.norm(delta[i]) == pytest.approx(np.linalg.norm(res.x), rel=1e-3,
                                                         abs=1e-5)
        np.testing.assert_allclose(delta[i], res.x, atol=2e-4)
        checked += 1
    assert checked >= 20


def test_projection_is_batched_and_static():
    x = np.full((3, 4), 0.5, "float32")
    w = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], "float32")
    c = np.array([0.75, 2.5, 0.0], "float32")
    delta = ops.convert_to_numpy(project_to_hyperplane(x, w, c, "linf"))
    np.testing.assert_allclose(delta[0], [0.25, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(delta[1], [0.125] * 4, atol=1e-6)
    np.testing.assert_allclose(delta[2], 0.0)      # zero normal, already "on" the plane


def test_projection_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm"):
        project_to_hyperplane(np.zeros((1, 2)), np.ones((1, 2)), np.ones(1), "l1")
