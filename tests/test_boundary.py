"""Closest boundary points of linear models, whose margins are known in closed form."""

import numpy as np
import pytest
from keras import ops

from keras_dyart import backend as dyart_backend
from keras_dyart import config
from keras_dyart.boundary import find_boundary_points, quality_filter
from keras_dyart.margins import soft_margin
from keras_dyart.methods import DyARTModel


def two_class_problem(seed=0, n=48, d=20, scale=1.0):
    rng = np.random.RandomState(seed)
    weights = (rng.randn(d, 2) * scale).astype("float32")
    x = rng.uniform(0.3, 0.7, (n, d)).astype("float32")
    logits = x @ weights
    y = logits.argmax(1).astype("int32")
    v = weights[:, 0] - weights[:, 1]
    v = np.where(y[:, None] == 0, v, -v)                 # ∇x φ for each point
    phi = np.abs(logits[:, 0] - logits[:, 1])
    return weights, x, y, v, phi


def closed_form(v, phi, norm):
    q = 1 if norm == "linf" else 2
    margin = phi / np.linalg.norm(v, ord=q, axis=1)
    # the closest point moves each coordinate by at most `reach`; the box must not bind
    if norm == "linf":
        reach = margin
    else:
        reach = margin * np.abs(v).max(1) / np.linalg.norm(v, axis=1)
    return margin, reach < 0.29


