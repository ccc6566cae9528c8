"""DyART's memory of boundary points (``warm_start``): the index of each example follows it
through shuffling and input pipelines, and a warm search from the remembered point keeps
the closed-form margins of linear models."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_dyart as kd
from keras_dyart.methods.warm import cache_bytes, indexed
from tests.test_boundary import closed_form, two_class_problem


def _model(make_linear, weights, norm="linf", **kwargs):
    model = kd.DyARTModel(make_linear(weights), norm=norm, lam=0.0, **kwargs)
    # no learning: the closed-form margins stay those of `weights`
    model.compile(keras.optimizers.SGD(0.0))
    return model


def _remembered(model, x):
    """Per example: the cached margin (the offset's largest coordinate) and start point."""
    scales = ops.convert_to_numpy(model.cache.scales)
    q = ops.convert_to_numpy(model.cache.offsets).astype("float32") / model.cache.q_max
    return scales, x + q * np.maximum(scales, 0)[:, None]


@pytest.mark.parametrize("cache_dtype", ["float16", "int8"])
def test_warm_search_keeps_closed_form_margins_through_shuffled_fit(make_linear,
                                                                    cache_dtype):
    weights, x, y, v, phi = two_class_problem()
    margin, inside = closed_form(v, phi, "linf")
    # zero warm iterations: the second epoch's points come from the memory alone (and the
    # refinement along x → remembered point), so a row given another row's memory is wrong
    model = _model(make_linear, weights, warm_start=0, cache_dtype=cache_dtype)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=True, verbose=0)
    scales, start = _remembered(model, x)
    assert model.cache.n_examples == len(x)
    np.testing.assert_allclose(scales[inside], margin[inside], rtol=1e-3)
    # the remembered points lie on the boundary
    phi_start = ops.convert_to_numpy(kd.soft_margin(model.classifier(start), y))
    np.testing.assert_allclose(phi_start[inside], 0.0, atol=1e-2 * np.abs(phi).max())
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=True, verbose=0).history
    scales, _ = _remembered(model, x)
    np.testing.assert_allclose(scales[inside], margin[inside], rtol=1e-3)
    assert min(history["boundary_fraction"]) >= inside.mean()
    # control: memories cut to half their length fall short of the boundary, and a search
    # with zero iterations from there finds nothing (so the memory is what was used); the
    # memory then holds where each search stopped, its start (0.2 % past the half)
    model.cache.scales.assign(ops.convert_to_numpy(model.cache.scales) * 0.5)
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=True, verbose=0).history
    assert history["boundary_fraction"] == [0.0]
    np.testing.assert_allclose(_remembered(model, x)[0][inside], 0.501 * margin[inside],
                               rtol=1e-3)


def test_memory_of_other_inputs_is_not_used(make_linear):
    # The memory is tied to the inputs it was found for: the same indices given other rows
    # (here the rows reversed, which `fit` on arrays indexes by position) search cold, so
    # the margins are exact, where starting from the other rows' points (zero warm
    # iterations) would miss many.
    weights, x, y, v, phi = two_class_problem()
    margin, inside = closed_form(v, phi, "linf")
    model = _model(make_linear, weights, warm_start=0)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    flipped = x[::-1]
    model.fit(flipped, y[::-1], batch_size=16, epochs=1, verbose=0)
    np.testing.assert_allclose(_remembered(model, flipped)[0][inside[::-1]],
                               margin[::-1][inside[::-1]], rtol=1e-3)
    # control: the reversed rows' borrowed points fall short of many boundaries
    assert np.sum(inside & (1.002 * margin[::-1] < 0.99 * margin)) >= 10


def test_warm_search_l2_and_the_cold_first_visit(make_linear):
    weights, x, y, v, phi = two_class_problem(seed=1)
    margin, inside = closed_form(v, phi, "l2")
    model = _model(make_linear, weights, norm="l2", warm_start=0)
    # first visit of every example: the full cold search (20 iterations), exact margins
    first = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    again = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    np.testing.assert_allclose(again["mean_margin"], first["mean_margin"], rtol=1e-2)
    assert again["boundary_fraction"] == first["boundary_fraction"]
    assert first["boundary_fraction"][0] >= inside.mean()


