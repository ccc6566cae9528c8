"""Attacks against exact oracles: linear models whose margins are known in closed form.

For z -> z·W the misclassified region of a point of class y is the union over j of the
half-spaces {f_j ≥ f_y}, so (while the box [0, 1] does not bind) its L∞ margin is
min_j (f_y − f_j) / ‖w_y − w_j‖_1 and its L2 margin min_j (f_y − f_j) / ‖w_y − w_j‖_2.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_dyart import backend as dyart_backend
from keras_dyart.attacks import (
    apgd,
    apgd_checkpoints,
    autoattack,
    dlr_loss,
    dlr_targeted_loss,
    driver,
    fab_t,
    pgd,
    run_sequence,
    square,
)
from keras_dyart.attacks.apgd import apgd_batch
from keras_dyart.attacks.square import p_selection

_MODELS = {}


def image_linear(weights, shape, masked=False, bias=None):
    """z -> flatten(z)·W + b for images of ``shape``; ``masked`` stops input gradients (the
    forward pass is unchanged, every input gradient is zero).  Models with the same weights
    are shared between tests, so the attacks' compiled functions are reused."""
    key = (weights.tobytes(), tuple(shape), masked, None if bias is None else tuple(bias))
    if key not in _MODELS:
        _MODELS[key] = _build_linear(weights, shape, masked, bias)
    return _MODELS[key]


def _build_linear(weights, shape, masked=False, bias=None):
    inputs = keras.Input(shape)
    h = inputs
    if masked:
        h = keras.layers.Lambda(lambda t: ops.stop_gradient(t))(h)
    h = keras.layers.Flatten()(h)
    k = weights.shape[1]
    outputs = keras.layers.Dense(k)(h)
    model = keras.Model(inputs, outputs)
    b = np.zeros(k, "float32") if bias is None else np.asarray(bias, "float32")
    model.layers[-1].set_weights([weights.astype("float32"), b])
    return model


def closed_form_margin(x, weights, p):
    """Exact L∞ (p=1 dual) or L2 margins of a bias-free linear model, box not binding."""
    n = len(x)
    z = x.reshape(n, -1).astype("float64") @ weights.astype("float64")
    y = z.argmax(1)
    dw = weights[:, y].T[:, :, None].astype("float64") - weights[None].astype("float64")
    dual = np.abs(dw).sum(1) if p == "linf" else np.sqrt((dw ** 2).sum(1))
    gap = z[np.arange(n), y][:, None] - z
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(np.arange(weights.shape[1])[None] == y[:, None], np.inf, gap / dual)
    return y.astype("int32"), m.min(1)


def problem(k, shape, n, seed, p="linf", lo=0.3, hi=0.7):
    """Fixed weights per (classes, shape); ``n`` points drawn with ``seed``; exact margins."""
    d = int(np.prod(shape))
    weights = np.random.RandomState(1000 + 10 * k + d).normal(size=(d, k)).astype("float32")
    x = np.random.RandomState(seed).uniform(lo, hi, size=(n,) + tuple(shape)).astype("float32")
    y, margin = closed_form_margin(x, weights, p)
    return weights, x, y, margin


def with_gap(margin, q, width=0.2):
    """A radius at the ``q`` quantile of the margins and the mask of the points whose margin is
    not within ±width/2 of it (relative), so that success and failure are both decided with
    room to spare; tests drop the other points."""
    eps = float(np.quantile(margin, q))
    keep = np.abs(margin / eps - 1) >= width / 2
    return eps, keep


def ten_class_problem(n, seed):
    """A ten-class linear model on 4×4 images with two radii (the 0.3 and 0.7 quantiles of
    the margins), keeping only the points decided with room to spare at both."""
    weights, x, y, margin = problem(10, (4, 4, 1), n, seed=seed)
    eps1, keep1 = with_gap(margin, 0.3)
    eps2, keep2 = with_gap(margin, 0.7)
    keep = keep1 & keep2
    return weights, x[keep], y[keep], margin[keep], eps1, eps2


