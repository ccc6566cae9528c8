"""More steps off the demo path, for every method model: later batches with bad inputs or
labels fail with the epoch-end check's message (never a backend crash, never silent
training, validation or evaluation), inputs given as a dict are refused up front, a one-hot
cross-entropy is refused by ``compile``, a classifier with integer inputs (or an Embedding)
is refused at construction and by the attacks, and x/255 for a 0-255 model warns."""

import warnings

import keras
import numpy as np
import pytest

import keras_dyart as kd
from keras_dyart import methods
from keras_dyart.methods.warm import indexed

K = 3
D = 12
N = 48
BATCH = 16

HYPER = {
    "clean": {},
    "pgd-at": dict(eps=0.1, step_size=0.05, steps=2),
    "trades": dict(eps=0.1, step_size=0.05, steps=2),
    "mart": dict(eps=0.1, step_size=0.05, steps=2),
    "mma": dict(d_max=0.2, n_iter=3),
    "dyart": dict(r0=0.5, n_iter=3),
}


def _data(n=N, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.uniform(0.2, 0.8, size=(n, D)).astype("float32")
    w = rng.normal(size=(D, K)).astype("float32")
    y = np.argmax(x @ w, axis=1).astype("int32")
    return x, y


def _classifier(name=None):
    inputs = keras.Input((D,), name=name)
    return keras.Model(inputs, keras.layers.Dense(K)(inputs))


def _model(method, classifier=None, **kw):
    model = methods.get(method, classifier or _classifier(), **{**HYPER[method], **kw})
    model.compile(optimizer=keras.optimizers.SGD(0.01), metrics=["accuracy"])
    return model


# -- A: later bad batches, every method ------------------------------------------------------

def _bad_batches(bad):
    x, y = _data()

    if bad == "fractional":                        # float labels, whole numbers at first
        y = y.astype("float32")

    def gen():
        yield x[:16], y[:16]                       # the first batch passes `check_data`
        if bad == "pixels":
            yield x[16:32] * 255, y[16:32]         # 0-255 pixels
        elif bad == "fractional":                  # 1.5 and NaN: the cast would truncate
            yield x[16:32], np.array([1.5] * 15 + [np.nan], "float32")
        else:                                      # labels outside [0, K), both sides
            yield x[16:32], np.array([-1] * 8 + [K + 4] * 8, "int32")
        yield x[32:48], y[32:48]

    return gen


@pytest.mark.parametrize("bad", ["pixels", "labels", "fractional"])
@pytest.mark.parametrize("method", sorted(HYPER))
def test_a_later_bad_batch_fails_at_its_epoch_end_for_every_method(method, bad):
    model = _model(method)
    with pytest.raises(ValueError) as info:
        model.fit(_bad_batches(bad)(), steps_per_epoch=3, epochs=1, verbose=0,
                  shuffle=False)
    message = str(info.value)
    assert "16 training rows of epoch 1" in message, message
    assert "labels outside the classifier's classes" in message, message


@pytest.mark.parametrize("method", sorted(HYPER))
def test_a_later_bad_training_batch_still_fails_when_validation_runs(method):
    # Keras resets the metrics (the error counter among them) when validation starts: the
    # bad training rows trained silently whenever `validation_data` was given.
    x, y = _data()
    model = _model(method)
    with pytest.raises(ValueError, match="16 training rows of epoch 1"):
        model.fit(_bad_batches("labels")(), steps_per_epoch=3, epochs=1, verbose=0,
                  validation_data=(x, y))


class _Evaluate(keras.callbacks.Callback):
    """Calls `evaluate` at each epoch's end, or after training batch ``batch``."""

    def __init__(self, x, y, batch=None):
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def on_epoch_end(self, epoch, logs=None):
        if self.batch is None:
            self.model.evaluate(self.x, self.y, verbose=0)

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.model.evaluate(self.x, self.y, verbose=0)


@pytest.mark.parametrize("method", ["clean", "dyart"])
def test_a_later_bad_batch_still_fails_when_a_callback_evaluates(method):
    # A user callback that calls `evaluate` at the epoch's end reset the counter first.
    x, y = _data()
    with pytest.raises(ValueError, match="16 training rows of epoch 1"):
        _model(method).fit(_bad_batches("labels")(), steps_per_epoch=3, epochs=1, verbose=0,
                           callbacks=[_Evaluate(x, y)])


@pytest.mark.parametrize("method", ["clean", "dyart"])
def test_a_later_bad_batch_still_fails_when_a_callback_evaluates_mid_epoch(method):
    # An `evaluate` after the bad batch (index 1) reset the counter: the epoch trained on
    # its rows and ended without a word.
    x, y = _data()
    with pytest.raises(ValueError, match="16 training rows of epoch 1"):
        _model(method).fit(_bad_batches("labels")(), steps_per_epoch=3, epochs=1, verbose=0,
                           callbacks=[_Evaluate(x, y, 1)])


@pytest.mark.parametrize("method", ["clean", "dyart"])
def test_a_mid_epoch_evaluate_of_good_data_leaves_good_training_alone(method):
    x, y = _data()
    model = _model(method)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                        callbacks=[_Evaluate(x, y, 0)])
    assert len(history.history["loss"]) == 2
    assert "input_errors" not in history.history