def test_index_through_tf_data_and_array_batches(make_linear):
    tf = pytest.importorskip("tensorflow")
    weights, x, y, v, phi = two_class_problem(seed=2)
    margin, inside = closed_form(v, phi, "linf")
    # a tf.data pipeline that shuffles rows: the model is told how many examples there are
    model = _model(make_linear, weights, warm_start=0, n_examples=len(x))
    data = tf.data.Dataset.from_tensor_slices((indexed(x), y)).shuffle(48, seed=3).batch(16)
    model.fit(data, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(_remembered(model, x)[0][inside], margin[inside], rtol=1e-3)
    # the library's own stream, reshuffled each epoch
    model = _model(make_linear, weights, warm_start=0)
    batches = kd.recipe.ArrayBatches(x, y, batch_size=16, seed=4, index=True)
    model.fit(batches, steps_per_epoch=batches.steps_per_epoch, epochs=2, shuffle=False,
              verbose=0)
    np.testing.assert_allclose(_remembered(model, x)[0][inside], margin[inside], rtol=1e-3)


def test_index_through_the_library_pipeline_with_extra_data(make_linear):
    # `pipeline(index=True)`: x's rows are 0..31, the extra set's rows 32..47 (mixed into
    # every batch in their own shuffled order): a wrong offset or a row given another's
    # index would remember another point's margin
    weights, x, y, v, phi = two_class_problem(seed=3)
    margin, inside = closed_form(v, phi, "linf")
    images = x.reshape(len(x), 4, 5)

    def on_images():
        inputs = keras.Input((4, 5, 1))
        linear = make_linear(weights)
        model = kd.DyARTModel(keras.Model(inputs, linear(keras.layers.Flatten()(inputs))),
                              norm="linf", lam=0.0, warm_start=0)
        model.compile(keras.optimizers.SGD(0.0))
        return model

    model = on_images()
    batches = kd.datasets.pipeline(images[:32], y[:32], batch_size=16, augment=False,
                          extra=(images[32:], y[32:]), extra_fraction=0.25, seed=5,
                          index=True)
    assert batches.n_examples == 48
    model.fit(batches, epochs=2, verbose=0)
    assert model.cache.n_examples == 48
    scales, _ = _remembered(model, x)
    visited = scales >= 0
    assert visited[:32].all() and visited[32:].sum() >= 8
    np.testing.assert_allclose(scales[visited & inside], margin[visited & inside], rtol=1e-3)
    # augmented images are new inputs at every visit: warned, and every search is cold
    with pytest.warns(UserWarning, match="augment=False"):
        on_images().fit(kd.datasets.pipeline(images, y, batch_size=16, index=True),
                        epochs=1, verbose=0)
    with pytest.raises(ValueError, match="index=True"):
        on_images().fit(kd.datasets.pipeline(images, y, batch_size=16, augment=False),
                        verbose=0)


def test_validation_split_leaves_the_held_out_rows_unvisited(make_linear):
    # `fit(validation_split=...)` on arrays: Keras holds out the last rows of the indexed
    # data; the memory has a place for every row, only the training rows are visited, and
    # validation is the plain loss of the held-out rows.
    weights, x, y, v, phi = two_class_problem()
    margin, inside = closed_form(v, phi, "linf")
    model = _model(make_linear, weights, warm_start=0)
    history = model.fit(x, y, batch_size=16, epochs=2, validation_split=0.25,
                        verbose=0).history
    train = np.arange(len(x)) < 36
    assert model.cache.n_examples == len(x)
    scales = ops.convert_to_numpy(model.cache.scales)
    np.testing.assert_array_equal(scales[~train], -1.0)
    np.testing.assert_allclose(scales[train & inside], margin[train & inside], rtol=1e-3)
    held_out = model.evaluate(x[~train], y[~train], verbose=0, return_dict=True)
    np.testing.assert_allclose(history["val_loss"][-1], held_out["loss"], rtol=1e-5)


def test_memory_is_saved_with_the_model(make_linear, tmp_path):
    weights, x, y, _, _ = two_class_problem()
    model = _model(make_linear, weights, warm_start=2, cache_dtype="int8")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "warm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.warm_start == 2 and loaded.cache.cache_dtype == "int8"
    for a, b in ((model.cache.scales, loaded.cache.scales),
                 (model.cache.offsets, loaded.cache.offsets)):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    assert np.all(ops.convert_to_numpy(loaded.cache.scales) >= 0)


def test_cache_takes_numpy_batches():
    # the memory's write and read take host arrays as well as tensors (a benchmark or a
    # user's own loop hands it NumPy): a NumPy ``keep`` and a backend tensor combine
    from keras_dyart.methods.warm import ExampleCache

    cache = ExampleCache(keras.layers.Layer(), 4, (3,), "float16")
    u = np.full((4, 3), 0.5, "float32")
    u_hat = u + np.array([[0.1, 0.0, 0.0], [0.0, -0.2, 0.0], [0.0, 0.0, 0.3], [0.1, 0.1, 0.1]],
                         "float32")
    cache.write(u, u_hat, np.array([True, True, False, True]), np.arange(4))
    start, visited = cache.read(u, np.arange(4), stretch=1.0)
    assert ops.convert_to_numpy(visited).all()
    expected = np.where(np.array([True, True, False, True])[:, None], u_hat, u)
    np.testing.assert_allclose(ops.convert_to_numpy(start), expected, atol=1e-3)


def test_cache_bytes_at_cifar_scale():
    assert cache_bytes(50_000, (32, 32, 3), "float16") == 50_000 * (3072 * 2 + 8)
    assert cache_bytes(50_000, (32, 32, 3), "int8") == 50_000 * (3072 + 8)


def test_bad_uses_are_clear_errors(make_linear):
    tf = pytest.importorskip("tensorflow")
    weights, x, y, _, _ = two_class_problem()
    with pytest.raises(ValueError, match="random_start"):
        kd.DyARTModel(make_linear(weights), warm_start=5, random_start=True)
    with pytest.raises(ValueError, match="cache_dtype"):
        kd.DyARTModel(make_linear(weights), warm_start=5, cache_dtype="bfloat16")
    with pytest.raises(ValueError, match="warm_start"):
        kd.DyARTModel(make_linear(weights), warm_start=-1)
    # a pipeline: the model must be told how many examples there are ...
    model = _model(make_linear, weights, warm_start=1)
    data = tf.data.Dataset.from_tensor_slices((indexed(x), y)).batch(16)
    with pytest.raises(ValueError, match="n_examples"):
        model.fit(data, epochs=1, verbose=0)
    # ... and its batches must carry the indices
    model = _model(make_linear, weights, warm_start=1, n_examples=len(x))
    plain = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(ValueError, match="indices"):
        model.fit(plain, epochs=1, verbose=0)
    batches = kd.recipe.ArrayBatches(x, y, batch_size=16)
    with pytest.raises(ValueError, match="index=True"):
        model.fit(batches, steps_per_epoch=3, epochs=1, verbose=0)
    # indices beyond the memory stop the epoch with a message that names them
    wrong = tf.data.Dataset.from_tensor_slices(
        (indexed(x, np.arange(len(x)) + 10), y)).batch(16)
    with pytest.raises(ValueError, match="n_examples"):
        model.fit(wrong, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="index"):
        indexed(x, np.arange(3))


def test_other_methods_ignore_indices(make_linear):
    # indexed inputs are plain inputs to a method without memory, and to evaluate / predict
    weights, x, y, _, _ = two_class_problem()
    model = kd.PGDATModel(make_linear(weights), eps=0.1, steps=2)
    model.compile(keras.optimizers.SGD(0.0))
    model.fit(indexed(x), y, batch_size=16, epochs=1, verbose=0)
    np.testing.assert_allclose(ops.convert_to_numpy(model.predict(indexed(x), verbose=0)),
                               ops.convert_to_numpy(model.classifier(x)), rtol=1e-5)
