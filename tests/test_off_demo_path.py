"""The first steps off the demo path: other input pipelines, input bounds, mixed precision,
models that do not output logits, and what evaluate() logs.  Each gives the right number or
a clear error naming the argument."""

import os

import keras
import numpy as np
import pytest

import keras_dyart as kd
from keras_dyart.attacks import driver as C

BACKEND = keras.backend.backend()
K = 3
D = 12


def _data(n=48, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.uniform(0.2, 0.8, size=(n, D)).astype("float32")
    w = rng.normal(size=(D, K)).astype("float32")
    y = np.argmax(x @ w, axis=1).astype("int32")
    return x, y, w


def _linear(w, rescale=None):
    inputs = keras.Input((D,))
    z = inputs if rescale is None else keras.layers.Rescaling(rescale)(inputs)
    out = keras.layers.Dense(K)(z)
    model = keras.Model(inputs, out)
    model.layers[-1].set_weights([w, np.zeros(K, "float32")])
    return model


def _dyart(classifier, **kw):
    kw.setdefault("n_iter", 5)
    kw.setdefault("r0", 0.5)
    model = kd.DyARTModel(classifier, **kw)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


# -- input pipelines (item 4) -----------------------------------------------------------------

def _pipeline(kind, x, y, batch=16):
    if kind == "numpy":
        return (x, y), {"batch_size": batch}
    if kind == "tf.data":
        tf = pytest.importorskip("tensorflow")
        return (tf.data.Dataset.from_tensor_slices((x, y)).batch(batch),), {"shuffle": False}
    if kind == "pydataset":
        class Seq(keras.utils.PyDataset):
            def __len__(self):
                return int(np.ceil(len(x) / batch))

            def __getitem__(self, i):
                return x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
        return (Seq(),), {}
    if kind == "generator":
        def gen():
            for _ in range(2):
                for i in range(0, len(x), batch):
                    yield x[i:i + batch], y[i:i + batch]
        return (gen(),), {"steps_per_epoch": 2, "shuffle": False}
    if kind == "dataloader":
        torch = pytest.importorskip("torch")       # Keras takes it on every backend
        ds = torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
        return (torch.utils.data.DataLoader(ds, batch_size=batch),), {}
    raise AssertionError(kind)


PIPELINES = ["numpy", "tf.data", "pydataset", "generator", "dataloader"]


@pytest.mark.parametrize("kind", PIPELINES)
def test_pixels_0_255_refused_in_every_pipeline(kind):
    x, y, w = _data()
    model = _dyart(_linear(w))
    args, kw = _pipeline(kind, x * 255.0, y)
    with pytest.raises(ValueError, match=r"`x` must lie in the model's input bounds \[0, 1\]"
                                         r".*bounds=\(0, 255\)"):
        model.fit(*args, epochs=1, verbose=0, **kw)


@pytest.mark.parametrize("kind", PIPELINES)
def test_uint8_refused_in_every_pipeline(kind):
    x, y, w = _data()
    model = _dyart(_linear(w))
    args, kw = _pipeline(kind, (x * 255).astype("uint8"), y)
    with pytest.raises(ValueError, match="`x` must hold floats.*got dtype uint8"):
        model.fit(*args, epochs=1, verbose=0, **kw)


@pytest.mark.parametrize("kind", PIPELINES)
def test_one_hot_labels_refused_in_every_pipeline(kind):
    x, y, w = _data()
    model = _dyart(_linear(w))
    args, kw = _pipeline(kind, x, np.eye(K, dtype="float32")[y])
    with pytest.raises(ValueError, match="`y` must hold integer class indices.*one-hot"):
        model.fit(*args, epochs=1, verbose=0, **kw)


@pytest.mark.parametrize("kind", PIPELINES)
def test_labels_beyond_classes_refused_in_every_pipeline(kind):
    x, y, w = _data()
    model = _dyart(_linear(w))
    args, kw = _pipeline(kind, x, y + K)
    with pytest.raises(ValueError, match=r"`y` must be in \[0, 3\)"):
        model.fit(*args, epochs=1, verbose=0, **kw)


@pytest.mark.parametrize("kind", ["tf.data", "generator", "pydataset"])
def test_good_pipeline_trains_and_generator_is_replayed(kind):
    x, y, w = _data()
    model = _dyart(_linear(w))
    args, kw = _pipeline(kind, x, y)
    history = model.fit(*args, epochs=1, verbose=0, **kw)
    assert history.history["boundary_fraction"][0] > 0


def test_validation_data_is_checked():
    x, y, w = _data()
    model = _dyart(_linear(w))
    with pytest.raises(ValueError, match=r"`validation_data\[0\]` must lie"):
        model.fit(x, y, epochs=1, verbose=0, validation_data=(x * 255, y))
    with pytest.raises(ValueError, match=r"`validation_data\[1\]` must be in \[0, 3\)"):
        model.fit(x, y, epochs=1, verbose=0, validation_data=(x, y + K))


def test_evaluate_checks_inputs():
    x, y, w = _data()
    model = _dyart(_linear(w))
    with pytest.raises(ValueError, match="`x` must lie"):
        model.evaluate(x * 255, y, verbose=0)


# -- input bounds (item 5) --------------------------------------------------------------------

def test_search_with_bounds_equals_unit_search_in_input_units():
    x, y, w = _data()
    unit = _dyart(_linear(w), r0=0.5, alpha=3.0)
    pixels = _dyart(_linear(w, rescale=1 / 255), bounds=(0, 255), r0=0.5 * 255,
                    alpha=3.0 / 255)
    a = unit.search(lambda z: unit(z, training=False), x, y)
    b = pixels.search(lambda z: pixels(z, training=False), x * 255, y)
    a, b = ({k: keras.ops.convert_to_numpy(v) for k, v in d.items()} for d in (a, b))
    assert a["usable"].mean() > 0.5
    np.testing.assert_array_equal(a["usable"], b["usable"])
    np.testing.assert_allclose(b["margin"], 255 * a["margin"], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(b["x_hat"], 255 * a["x_hat"], rtol=1e-4, atol=2e-3)
    # w = h'(R)/||grad_u phi||_1 with the gradient in the unit box: the same weights, so
    # the same lam trains the same model whatever the bounds.
    np.testing.assert_allclose(b["weights"], a["weights"], rtol=2e-3)
    assert b["x_hat"].min() >= 0 and b["x_hat"].max() <= 255


def test_linear_margin_in_pixel_units_matches_closed_form():
    # Two classes, phi = (w1 - w0).x + b for beta -> the hard margin: the L-inf distance to
    # the hyperplane is phi / ||w1 - w0||_1 (interior points, no box face hit).
    rng = np.random.RandomState(1)
    d = 6
    wdiff = rng.normal(size=d).astype("float32")
    x = rng.uniform(100, 150, size=(8, d)).astype("float32")
    bias = -float(np.median(x @ wdiff)) * 1.0
    inputs = keras.Input((d,))
    out = keras.layers.Dense(2)(inputs)
    clf = keras.Model(inputs, out)
    clf.layers[-1].set_weights([np.stack([np.zeros(d), wdiff], 1).astype("float32"),
                                np.array([0.0, bias], "float32")])
    y = np.ones(8, "int32")
    model = kd.DyARTModel(clf, bounds=(0, 255), beta=5.0, n_iter=20, r0=255.0)
    out = model.search(lambda z: model(z, training=False), x, y)
    out = {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}
    phi = x @ wdiff + bias
    ok = phi > 0
    assert ok.sum() >= 3
    # With two classes the soft margin equals the hard one (log of a single exp).
    expected = phi[ok] / np.abs(wdiff).sum()
    np.testing.assert_allclose(out["margin"][ok], expected, rtol=1e-3)


def test_pgd_at_with_bounds_keeps_points_in_box_and_ball():
    x, y, w = _data()
    model = kd.PGDATModel(_linear(w, rescale=1 / 255), bounds=(0, 255), eps=0.1 * 255,
                          step_size=0.03 * 255, steps=3)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    inner = model.inner(lambda z: model(z, training=False), keras.ops.convert_to_tensor(
        x * 255), keras.ops.convert_to_tensor(y))
    x_adv = keras.ops.convert_to_numpy(inner["x_adv"])
    assert x_adv.min() >= 0 and x_adv.max() <= 255
    assert np.abs(x_adv - x * 255).max() <= 0.1 * 255 * (1 + 1e-5)
    assert np.abs(x_adv - x * 255).max() > 0.05 * 255      # it moved, in pixel units
    model.fit(x * 255, y, batch_size=16, epochs=1, verbose=0)


def test_evaluate_with_bounds_equals_unit_evaluation():
    x, y, w = _data()
    unit = _linear(w)
    pixels = _linear(w, rescale=1 / 255)
    a = kd.evaluate(unit, x, y, "pgd", [0.05, "0.1"], batch_size=64)
    b = kd.evaluate(pixels, x * 255, y, "pgd", [0.05 * 255, 0.1 * 255], batch_size=64,
                    bounds=(0, 255))
    assert 0 < a.robust_accuracy[0.1] < a.clean_accuracy
    np.testing.assert_array_equal(a.robust, b.robust)
    for e in b.epsilons:
        adv = b.adversarials[e]
        assert adv.min() >= 0 and adv.max() <= 255
        assert np.abs(adv - x * 255).max() <= e
    with pytest.raises(ValueError, match=r"`x` must lie in the model's input bounds"):
        kd.evaluate(pixels, x * 255, y, "pgd", [25.0], batch_size=64)


def test_training_with_bounds_equals_training_in_the_unit_box(tmp_path):
    x, y, w = _data()
    keras.utils.set_random_seed(0)
    unit = _dyart(_linear(w), r0=0.4, alpha=3.0, eps_fab=0.1)
    unit.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    keras.utils.set_random_seed(0)
    pixels = _dyart(_linear(w, rescale=1 / 255), bounds=(0, 255), r0=0.4 * 255,
                    alpha=3.0 / 255, eps_fab=0.1 * 255)
    history = pixels.fit(x * 255, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert history.history["boundary_fraction"][0] > 0.2
    for a, b in zip(unit.classifier.get_weights(), pixels.classifier.get_weights()):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
    path = os.path.join(tmp_path, "m.keras")
    pixels.save(path)
    loaded = keras.saving.load_model(path)
    assert tuple(loaded.bounds) == (0.0, 255.0)
    # evaluate takes the saved model's bounds: same outcome as the unit model, point for point
    a = kd.evaluate(unit, x, y, "pgd", [0.05], batch_size=64)
    b = kd.evaluate(loaded, x * 255, y, "pgd", [0.05 * 255], batch_size=64)
    np.testing.assert_array_equal(a.robust, b.robust)


def test_bad_bounds_named():
    x, y, w = _data()
    for bad in [(1, 0), (0,), "0-255", (0, float("inf"))]:
        with pytest.raises(ValueError, match="`bounds`"):
            kd.DyARTModel(_linear(w), bounds=bad)
    with pytest.raises(ValueError, match="`bounds`"):
        kd.evaluate(_linear(w), x, y, "pgd", [0.1], bounds=(2, 1))


# -- logits (item 6) --------------------------------------------------------------------------

def test_softmax_classifier_refused():
    inputs = keras.Input((D,))
    probs = keras.Model(inputs, keras.layers.Dense(K, activation="softmax")(inputs))
    with pytest.raises(ValueError, match="`classifier` ends in a softmax.*logits"):
        kd.DyARTModel(probs)
    seq = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K),
                            keras.layers.Softmax()])
    with pytest.raises(ValueError, match="`classifier` ends in a softmax"):
        kd.TRADESModel(seq)


