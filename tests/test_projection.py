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


def image_problems(n=8, d=784, seed=0):
    """Image-sized rows: most pixels on the box faces (as in MNIST), most normal coordinates
    zero, planes reachable inside the box."""
    rng = np.random.RandomState(seed)
    x = np.where(rng.rand(n, d) < 0.8, 0.0, rng.rand(n, d))
    x[rng.rand(n, d) < 0.1] = 1.0
    w = rng.randn(n, d) * (rng.rand(n, d) < 0.3)
    c = (w * rng.uniform(0, 1, (n, d))).sum(1)
    return x, w, c


def test_linf_projection_matches_lp_on_image_sized_rows():
    x, w, c = image_problems()
    delta = ops.convert_to_numpy(project_to_hyperplane(
        x.astype("float32"), w.astype("float32"), c.astype("float32"), "linf"))
    for i in range(len(x)):
        res = lp_linf(x[i], w[i], c[i])
        assert res.status == 0
        z = x[i] + delta[i]
        assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
        assert w[i] @ z == pytest.approx(c[i], rel=1e-4, abs=1e-4)
        assert np.abs(delta[i]).max() == pytest.approx(res.fun, rel=1e-4, abs=1e-6)


def test_l2_projection_on_image_sized_rows_matches_float64_bisection():
    # Oracle: the L2 step is clip(t·w) to the box (KKT); t by 200 bisection steps in float64.
    x, w, c = image_problems(seed=1)
    delta = ops.convert_to_numpy(project_to_hyperplane(
        x.astype("float32"), w.astype("float32"), c.astype("float32"), "l2"))
    for i in range(len(x)):
        r = c[i] - w[i] @ x[i]
        lo_box, hi_box = -x[i], 1 - x[i]

        def step(t, w_i=w[i], lo_box=lo_box, hi_box=hi_box):
            return np.clip(t * w_i, lo_box, hi_box)

        lo, hi = (0.0, 1e6) if r > 0 else (-1e6, 0.0)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if (w[i] @ step(mid) < r) == (r > 0):
                lo, hi = (mid, hi) if r > 0 else (lo, mid)
            else:
                lo, hi = (lo, mid) if r > 0 else (mid, hi)
        np.testing.assert_allclose(delta[i], step(0.5 * (lo + hi)), atol=1e-5)


def test_projection_is_exact_when_many_coordinates_saturate():
    # Equal weights, rooms spread evenly, the plane just inside the far corner: the root
    # lies past almost every breakpoint, the hardest case for the Newton iteration.
    d = 64
    x = np.linspace(0.0, 0.98, d)[None]
    w = np.ones((1, d))
    c = np.array([d - 0.05])
    delta = ops.convert_to_numpy(project_to_hyperplane(
        x.astype("float32"), w.astype("float32"), c.astype("float32"), "linf"))
    res = lp_linf(x[0], w[0], c[0])
    assert res.status == 0
    assert w[0] @ (x[0] + delta[0]) == pytest.approx(c[0], abs=1e-4)
    assert np.abs(delta[0]).max() == pytest.approx(res.fun, rel=1e-4)


def assert_reachable_planes_reached(x, w, c, delta):
    """Every row whose box meets its plane (with 1e-3 to spare) lands on it, in float64;
    returns the bool mask of those rows."""
    x, w, c = (np.asarray(v, "float64") for v in (x, w, c))
    r = c - (w * x).sum(1)
    reach = (np.abs(w) * np.where(w * np.sign(r)[:, None] > 0, 1 - x, x)).sum(1)
    feasible = reach >= np.abs(r) + 1e-3
    np.testing.assert_allclose((w * (x + delta)).sum(1)[feasible], c[feasible], atol=1e-3)
    return feasible


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_reaches_every_reachable_plane_in_a_large_batch(norm):
    # 256 image-sized rows with planes at random offsets: every plane the box meets is
    # reached (w·(x + δ) = c), the others get the corner; nothing leaves the box.
    x, w, _ = image_problems(n=256, seed=2)
    c = np.random.RandomState(3).randn(256) * 150
    x, w, c = x.astype("float32"), w.astype("float32"), c.astype("float32")
    delta = ops.convert_to_numpy(project_to_hyperplane(x, w, c, norm)).astype("float64")
    z = x + delta
    assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
    feasible = assert_reachable_planes_reached(x, w, c, delta)
    assert 50 < feasible.sum() < 256


def test_l2_projection_with_zero_weight_pixels_of_real_digits():
    # Regression: the earlier sort-based solver gave zero-weight coordinates a breakpoint of
    # 1e10, and float32 rounding of the cumulative rates there (times 1e10) sent a reachable
    # row of this batch (digit 47, under JAX) to the infeasible corner.
    from keras_dyart import datasets

    x = datasets.load("mnist5k")[0][:256].reshape(256, -1)
    rng = np.random.RandomState(0)
    rng.rand(256, 784), rng.randn(256, 784), rng.randn(256)
    w = (rng.randn(256, 784) * (rng.rand(256, 784) < 0.3)).astype("float32")
    c = (rng.randn(256) * 10).astype("float32")
    delta = ops.convert_to_numpy(project_to_hyperplane(x, w, c, "l2")).astype("float64")
    assert_reachable_planes_reached(x, w, c, delta)
