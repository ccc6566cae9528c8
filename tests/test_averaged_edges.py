"""Edges of `keras_dyart.recipe.averaged`: the weight averages under mixed precision (a
wrapped optimizer) and evaluation inputs in a method model's bounds other than [0, 1]."""

import types

import keras
import numpy as np
import pytest

from keras_dyart import methods, recipe

EPS = 0.1


def data(n=64, d=6, k=3, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.uniform(0, 1, (n, d)).astype("float32"), rng.randint(0, k, n).astype("int32"))


def weights(d=6, k=3, seed=1):
    rng = np.random.RandomState(seed)
    return rng.normal(size=(d, k)).astype("float32"), rng.normal(size=k).astype("float32")


def classifier(w, b, rescale=None):
    """z -> z·W + b, or (z·rescale)·W + b behind a Rescaling layer."""
    inputs = keras.Input((w.shape[0],))
    h = inputs if rescale is None else keras.layers.Rescaling(rescale)(inputs)
    dense = keras.layers.Dense(w.shape[1])
    model = keras.Model(inputs, dense(h))
    dense.set_weights([w, b])
    return model


# -- bug 1: mixed_float16 wraps the optimizer in a LossScaleOptimizer ------------------------

@pytest.fixture
def mixed_float16():
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def assert_averages_of(model, classifier, averages):
    got = recipe.averaged_weights(model)
    assert len(got) == len(classifier.weights)
    for g, v in zip(got, classifier.weights):
        np.testing.assert_allclose(g, keras.ops.convert_to_numpy(averages[id(v)]), rtol=1e-6)
    raw = [keras.ops.convert_to_numpy(v) for v in classifier.weights]
    assert max(float(np.max(np.abs(g - r))) for g, r in zip(got, raw)) > 1e-4
    copy = recipe.averaged_model(model)
    for a, g in zip(copy.get_weights(), got):
        np.testing.assert_allclose(a, g, rtol=1e-6)


def test_averaged_weights_under_mixed_float16_are_the_inner_optimizers_averages(mixed_float16):
    x, y = data()
    clf = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                            keras.layers.Dense(3)])
    model = methods.CleanModel(clf)
    model.compile(optimizer=recipe.AveragingSGD(0.1, ema_tau=0.5))
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    inner = model.optimizer.inner_optimizer
    assert isinstance(inner, recipe.AveragingSGD)
    assert_averages_of(model, clf, inner.averages())