FAST = {"apgd-ce": {"n_iter": 10}, "apgd-t": {"n_iter": 10, "n_target_classes": 3},
        "fab-t": {"n_iter": 5}, "square": {"n_queries": 50}}


def assert_in_ball(x_adv, x, eps, norm):
    """Exactly inside the eps ball around x and inside [0, 1], checked in float64."""
    a, b = np.asarray(x_adv, "float64"), np.asarray(x, "float64")
    assert a.shape == b.shape
    assert a.min() >= 0.0 and a.max() <= 1.0
    d = (a - b).reshape(len(a), -1)
    size = np.abs(d).max(1) if norm == "linf" else np.sqrt((d * d).sum(1))
    assert size.max() <= eps, f"{size.max()} > {eps}"


def predicted(model, x):
    return np.argmax(ops.convert_to_numpy(model(x, training=False)), -1)


# --- losses --------------------------------------------------------------------------------

def np_dlr(z, y):
    s = np.sort(z, axis=1)
    u = np.arange(len(z))
    other = np.where(z.argmax(1) == y, s[:, -2], s[:, -1])
    return -(z[u, y] - other) / (s[:, -1] - s[:, -3] + 1e-12)


def np_dlr_targeted(z, y, t):
    s = np.sort(z, axis=1)
    u = np.arange(len(z))
    return -(z[u, y] - z[u, t]) / (s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + 1e-12)


def test_dlr_losses_match_numpy_formula():
    rng = np.random.RandomState(1)
    z = rng.normal(size=(64, 10)).astype("float32") * 3
    y = rng.randint(0, 10, size=64)
    y[:8] = z[:8].argmax(1)                 # correctly classified rows too
    t = (y + 1 + rng.randint(0, 9, size=64)) % 10
    np.testing.assert_allclose(ops.convert_to_numpy(dlr_loss(z, y)), np_dlr(z, y),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(dlr_targeted_loss(z, y, t)),
                               np_dlr_targeted(z, y, t), rtol=1e-5, atol=1e-6)


def test_dlr_is_shift_and_scale_invariant():
    rng = np.random.RandomState(2)
    z = rng.normal(size=(16, 10)).astype("float32")
    y = rng.randint(0, 10, size=16)
    a = ops.convert_to_numpy(dlr_loss(z, y))
    b = ops.convert_to_numpy(dlr_loss(3.0 * z + 7.0, y))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --- APGD step-size schedule --------------------------------------------------------------

def published_checkpoints(n_iter):
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06); w_j = ⌈p_j·N⌉."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return [math.ceil(round(q * n_iter, 6)) for q in p[1:]]


@pytest.mark.parametrize("n_iter", [100, 1000])
def test_apgd_checkpoints_are_the_published_ones(n_iter):
    ours = [w for w, _ in apgd_checkpoints(n_iter)]
    assert ours == published_checkpoints(n_iter)
    if n_iter == 100:
        assert ours == [22, 41, 57, 70, 80, 87, 93, 99]


def test_apgd_halves_the_step_at_every_checkpoint_when_the_loss_is_flat():
    # Zero input gradients: the loss never increases after the first step, so condition 1
    # holds at each of the 8 checkpoints of 100 iterations: the step ends at 2·eps / 2^8.
    weights = np.random.RandomState(0).normal(size=(16, 3)).astype("float32")
    model = image_linear(weights, (4, 4, 1), masked=True)
    x = np.full((4, 4, 4, 1), 0.5, "float32")
    y = predicted(model, x)
    eps = np.full(4, 0.1, "float32")

    def fn(logits_fn, xb, yb, start, e, rank):
        return apgd_batch(logits_fn, xb, yb, start, e, rank, n_iter=100, loss="ce")

    run = dyart_backend.compile_model_fn(model, fn, True)
    out = run(x, y, np.zeros_like(x), eps, np.zeros(4, "int32"))
    step = ops.convert_to_numpy(out["step_size"])
    np.testing.assert_allclose(step, 0.2 / 2 ** 8, rtol=1e-6)
    assert not ops.convert_to_numpy(out["success"]).any()


