"""The training methods: losses against NumPy, inner examples, train steps and saving."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_dyart import methods
from keras_dyart.methods import mart_terms, mma_terms, trades_loss
from tests.conftest import linear_classifier

RNG = np.random.RandomState(0)


# -- NumPy references --------------------------------------------------------------------

def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y]


def np_kl(zp, zq):
    lp, lq = np_log_softmax(zp), np_log_softmax(zq)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def np_mart(z, z_adv, y, beta):
    p_adv = np.exp(np_log_softmax(z_adv))
    other = p_adv.copy()
    other[np.arange(len(y)), y] = -1
    boost = -np.log(1.0001 - other.max(-1) + 1e-12)
    p_true = np.exp(np_log_softmax(z))[np.arange(len(y)), y]
    wkl = np_kl(z, z_adv) * (1.0000001 - p_true)
    return np.mean(np_ce(z_adv, y) + boost), beta * np.mean(wkl)


def np_mma(z, z_hat, y, usable, wrong, clean_weight):
    term = usable * np_ce(z_hat, y) + wrong * np_ce(z, y)
    return clean_weight * np_ce(z, y).mean(), (1 - clean_weight) * term.mean()


def np_logits(model, x):
    w, b = model.layers[-1].get_weights()
    return x @ w + b


def batch(n=16, d=6, k=3, seed=0):
    rng = np.random.RandomState(seed)
    w = rng.normal(size=(d, k)).astype("float32")
    x = rng.uniform(0.05, 0.95, size=(n, d)).astype("float32")
    y = rng.randint(0, k, size=n).astype("int32")
    return w, x, y


def numpy_(t):
    return ops.convert_to_numpy(t)


# -- loss functions ------------------------------------------------------------------------

def test_trades_loss_matches_numpy():
    z, z_adv = RNG.normal(size=(2, 12, 5)).astype("float32") * 3
    y = RNG.randint(0, 5, 12)
    loss, ce, kl = (float(numpy_(t)) for t in trades_loss(z, z_adv, y, beta=6.0))
    np.testing.assert_allclose(ce, np_ce(z, y).mean(), rtol=1e-5)
    np.testing.assert_allclose(kl, np_kl(z, z_adv).mean(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(loss, ce + 6.0 * kl, rtol=1e-5)
    assert kl > 0


def test_mart_terms_match_numpy_and_weight_misclassified_points_up():
    z, z_adv = RNG.normal(size=(2, 12, 5)).astype("float32") * 3
    y = RNG.randint(0, 5, 12)
    boost, wkl = (numpy_(t) for t in mart_terms(z, z_adv, y))
    bce, kl = np_mart(z, z_adv, y, beta=1.0)
    np.testing.assert_allclose((np_ce(z_adv, y) + boost).mean(), bce, rtol=1e-5)
    np.testing.assert_allclose(wkl.mean(), kl, rtol=1e-4)
    # Same KL, different clean confidence: the less confident point gets the larger weight.
    a = np.array([[4.0, 0.0], [0.0, 0.0]], "float32")
    a_adv = a - np.array([[1.0, 0.0], [1.0, 0.0]], "float32")
    _, w2 = (numpy_(t) for t in mart_terms(a, a_adv, np.array([0, 0])))
    kl2 = np_kl(a, a_adv)
    assert w2[1] / kl2[1] > w2[0] / kl2[0]


def test_mma_terms_match_numpy():
    z, z_hat = RNG.normal(size=(2, 10, 4)).astype("float32")
    y = RNG.randint(0, 4, 10)
    usable = RNG.rand(10) < 0.5
    wrong = ~usable & (RNG.rand(10) < 0.5)
    got = numpy_(mma_terms(z, z_hat, y, usable, wrong))
    np.testing.assert_allclose(got, usable * np_ce(z_hat, y) + wrong * np_ce(z, y), rtol=1e-5)
    loss = float(numpy_(methods.mma_loss(z, z_hat, y, usable, wrong, 0.25)))
    np.testing.assert_allclose(loss, sum(np_mma(z, z_hat, y, usable, wrong, 0.25)), rtol=1e-5)


# -- each model's loss on a fixed batch (the wiring of compute_loss) ----------------------

def model_loss(model, x, y, inner):
    model.compile(optimizer="sgd")
    # The batch a train step hands to Keras's step (`keras_dyart.methods.base`).
    inner = {k: ops.convert_to_tensor(v) for k, v in inner.items()}
    step = {"forward": model.forward_inputs(x, inner), "x": x, "inner": inner,
            "input_errors": ops.zeros(())}
    y_pred = model(step, training=True)
    loss = model.compute_loss(x=step, y=y, y_pred=y_pred, training=True)
    return float(numpy_(loss))


def test_trades_model_loss_on_fixed_batch():
    w, x, y = batch()
    model = methods.TRADESModel(linear_classifier(w), beta=3.0)
    x_adv = np.clip(x + 0.05 * RNG.choice([-1, 1], x.shape), 0, 1).astype("float32")
    z, z_adv = x @ w, x_adv @ w
    expected = np_ce(z, y).mean() + 3.0 * np_kl(z, z_adv).mean()
    np.testing.assert_allclose(model_loss(model, x, y, {"x_adv": x_adv}), expected,
                               rtol=1e-5)


def test_mart_model_loss_on_fixed_batch():
    w, x, y = batch()
    model = methods.MARTModel(linear_classifier(w), beta=5.0)
    x_adv = np.clip(x + 0.05 * RNG.choice([-1, 1], x.shape), 0, 1).astype("float32")
    expected = sum(np_mart(x @ w, x_adv @ w, y, 5.0))
    np.testing.assert_allclose(model_loss(model, x, y, {"x_adv": x_adv}), expected,
                               rtol=1e-5)


def test_mma_model_loss_on_fixed_batch():
    w, x, y = batch()
    model = methods.MMAModel(linear_classifier(w), clean_weight=0.4)
    x_hat = np.clip(x + 0.05 * RNG.choice([-1, 1], x.shape), 0, 1).astype("float32")
    usable = RNG.rand(len(x)) < 0.5
    wrong = ~usable & (RNG.rand(len(x)) < 0.5)
    inner = {"x_hat": x_hat, "usable": usable, "wrong": wrong,
             "margin": np.zeros(len(x), "float32")}
    expected = sum(np_mma(x @ w, x_hat @ w, y, usable, wrong, 0.4))
    np.testing.assert_allclose(model_loss(model, x, y, inner), expected, rtol=1e-5)


# -- inner examples -------------------------------------------------------------------------

def linear_logits_fn(w):
    w = ops.convert_to_tensor(w)
    return lambda z: ops.matmul(z, w)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_at_inner_examples_stay_in_ball_and_box(norm):
    w, x, y = batch(n=32, d=8, k=2)
    x[:8] = 0.0                       # on the box's faces: the box must bind
    x[8:16] = 1.0
    eps = 0.1 if norm == "linf" else 0.5
    model = methods.PGDATModel(linear_classifier(w), eps=eps, step_size=eps / 4, steps=10,
                               norm=norm)
    x_adv = numpy_(model.inner(linear_logits_fn(w), ops.convert_to_tensor(x),
                               ops.convert_to_tensor(y))["x_adv"])
    d = x_adv - x
    size = np.abs(d).max(-1) if norm == "linf" else np.sqrt((d ** 2).sum(-1))
    assert size.max() <= eps * (1 + 1e-5)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if norm == "linf":
        # For two linear classes CE grows along −sign(w_y − w_other): PGD reaches that corner.
        v = w[:, 1] - w[:, 0]
        direction = np.where(y[:, None] == 0, 1.0, -1.0) * np.sign(v)[None]
        corner = np.clip(x + eps * direction, 0.0, 1.0)
        np.testing.assert_allclose(x_adv, corner, atol=1e-5)


def test_trades_inner_example_increases_kl_inside_ball():
    w, x, y = batch(n=32, d=8, k=3)
    model = methods.TRADESModel(linear_classifier(w), eps=0.1, step_size=0.03, steps=5)
    x_adv = numpy_(model.inner(linear_logits_fn(w), ops.convert_to_tensor(x),
                               ops.convert_to_tensor(y))["x_adv"])
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    kl = np_kl(x @ w, x_adv @ w)
    assert kl.mean() > 10 * np_kl(x @ w, (x + 1e-3) @ w).mean()


def test_mma_inner_finds_closed_form_margins_and_applies_the_hinge():
    # Two classes, linear: φ = f_y − f_other exactly, margin = φ(x) / ‖w_y − w_o‖_1 (L∞),
    # as long as the box does not bind (x in the middle, small margins).
    rng = np.random.RandomState(1)
    d = 20
    w = rng.normal(size=(d, 2)).astype("float32")
    x = rng.uniform(0.3, 0.7, size=(16, d)).astype("float32")
    v = w[:, 0] - w[:, 1]
    y = (x @ v < 0).astype("int32")                   # correct by construction
    phi = np.abs(x @ v)
    radius = phi / np.abs(v).sum()
    d_max = float(np.median(radius))
    model = methods.MMAModel(linear_classifier(w), d_max=d_max, n_iter=20)
    out = model.inner(linear_logits_fn(w), ops.convert_to_tensor(x), ops.convert_to_tensor(y))
    usable = numpy_(out["usable"])
    keep = radius < 0.19                              # the box cannot bind below 0.3
    np.testing.assert_array_equal(usable[keep], radius[keep] < d_max)
    margin = numpy_(out["margin"])
    np.testing.assert_allclose(margin[usable], radius[usable], rtol=1e-3)
    assert not numpy_(out["wrong"]).any()


# -- train steps on every backend ----------------------------------------------------------

CONFIGS = {
    "clean": {},
    "pgd-at": {"eps": 0.1, "step_size": 0.05, "steps": 2},
    "trades": {"beta": 2.0, "eps": 0.1, "step_size": 0.05, "steps": 2},
    "mart": {"beta": 2.0, "eps": 0.1, "step_size": 0.05, "steps": 2},
    "mma": {"d_max": 0.3, "n_iter": 3},
}
TERMS = {"clean": (), "pgd-at": (), "trades": ("ce_loss", "kl_loss"),
         "mart": ("bce_loss", "kl_loss"),
         "mma": ("ce_loss", "margin_loss", "hinge_fraction", "mean_margin")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_method_trains_logs_its_terms_and_round_trips(name, tmp_path):
    w, x, y = batch(n=32, d=6, k=3)
    model = methods.get(name, linear_classifier(w), **CONFIGS[name])
    model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
    before = model.classifier.get_weights()[0].copy()
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    logs = {k: v[-1] for k, v in history.history.items()}
    assert set(TERMS[name]) | {"loss", "accuracy"} <= set(logs)
    assert all(np.isfinite(v) for v in logs.values())
    if name in ("trades", "mart"):
        np.testing.assert_allclose(logs["loss"], sum(logs[t] for t in TERMS[name]),
                                   rtol=1e-5)
    assert not np.allclose(model.classifier.get_weights()[0], before)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    for key, value in CONFIGS[name].items():
        assert getattr(loaded, key) == pytest.approx(value)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    assert loaded.compiled and loaded.optimizer is not None


# -- sample weights (fit's sample_weight and class_weight) --------------------------------

# Inner searches without random starts (PGD-AT's, DyART's and MMA's are then deterministic
# per row); DyART with a robust term large enough to matter.
WEIGHTED = {**CONFIGS, "pgd-at": {**CONFIGS["pgd-at"], "random_start": False},
            "dyart": {"n_iter": 5, "lam": 10.0, "r0": 1.0}}
EXTRA_TERM = {"trades": "kl_loss", "mart": "kl_loss", "mma": "margin_loss",
              "dyart": "robust_loss"}


def weighted_model(name, w, learning_rate, classifier=None):
    """Method ``name`` (its `WEIGHTED` settings) around the linear model ``w`` (or
    ``classifier``), compiled with plain SGD."""
    model = methods.get(name, classifier or linear_classifier(w), **WEIGHTED[name])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate))
    return model


def step_logs(name, w, x, y, classifier=None, **kwargs):
    """The logs of one train step from the weights ``w`` (learning rate 0)."""
    return weighted_model(name, w, 0.0, classifier).train_on_batch(x, y, return_dict=True,
                                                                   **kwargs)


@pytest.mark.parametrize("name", ["clean", "dyart", "mma", "pgd-at"])
def test_a_zero_sample_weight_counts_the_row_as_absent(name):
    # Per-row inner examples and no batch statistics: a row weighted 0 adds nothing to any
    # term, and every term divides by the whole batch (Keras's sum over the batch size).
    w, x, y = batch(n=16, d=6, k=3, seed=1)
    first = step_logs(name, w, x[:8], y[:8])
    if name in EXTRA_TERM:
        assert first[EXTRA_TERM[name]] != 0
    half = np.r_[np.ones(8), np.zeros(8)].astype("float32")
    masked = step_logs(name, w, x, y, sample_weight=half)
    np.testing.assert_allclose(masked["loss"], first["loss"] / 2, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(WEIGHTED))
def test_weight_regularisation_is_added_once(name):
    # The classifier's kernel penalty joins the loss once per step, however many forward
    # passes the method makes (training mode at x and at the inner examples).
    w, x, y = batch(n=16, d=6, k=3, seed=1)
    plain = step_logs(name, w, x, y)["loss"]
    inputs = keras.Input((6,))
    dense = keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.01))
    classifier = keras.Model(inputs, dense(inputs))
    dense.set_weights([w, np.zeros(3, "float32")])
    penalised = step_logs(name, w, x, y, classifier=classifier)["loss"]
    np.testing.assert_allclose(penalised - plain, 0.01 * np.sum(w.astype("float64") ** 2),
                               rtol=1e-4)


@pytest.mark.parametrize("name", sorted(WEIGHTED))
def test_fit_with_zero_class_weights_leaves_the_weights_alone(name):
    # Every term of every method honours the weights: weighted 0, nothing moves.
    w, x, y = batch(n=32, d=6, k=3)
    model = weighted_model(name, w, 0.5)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                        class_weight={0: 0.0, 1: 0.0, 2: 0.0})
    assert history.history["loss"] == [0.0]
    np.testing.assert_array_equal(model.classifier.get_weights()[0], w)
    # and with weights 1 it does move (the oracle above can fail)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, class_weight={0: 1.0, 1: 1.0, 2: 1.0})
    assert not np.allclose(model.classifier.get_weights()[0], w)


def test_pgd_at_train_step_uses_the_adversarial_batch():
    # lr = 0: the logged loss is the CE at PGD's closed-form corner, through the real
    # backend train step (JAX: stateless, with the step's traced state).
    w, x, y = batch(n=16, d=8, k=2)
    eps = 0.1
    model = methods.PGDATModel(linear_classifier(w), eps=eps, step_size=0.05, steps=6)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = model.train_on_batch(x, y, return_dict=True)
    v = w[:, 1] - w[:, 0]
    corner = np.clip(x + eps * np.where(y[:, None] == 0, 1.0, -1.0) * np.sign(v)[None], 0, 1)
    np.testing.assert_allclose(logs["loss"], np_ce(corner @ w, y).mean(), rtol=1e-4)
    assert logs["loss"] > np_ce(x @ w, y).mean()


def test_get_config_from_config():
    w, _, _ = batch()
    model = methods.TRADESModel(linear_classifier(w), beta=2.5, eps="8/255", seed=3)
    clone = methods.TRADESModel.from_config(model.get_config())
    assert (clone.beta, clone.eps, clone.seed) == (2.5, 8 / 255, 3)


def test_bad_input_names_the_argument():
    w, _, _ = batch()
    with pytest.raises(ValueError, match="`method`"):
        methods.get("fgsm", linear_classifier(w))
    with pytest.raises(ValueError, match="`eps`"):
        methods.PGDATModel(linear_classifier(w), eps="big")
    with pytest.raises(ValueError, match="`beta`"):
        methods.TRADESModel(linear_classifier(w), beta=-1.0)
    with pytest.raises(ValueError, match="`clean_weight`"):
        methods.MMAModel(linear_classifier(w), clean_weight=2.0)
    with pytest.raises(ValueError, match="`steps`"):
        methods.MARTModel(linear_classifier(w), steps=0)
    with pytest.raises(TypeError, match="`classifier`"):
        methods.CleanModel("small-cnn")


def test_fit_with_validation_and_evaluate_with_callbacks():
    # fit's validation calls evaluate with its own CallbackList; evaluate given a list adds
    # the host-memory callback to it; both run through whatever the backend.
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(48, 6)).astype("float32")
    y = rng.integers(0, 3, size=48)
    w = rng.normal(size=(6, 3)).astype("float32")
    model = methods.get("pgd-at", linear_classifier(w), eps=0.1, step_size=0.05, steps=2)
    model.compile(optimizer="sgd", metrics=["accuracy"])
    hist = model.fit(x, y, batch_size=16, epochs=1, verbose=0, validation_data=(x, y))
    assert "val_accuracy" in hist.history

    class Count(keras.callbacks.Callback):
        batches = 0

        def on_test_batch_end(self, batch, logs=None):
            Count.batches += 1

    model.evaluate(x, y, batch_size=16, verbose=0, callbacks=[Count()])
    assert Count.batches == 3