def search(classifier, x, y, norm, **kwargs):
    def phi(z):
        return soft_margin(classifier(z, training=False), y, 5.0)

    return find_boundary_points(lambda z: dyart_backend.value_and_grad(phi, z), phi, x,
                                norm=norm, **kwargs)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_closed_form_margin(norm, make_linear):
    weights, x, y, v, phi = two_class_problem()
    clf = make_linear(weights)
    margin, inside = closed_form(v, phi, norm)
    assert inside.sum() >= 10
    out = search(clf, x, y, norm)
    found = ops.convert_to_numpy(out["found"])
    got = ops.convert_to_numpy(out["margin"])
    assert found.all()
    np.testing.assert_allclose(got[inside], margin[inside], rtol=1e-3)
    x_hat = ops.convert_to_numpy(out["x_hat"])
    assert np.all(x_hat >= 0) and np.all(x_hat <= 1)
    # the returned points lie on the boundary
    phi_hat = ops.convert_to_numpy(soft_margin(clf(x_hat), y))
    np.testing.assert_allclose(phi_hat[inside], 0.0, atol=1e-3 * np.abs(phi).max())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_compiled_search_is_as_exact_as_the_eager_one(norm, make_linear):
    # As the train step runs it (jit under JAX, a graph under TensorFlow). The refinement's
    # bracket once tore under XLA (an end moved without its value): 1.7e-3 off, not 1e-6.
    weights, x, y, v, phi = two_class_problem()
    clf = make_linear(weights)
    margin, inside = closed_form(v, phi, norm)
    run = dyart_backend.compile_model_fn(
        clf, lambda f, a, b: search(lambda z, training=False: f(z), a, b, norm)["margin"],
        jit=True)
    got = ops.convert_to_numpy(run(ops.convert_to_tensor(x), ops.convert_to_tensor(y)))
    np.testing.assert_allclose(got[inside], margin[inside], rtol=2e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_model_search_and_filter_keep_closed_form_points(norm, make_linear):
    weights, x, y, v, phi = two_class_problem(seed=1)
    clf = make_linear(weights)
    margin, inside = closed_form(v, phi, norm)
    model = DyARTModel(clf, norm=norm, r0=1.0 if norm == "linf" else 10.0)    # no cap
    out = model.search(lambda z: clf(z, training=False), x, y)
    usable = ops.convert_to_numpy(out["usable"])
    assert usable[inside].all()
    np.testing.assert_allclose(ops.convert_to_numpy(out["margin"])[inside], margin[inside],
                               rtol=1e-3)
    q = 1 if norm == "linf" else 2
    expected_w = np.exp(-3.0 * margin) / np.linalg.norm(v, ord=q, axis=1)
    np.testing.assert_allclose(ops.convert_to_numpy(out["weights"])[inside],
                               expected_w[inside], rtol=2e-3)


def test_without_refinement_the_overshoot_lands_past_the_boundary(make_linear):
    weights, x, y, v, phi = two_class_problem(seed=2)
    margin, inside = closed_form(v, phi, "linf")
    out = search(make_linear(weights), x, y, "linf", refine=False)
    ratio = ops.convert_to_numpy(out["margin"])[inside] / margin[inside]
    assert np.all(ratio >= 1 - 1e-5)          # the FAB point is past the boundary ...
    assert np.median(ratio) < 1.02            # ... but close to it


def test_random_start_finds_boundary_points_no_closer_than_the_margin(make_linear):
    # From a random start 20 iterations do not fully converge (the spec's reason for
    # starting at x by default): radii come out slightly too large, never too small.
    weights, x, y, v, phi = two_class_problem(seed=3)
    margin, inside = closed_form(v, phi, "linf")
    out = search(make_linear(weights), x, y, "linf", random_start=True, restarts=2,
                 eps_fab=0.3, seed=1)
    ratio = ops.convert_to_numpy(out["margin"])[inside] / margin[inside]
    assert ops.convert_to_numpy(out["found"]).all()
    assert np.all(ratio >= 1 - 1e-4)
    assert np.max(ratio) < 1.05


def test_misclassified_points_are_not_searched(make_linear):
    weights, x, y, v, phi = two_class_problem(seed=4)
    wrong = 1 - y
    out = search(make_linear(weights), x, wrong, "linf")
    assert not ops.convert_to_numpy(out["found"]).any()
    np.testing.assert_array_equal(ops.convert_to_numpy(out["x_hat"]), x)
    np.testing.assert_array_equal(ops.convert_to_numpy(out["margin"]), 0.0)


def test_quality_filter_rejects_bad_points():
    x = np.full((4, 6), 0.5, "float32")
    delta = np.array([0.1, -0.1, 0.1, 0.0, 0.0, 0.02], "float32")
    x_hat = x + delta
    good_grad = np.array([-1.0, 1.0, -1.0, 0.0, 0.0, 0.0], "float32")
    grads = np.stack([good_grad,
                      -good_grad,                                   # gradient along the step
                      good_grad + np.array([0, 0, 0, 5, 5, 5], "float32"),  # no small rest
                      good_grad])
    phi = np.array([0.0, 0.0, 0.0, -0.5], "float32")               # last: too far inside
    keep = ops.convert_to_numpy(quality_filter(x, x_hat, phi, grads, "linf"))
    np.testing.assert_array_equal(keep, [True, False, False, False])


def test_written_out_and_compiled_loops_find_the_same_points(make_linear, monkeypatch):
    weights, x, y, _, _ = two_class_problem()
    clf = make_linear(weights)
    outs = []
    for unroll in ("1", "0"):
        monkeypatch.setenv("KERAS_DYART_UNROLL", unroll)
        config.reload()
        assert dyart_backend.unroll_loops() is (unroll == "1")
        outs.append({k: ops.convert_to_numpy(v) for k, v in search(clf, x, y, "linf").items()})
    for key in outs[0]:
        np.testing.assert_allclose(outs[0][key], outs[1][key], rtol=1e-6, atol=1e-7)


def test_unroll_setting_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv("KERAS_DYART_UNROLL", "sometimes")
    with pytest.raises(ValueError, match="KERAS_DYART_UNROLL"):
        config.reload()


def _update_inputs(seed=0, n=40, d=300):
    rng = np.random.RandomState(seed)
    x0 = rng.rand(n, d).astype("float32")
    x0[:, :30] = np.round(x0[:, :30])                       # pixels on the box faces
    x1 = np.clip(x0 + rng.uniform(-0.05, 0.05, (n, d)), 0, 1).astype("float32")
    g1 = rng.randn(n, d).astype("float32")
    g1[:, 30:60] = 0.0                                       # coordinates φ ignores
    phi1 = rng.uniform(-1, 1, n).astype("float32")
    phi1[:4] = 1e3                                           # hyperplanes the box cannot meet
    best = x0.copy()
    best_r = np.where(rng.rand(n) < 0.5, np.inf, 0.03).astype("float32")
    best_phi = np.zeros(n, "float32")
    return x1, phi1, g1, x0, best, best_r, best_phi


@pytest.mark.skipif(dyart_backend.current().__name__.endswith("jax"),
                    reason="JAX compiles the whole search; `fuse` is the identity there")
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fused_fab_update_matches_the_op_by_op_update(norm, monkeypatch):
    # PyTorch: torch.compile (forced on for this small batch); TensorFlow: XLA.
    from keras_dyart.boundary import _fab_head, _fab_tail, _fab_update

    monkeypatch.setenv("KERAS_DYART_TORCH_COMPILE", "1")

    config.reload()
    args = [ops.convert_to_tensor(a) for a in _update_inputs()]
    settings = dict(norm=norm, overshoot=1.05, alpha_max=0.1, step_back=0.9)
    head, tail = dyart_backend.fuse(_fab_head), dyart_backend.fuse(_fab_tail)
    assert head is not _fab_head and tail is not _fab_tail
    plain = [ops.convert_to_numpy(v) for v in _fab_update(*args, **settings)]
    out = [ops.convert_to_numpy(v)
           for v in _fab_update(*args, **settings, head=head, tail=tail)]
    for a, b in zip(plain, out):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # the update moved points and recorded some successes: the comparison is not vacuous
    assert np.abs(plain[0] - ops.convert_to_numpy(args[0])).max() > 1e-3
    assert np.isfinite(plain[2]).sum() > np.isfinite(ops.convert_to_numpy(args[5])).sum()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_warm_start_from_an_earlier_point_keeps_the_closed_form_margin(norm, make_linear):
    # A warm start (`start`) from points past the boundary, as an earlier search under other
    # weights leaves them: the margins are still the closed form's, and φ(x) is x's own.
    weights, x, y, v, phi = two_class_problem()
    clf = make_linear(weights)
    margin, inside = closed_form(v, phi, norm)
    step = np.sign(v) if norm == "linf" else v / np.linalg.norm(v, axis=1, keepdims=True)
    start = np.clip(x - 1.3 * margin[:, None] * step, 0, 1).astype("float32")
    out = search(clf, x, y, norm, n_iter=3, start=start)
    found = ops.convert_to_numpy(out["found"])
    assert found[inside].all()
    np.testing.assert_allclose(ops.convert_to_numpy(out["margin"])[inside], margin[inside],
                               rtol=1e-3)
    np.testing.assert_allclose(ops.convert_to_numpy(out["phi_x"]),
                               ops.convert_to_numpy(soft_margin(clf(x), y)), rtol=1e-5,
                               atol=1e-6)
    # starting at x itself is the cold search
    cold = search(clf, x, y, norm, n_iter=3)
    same = search(clf, x, y, norm, n_iter=3, start=x)
    np.testing.assert_allclose(ops.convert_to_numpy(same["margin"]),
                               ops.convert_to_numpy(cold["margin"]), rtol=1e-5, atol=1e-7)
    # with no iterations at all, the start itself (past the boundary) is the answer, put on
    # the boundary by the refinement along x → start; a cold search finds nothing
    out = search(clf, x, y, norm, n_iter=0, start=start)
    assert ops.convert_to_numpy(out["found"])[inside].all()
    np.testing.assert_allclose(ops.convert_to_numpy(out["margin"])[inside], margin[inside],
                               rtol=1e-3)
    assert not ops.convert_to_numpy(search(clf, x, y, norm, n_iter=0)["found"]).any()


def test_a_model_given_for_the_margin_functions_is_refused_by_name():
    # `kd.find_boundary_points(model, x, y)` fits the positional signature (value_and_grad,
    # value, x); it used to fail deep inside Keras with an input-shape error.
    import keras

    import keras_dyart as kd

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    x = np.random.RandomState(0).rand(4, 6).astype("float32")
    with pytest.raises(TypeError, match=r"`value_and_grad` is a Keras model.*boundary.search"):
        kd.find_boundary_points(model, x, np.zeros(4, "int32"))
    with pytest.raises(TypeError, match=r"`value` is a Keras model"):
        kd.find_boundary_points(lambda z: (z, z), model, x)
    # what the message points to works on a model as it is
    from keras_dyart.boundary import search

    y = np.argmax(ops.convert_to_numpy(model(x)), axis=-1)
    out = search(model, x, y, n_iter=5)
    assert ops.convert_to_numpy(out.margin).shape == (4,)
