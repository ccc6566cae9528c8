"""Boundary speed (`keras_dyart.dynamics`) against closed forms, on every backend."""

import keras
import numpy as np
import pytest

from keras_dyart import dynamics as dy
from tests.conftest import linear_classifier

D = 6


def _two_class_setup(seed=0, n=10):
    """A two-class linear model and points of both classes at L∞ margin about 0.05 whose
    closest boundary points lie inside the box."""
    rng = np.random.RandomState(seed)
    w = rng.normal(size=(D, 2)).astype("float32")
    v = w[:, 0] - w[:, 1]
    b = np.array([-0.25 * v.sum(), 0.25 * v.sum()], "float32")   # φ = 0 at x = 0.5
    side = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]
    x = (0.5 + 0.05 * side * np.sign(v) + 0.005 * rng.normal(size=(n, D))).astype("float32")
    y = np.argmax(x @ w + b, 1).astype("int32")
    dw = (0.1 * rng.normal(size=w.shape)).astype("float32")
    db = (0.1 * rng.normal(size=2)).astype("float32")
    return w, b, x, y, dw, db


def _closed_form(w, b, x, y, dw, db, q):
    """Margin R = φ/‖v‖_q of a two-class linear model and dR/dt along (dw, db)."""
    other = 1 - y
    v, dv = (w[:, y] - w[:, other]).T, (dw[:, y] - dw[:, other]).T
    c, dc = b[y] - b[other], db[y] - db[other]
    phi, dphi = (v * x).sum(1) + c, (dv * x).sum(1) + dc
    if q == "l1":
        nv, dnv = np.abs(v).sum(1), (np.sign(v) * dv).sum(1)
    else:
        nv = np.sqrt((v * v).sum(1))
        dnv = (v * dv).sum(1) / nv
    return phi / nv, dphi / nv - phi * dnv / nv ** 2


@pytest.mark.parametrize("norm,q", [("linf", "l1"), ("l2", "l2")])
def test_linear_speed_is_derivative_of_closed_form_margin(norm, q):
    w, b, x, y, dw, db = _two_class_setup()
    model = linear_classifier(w, b)
    res = dy.boundary_dynamics(model, x, y, [dw, db], method="both", norm=norm, r0=1.0)
    r, dr = _closed_form(w, b, x, y, dw, db, q)
    assert res.points.usable.all()
    np.testing.assert_allclose(res.points.margin, r, rtol=3e-3)
    np.testing.assert_allclose(res.speed, dr, rtol=3e-3, atol=1e-6)
    # φ is linear in the weights of a linear model: the finite difference is exact too.
    np.testing.assert_allclose(res.speed_fd, dr, rtol=3e-3, atol=1e-5)
    # The change was random: the speeds have both signs somewhere across seeds, but here
    # we only need them to be far from zero for the oracle to bite.
    assert np.abs(dr).min() > 1e-3


def test_speed_sign_follows_the_direction_of_the_change():
    w, b, x, y, _, _ = _two_class_setup(n=12)
    assert 0 < y.sum() < len(y)                # both classes present
    model = linear_classifier(w, b)
    # Raising the bias of class 0 by 0.05 moves the boundary away from the points of
    # class 0 and towards those of class 1 at speed ±0.05/‖w0 − w1‖_1.
    change = [np.zeros_like(w), np.array([0.05, 0.0], "float32")]
    res = dy.boundary_dynamics(model, x, y, change, r0=1.0)
    v1 = np.abs(w[:, 0] - w[:, 1]).sum()
    np.testing.assert_allclose(res.speed, np.where(y == 0, 1.0, -1.0) * 0.05 / v1,
                               rtol=2e-3)
    assert res.summary["conflict_share"] == pytest.approx(np.mean(y == 1))
    res = dy.boundary_dynamics(model, x, y, [-a for a in change], r0=1.0)
    assert res.summary["conflict_share"] == pytest.approx(np.mean(y == 0))