# --- linear oracles: success exactly below the margin --------------------------------------

def two_class_problem(shape, n, seed, p="linf", masked=False):
    """Two live classes and a dead third one (zero weights, bias −1000), so the DLR loss is
    defined and every untargeted gradient points along w_other − w_y."""
    weights, x, y, margin = problem(2, shape, n, seed, p)
    weights = np.concatenate([weights, np.zeros((len(weights), 1), "float32")], axis=1)
    model = image_linear(weights, shape, masked=masked, bias=[0.0, 0.0, -1000.0])
    return model, x, y, margin


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("attack", ["pgd", "pgd-cw", "apgd-ce", "apgd-dlr"])
def test_untargeted_attacks_on_two_class_linear_model(attack, norm):
    model, x, y, margin = two_class_problem((4, 4, 1), 24, seed=4, p=norm)
    eps, keep = with_gap(margin, 0.5)
    x, y, margin = x[keep], y[keep], margin[keep]
    if attack.startswith("pgd"):
        adv, ok = pgd(model, x, y, eps, norm=norm, steps=20, rel_step=0.15,
                      loss="cw" if attack == "pgd-cw" else "ce")
    else:
        adv, ok = apgd(model, x, y, eps, norm=norm, loss=attack[5:], n_iter=10)
    assert_in_ball(adv, x, eps, norm)
    below = margin < eps
    assert below.any() and (~below).any()
    np.testing.assert_array_equal(ok, below)
    np.testing.assert_array_equal(predicted(model, adv) != y, ok)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_t_on_ten_class_linear_model(norm):
    weights, x, y, margin = problem(10, (4, 4, 1), 24, seed=5, p=norm)
    eps, keep = with_gap(margin, 0.5)
    x, y, margin = x[keep], y[keep], margin[keep]
    model = image_linear(weights, (4, 4, 1))
    adv, ok = apgd(model, x, y, eps, norm=norm, loss="dlr-t", n_iter=10)
    assert_in_ball(adv, x, eps, norm)
    np.testing.assert_array_equal(ok, margin < eps)
    np.testing.assert_array_equal(predicted(model, adv) != y, ok)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_distance_matches_closed_form(norm):
    weights, x, y, margin = problem(10, (4, 4, 1), 24, seed=6, p=norm)
    model = image_linear(weights, (4, 4, 1))
    adv, dist = fab_t(model, x, y, norm=norm, n_iter=5)
    assert np.all(np.isfinite(dist))
    np.testing.assert_allclose(dist, margin, rtol=1e-3)
    assert np.all(dist >= margin * (1 - 1e-5))       # nothing closer can exist
    assert_in_ball(adv, x, float(dist.max()), norm)
    for i in range(len(x)):
        assert_in_ball(adv[i:i + 1], x[i:i + 1], float(dist[i]), norm)
    assert np.all(predicted(model, adv) != y)
    # At a radius: success exactly below the margin.
    eps, keep = with_gap(margin, 0.5, width=0.01)
    np.testing.assert_array_equal((dist <= eps)[keep], (margin < eps)[keep])


def test_fab_t_without_refinement_overshoots_slightly():
    weights, x, y, margin = problem(10, (4, 4, 1), 8, seed=6)
    model = image_linear(weights, (4, 4, 1))
    _, dist = fab_t(model, x, y, n_iter=5, refine=False)
    ratio = dist / margin
    assert np.all(ratio >= 1 - 1e-5) and np.all(ratio < 1.06)
    assert np.median(ratio) > 1 + 1e-3