def _repeat(gen_fn):
    def forever():
        while True:
            yield from gen_fn()
    return forever()


@pytest.mark.parametrize("bad", ["pixels", "labels", "fractional"])
@pytest.mark.parametrize("method", ["clean", "trades", "dyart"])
def test_a_later_bad_validation_or_evaluate_batch_fails_by_name(method, bad):
    # Before: JAX reported val_loss / val_accuracy on the bad rows silently, TensorFlow and
    # PyTorch crashed inside their cross-entropy ("Target 7 is out of bounds").
    x, y = _data()
    model = _model(method)
    with pytest.raises(ValueError, match=r"`validation_data`: 16 evaluation rows after "
                                         r"epoch 1 had inputs outside"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                  validation_data=_repeat(_bad_batches(bad)), validation_steps=3)
    with pytest.raises(ValueError, match=r"`x` / `y`: 16 evaluation rows had inputs"):
        model.evaluate(_repeat(_bad_batches(bad)), steps=3, verbose=0)
    # good data evaluates as before, the counter left out of the logs
    logs = model.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, validation_data=(x, y))
    assert "val_input_errors" not in history.history


@pytest.mark.parametrize("method", ["clean", "pgd-at", "dyart"])
def test_train_on_batch_with_bad_labels_counts_them_without_a_backend_crash(method):
    # `train_on_batch` skips `fit`'s checks (and its probe of the number of classes): the
    # step itself finds K, clips the labels for its losses and counts the bad rows.
    x, y = _data(BATCH)
    y[:5] = K + 2
    y[5] = -3
    model = _model(method)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(float(logs["loss"]))
    assert "input_errors" not in logs
    assert float(keras.ops.convert_to_numpy(model.input_error_tracker.result())) == 6.0


def test_clean_model_history_drops_the_input_error_counter():
    x, y = _data()
    history = _model("clean").fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert "input_errors" not in history.history
    assert set(history.history) == {"loss", "accuracy"}


def test_good_data_trains_as_before_for_the_clean_model():
    x, y = _data()
    model = _model("clean")
    before = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)
    after = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert after < before


# -- B: inputs given as a dict (or a list / tuple) ---------------------------------------------

def test_fit_refuses_a_dict_keyed_by_the_input_name():
    x, y = _data()
    model = _model("pgd-at", _classifier("image"))
    with pytest.raises(ValueError, match=r"`x` is a dict of inputs \(keys \['image'\]\)"
                                         r".*Pass the array itself, e.g. x\['image'\]"):
        model.fit({"image": x}, y, batch_size=BATCH, verbose=0)


@pytest.mark.parametrize("form", ["tuple", "list"])
def test_fit_refuses_inputs_in_a_tuple_or_list(form):
    x, y = _data()
    model = _model("clean")
    with pytest.raises(ValueError, match=f"`x` is a {form} of 1 inputs.*Pass the array"):
        model.fit((x,) if form == "tuple" else [x], y, batch_size=BATCH, verbose=0)


