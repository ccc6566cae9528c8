"""`keras_dyart.geometry`: the norms' projections and random draws against NumPy oracles."""

import numpy as np
import pytest
from keras import ops

from keras_dyart import geometry

RNG = np.random.RandomState(0)


def _np_project(z, x, eps, norm):
    d = (z - x).reshape(len(z), -1).astype("float64")
    e = np.broadcast_to(np.asarray(eps, "float64"), (len(z),))[:, None]
    if norm == "linf":
        d = np.clip(d, -e, e)
    else:
        n = np.sqrt((d * d).sum(1, keepdims=True))
        d = d * np.minimum(1.0, e / np.maximum(n, 1e-12))
    return np.clip(x.reshape(len(z), -1) + d, 0, 1).reshape(z.shape)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("per_row", [False, True])
def test_projection_matches_numpy(norm, per_row):
    x = RNG.rand(6, 4, 4, 1).astype("float32")
    z = (x + RNG.randn(*x.shape)).astype("float32")
    eps = RNG.uniform(0.05, 0.5, 6).astype("float32") if per_row else np.float32(0.2)
    got = ops.convert_to_numpy(geometry.get(norm).project(
        ops.convert_to_tensor(z), ops.convert_to_tensor(x), ops.convert_to_tensor(eps)))
    np.testing.assert_allclose(got, _np_project(z, x, eps, norm), atol=1e-6)
    size = np.abs if norm == "linf" else None
    delta = (got - x).reshape(6, -1)
    r = np.abs(delta).max(1) if size else np.sqrt((delta ** 2).sum(1))
    assert np.all(r <= np.broadcast_to(eps, (6,)) + 1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_uniform_ball_draws_fill_the_ball(norm):
    ball = geometry.get(norm)
    d, n, eps = 8, 4000, 0.5
    draws = [ops.convert_to_numpy(ball.uniform_ball((n, d), eps, seed=1)),
             ball.numpy_uniform_ball(np.random.RandomState(1), (n, d), eps)]
    for v in draws:
        r = np.abs(v).max(1) if norm == "linf" else np.sqrt((v ** 2).sum(1))
        assert r.max() <= eps * (1 + 1e-6)
        # a uniform point of the L2 ball has P(r <= eps·t) = t^d: its median radius is
        # eps·0.5^(1/d); the L∞ ball's coordinates are uniform on [-eps, eps]
        if norm == "l2":
            assert abs(np.median(r) - eps * 0.5 ** (1 / d)) < 0.02
        else:
            assert abs(np.mean(np.abs(v)) - eps / 2) < 0.01


def test_unknown_norm_names_the_argument():
    with pytest.raises(ValueError, match="`threat`"):
        geometry.get("l3", "threat")