def test_square_on_two_class_linear_model():
    model, x, y, margin = two_class_problem((4, 4, 1), 20, seed=7)
    eps, keep = with_gap(margin, 0.5)
    x, y, margin = x[keep], y[keep], margin[keep]
    adv, ok = square(model, x, y, eps, n_queries=300)
    assert_in_ball(adv, x, eps, "linf")
    np.testing.assert_array_equal(ok, margin < eps)
    np.testing.assert_array_equal(predicted(model, adv) != y, ok)


def test_square_l2_on_a_linear_model_with_smooth_weights():
    # L2 Square moves pyramid-shaped mass between windows; with same-sign weights (the
    # optimal direction is smooth, as for image models) it reaches the optimum quickly.
    rng = np.random.RandomState(12)
    shape, d = (6, 6, 1), 36
    live = rng.uniform(0.5, 1.5, d)
    weights = np.stack([live, np.zeros(d), np.zeros(d)], 1).astype("float32")
    x = rng.uniform(0.3, 0.7, size=(30,) + shape).astype("float32")
    center = float(np.median(x.reshape(30, -1) @ live))
    model = image_linear(weights, shape, bias=[-center, 0.0, -1000.0])
    logits = x.reshape(30, -1).astype("float64") @ weights + [-center, 0.0, -1000.0]
    y = logits.argmax(1)
    margin = np.abs(logits[:, 0] - logits[:, 1]) / np.linalg.norm(live)
    # Random search gets close to the optimum, not onto it: a wider band is left out.
    eps, keep = with_gap(margin, 0.5, width=0.4)
    x, y, margin = x[keep], y[keep], margin[keep]
    adv, ok = square(model, x, y, eps, norm="l2", n_queries=300)
    assert_in_ball(adv, x, eps, "l2")
    assert (margin < eps).sum() >= 5
    np.testing.assert_array_equal(ok, margin < eps)
    np.testing.assert_array_equal(predicted(model, adv) != y, ok)


def test_autoattack_on_ten_class_linear_model_and_epsilons():
    weights, x, y, margin, eps1, eps2 = ten_class_problem(24, seed=8)
    model = image_linear(weights, (4, 4, 1))
    options = FAST
    out = run_sequence(model, x, y, [eps1, eps2], options=options)
    for e in (eps1, eps2):
        assert_in_ball(out["x_adv"][e], x, e, "linf")
        np.testing.assert_array_equal(~out["robust"][e], margin < e)
        np.testing.assert_array_equal(predicted(model, out["x_adv"][e]) != y,
                                      ~out["robust"][e])
    # FAB-T distances, where it ran, are the exact margins.
    ran = np.isfinite(out["distance"])
    assert ran.any()
    np.testing.assert_allclose(out["distance"][ran], margin[ran], rtol=1e-3)
    adv, success = autoattack(model, x, y, eps1, options=options)
    np.testing.assert_array_equal(success, ~out["robust"][eps1])
    assert_in_ball(adv, x, eps1, "linf")


# --- masked gradients ------------------------------------------------------------------------