def test_a_pipeline_of_dict_inputs_is_refused_before_training():
    x, y = _data()

    def gen():
        for i in range(0, N, BATCH):
            yield {"image": x[i:i + BATCH]}, y[i:i + BATCH]

    model = _model("trades", _classifier("image"))
    with pytest.raises(ValueError, match=r"`x` is a dict of inputs.*Pass the array itself"):
        model.fit(gen(), steps_per_epoch=3, verbose=0)


def test_validation_and_evaluate_refuse_dict_inputs():
    x, y = _data()
    model = _model("mart", _classifier("image"))
    with pytest.raises(ValueError, match=r"`validation_data\[0\]` is a dict of inputs"):
        model.fit(x, y, batch_size=BATCH, verbose=0, validation_data=({"image": x}, y))
    with pytest.raises(ValueError, match=r"`x` is a dict of inputs"):
        model.evaluate({"image": x}, y, verbose=0)


def test_kd_evaluate_refuses_dict_inputs_by_name():
    x, y = _data()
    with pytest.raises(ValueError, match=r"`x` is a dict of inputs.*Pass the array itself"):
        kd.evaluate(_classifier("image"), {"image": x}, y, attack="pgd", epsilons=[0.1])


def test_the_warm_start_index_dict_still_trains():
    x, y = _data()
    model = _model("dyart", warm_start=2)
    history = model.fit(indexed(x), y, batch_size=BATCH, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.cache.n_examples == N

    def gen():
        for _ in range(2):
            for i in range(0, N, BATCH):
                yield indexed(x[i:i + BATCH], np.arange(i, i + BATCH)), y[i:i + BATCH]

    model = _model("dyart", warm_start=2, n_examples=N)
    history = model.fit(gen(), steps_per_epoch=3, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))


# -- C: a one-hot cross-entropy ---------------------------------------------------------------

@pytest.mark.parametrize("loss", [
    "categorical_crossentropy",
    "CategoricalCrossentropy",
    keras.losses.categorical_crossentropy,
    keras.losses.CategoricalCrossentropy(from_logits=True),
    keras.losses.CategoricalCrossentropy(from_logits=False),
    keras.losses.CategoricalFocalCrossentropy(from_logits=True),
], ids=["str", "class-name", "function", "logits", "probabilities", "focal"])
def test_compile_refuses_a_one_hot_cross_entropy(loss):
    model = methods.get("trades", _classifier(), **HYPER["trades"])
    with pytest.raises(ValueError, match=r"`loss` .*categorical cross-entropy.*which takes "
                                         r"one-hot labels.*SparseCategoricalCrossentropy"
                                         r"\(from_logits=True\)"):
        model.compile("sgd", loss=loss)


def test_compile_still_takes_sparse_logits_and_refuses_sparse_probabilities():
    x, y = _data()
    model = methods.get("trades", _classifier(), **HYPER["trades"])
    with pytest.raises(ValueError, match="on probabilities"):
        model.compile("sgd", loss="sparse_categorical_crossentropy")
    model.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


# -- D: a classifier with integer inputs ------------------------------------------------------

def _token_classifier(dtype):
    inputs = keras.Input((10,), dtype=dtype)
    h = keras.layers.Embedding(256, 4)(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h))


@pytest.mark.parametrize("method", sorted(HYPER))
def test_every_method_refuses_a_classifier_with_integer_inputs(method):
    with pytest.raises(ValueError, match=r"`classifier` takes inputs of dtype int32.*"
                                         r"the methods need continuous inputs"):
        methods.get(method, _token_classifier("int32"), **HYPER[method])


@pytest.mark.parametrize("dtype", ["int64", "uint8", "bool"])
def test_other_integer_and_bool_input_dtypes_are_refused(dtype):
    inputs = keras.Input((D,), dtype=dtype)
    h = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32"))(inputs)
    classifier = keras.Model(inputs, keras.layers.Dense(K)(h))
    with pytest.raises(ValueError, match=f"dtype {dtype}.*continuous inputs"):
        kd.DyARTModel(classifier)
    with pytest.raises(ValueError, match="continuous inputs"):
        methods.get("pgd-at", keras.Sequential([keras.Input((10,), dtype=dtype),
                                                keras.layers.Embedding(256, 4),
                                                keras.layers.Flatten(),
                                                keras.layers.Dense(2)]))


