import numpy as np
import pytest
from keras import ops

from keras_dyart.geometry import lp_norm
from keras_dyart.margins import soft_margin
from keras_dyart.weights import dyart_weights, h_prime


def numpy_soft_margin(logits, y, beta):
    n = len(y)
    f_y = logits[np.arange(n), y]
    others = np.where(np.eye(logits.shape[1])[y] > 0, -np.inf, logits)
    m = others.max(1, keepdims=True)
    smax = (np.log(np.exp(beta * (others - m)).sum(1)) / beta) + m[:, 0]
    return f_y - smax


@pytest.mark.parametrize("beta", [0.5, 5.0, 50.0])
@pytest.mark.parametrize("k", [2, 3, 10])
def test_soft_margin_matches_numpy(beta, k):
    rng = np.random.RandomState(k)
    logits = (rng.randn(32, k) * 4).astype("float32")
    y = rng.randint(0, k, 32)
    got = ops.convert_to_numpy(soft_margin(logits, y, beta))
    np.testing.assert_allclose(got, numpy_soft_margin(logits.astype("float64"), y, beta),
                               rtol=1e-5, atol=1e-4)


def test_soft_margin_positive_implies_correct():
    rng = np.random.RandomState(1)
    logits = rng.randn(500, 5).astype("float32")
    y = rng.randint(0, 5, 500)
    phi = ops.convert_to_numpy(soft_margin(logits, y, 5.0))
    assert np.all(np.argmax(logits[phi > 0], 1) == y[phi > 0])
    assert (phi > 0).sum() > 20


def test_norms():
    x = np.array([[3.0, -4.0], [0.0, 1.0]], "float32")
    np.testing.assert_allclose(ops.convert_to_numpy(lp_norm(x, "linf")), [4, 1])
    np.testing.assert_allclose(ops.convert_to_numpy(lp_norm(x, "l1")), [7, 1])
    np.testing.assert_allclose(ops.convert_to_numpy(lp_norm(x, "l2")), [5, 1])


def test_h_prime_and_weights():
    r = np.array([0.0, 0.1, 0.29, 0.3, 0.5], "float32")
    np.testing.assert_allclose(ops.convert_to_numpy(h_prime(r, 3.0, 0.3)),
                               np.where(r < 0.3, np.exp(-3 * r), 0.0), rtol=1e-6)
    g = np.array([[1.0, -1.0], [0.5, 0.5], [0.0, 0.0], [2.0, 0.0], [1.0, 1.0]], "float32")
    usable = np.array([True, True, True, True, False])
    w = ops.convert_to_numpy(dyart_weights(r, g, usable, "linf", 3.0, 0.3))
    expected = np.where(r < 0.3, np.exp(-3 * r), 0) / np.maximum(np.abs(g).sum(1), 1e-30)
    expected[2] = 0.0      # zero gradient: no weight (no division by zero)
    expected[4] = 0.0      # not usable
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    w2 = ops.convert_to_numpy(dyart_weights(r, g, usable, "l2", 3.0, 0.3))
    assert w2[0] == pytest.approx(1.0 / np.sqrt(2.0), rel=1e-6)