def test_probabilities_detected_on_first_batch():
    class Probs(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(K)

        def call(self, x):
            return keras.ops.softmax(self.dense(x))

    x, y, _ = _data()
    model = _dyart(Probs())
    with pytest.raises(ValueError, match="`classifier` returns probabilities"):
        model.fit(x, y, epochs=1, verbose=0)


@pytest.mark.parametrize("loss", [
    "sparse_categorical_crossentropy", "categorical_crossentropy",
    keras.losses.SparseCategoricalCrossentropy(), keras.losses.sparse_categorical_crossentropy])
def test_probability_losses_refused(loss):
    x, y, w = _data()
    model = kd.DyARTModel(_linear(w))
    with pytest.raises(ValueError, match="`loss`.*from_logits=False"):
        model.compile(optimizer="sgd", loss=loss)
    # the logits form is accepted
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def test_two_output_and_dict_classifiers_refused():
    inputs = keras.Input((D,))
    two = keras.Model(inputs, [keras.layers.Dense(K)(inputs), keras.layers.Dense(2)(inputs)])
    with pytest.raises(ValueError, match="`classifier` must have one output.*it has 2"):
        kd.DyARTModel(two)

    class Dict(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(K)

        def call(self, x):
            return {"logits": self.dense(x)}

    x, y, _ = _data()
    model = _dyart(Dict())
    with pytest.raises(ValueError, match="`classifier` must return one tensor of logits"):
        model.fit(x, y, epochs=1, verbose=0)


def test_subclassed_classifier_without_output_shape_trains_from_numpy():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.out = keras.layers.Dense(K)

        def call(self, x):
            return self.out(self.hidden(x))

    x, y, _ = _data()
    model = _dyart(Net())
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# -- logged metrics (item 7) ------------------------------------------------------------------

@pytest.mark.parametrize("method", ["dyart", "mma", "trades"])
def test_evaluate_and_validation_do_not_report_unmeasured_terms(method, tmp_path):
    x, y, w = _data()
    clf = _linear(w)
    model = {"dyart": lambda: kd.DyARTModel(clf, n_iter=3, r0=0.5),
             "mma": lambda: kd.MMAModel(clf, n_iter=3),
             "trades": lambda: kd.TRADESModel(clf, steps=2)}[method]()
    model.compile(optimizer=keras.optimizers.SGD(0.01), metrics=["accuracy"])
    log = os.path.join(tmp_path, "log.csv")
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, validation_data=(x, y),
                        callbacks=[keras.callbacks.CSVLogger(log)])
    terms = {m.name for m in model.train_only_metrics}
    assert terms and terms <= set(history.history)          # logged by training steps
    assert not {f"val_{t}" for t in terms} & set(history.history)
    header = open(log).readline().strip().split(",")
    assert not {f"val_{t}" for t in terms} & set(header)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert not terms & set(logs)
    assert {"loss", "accuracy"} <= set(logs)


# -- mixed precision (item 3) -----------------------------------------------------------------

@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_search_runs_in_float32(policy):
    x, y, w = _data(96)
    reference = _dyart(_linear(w), n_iter=10)
    ref = reference.search(lambda z: reference(z, training=False), x, y)
    ref_usable = float(np.mean(keras.ops.convert_to_numpy(ref["usable"])))
    before = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        clf = _linear(w)
        assert clf.layers[-1].compute_dtype != "float32"
        model = _dyart(clf, n_iter=10)
        out = model.search(lambda z: model(z, training=False), x, y)
        for key in ("x_hat", "margin", "weights", "phi_hat", "grad_hat"):
            assert keras.backend.standardize_dtype(out[key].dtype) == "float32", key
        usable = float(np.mean(keras.ops.convert_to_numpy(out["usable"])))
        history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        report = kd.evaluate(clf, x, y, "pgd", [0.05], batch_size=96)
    finally:
        keras.mixed_precision.set_global_policy(before)
    assert ref_usable > 0.5
    # 16-bit logits move the boundary a little, but the search must still find it.
    assert usable >= 0.8 * ref_usable
    assert np.isfinite(history.history["loss"][0])
    assert history.history["boundary_fraction"][0] > 0.3
    assert report.clean_accuracy > 0.5


# -- the report (item 10) ---------------------------------------------------------------------

def test_report_indexed_by_eps_as_given():
    x, y, w = _data()
    report = kd.evaluate(_linear(w), x, y, "pgd", ["8/255", 0.1], batch_size=64)
    assert report.robust_accuracy["8/255"] == report.robust_accuracy[8 / 255]
    assert report.robust_accuracy["0.1"] == report.robust_accuracy[0.1]
    assert "8/255" in report.robust_accuracy
    assert report.accuracy_after["pgd"]["8/255"] == report.robust_accuracy[8 / 255]
    with pytest.raises(KeyError):
        report.robust_accuracy["0.2"]


def test_unit_box_model_tracks_the_model_weights():
    _, _, w = _data()
    clf = _linear(w, rescale=1 / 255)
    view = C.UnitBoxModel(clf, (0, 255))
    assert len(view.trainable_variables) == len(clf.trainable_variables)


@pytest.mark.skipif(BACKEND == "torch", reason="Keras's torch backend cannot export a "
                    "functional model to a SavedModel (torch.export rejects its input "
                    "structure), with or without keras-dyart")
def test_export_and_tensorboard_after_fit(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorboard")
    x, y, w = _data()
    model = _dyart(_linear(w))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0,
              callbacks=[keras.callbacks.TensorBoard(log_dir=str(tmp_path / "tb"))])
    assert os.listdir(tmp_path / "tb")
    model.export(str(tmp_path / "exported"))
    import tensorflow as tf

    reloaded = tf.saved_model.load(str(tmp_path / "exported"))
    np.testing.assert_allclose(np.asarray(reloaded.serve(x)),
                               keras.ops.convert_to_numpy(model.predict(x, verbose=0)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["pixels", "labels"])
def test_a_later_bad_batch_fails_at_the_end_of_its_epoch(bad):
    x, y, w = _data()
    model = _dyart(_linear(w))

    def gen():
        yield x[:16], y[:16]                            # the first batch is fine
        if bad == "pixels":
            yield x[16:32] * 255, y[16:32]
        else:
            yield x[16:32], np.full(16, K + 1, "int32")
        yield x[32:48], y[32:48]

    # (bad labels are clipped for the step's losses, so no backend fails first)
    with pytest.raises(ValueError, match="16 training rows of epoch 1"):
        model.fit(gen(), steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)
    # the check's counter is not in the logs
    model2 = _dyart(_linear(w))
    history = model2.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert "input_errors" not in history.history


@pytest.mark.parametrize("name", ["pgd", "apgd", "fab_t", "square"])
def test_single_attacks_take_bounds(name):
    from keras_dyart.attacks import apgd, fab_t, pgd, square

    x, y, w = _data()
    unit, pixels = _linear(w), _linear(w, rescale=1 / 255)
    if name == "fab_t":
        a_adv, a_dist = fab_t(unit, x, y, n_iter=10, n_target_classes=2)
        b_adv, b_dist = fab_t(pixels, x * 255, y, n_iter=10, n_target_classes=2,
                              bounds=(0, 255))
        found = np.isfinite(a_dist) & (a_dist > 0)
        assert found.mean() > 0.5
        np.testing.assert_allclose(b_dist[found], 255 * a_dist[found], rtol=1e-3)
        assert b_adv.min() >= 0 and b_adv.max() <= 255
        return
    attack = {"pgd": pgd, "apgd": lambda *a, **k: apgd(*a, n_iter=10, **k),
              "square": lambda *a, **k: square(*a, n_queries=50, **k)}[name]
    a_adv, a_ok = attack(unit, x, y, 0.1)
    b_adv, b_ok = attack(pixels, x * 255, y, 0.1 * 255, bounds=(0, 255))
    assert 0 < a_ok.mean() < 1
    np.testing.assert_array_equal(a_ok, b_ok)
    assert b_adv.min() >= 0 and b_adv.max() <= 255
    assert np.abs(b_adv - x * 255).max() <= 0.1 * 255


@pytest.mark.parametrize("method", ["dyart", "trades", "mma"])
def test_labels_shaped_n_by_1_train_like_n(method):
    x, y, w = _data()
    build = {"dyart": lambda c: kd.DyARTModel(c, n_iter=3, r0=0.5),
             "trades": lambda c: kd.TRADESModel(c, steps=2),
             "mma": lambda c: kd.MMAModel(c, n_iter=3)}[method]
    weights = []
    for labels in (y, y[:, None]):
        keras.utils.set_random_seed(0)
        model = build(_linear(w))
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        model.fit(x, labels, batch_size=16, epochs=1, verbose=0, shuffle=False)
        weights.append(model.classifier.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_margins_report_in_pixel_units():
    x, y, w = _data()
    a = kd.margins_report(_linear(w), x, y, n_iter=10, n_target_classes=2)
    b = kd.margins_report(_linear(w, rescale=1 / 255), x * 255, y, n_iter=10,
                          n_target_classes=2, bounds=(0, 255))
    found = np.isfinite(a.distance) & (a.distance > 0)
    assert found.mean() > 0.5
    np.testing.assert_allclose(b.distance[found], 255 * a.distance[found], rtol=1e-3)


def _softmax_linear(w, activation="softmax"):
    inputs = keras.Input((D,))
    model = keras.Model(inputs, keras.layers.Dense(K, activation=activation)(inputs))
    model.layers[-1].set_weights([w, np.zeros(K, "float32")])
    return model


@pytest.mark.parametrize("call", [
    lambda m, x, y: kd.evaluate(m, x, y, "pgd", [0.1]),
    lambda m, x, y: kd.evaluate(m, x, y, "autoattack", [0.1]),
    lambda m, x, y: kd.margins_report(m, x, y, n_iter=2),
    lambda m, x, y: kd.attacks.pgd(m, x, y, 0.1, steps=2),
    lambda m, x, y: kd.attacks.apgd(m, x, y, 0.1, n_iter=2),
    lambda m, x, y: kd.attacks.fab_t(m, x, y, n_iter=2),
    lambda m, x, y: kd.attacks.square(m, x, y, 0.1, n_queries=2),
    lambda m, x, y: kd.dynamics.boundary_points(m, x, y, n_iter=2),
], ids=["evaluate-pgd", "evaluate-autoattack", "margins_report", "pgd", "apgd", "fab_t",
        "square", "dynamics"])
def test_probability_models_refused_by_evaluation_and_attacks(call):
    """A model that outputs probabilities would be attacked through the wrong margins (a
    softmax flattens the gradients): every entry point refuses it, as training does."""
    x, y, w = _data()
    with pytest.raises(ValueError, match="`model` ends in a softmax .*logits"):
        call(_softmax_linear(w), x, y)
    # a softmax no layer shows (a Lambda): seen on the outputs, rows summing to 1
    inputs = keras.Input((D,))
    hidden = _softmax_linear(w, None)(inputs)
    lam = keras.Model(inputs, keras.layers.Lambda(keras.ops.softmax)(hidden))
    with pytest.raises(ValueError, match="`model` returns probabilities.*logits"):
        call(lam, x, y)
    # a final sigmoid (rows need not sum to 1, so only the layer shows it)
    with pytest.raises(ValueError, match=r"`model` ends in a sigmoid .*logits"):
        call(_softmax_linear(w, "sigmoid"), x, y)


@pytest.mark.parametrize("call", [
    lambda m, x, y: kd.margins_report(m, x, y, n_iter=2),
    lambda m, x, y: kd.attacks.pgd(m, x, y, 0.1, steps=2),
    lambda m, x, y: kd.attacks.apgd(m, x, y, 0.1, n_iter=2),
    lambda m, x, y: kd.attacks.fab_t(m, x, y, n_iter=2),
    lambda m, x, y: kd.attacks.square(m, x, y, 0.1, n_queries=2),
    lambda m, x, y: kd.attacks.autoattack(m, x, y, 0.1),
    lambda m, x, y: kd.dynamics.boundary_points(m, x, y, n_iter=2),
], ids=["margins_report", "pgd", "apgd", "fab_t", "square", "autoattack", "dynamics"])
def test_labels_beyond_the_models_classes_refused_by_attacks(call):
    """1-based labels (1..K) once gave "every point misclassified" or a crash deep in a
    backend's cross-entropy; every attack now checks them against the model's K."""
    x, y, w = _data()
    with pytest.raises(ValueError, match=r"`y` must be in \[0, 3\); got values in \[1, 3\]"):
        call(_linear(w), x, y + 1)


def test_two_class_autoattack_names_the_attack_that_needs_three():
    x, y, w = _data()
    y2 = (y > 0).astype("int32")
    inputs = keras.Input((D,))
    two = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match=r"\['apgd-t'\] use the DLR loss.*at least 3 "
                                         r"classes.*has 2"):
        kd.evaluate(two, x, y2, "autoattack", [0.1])
    report = kd.evaluate(two, x, y2, ["apgd-ce", "fab-t", "square"], [0.1],
                         options={"apgd-ce": {"n_iter": 3}, "fab-t": {"n_iter": 3},
                                  "square": {"n_queries": 5}})
    assert 0 <= report.robust_accuracy[0.1] <= report.clean_accuracy


def _soft_margin_numpy(logits, y, beta=5.0):
    out = []
    for row, label in zip(np.asarray(logits, "float64"), y):
        others = np.delete(row, label)
        top = others.max()
        out.append(row[label] - (top + np.log(np.exp(beta * (others - top)).sum()) / beta))
    return np.array(out)


def test_public_margin_and_loss_functions_read_n_by_1_labels_and_float16_logits():
    """(N, 1) labels and weights once broadcast into (N, N) terms, and float16 logits gave
    NaN (the excluded true class overflowed): both now give the (N,) float32 values."""
    from keras import ops

    rng = np.random.RandomState(0)
    logits = rng.normal(size=(6, 4)).astype("float32")
    y = rng.randint(0, 4, 6)
    w = rng.uniform(size=6).astype("float32")
    phi = _soft_margin_numpy(logits, y)
    np.testing.assert_allclose(ops.convert_to_numpy(kd.soft_margin(logits, y[:, None])), phi,
                               rtol=1e-5)
    robust = float(np.mean(w * -phi))
    for labels, weights in ((y, w), (y[:, None], w[:, None])):
        value = float(ops.convert_to_numpy(kd.robust_term(logits, labels, weights)))
        assert value == pytest.approx(robust, rel=1e-5)
    ce = np.mean([np.log(np.exp(r - r.max()).sum()) + r.max() - r[t]
                  for r, t in zip(logits.astype("float64"), y)])
    loss = float(ops.convert_to_numpy(kd.dyart_loss(logits, logits, y[:, None], w[:, None])))
    assert loss == pytest.approx(ce + 1000.0 * robust, rel=1e-5)
    half = kd.soft_margin(ops.cast(logits, "float16"), y)
    assert keras.backend.standardize_dtype(half.dtype) == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(half),
                               _soft_margin_numpy(logits.astype("float16"), y), atol=1e-3)


def test_dict_or_multi_input_classifiers_refused():
    inputs = keras.Input((D,), name="img")
    out = keras.layers.Dense(K)(inputs)
    with pytest.raises(ValueError, match=r"`classifier` must take one input tensor.*a dict "
                                         r"of inputs \['img'\]"):
        kd.DyARTModel(keras.Model({"img": inputs}, out))
    other = keras.Input((D,), name="other")
    both = keras.layers.Dense(K)(keras.layers.Concatenate()([inputs, other]))
    with pytest.raises(ValueError, match=r"one input tensor.*2 inputs"):
        kd.PGDATModel(keras.Model([inputs, other], both), eps=0.1)
    kd.DyARTModel(keras.Model([inputs], out))          # a list of one input is one input


def test_averaged_model_of_a_subclassed_classifier():
    class Sub(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(K)

        def call(self, x):
            return self.dense(x)

    x, y, _ = _data()
    model = _dyart(Sub())
    model.compile(optimizer=kd.recipe.build_optimizer(4, learning_rate=0.05,
                                                      schedule="constant"))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    copy = kd.recipe.averaged_model(model)
    kernel, bias = kd.recipe.averaged_weights(model)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(copy(x)), x @ kernel + bias,
                               atol=1e-5)


def test_square_refuses_a_batch_that_looks_channels_first():
    """Under the default channels_last, an (N, 3, 8, 8) batch would be attacked with
    squares over (3, 8) and 8 'channels': a weaker attack, silently.  It is refused unless
    the layout is given."""
    rng = np.random.RandomState(0)
    x = rng.uniform(size=(8, 3, 8, 8)).astype("float32")
    inputs = keras.Input((3, 8, 8))
    h = keras.layers.Permute((2, 3, 1))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(K)(keras.layers.Flatten()(h)))
    y = np.argmax(keras.ops.convert_to_numpy(model(x)), axis=1)
    assert keras.config.image_data_format() == "channels_last"
    with pytest.raises(ValueError, match="looks channels_first.*data_format='channels_first'"):
        kd.attacks.square(model, x, y, 0.1, n_queries=4)
    with pytest.raises(ValueError, match="looks channels_first"):
        kd.evaluate(model, x, y, "square", [0.1], options={"square": {"n_queries": 4}})
    for fmt in ("channels_first", "channels_last"):      # an explicit layout is obeyed
        adv, _ = kd.attacks.square(model, x, y, 0.1, n_queries=4, data_format=fmt)
        assert np.abs(adv - x).max() <= 0.1 + 1e-7


def test_attack_loss_names_ignore_case():
    """Norm names ignore case ("Linf"); so do the attacks' loss names."""
    x, y, w = _data()
    model = _linear(w)
    for attack, upper, lower in ((kd.attacks.pgd, "CE", "ce"), (kd.attacks.apgd, "DLR-T", "dlr-t")):
        kw = {"steps": 3} if attack is kd.attacks.pgd else {"n_iter": 3}
        np.testing.assert_array_equal(attack(model, x, y, 0.1, loss=upper, **kw)[0],
                                      attack(model, x, y, 0.1, loss=lower, **kw)[0])
    with pytest.raises(ValueError, match="`loss` must be"):
        kd.attacks.pgd(model, x, y, 0.1, loss="dlr")


@pytest.mark.parametrize("seed", ["a", 1.5, -1, True])
def test_attack_seed_checked(seed):
    x, y, w = _data()
    with pytest.raises(ValueError, match="`seed` must be an integer"):
        kd.attacks.pgd(_linear(w), x, y, 0.1, steps=2, seed=seed)