def test_averaged_weights_look_through_nested_optimizer_wrappers():
    x, y = data()
    clf = classifier(*weights())
    averaging = recipe.AveragingSGD(0.5, ema_tau=0.5)
    clf.compile(optimizer=keras.optimizers.LossScaleOptimizer(averaging),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clf.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert_averages_of(clf, clf, averaging.averages())
    # a wrapper of a wrapper (any object with an ``inner_optimizer``)
    nested = types.SimpleNamespace(
        classifier=clf, optimizer=types.SimpleNamespace(inner_optimizer=clf.optimizer))
    assert_averages_of(nested, clf, averaging.averages())



def test_averaged_model_without_an_averaging_optimizer_warns_and_copies_the_weights():
    """A model trained with Adam keeps no average: the copy is its current weights, and
    the user is told so rather than handed them as an average."""
    import warnings

    x, y = data()
    clf = classifier(*weights())
    clf.compile(optimizer="adam",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clf.fit(x, y, batch_size=16, epochs=1, verbose=0)
    with pytest.warns(UserWarning, match=r"keeps no weight average \(Adam\).*current weights"):
        copy = recipe.averaged_model(clf)
    for a, v in zip(copy.get_weights(), clf.get_weights()):
        np.testing.assert_array_equal(a, v)
    with pytest.warns(UserWarning, match="`model` is not compiled"):
        recipe.averaged_model(classifier(*weights()))
    averaging = classifier(*weights())
    averaging.compile(optimizer=recipe.AveragingSGD(0.5, ema_tau=0.5),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    averaging.fit(x, y, batch_size=16, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*weight average")
        recipe.averaged_model(averaging)


# -- bug 3: evaluation inputs in the method model's bounds -----------------------------------

def test_robust_accuracy_takes_the_method_models_bounds():
    x, y = data()
    w, b = weights()
    unit = classifier(w, b)
    model255 = methods.CleanModel(classifier(w, b, rescale=1 / 255), bounds=(0, 255))
    expected = recipe.robust_accuracy(unit, x, y, EPS, steps=5)
    assert 0 < expected[1].sum() < expected[0].sum()      # the attack breaks some points
    got = recipe.robust_accuracy(model255, x * 255, y, EPS * 255, steps=5)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)
    # a plain copy of the classifier has no bounds: they are given
    copy = recipe.plain_copy(model255.classifier)
    got = recipe.robust_accuracy(copy, x * 255, y, EPS * 255, steps=5, bounds=model255.bounds)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


def test_robust_accuracy_refuses_x_outside_the_bounds_naming_them():
    x, y = data()
    model255 = methods.CleanModel(classifier(*weights(), rescale=1 / 255), bounds=(0, 255))
    with pytest.raises(ValueError, match=r"`x` must lie in the model's input bounds \[0, 255\]"):
        recipe.robust_accuracy(model255, x * 300, y, EPS * 255, steps=2)
    copy = recipe.plain_copy(model255.classifier)
    with pytest.raises(ValueError, match=r"`x` must lie in the model's input bounds \[0, 255\]"):
        recipe.robust_accuracy(copy, x * 300, y, EPS * 255, steps=2, bounds=(0, 255))


def fit_with_checkpoint(model, x, y, path, eps, **kwargs):
    keras.utils.set_random_seed(0)
    model.compile(optimizer=recipe.build_optimizer(8, learning_rate=0.5, ema_tau=0.5))
    checkpoint = recipe.AveragedCheckpoint(x, y, path, eps=eps, steps=5, **kwargs)
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                        callbacks=[checkpoint])
    return history.history, checkpoint


def test_averaged_checkpoint_evaluates_in_the_method_models_bounds(tmp_path):
    x, y = data()
    w, b = weights()
    unit, _ = fit_with_checkpoint(methods.CleanModel(classifier(w, b)), x, y,
                                  str(tmp_path / "unit.keras"), EPS)
    model255 = methods.CleanModel(classifier(w, b, rescale=1 / 255), bounds=(0, 255))
    got, checkpoint = fit_with_checkpoint(model255, x * 255, y, str(tmp_path / "255.keras"),
                                          EPS * 255)
    assert len(got["avg_robust_acc"]) == 2
    assert got["avg_clean_acc"] == unit["avg_clean_acc"]
    assert got["avg_robust_acc"] == unit["avg_robust_acc"]
    assert got["avg_robust_acc"][-1] < got["avg_clean_acc"][-1]
    # the logged numbers are the averaged model's, attacked in the model's bounds
    _, clean, robust = checkpoint.evaluate()
    correct, expected = recipe.robust_accuracy(recipe.averaged_model(model255), x * 255, y,
                                               EPS * 255, steps=5, bounds=(0, 255))
    assert (clean, robust) == (correct.mean(), expected.mean())
    assert robust == got["avg_robust_acc"][-1]
    # an explicit `bounds` works as well
    again, _ = fit_with_checkpoint(
        methods.CleanModel(classifier(w, b, rescale=1 / 255), bounds=(0, 255)), x * 255, y,
        str(tmp_path / "again.keras"), EPS * 255, bounds=(0, 255))
    assert again["avg_robust_acc"] == got["avg_robust_acc"]


def test_averaged_checkpoint_refuses_x_outside_the_bounds_naming_them(tmp_path):
    x, y = data()
    path = str(tmp_path / "best.keras")
    model255 = methods.CleanModel(classifier(*weights(), rescale=1 / 255), bounds=(0, 255))
    model255.compile(optimizer=recipe.build_optimizer(8))
    message = r"`x` must lie in the model's input bounds \[0, 255\]"
    # the callback sees the model when training begins (before any training step)
    checkpoint = recipe.AveragedCheckpoint(x * 300, y, path, eps=EPS * 255, steps=2)
    checkpoint.set_model(model255)
    with pytest.raises(ValueError, match=message):
        checkpoint.on_train_begin()
    with pytest.raises(ValueError, match=message):
        recipe.AveragedCheckpoint(x * 300, y, path, eps=EPS * 255, bounds=(0, 255))
    # a unit-box model still refuses 0-255 pixels, naming [0, 1]
    checkpoint = recipe.AveragedCheckpoint(x * 255, y, path, eps=EPS, steps=2)
    checkpoint.set_model(methods.CleanModel(classifier(*weights())))
    with pytest.raises(ValueError, match=r"`x` must lie in the model's input bounds \[0, 1\]"):
        checkpoint.on_train_begin()
    # what does not depend on the bounds fails at once
    with pytest.raises(ValueError, match="NaN"):
        recipe.AveragedCheckpoint(np.full_like(x, np.nan), y, path, eps=EPS)


def test_averaged_checkpoint_refuses_an_eps_in_pixel_levels_when_training_begins(tmp_path):
    # eps=8 meant as 8/255: every epoch's PGD ball would hold the whole box (robust 0 at
    # each epoch, so the "best" checkpoint would mean nothing); refused before any step.
    x, y = data()
    checkpoint = recipe.AveragedCheckpoint(x, y, str(tmp_path / "best.keras"), eps=8, steps=2)
    checkpoint.set_model(methods.CleanModel(classifier(*weights())))
    with pytest.raises(ValueError, match=r"`eps` is 8 .*\[0, 1\].*8/255"):
        checkpoint.on_train_begin()
    # in the model's own units 8 of 255 is a radius
    model255 = methods.CleanModel(classifier(*weights(), rescale=1 / 255), bounds=(0, 255))
    checkpoint = recipe.AveragedCheckpoint(x * 255, y, str(tmp_path / "b.keras"), eps=8,
                                           steps=2)
    checkpoint.set_model(model255)
    checkpoint.on_train_begin()