def _mlp(k=3, activation="tanh", seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((D,))
    h = keras.layers.Dense(8, activation=activation)(inputs)
    return keras.Model(inputs, keras.layers.Dense(k)(h))


def _mlp_probe(model, n=16, seed=1):
    rng = np.random.RandomState(seed)
    x = rng.uniform(0.2, 0.8, size=(n, D)).astype("float32")
    y = np.argmax(keras.ops.convert_to_numpy(model(x)), 1).astype("int32")
    return x, y


def test_zero_update_gives_zero_speed():
    model = _mlp()
    x, y = _mlp_probe(model)
    zero = [np.zeros(v.shape, "float32") for v in model.trainable_variables]
    res = dy.boundary_dynamics(model, x, y, zero, method="both", r0=1.0)
    assert res.points.usable.sum() >= 4
    used = res.points.usable
    assert np.all(res.speed[used] == 0.0)
    assert np.all(res.speed_fd[used] == 0.0)
    assert np.all(np.isnan(res.speed[~used]))


def test_scaling_a_linear_model_leaves_linf_margins_unchanged():
    w, b, x, y, dw, db = _two_class_setup()
    model = linear_classifier(w, b)
    scale = [0.3 * w, 0.3 * b]                 # θ → 1.3·θ: φ scales, its zero set does not
    res = dy.boundary_dynamics(model, x, y, scale, method="both", r0=1.0)
    ref = dy.boundary_dynamics(model, x, y, [dw, db], r0=1.0)
    typical = np.abs(ref.speed).mean()
    assert typical > 1e-3
    assert np.abs(res.speed).max() < 1e-3 * typical * 30
    assert np.abs(res.speed_fd).max() < 1e-3 * typical * 30


def test_scaling_the_last_layer_of_a_two_class_relu_net_gives_zero_speed():
    model = _mlp(k=2, activation="relu", seed=3)
    x, y = _mlp_probe(model, n=24)
    delta = [np.zeros(v.shape, "float32") for v in model.trainable_variables]
    kernel, bias = model.layers[-1].get_weights()
    delta[-2], delta[-1] = 0.5 * kernel, 0.5 * bias
    res = dy.boundary_dynamics(model, x, y, delta, r0=1.0)
    rng = np.random.RandomState(0)
    rand = [0.1 * rng.normal(size=v.shape).astype("float32")
            for v in model.trainable_variables]
    ref = dy.boundary_dynamics(model, x, y, rand, r0=1.0)
    used = res.points.usable
    assert used.sum() >= 4
    assert np.abs(res.speed[used]).max() < 1e-2 * np.abs(ref.speed[used]).mean()


def test_scaling_three_class_logits_moves_the_soft_boundary():
    # With K > 2 the soft maximum is not scale-invariant: theory says the speed is not 0,
    # and the measurement must see it (this guards the zero-speed tests above).
    model = _mlp(k=3, activation="relu", seed=3)
    x, y = _mlp_probe(model, n=24)
    delta = [np.zeros(v.shape, "float32") for v in model.trainable_variables]
    kernel, bias = model.layers[-1].get_weights()
    delta[-2], delta[-1] = 0.5 * kernel, 0.5 * bias
    res = dy.boundary_dynamics(model, x, y, delta, r0=1.0)
    used = res.points.usable
    assert used.sum() >= 4
    assert np.abs(res.speed[used]).max() > 1e-3
    fd = dy.boundary_speed(model, res.points, delta, method="finite_difference", step=1e-2)
    np.testing.assert_allclose(fd[used], res.speed[used], rtol=0.05, atol=2e-4)


def test_finite_difference_converges_to_exact():
    model = _mlp(k=3, activation="tanh", seed=5)
    x, y = _mlp_probe(model, n=16)
    rng = np.random.RandomState(2)
    delta = [0.5 * rng.normal(size=v.shape).astype("float32")
             for v in model.trainable_variables]
    points = dy.boundary_points(model, x, y)
    used = points.usable
    assert used.sum() >= 4
    exact = dy.boundary_speed(model, points, delta, method="exact")
    errors = []
    for h in (0.2, 0.05, 0.0125):
        fd = dy.boundary_speed(model, points, delta, method="finite_difference", step=h)
        errors.append(np.abs(fd - exact)[used].max())
    scale = np.abs(exact[used]).mean()
    assert errors[0] > 1e-3 * scale            # the step is large enough to show curvature
    assert errors[1] < errors[0] / 2.5 and errors[2] < errors[1] / 2.5
    assert errors[2] < 0.05 * scale


def test_step_change_is_one_sgd_step_and_restores_the_model():
    w, b, x, y, _, _ = _two_class_setup(n=12)
    model = linear_classifier(w, b)
    lr = 0.5
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    delta = dy.step_change(model, x, y)
    # Closed form: ∇ of mean softmax cross-entropy of a linear model.
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    err = (p - np.eye(2)[y]) / len(x)
    np.testing.assert_allclose(delta[0], -lr * x.T @ err, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(delta[1], -lr * err.sum(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(model.layers[-1].get_weights()[0], w)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
    again = dy.step_change(model, x, y, restore=False)
    np.testing.assert_allclose(again[0], delta[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.layers[-1].get_weights()[0], w + delta[0],
                               rtol=1e-5, atol=1e-6)


def test_step_change_of_a_dyart_model():
    from keras_dyart import DyARTModel

    w, b, x, y, _, _ = _two_class_setup(n=16)
    model = DyARTModel(linear_classifier(w, b), lam=10.0, r0=0.5, n_iter=5)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    delta = dy.step_change(model, x, y, steps=2, batch_size=8)
    assert all(np.all(np.isfinite(d)) for d in delta)
    assert max(np.abs(d).max() for d in delta) > 0
    np.testing.assert_array_equal(model.classifier.layers[-1].get_weights()[0], w)
    res = dy.boundary_dynamics(model, x, y, delta)
    assert res.r0 == pytest.approx(0.5)        # taken from the model
    assert np.isfinite(res.speed[res.points.usable]).all()


def test_weight_change_of_two_checkpoints(tmp_path):
    w, b, x, y, dw, db = _two_class_setup()
    first, second = str(tmp_path / "a.keras"), str(tmp_path / "b.keras")
    linear_classifier(w, b).save(first)
    linear_classifier(w + dw, b + db).save(second)
    delta = dy.weight_change(first, second)
    np.testing.assert_allclose(delta[0], dw, atol=1e-6)
    np.testing.assert_allclose(delta[1], db, atol=1e-6)
    model = keras.saving.load_model(first)
    res = dy.boundary_dynamics(model, x, y, delta, r0=1.0)
    _, dr = _closed_form(w, b, x, y, dw, db, "l1")
    np.testing.assert_allclose(res.speed, dr, rtol=3e-3, atol=1e-6)


def test_summarize_definitions():
    margin = np.array([0.05, 0.1, 0.2, 0.25, 0.5, 0.9, 0.0], "float32")
    speed = np.array([-1.0, 2.0, -3.0, 4.0, 5.0, 7.0, np.nan], "float32")
    usable = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    s = dy.summarize(margin, speed, usable, r0=0.3, bins=[0.0, 0.15, 0.3, np.inf])
    assert s["n_usable"] == 6 and s["n_vulnerable"] == 4
    assert s["conflict_share"] == pytest.approx(0.5)
    assert s["mean_speed_vulnerable"] == pytest.approx(0.5)
    assert s["mean_speed"] == pytest.approx(14 / 6)
    assert s["bin_count"] == [2, 2, 2]
    assert s["bin_mean_speed"] == pytest.approx([0.5, 0.5, 6.0])
    assert s["bin_share_negative"] == pytest.approx([0.5, 0.5, 0.0])
    ref = np.corrcoef(margin[:6], speed[:6])[0, 1]
    assert s["speed_margin_corr"] == pytest.approx(ref, rel=1e-4)
    default = dy.summarize(margin, speed, usable, r0=0.3)
    assert len(default["bin_count"]) == 9 and sum(default["bin_count"]) == 6
    empty = dy.summarize(margin, speed, np.zeros(7, bool), r0=0.3)
    assert np.isnan(empty["conflict_share"]) and np.isnan(empty["speed_margin_corr"])
    assert all(np.isnan(v) for v in empty["bin_share_negative"])


def test_summarize_ignores_what_unusable_rows_hold_and_refuses_nonfinite_usable_rows():
    # Points without a boundary point often carry an inf (or NaN) margin, e.g. FAB-T's
    # distances; they must drop out, not turn the margin statistics into NaN.
    margin = np.array([0.05, 0.1, 0.2, 0.25, 0.5, 0.9, 0.0], "float32")
    speed = np.array([-1.0, 2.0, -3.0, 4.0, 5.0, 7.0, 0.0], "float32")
    usable = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    ref = dy.summarize(margin, speed, usable, r0=0.3, bins=[0.0, 0.15, 0.3, np.inf])
    assert ref["speed_margin_corr"] == pytest.approx(
        np.corrcoef(margin[:6], speed[:6])[0, 1], rel=1e-4)
    for filler in (np.inf, np.nan):
        m, sp = margin.copy(), speed.copy()
        m[6], sp[6] = filler, filler
        got = dy.summarize(m, sp, usable, r0=0.3, bins=[0.0, 0.15, 0.3, np.inf])
        assert got.keys() == ref.keys()
        for key in ref:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-6, err_msg=key)
    bad = margin.copy()
    bad[2] = np.inf
    with pytest.raises(ValueError, match=r"`margin` is not finite at 1 point.*row 2"):
        dy.summarize(bad, speed, usable, r0=0.3)
    bad = speed.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match=r"`speed` is not finite.*row 0"):
        dy.summarize(margin, bad, usable, r0=0.3)
    with pytest.raises(ValueError, match="three vectors of one length"):
        dy.summarize(margin, speed[:5], usable, r0=0.3)


def test_bad_input_names_the_argument(tmp_path):
    w, b, x, y, dw, db = _two_class_setup()
    model = linear_classifier(w, b)
    with pytest.raises(ValueError, match="`delta`"):
        dy.boundary_dynamics(model, x, y, [dw])
    with pytest.raises(ValueError, match=r"`delta\[1\]`"):
        dy.boundary_dynamics(model, x, y, [dw, np.zeros(3, "float32")])
    with pytest.raises(TypeError, match="`delta`"):
        dy.boundary_dynamics(model, x, y, {"a": dw})
    with pytest.raises(ValueError, match="`method`"):
        dy.boundary_dynamics(model, x, y, [dw, db], method="jvp")
    with pytest.raises(ValueError, match="`r0`"):
        dy.boundary_dynamics(model, x, y, [dw, db], r0=-1)
    with pytest.raises(ValueError, match="`x`"):
        dy.boundary_dynamics(model, x + 2.0, y, [dw, db])
    with pytest.raises(ValueError, match="`y`"):
        dy.boundary_dynamics(model, x, y[:3], [dw, db])
    with pytest.raises(ValueError, match="`model` must be compiled"):
        dy.step_change(linear_classifier(w, b), x, y)
    with pytest.raises(FileNotFoundError, match="`after`"):
        dy.weight_change(model, str(tmp_path / "missing.keras"))
    with pytest.raises(ValueError, match="`bins`"):
        dy.summarize(np.zeros(2), np.zeros(2), np.ones(2, bool), 0.3, bins=[0.3, 0.1])
    with pytest.raises(ValueError, match="`step`"):
        dy.boundary_speed(model, dy.boundary_points(model, x, y), [dw, db], step=0)


def test_settings_come_from_a_dyart_model_only():
    from keras_dyart import DyARTModel, methods

    w, b, x, y, dw, db = _two_class_setup()
    trades = methods.get("trades", linear_classifier(w, b), beta=6.0, eps=0.1, norm="l2")
    points = dy.boundary_points(trades, x, y)
    assert points.beta == 5.0 and points.norm == "l2"   # TRADES' β is not a temperature
    dyart = DyARTModel(linear_classifier(w, b), beta=2.0, norm="l2")
    assert dy.boundary_points(dyart, x, y).beta == 2.0
