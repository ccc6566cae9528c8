"""DyARTModel: loss, weights and the gradient of a train step against closed forms."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_dyart import DyARTModel, architectures
from keras_dyart.losses import dyart_loss, robust_term

ALPHA, LAM = 3.0, 50.0


def linear_batch(seed=0, n=64, d=16):
    """Two-class linear problem; only points whose L∞ closest point is inside the box."""
    rng = np.random.RandomState(seed)
    weights = rng.randn(d, 2).astype("float32")
    bias = rng.randn(2).astype("float32") * 0.1
    x = rng.uniform(0.35, 0.65, (n, d)).astype("float32")
    logits = x @ weights + bias
    y = logits.argmax(1).astype("int32")
    sign = np.where(y == 0, 1.0, -1.0)
    v = (weights[:, 0] - weights[:, 1])[None] * sign[:, None]
    phi = np.abs(logits[:, 0] - logits[:, 1])
    margin = phi / np.abs(v).sum(1)
    keep = margin < 0.3
    return weights, bias, x[keep], y[keep], v[keep], phi[keep], margin[keep]


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_loss_and_weights_match_numpy(make_linear):
    weights, bias, x, y, v, phi, margin = linear_batch()
    clf = make_linear(weights, bias)
    model = DyARTModel(clf, lam=LAM, alpha=ALPHA, r0=1.0)
    out = model.search(lambda z: clf(z, training=False), x, y)
    w = ops.convert_to_numpy(out["weights"])
    np.testing.assert_allclose(w, np.exp(-ALPHA * margin) / np.abs(v).sum(1), rtol=2e-3)

    # the robust term at a shifted model, where φ(x̂) is no longer 0
    shifted = make_linear(weights * 1.1, bias)
    x_hat = ops.convert_to_numpy(out["x_hat"])
    logits_hat = x_hat @ (weights * 1.1) + bias
    phi_hat = np.abs(logits_hat[:, 0] - logits_hat[:, 1]) * np.where(
        np.argmax(logits_hat, 1) == y, 1, -1)
    expected_robust = np.mean(w * -phi_hat)
    got = float(ops.convert_to_numpy(robust_term(shifted(x_hat), y, w)))
    assert got == pytest.approx(expected_robust, rel=1e-4, abs=1e-7)

    logits = x @ (weights * 1.1) + bias
    ce = -np.log(softmax(logits)[np.arange(len(y)), y]).mean()
    total = float(ops.convert_to_numpy(dyart_loss(shifted(x), shifted(x_hat), y, w, lam=LAM)))
    assert total == pytest.approx(ce + LAM * expected_robust, rel=1e-4)


@pytest.mark.parametrize("jit_compile", [
    "auto", pytest.param(True, marks=pytest.mark.skipif(
        keras.backend.backend() == "torch", reason="jit_compile=True means torch.compile"))])
def test_train_step_gradient_is_minus_weighted_margin_gradient(make_linear, jit_compile):
    """One SGD(lr=1) step moves θ by −(∇CE − λ/N·Σ h'(R_i)·∇θR_i), ∇θR from the closed form.

    Also with `jit_compile=True` (XLA on TensorFlow, which Keras's "auto" leaves off on CPU).
    """
    weights, bias, x, y, v, phi, margin = linear_batch(seed=1)
    n = len(y)
    clf = make_linear(weights, bias)
    model = DyARTModel(clf, lam=LAM, alpha=ALPHA, r0=1.0)
    model.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=jit_compile)
    logs = model.train_on_batch(x, y, return_dict=True)
    new_w, new_b = clf.layers[-1].get_weights()

    p = softmax(x @ weights + bias)
    onehot = np.eye(2)[y]
    grad_w = x.T @ (p - onehot) / n
    grad_b = (p - onehot).mean(0)
    l1 = np.abs(v).sum(1)
    dr_dv = x / l1[:, None] - (phi / l1 ** 2)[:, None] * np.sign(v)    # ∂R/∂v
    dr_dc = 1.0 / l1
    scale = LAM / n * np.exp(-ALPHA * margin)
    for i in range(n):
        yi, oi = y[i], 1 - y[i]
        grad_w[:, yi] -= scale[i] * dr_dv[i]
        grad_w[:, oi] += scale[i] * dr_dv[i]
        grad_b[yi] -= scale[i] * dr_dc[i]
        grad_b[oi] += scale[i] * dr_dc[i]
    np.testing.assert_allclose(weights - new_w, grad_w, rtol=5e-3, atol=1e-5)
    np.testing.assert_allclose(bias - new_b, grad_b, rtol=5e-3, atol=1e-5)
    assert logs["boundary_fraction"] == pytest.approx(1.0)
    assert logs["mean_margin"] == pytest.approx(margin.mean(), rel=1e-3)


def test_all_points_misclassified_trains_on_ce_alone(make_linear):
    weights, bias, x, y, v, phi, margin = linear_batch(seed=2)
    wrong = (1 - y).astype("int32")
    clf = make_linear(weights, bias)
    model = DyARTModel(clf, lam=LAM)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    logs = model.train_on_batch(x, wrong, return_dict=True)
    ce = -np.log(softmax(x @ weights + bias)[np.arange(len(y)), wrong]).mean()
    assert np.isfinite(logs["loss"])
    assert logs["loss"] == pytest.approx(ce, rel=1e-5)
    assert logs["ce_loss"] == pytest.approx(ce, rel=1e-5)
    assert logs["robust_loss"] == 0.0
    assert logs["boundary_fraction"] == 0.0
    assert logs["mean_margin"] == 0.0
    assert np.all(np.isfinite(clf.layers[-1].get_weights()[0]))


def test_search_uses_the_current_weights_inside_the_compiled_step(make_linear):
    """After a large weight change (outside the step), the next compiled step must search
    with the new weights, not values captured when the step was traced."""
    weights, bias, x, y, v, phi, margin = linear_batch(seed=3)
    clf = make_linear(weights, bias)
    model = DyARTModel(clf, lam=LAM, r0=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    first = model.train_on_batch(x, y, return_dict=True)
    assert first["mean_margin"] == pytest.approx(margin.mean(), rel=1e-3)
    clf.layers[-1].set_weights([weights * 4.0, bias * 4.0])    # all margins unchanged ...
    second = model.train_on_batch(x, y, return_dict=True)
    assert second["mean_margin"] == pytest.approx(margin.mean(), rel=1e-3)
    changed = weights * np.random.RandomState(7).uniform(0.3, 1.7, weights.shape)
    changed = changed.astype("float32")
    clf.layers[-1].set_weights([changed, bias])                  # ... now a real change
    logits = x @ changed + bias
    keep = np.argmax(logits, 1) == y
    v2 = (changed[:, 0] - changed[:, 1])[None] * np.where(y == 0, 1.0, -1.0)[:, None]
    new_margin = (np.abs(logits[:, 0] - logits[:, 1]) / np.abs(v2).sum(1))[keep]
    assert np.all(new_margin < 0.3)                              # the box does not bind
    third = model.train_on_batch(x, y, return_dict=True)
    assert third["boundary_fraction"] == pytest.approx(keep.mean())
    assert third["mean_margin"] == pytest.approx(new_margin.mean(), rel=1e-3)
    assert abs(new_margin.mean() - margin.mean()) > 0.01


def test_two_epochs_on_mnist_slice_learn(mnist5k):
    x_train, y_train, x_test, y_test = mnist5k
    model = DyARTModel(architectures.small_cnn(), n_iter=5, r0=0.6, eps_fab=0.3)
    # From scratch: the clip keeps the robust term's early gradients in check (the recipe
    # clips at 0.1 after a clean burn-in; unclipped, DyART from scratch does not learn).
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True,
                                                 global_clipnorm=1.0),
                  metrics=["accuracy"])
    history = model.fit(x_train[:2048], y_train[:2048], batch_size=64, epochs=2, verbose=0)
    for key in ("loss", "ce_loss", "robust_loss", "boundary_fraction", "mean_margin",
                "accuracy"):
        assert key in history.history and np.all(np.isfinite(history.history[key]))
    acc = model.evaluate(x_test[:300], y_test[:300], verbose=0, return_dict=True)["accuracy"]
    assert acc > 0.4                                   # chance is 0.1


def test_keras_round_trip(tmp_path, mnist5k):
    x = mnist5k[2][:32]
    model = DyARTModel(architectures.small_cnn(), norm="l2", lam=400.0, alpha=8.0,
                       r0=0.5, n_iter=7, eps_fab="8/255", refine_steps=2)
    model.compile(optimizer="sgd", metrics=["accuracy"])
    model.fit(mnist5k[0][:64], mnist5k[1][:64], batch_size=32, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, DyARTModel)
    for key in ("norm", "lam", "alpha", "r0", "n_iter", "eps_fab", "refine_steps"):
        assert getattr(loaded, key) == getattr(model, key)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    clone = DyARTModel.from_config(model.get_config())
    assert clone.get_config()["n_iter"] == 7


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "l1"}, "norm"), ({"beta": 0}, "beta"), ({"n_iter": 0}, "n_iter"),
    ({"n_iter": 2.5}, "n_iter"), ({"eps_fab": "x/255"}, "eps_fab"), ({"r0": -1}, "r0"),
    ({"alpha_max": 2}, "alpha_max"), ({"lam": float("nan")}, "lam"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DyARTModel(architectures.small_cnn(), **kwargs)


def test_classifier_must_be_a_keras_layer():
    with pytest.raises(TypeError, match="classifier"):
        DyARTModel(lambda x: x)


@pytest.mark.parametrize("x, y, match", [
    (np.full((4, 28, 28, 1), 2.0, "float32"), np.zeros(4, "int32"), r"\[0, 1\]"),
    (np.full((4, 28, 28, 1), np.nan, "float32"), np.zeros(4, "int32"), "NaN"),
    (np.zeros((4, 28, 28, 1), "uint8"), np.zeros(4, "int32"), "float"),
    (np.zeros((4, 28, 28, 1), "float32"), np.array([0, 1, 2, 10]), r"\[0, 10\)"),
    (np.zeros((4, 28, 28, 1), "float32"), np.zeros(3, "int32"), "3 labels"),
    (np.zeros((0, 28, 28, 1), "float32"), np.zeros(0, "int32"), "empty"),
])
def test_fit_rejects_bad_data_naming_the_argument(x, y, match):
    model = DyARTModel(architectures.small_cnn())
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, epochs=1, verbose=0)


def test_fit_rejects_a_classifier_without_class_logits():
    inputs = keras.Input((28, 28, 1))
    model = DyARTModel(keras.Model(inputs, keras.layers.Flatten()(inputs)[:, :1]))
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="logits of shape"):
        model.fit(np.zeros((4, 28, 28, 1), "float32"), np.zeros(4, "int32"), verbose=0)