def test_an_embedding_without_a_declared_input_is_refused_too():
    # No Input: nothing declares a dtype, and the Embedding casts float inputs to ids.
    unbuilt = keras.Sequential([keras.layers.Embedding(256, 4), keras.layers.Flatten(),
                                keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"`classifier` has an Embedding layer"):
        methods.get("dyart", unbuilt, **HYPER["dyart"])
    nested = keras.Sequential([keras.Input((10,)),
                               keras.Sequential([keras.layers.Embedding(256, 4)]),
                               keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"`model` has an Embedding layer"):
        kd.evaluate(nested, np.full((4, 10), 0.5, "float32"), np.zeros(4, "int32"),
                    epsilons=[0.1], attack="apgd-ce")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_float_inputs_are_accepted(dtype):
    inputs = keras.Input((D,), dtype=dtype)
    model = methods.get("pgd-at", keras.Model(inputs, keras.layers.Dense(K)(inputs)),
                        **HYPER["pgd-at"])
    assert model.classifier.inputs[0].dtype == dtype


@pytest.mark.parametrize("bounds", [None, (0.0, 255.0)])
def test_evaluate_and_the_attacks_refuse_a_model_with_integer_inputs(bounds):
    # Such a model casts the attack's points to integers: no input gradient, so every
    # attack failed and evaluate reported the clean accuracy as robust (0.25 at eps 25/255).
    model = _token_classifier("int32")
    scale = 1.0 if bounds is None else 255.0
    x = np.random.RandomState(0).rand(8, 10).astype("float32") * scale
    y = np.zeros(8, "int32")
    with pytest.raises(ValueError, match=r"`model` takes inputs of dtype int32"):
        kd.evaluate(model, x, y, epsilons=[0.1 * scale], attack="apgd-ce", bounds=bounds)
    with pytest.raises(ValueError, match=r"`model` takes inputs of dtype int32"):
        kd.attacks.pgd(model, x, y, eps=0.1 * scale, steps=2, bounds=bounds)


def test_evaluate_the_attacks_and_margins_refuse_a_model_of_two_inputs_by_name():
    # Keras's own error asked for a dict of inputs, which evaluate refuses.
    a, b = keras.Input((D,)), keras.Input((D,))
    model = keras.Model([a, b], keras.layers.Dense(K)(keras.layers.Add()([a, b])))
    x, y = _data(8)
    match = r"`model` must take one input tensor \(the images\); it takes 2 inputs"
    with pytest.raises(ValueError, match=match):
        kd.evaluate(model, x, y, "apgd-ce", [0.1])
    with pytest.raises(ValueError, match=match):
        kd.attacks.pgd(model, x, y, eps=0.1, steps=2)
    with pytest.raises(ValueError, match=match):
        kd.margins_report(model, x, y)


# -- E: inputs divided by 255 for a model that takes 0-255 pixels -----------------------------

def test_inputs_in_a_tiny_corner_of_a_pixel_box_warn_by_name():
    # [0, 1] inputs pass a (0, 255) box check, but then eps 8 (pixel units) is 8 whole
    # ranges: every point broken, with no word said.
    x, y = _data()
    model = _model("pgd-at", bounds=(0.0, 255.0), eps=8.0, step_size=2.0)
    with pytest.warns(UserWarning, match=r"`x` holds values in .*within 1% of the model's "
                                         r"input bounds \[0, 255\]"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    with pytest.warns(UserWarning, match=r"`x` holds values .* about 255 times too large"):
        kd.evaluate(model.classifier, x, y, epsilons=[8.0], attack="apgd-ce",
                    bounds=(0, 255))
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=UserWarning)   # 0-255 pixels: none
        model.fit(x * 255, y, batch_size=BATCH, epochs=1, verbose=0)
        kd.evaluate(model.classifier, x * 255, y, epsilons=[8.0], attack="apgd-ce",
                    bounds=(0, 255), options={"apgd-ce": {"n_iter": 2}})


# -- F: evaluate and margins_report take a finite pipeline, as Keras's evaluate does ----------

class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, size):
        super().__init__()
        self.x, self.y, self.size = x, y, size

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, i):
        s = slice(i * self.size, (i + 1) * self.size)
        return self.x[s], self.y[s]


