"""A point broken at one radius is broken at every larger one: `run_sequence` (and so
`evaluate`) carries an adversarial point found at a small eps to the larger radii, whose
balls hold it, instead of reporting the point robust there when an attack run at the larger
eps happens to miss (as attacks do on gradient-masking models)."""

import keras
import numpy as np
import pytest

from keras_dyart import evaluate
from keras_dyart.attacks import registry
from keras_dyart.attacks.autoattack import run_sequence

ONLY_AT = 0.02


def _linear(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 3)).astype("float32")
    b = rng.normal(size=(3,)).astype("float32") * 0.1
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    model.layers[-1].set_weights([w, b])
    x = rng.uniform(0.2, 0.8, size=(64, 8)).astype("float32")
    y = np.argmax(x @ w + b, axis=1)
    return model, w, b, x, y


def _exact_linf(w, b, x, y, eps):
    """The exact L∞ worst case of a linear model in the eps ball and the box [0, 1]: for
    each wrong class j, the corner of the box-clipped ball that most lowers z_y − z_j."""
    best = x.copy()
    gap = np.full(len(x), np.inf)
    for j in range(w.shape[1]):
        d = w[:, y].T - w[:, j]                      # (N, d): ∂(z_y − z_j)/∂x
        xa = np.clip(x - eps * np.sign(d), 0.0, 1.0)
        g = np.sum(d * xa, axis=1) + b[y] - b[j]
        g = np.where(y == j, np.inf, g)
        better = g < gap
        best[better], gap[better] = xa[better], g[better]
    return best, gap < 0


@pytest.fixture
def one_radius_attack():
    """An attack that finds the exact worst case of `_linear`'s model at eps 0.02 and
    nothing at any other radius (an attack that misses at the larger radii)."""
    state = {}

    def run(model, x, y, eps, **kwargs):
        if abs(eps - ONLY_AT) > 1e-9:
            return x.copy(), np.zeros(len(x), bool)
        adv, ok = _exact_linf(state["w"], state["b"], x, y, eps)
        return adv.astype(x.dtype), ok

    registry.register("one-radius", "One radius", run)
    try:
        yield state
    finally:
        registry.ATTACKS.pop("one-radius", None)


@pytest.mark.parametrize("order", [(0.02, 0.05, 0.1), (0.1, 0.02, 0.05)])
def test_broken_at_small_eps_is_broken_at_larger(one_radius_attack, order):
    model, w, b, x, y = _linear()
    one_radius_attack.update(w=w, b=b)
    _, broken_small = _exact_linf(w, b, x, y, ONLY_AT)
    assert 0 < broken_small.sum() < len(x)           # the oracle breaks some points, not all
    out = run_sequence(model, x, y, list(order), attacks=["one-radius"], batch_size=16)
    for e in order:
        # robust exactly where the oracle failed at 0.02 (the only radius the attack works at)
        np.testing.assert_array_equal(out["robust"][e], ~broken_small)
        sel = np.flatnonzero(broken_small)
        assert all(out["broken_by"][e][i] == "one-radius" for i in sel)
        assert np.max(np.abs(out["x_adv"][e] - x)) <= e + 1e-6
        # the same point (up to the float rounding of its projection into each ball)
        np.testing.assert_allclose(out["x_adv"][e][sel], out["x_adv"][ONLY_AT][sel],
                                   atol=1e-6)
    # and the robust accuracy after the attack never rises with eps
    after = out["after"]["one-radius"]
    assert after[0.1] <= after[0.05] <= after[0.02]


def test_evaluate_reports_the_carried_points(one_radius_attack):
    model, w, b, x, y = _linear(seed=2)
    one_radius_attack.update(w=w, b=b)
    _, broken_small = _exact_linf(w, b, x, y, ONLY_AT)
    assert 0 < broken_small.sum() < len(x)
    report = evaluate(model, x, y, attack="one-radius", epsilons=[0.02, 0.1], batch_size=16)
    expected = float(np.mean(~broken_small))
    assert report.robust_accuracy[0.02] == pytest.approx(expected)
    assert report.robust_accuracy[0.1] == pytest.approx(expected)
    np.testing.assert_array_equal(report.robust[:, 1], ~broken_small)


def test_carry_in_other_input_bounds(one_radius_attack):
    """The same through the unit-box change of variables (inputs in [0, 255])."""
    model, w, b, x, y = _linear(seed=0)
    scaled = keras.Sequential([keras.Input((8,)), keras.layers.Rescaling(1 / 255.0),
                               keras.layers.Dense(3)])
    scaled.layers[-1].set_weights([w, b])
    _, broken_small = _exact_linf(w, b, x, y, ONLY_AT)
    assert 0 < broken_small.sum() < len(x)
    one_radius_attack.update(w=w, b=b)               # in the unit box the model is Dense(w, b)
    out = run_sequence(scaled, x * 255.0, y, [ONLY_AT * 255.0, 0.1 * 255.0],
                       attacks=["one-radius"], batch_size=16, bounds=(0.0, 255.0))
    np.testing.assert_array_equal(out["robust"][ONLY_AT * 255.0], ~broken_small)
    np.testing.assert_array_equal(out["robust"][0.1 * 255.0], ~broken_small)