def test_square_breaks_masked_gradients_and_autoattack_reports_the_worst_case():
    # 36 pixels: a random start reaches at most ~0.35·eps of w·δ here (z > 4), so gradient
    # attacks cannot succeed by luck on margins above 0.5·eps.  Small squares (p_init 0.05:
    # single pixels) let 400 queries reach the optimal corner of a linear model.
    model, x, y, margin = two_class_problem((6, 6, 1), 24, seed=9, masked=True)
    eps = float(np.quantile(margin, 0.5)) * 1.25
    keep = (margin < 0.8 * eps) | (margin > eps)
    x, y, margin = x[keep], y[keep], margin[keep]
    gradient_based = {
        "pgd": pgd(model, x, y, eps, steps=10)[1],
        "apgd-ce": apgd(model, x, y, eps, n_iter=10)[1],
        "apgd-t": apgd(model, x, y, eps, loss="dlr-t", n_iter=10)[1],
        "fab-t": fab_t(model, x, y, n_iter=5)[1] <= eps,
    }
    start_luck = margin < 0.5 * eps      # a random start alone might cross there
    for name, ok in gradient_based.items():
        assert not ok[~start_luck].any(), name
    adv, ok = square(model, x, y, eps, n_queries=400, p_init=0.05)
    assert_in_ball(adv, x, eps, "linf")
    np.testing.assert_array_equal(ok, margin < eps)
    options = {"apgd-ce": {"n_iter": 10}, "apgd-t": {"n_iter": 10},
               "fab-t": {"n_iter": 5}, "square": {"n_queries": 400, "p_init": 0.05}}
    out = run_sequence(model, x, y, [eps], options=options)
    robust = out["robust"][eps]
    np.testing.assert_array_equal(robust, margin >= eps)
    broken = np.array(out["broken_by"][eps])
    assert set(broken[(margin < eps) & ~start_luck]) == {"square"}
    assert out["after"]["fab-t"][eps] > out["after"]["square"][eps]


# --- input checks ------------------------------------------------------------------------------

def test_bad_arguments_name_the_argument():
    weights, x, y, _ = problem(2, (4, 4, 1), 4, seed=0)
    model = image_linear(weights, (4, 4, 1))
    with pytest.raises(ValueError, match="`norm`"):
        apgd(model, x, y, 0.1, norm="l3")
    with pytest.raises(ValueError, match="`eps`"):
        apgd(model, x, y, -0.1)
    with pytest.raises(ValueError, match="`loss`"):
        apgd(model, x, y, 0.1, loss="hinge")
    with pytest.raises(ValueError, match="at least 3 classes"):
        apgd(model, x, y, 0.1, loss="dlr")
    with pytest.raises(ValueError, match="`attack`"):
        run_sequence(model, x, y, [0.1], attacks=["apgd-ce", "deepfool"])
    with pytest.raises(ValueError, match="`x`"):
        square(model, x * 2, y, 0.1)
    with pytest.raises(ValueError, match="`norm`"):
        square(model, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="`eps`"):
        fab_t(model, x, y, restarts=2)


def test_p_selection_schedule():
    assert p_selection(0) == 0.8 and p_selection(10) == 0.8
    assert p_selection(11) == 0.4 and p_selection(51) == 0.2
    assert p_selection(8001) == 0.8 / 512


def test_same_seed_same_result():
    weights, x, y, margin = problem(2, (4, 4, 1), 8, seed=10)
    model = image_linear(weights, (4, 4, 1))
    a = apgd(model, x, y, 0.05, n_iter=10, seed=3)[0]
    b = apgd(model, x, y, 0.05, n_iter=10, seed=3)[0]
    np.testing.assert_array_equal(a, b)


def test_chunks_are_padded_only_where_each_batch_size_compiles():
    """JAX (and XLA) compile each batch size anew, so attack chunks are padded to a few
    sizes (four per doubling); PyTorch and TensorFlow's CPU graphs run a chunk at its own
    size, TensorFlow tracing at most twice whatever the sizes.  The chunking never changes a
    point's outcome."""
    expected = {"jax": True, "torch": False}.get(keras.backend.backend())
    if expected is None:                # TensorFlow: where XLA compiles (an accelerator)
        from keras_dyart.backend.tensorflow import _xla_helps

        expected = _xla_helps()
    assert dyart_backend.pads_batches() is expected
    assert driver.bucket(70, 500) == (80 if expected else 70)
    assert driver.bucket(20, 500) == (32 if expected else 20)
    assert driver.bucket(500, 500) == 500
    if expected:        # at most 25 % padding past 32 rows, four sizes per doubling
        sizes = [driver.bucket(n, 512) for n in range(1, 513)]
        assert all(n <= b <= max(32, 1.25 * n) for n, b in enumerate(sizes, 1))
        assert sorted(set(sizes)) == [32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224,
                                      256, 320, 384, 448, 512]
        assert driver.bucket(449, 500) == 500

    weights, x, y, margin = problem(10, (4, 4, 1), 24, seed=5)
    eps, keep = with_gap(margin, 0.5)
    x, y, margin = x[keep], y[keep], margin[keep]
    model = _build_linear(weights, (4, 4, 1))       # its own compiled functions
    whole = apgd(model, x, y, eps, loss="dlr-t", n_iter=10, batch_size=len(x))[1]
    chunked = apgd(model, x, y, eps, loss="dlr-t", n_iter=10, batch_size=7)[1]
    np.testing.assert_array_equal(whole, margin < eps)
    np.testing.assert_array_equal(chunked, whole)
    if keras.backend.backend() == "tensorflow" and not expected:
        traced = [f.experimental_get_tracing_count() for f in driver._COMPILED[model].values()]
        assert traced and max(traced) <= 2, traced