def _pipelines(x, y):
    import tensorflow as tf
    import torch

    yield "tf.data", tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    yield "PyDataset", _Batches(x, y, 10)
    yield "DataLoader", torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)), batch_size=10)


def test_evaluate_gathers_a_finite_pipeline_point_for_point():
    # Before: "`x` must be a batch of inputs with shape (N, ...); got shape ()".
    x, y = _data(36)
    model = _classifier()
    want = kd.evaluate(model, x, y, epsilons=[0.05, 0.1], attack="apgd-ce")
    margins = kd.margins_report(model, x, y, n_iter=5, n_target_classes=2)
    for name, pipeline in _pipelines(x, y):
        got = kd.evaluate(model, pipeline, None, epsilons=[0.05, 0.1], attack="apgd-ce")
        np.testing.assert_array_equal(got.robust, want.robust, err_msg=name)
        np.testing.assert_array_equal(got.labels, y, err_msg=name)
        got = kd.margins_report(model, pipeline, None, n_iter=5, n_target_classes=2)
        np.testing.assert_allclose(got.distance, margins.distance, err_msg=name)


def test_evaluate_refuses_pipelines_it_cannot_gather_by_name():
    import tensorflow as tf

    x, y = _data(20)
    model = _classifier()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    with pytest.raises(ValueError, match=r"`y` must be None when `x` is a tf.data pipeline"):
        kd.evaluate(model, dataset, y, epsilons=[0.1], attack="apgd-ce")
    with pytest.raises(ValueError, match=r"`x` is an infinite tf.data.Dataset"):
        kd.evaluate(model, dataset.repeat(), None, epsilons=[0.1], attack="apgd-ce")
    with pytest.raises(ValueError, match=r"`x` is a generator, which may never end"):
        kd.evaluate(model, (b for b in [(x, y)]), None, epsilons=[0.1], attack="apgd-ce")
    with pytest.raises(ValueError, match=r"`x`'s batches must be \(inputs, labels\) pairs"):
        kd.evaluate(model, tf.data.Dataset.from_tensor_slices(x).batch(10), None,
                    epsilons=[0.1], attack="apgd-ce")
    with pytest.raises(ValueError, match=r"`x` is a dict of inputs"):
        kd.evaluate(model, tf.data.Dataset.from_tensor_slices(({"image": x}, y)).batch(10),
                    None, epsilons=[0.1], attack="apgd-ce")


def _unbatched(kind, x, y):
    if kind == "tf.data":
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices((x, y))
    import torch

    data = torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y))
    return torch.utils.data.DataLoader(data, batch_size=None)


@pytest.mark.parametrize("kind, fix", [("tf.data", r"dataset\.batch\(128\)"),
                                       ("torch", r"batch_size=128")])