def _small_net(seed, shape, k=10):
    """A fixed random two-layer tanh network: an attack's path depends on its iteration
    index (momentum, step-size checkpoints), unlike on a linear model's box corner."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    h = keras.layers.Dense(32, activation="tanh")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(k)(h))


def test_iterations_called_from_the_host_give_the_same_points(monkeypatch):
    """JAX on CPU runs the attacks' iterations as one compiled iteration called from the host
    (`driver.compiled_loop`); forced either way on any backend, APGD-T, FAB-T and PGD
    return the points of the single compiled loop on a nonlinear network, and APGD-T finds
    exactly the points of a linear model whose closed-form margin is below eps."""
    weights, x, y, margin = problem(10, (4, 4, 1), 24, seed=6)
    eps, keep = with_gap(margin, 0.5)
    x, y, margin = x[keep], y[keep], margin[keep]
    runs = {}
    for mode in (True, False):
        monkeypatch.setattr(dyart_backend.current(), "host_loops", lambda m=mode: m)
        linear = _build_linear(weights, (4, 4, 1))   # its own compiled functions
        np.testing.assert_array_equal(
            apgd(linear, x, y, eps, loss="dlr-t", n_iter=10, n_target_classes=3)[1],
            margin < eps)
        net = _small_net(3, (4, 4, 1))
        labels = driver.predict_labels(net, x, 64)
        runs[mode] = (apgd(net, x, labels, 0.05, loss="dlr-t", n_iter=12, n_target_classes=3),
                      apgd(net, x, labels, 0.05, loss="ce", n_iter=12),
                      fab_t(net, x, labels, n_iter=12, n_target_classes=3),
                      pgd(net, x, labels, 0.05, steps=12))
    broken = [int(np.sum(r[1] if r[1].dtype == bool else np.isfinite(r[1]))) for r in runs[True]]
    assert 0 < min(broken[:2]) and max(broken[:2]) < len(x), broken   # the attacks decide
    for (a, b), (c, d) in zip(runs[True], runs[False]):
        np.testing.assert_allclose(a, c, atol=1e-5)
        np.testing.assert_allclose(b, d, atol=1e-5)


def test_compiled_attacks_do_not_keep_the_model_alive():
    """Each model's compiled attack functions are cached while it lives; the cache must not
    keep the model (and with it its compiled graphs) alive once the caller drops it, or an
    evaluation of many models in one process holds every one of them."""
    import gc
    import weakref

    net = _small_net(4, (4, 4, 1))
    x = np.random.default_rng(4).uniform(size=(6, 4, 4, 1)).astype("float32")
    y = driver.predict_labels(net, x, 64)
    for jit in (True, False):
        for _ in range(2):      # twice: PyTorch records the forward pass at the second call
            apgd(net, x, y, 0.05, n_iter=3, jit=jit)
    assert driver._COMPILED.get(net)
    alive = weakref.ref(net)
    del net
    gc.collect()
    assert alive() is None