def test_a_pipeline_of_single_examples_is_refused_by_name(kind, fix):
    # Forgotten .batch(): evaluate failed in NumPy ("zero-dimensional arrays cannot be
    # concatenated"), fit with "`x` must be a batch of inputs" on the first example.
    x, y = _data(20)
    match = rf"`x` yields single examples \(labels of shape \(\)\), not batches.*{fix}"
    with pytest.raises(ValueError, match=match):
        kd.evaluate(_classifier(), _unbatched(kind, x, y), None, "apgd-ce", [0.1])
    with pytest.raises(ValueError, match=match):
        _model("dyart").fit(_unbatched(kind, x, y), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`validation_data` yields single examples"):
        _model("clean").fit(x, y, epochs=1, verbose=0,
                            validation_data=_unbatched(kind, x, y))


# -- an L∞ radius wider than the input box ------------------------------------------------
# eps=8 meant as 8/255: the ball holds the whole box, so every number would be that of "any
# input at all" (a robust accuracy of about 0, a model trained on arbitrary inputs).


def test_an_linf_radius_beyond_the_box_is_refused_by_evaluate_and_every_attack():
    x, y = _data(16)
    model = _classifier()
    with pytest.raises(ValueError, match=r"`epsilons` is 8 .*\[0, 1\].*8/255 \(= 0\.03137\)"):
        kd.evaluate(model, x, y, "apgd-ce", [0.1, 8])
    with pytest.raises(ValueError, match=r"`epsilons` is 8 "):
        kd.margins_report(model, x, y, epsilons=[8])
    for entry in kd.attacks.registry.ATTACKS.values():
        args = () if entry.returns == "distance" else (8,)
        kwargs = {"eps": 8, "restarts": 2} if entry.name == "fab-t" else {}
        with pytest.raises(ValueError, match=r"`eps` is 8 .*8/255 \(= 0\.03137\)"):
            entry.run(model, x, y, *args, **kwargs)
    # The width itself is allowed (the end of a sweep): the whole box, as asked.
    report = kd.evaluate(model, x, y, "apgd-ce", [1.0], options={"apgd-ce": {"n_iter": 2}})
    assert report.robust_accuracy[1.0] <= report.clean_accuracy
    # In the model's own units: 8 of a 0-255 box is fine, 300 is not; L2 radii are not
    # bounded by the width.
    with pytest.raises(ValueError, match=r"`epsilons` is 300 .*\[0, 255\]"):
        kd.evaluate(model, 255 * x, y, "apgd-ce", [300], bounds=(0, 255))
    report = kd.evaluate(model, 255 * x, y, "apgd-ce", [8], bounds=(0, 255),
                         options={"apgd-ce": {"n_iter": 2}})
    assert report.robust_accuracy[8] <= report.clean_accuracy
    kd.evaluate(model, x, y, "apgd-ce", [2.0], norm="l2", options={"apgd-ce": {"n_iter": 2}})


@pytest.mark.parametrize("method", ["pgd-at", "trades", "mart"])
def test_an_linf_training_radius_beyond_the_box_is_refused(method):
    cls = methods.METHODS[method]
    with pytest.raises(ValueError, match=r"`eps` is 8 .*\[0, 1\].*8/255 \(= 0\.03137\)"):
        cls(_classifier(), eps=8)
    cls(_classifier(), eps=8, step_size=2, bounds=(0, 255))     # its own units
    cls(_classifier(), eps=1.5, step_size=0.5, norm="l2")


def test_linf_caps_beyond_the_box_warn_by_name_and_are_not_refused():
    # DyART's r0, its eps_fab and MMA's d_max are caps: beyond the width they cap nothing
    # ("no cap", which the width itself says quietly); r0=16 meant as 16/255 trained an
    # untruncated DyART without a word.
    with pytest.warns(UserWarning, match=r"`r0` is 16 .*caps nothing.*16/255 \(= 0\.06275\)"):
        model = methods.DyARTModel(_classifier(), r0=16)
    assert model.r0 == 16
    with pytest.warns(UserWarning, match=r"`eps_fab` is 8 .*caps nothing"):
        methods.DyARTModel(_classifier(), r0=0.5, eps_fab=8)
    with pytest.warns(UserWarning, match=r"`d_max` is 20 .*caps nothing"):
        methods.MMAModel(_classifier(), d_max=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        methods.DyARTModel(_classifier(), r0=1.0, eps_fab=1.0)        # the width: no cap
        methods.DyARTModel(_classifier(), r0=16, bounds=(0, 255))      # its own units
        methods.DyARTModel(_classifier(), r0=16, norm="l2")            # L2: not bounded
        methods.MMAModel(_classifier(), d_max=1.0)


def test_a_dynamics_r0_beyond_the_box_warns_by_name():
    from keras_dyart import dynamics

    x, y = _data(8)
    model = _classifier()
    delta = [np.zeros(v.shape, "float32") for v in model.trainable_variables]
    with pytest.warns(UserWarning, match=r"`r0` is 16 .*caps nothing"):
        dynamics.boundary_dynamics(model, x, y, delta, r0=16, n_iter=2)


# -- inputs of the wrong shape ------------------------------------------------------------


def _conv_classifier():
    return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3),
                             keras.layers.Flatten(), keras.layers.Dense(K)])


def test_inputs_of_another_shape_are_refused_by_name_with_the_fix():
    # Keras's own error printed the whole batch, deep inside the model's call.
    rng = np.random.RandomState(0)
    nchw = rng.rand(12, 1, 4, 4).astype("float32")
    y = rng.randint(0, K, 12).astype("int32")
    clf = _conv_classifier()
    layout = r"`x` has rows of shape \(1, 4, 4\) but `model` takes inputs of shape " \
             r"\(4, 4, 1\)\. .*channels-first.*x\.transpose\(0, 2, 3, 1\)"
    with pytest.raises(ValueError, match=layout):
        kd.evaluate(clf, nchw, y, "apgd-ce", [0.1])
    with pytest.raises(ValueError, match=layout):
        kd.margins_report(clf, nchw, y)
    with pytest.raises(ValueError, match=r"`x` has rows of shape \(16,\) .*"
                                         r"x\.reshape\(-1, 4, 4, 1\)"):
        kd.attacks.apgd(clf, nchw.reshape(12, 16), y, 0.1)
    model = methods.DyARTModel(clf, r0=0.3, n_iter=2)
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"`x` has rows .* but `classifier` takes"):
        model.fit(nchw, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=layout):
        kd.dynamics.boundary_points(model, nchw, y)
    # models that declare no shape, or free sizes, take what fits them
    free = keras.Sequential([keras.Input((None, None, 1)),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(K)])
    options = {"apgd-ce": {"n_iter": 2}}
    kd.evaluate(free, rng.rand(12, 6, 6, 1).astype("float32"), y, "apgd-ce", [0.1],
                options=options)
    with pytest.raises(ValueError, match=r"takes inputs of shape \(None, None, 1\)"):
        kd.evaluate(free, rng.rand(12, 6, 6, 3).astype("float32"), y, "apgd-ce", [0.1])
    unbuilt = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(K)])
    kd.evaluate(unbuilt, nchw, y, "apgd-ce", [0.1], options=options)

    class Headed(keras.Model):        # a subclassed model whose head is its "classifier"
        def __init__(self):
            super().__init__()
            self.classifier = keras.Sequential([keras.Input((16,)), keras.layers.Dense(K)])

        def call(self, z):
            return self.classifier(keras.ops.reshape(z, (-1, 16)))

    kd.evaluate(Headed(), nchw, y, "apgd-ce", [0.1], options=options)   # not its head's shape
    # Keras adds a trailing axis of size 1 itself: (N, 4, 4) images for Input((4, 4, 1))
    report = kd.evaluate(clf, nchw[:, 0], y, "apgd-ce", [0.1], options=options)
    assert report.adversarials[0.1].shape == (12, 4, 4)


def test_per_attack_options_are_checked_by_name_before_any_attack():
    x, y = _data(16)
    model = _classifier()
    with pytest.raises(ValueError, match=r"`options\['apgd-ce'\]` has \['steps'\], which "
                                         r"apgd-ce does not take; it takes \['n_iter'"):
        kd.evaluate(model, x, y, "apgd-ce", [0.1], options={"apgd-ce": {"steps": 2}})
    with pytest.raises(ValueError, match=r"`options\['square'\]` sets \['seed'\], which the "
                                         r"evaluation sets"):
        kd.evaluate(model, x, y, "square", [0.1], options={"square": {"seed": 3}})
    with pytest.raises(ValueError, match=r"`options\['pgd'\]` must be a dict"):
        kd.evaluate(model, x, y, "pgd", [0.1], options={"pgd": 40})


def test_a_subclassed_model_whose_call_takes_no_training_argument():
    # JAX's stateless_call hands `training=False` to `call` as it is; such a model failed
    # there with a TypeError in evaluate, the attacks and the dynamics.
    class Plain(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(K)

        def call(self, z):
            return self.dense(z)

    x, y = _data(16)
    model = Plain()
    report = kd.evaluate(model, x, y, "apgd-ce", [0.1], options={"apgd-ce": {"n_iter": 2}})
    assert 0.0 <= report.robust_accuracy[0.1] <= report.clean_accuracy
    kd.margins_report(model, x, y, n_iter=2)
    delta = [0.01 * np.ones(v.shape, "float32") for v in model.trainable_variables]
    res = kd.dynamics.boundary_dynamics(model, x, y, delta, method="both", r0=0.5, n_iter=3)
    both = np.isfinite(res.speed) & np.isfinite(res.speed_fd)
    assert both.any()
    np.testing.assert_allclose(res.speed[both], res.speed_fd[both], rtol=0.05, atol=1e-3)
