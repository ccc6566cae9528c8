"""Image layouts: the Square attack and the architectures follow ``data_format``.

The same network on the same images must give the same numbers in both layouts: a
channels-first model here is the channels-last one behind a ``Permute`` (NCHW → NHWC), so
any difference in an attack's result comes from the attack, not from the network.
"""

import keras
import numpy as np
import pytest

from keras_dyart import architectures
from keras_dyart import backend as dyart_backend
from keras_dyart.attacks import square


@pytest.fixture
def image_format():
    """``image_format(fmt)`` sets ``keras.config.image_data_format`` for the test."""
    before = keras.config.image_data_format()
    try:
        yield keras.config.set_image_data_format
    finally:
        keras.config.set_image_data_format(before)


def to_nchw(x):
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def pair_of_models(h=8, w=6, c=3, classes=4):
    """A channels-last CNN and the same CNN taking NCHW input (one ``Permute`` in front,
    the same layers, hence the same weights)."""
    body = [keras.layers.Conv2D(6, 3, activation="relu", data_format="channels_last"),
            keras.layers.Flatten(), keras.layers.Dense(classes)]

    def build(inputs, h0):
        for layer in body:
            h0 = layer(h0)
        return keras.Model(inputs, h0)

    nhwc = keras.Input((h, w, c))
    last = build(nhwc, nhwc)
    nchw = keras.Input((c, h, w))
    first = build(nchw, keras.layers.Permute((2, 3, 1))(nchw))
    return last, first


def data(n=24, h=8, w=6, c=3, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, h, w, c)).astype("float32"),
            rng.integers(0, classes, n).astype("int32"))


# -- Square --------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.0)])
def test_square_gives_the_same_points_in_both_layouts(norm, eps, image_format):
    last, first = pair_of_models()
    x, _ = data()
    y = np.argmax(keras.ops.convert_to_numpy(last(x)), axis=-1)     # all correct at start
    kw = dict(norm=norm, n_queries=30, chunk=10, seed=3)
    adv_l, ok_l = square(last, x, y, eps, data_format="channels_last", **kw)
    adv_f, ok_f = square(first, to_nchw(x), y, eps, data_format="channels_first", **kw)
    assert adv_f.shape == (len(x), 3, 8, 6)
    assert 0 < ok_l.sum() < len(x)                  # the case tells something
    np.testing.assert_array_equal(ok_f, ok_l)
    np.testing.assert_array_equal(adv_f, to_nchw(adv_l))
    # The default follows keras.config.image_data_format().
    image_format("channels_first")
    adv_d, ok_d = square(first, to_nchw(x), y, eps, **kw)
    np.testing.assert_array_equal(adv_d, adv_f)
    np.testing.assert_array_equal(ok_d, ok_f)


def test_square_stripes_run_along_the_height_of_nchw_input():
    # The L∞ start is vertical stripes: one sign per (column, channel), the same down the
    # whole height.  One query of a 1-pixel square changes one pixel (all channels) after
    # that.  Read as NHWC, an NCHW batch would get stripes along its channel axis instead.
    rng = np.random.default_rng(5)
    xf = (0.3 + 0.4 * rng.random((6, 3, 8, 6))).astype("float32")   # no clipping at eps
    _, first = pair_of_models()
    y = np.argmax(keras.ops.convert_to_numpy(first(xf)), axis=-1)
    adv, _ = square(first, xf, y, 0.1, n_queries=1, chunk=1, p_init=0.01,
                    data_format="channels_first")
    sign = np.sign(adv - xf)                                  # (N, C, H, W)
    assert np.all(sign != 0)
    varies = (sign != sign[:, :, :1, :]).any(axis=2)          # (N, C, W) columns
    assert varies.sum(axis=(1, 2)).max() <= 3                  # one pixel, 3 channels


@pytest.mark.parametrize("bad", ["NCHW", "channels-first", 1, ""])
def test_square_rejects_an_unknown_data_format(bad):
    last, _ = pair_of_models()
    x, y = data(n=2)
    with pytest.raises(ValueError, match="`data_format`"):
        square(last, x, y, 0.1, n_queries=1, data_format=bad)


def test_square_names_the_layout_in_a_shape_error():
    last, _ = pair_of_models()
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        square(last, np.zeros((2, 1, 3, 8, 6), "float32"), [0, 1], 0.1,
               data_format="channels_first")


# -- Architectures -------------------------------------------------------------------------


def predict(model, x, compiled=False):
    if compiled:       # one compiled call: under JAX much faster than op by op
        return keras.ops.convert_to_numpy(
            dyart_backend.compile_model_fn(model, lambda f, v: f(v), True)(x))
    return keras.ops.convert_to_numpy(model(x, training=False))


def copy_and_compare(last, first, x, atol=1e-5, compiled=False):
    first.set_weights(last.get_weights())
    np.testing.assert_allclose(predict(first, to_nchw(x), compiled),
                               predict(last, x, compiled), rtol=1e-4, atol=atol)


def test_small_cnn_follows_the_global_format_and_trains(image_format):
    x, _ = data(n=4, h=28, w=28, c=1)
    y = np.array([0, 1, 2, 3])
    last = architectures.small_cnn(data_format="channels_last")
    image_format("channels_first")
    first = architectures.small_cnn()
    assert first.input_shape == (None, 1, 28, 28)
    assert [w.shape for w in first.weights] == [w.shape for w in last.weights]
    copy_and_compare(last, first, x)
    # One tiny training step in the channels-first layout.
    first.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [keras.ops.convert_to_numpy(w) for w in first.trainable_weights]
    loss = first.train_on_batch(to_nchw(x), y)
    assert np.isfinite(loss)
    after = [keras.ops.convert_to_numpy(w) for w in first.trainable_weights]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))


TINY = {
    "wrn-bn": lambda **kw: architectures.wide_resnet(depth=10, width=1, **kw),
    "preact-std": lambda **kw: architectures.preact_resnet(
        blocks=(1, 1), width=4, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], **kw),
    "resnet-gn": lambda **kw: architectures.resnet(blocks=(1, 1), width=4, norm="group",
                                                   groups=2, **kw),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_resnets_take_a_data_format_argument(name):
    x, _ = data(n=2, h=8, w=8, c=3, seed=1)
    last = TINY[name](num_classes=3, input_shape=(8, 8, 3), data_format="channels_last")
    first = TINY[name](num_classes=3, input_shape=(3, 8, 8), data_format="channels_first")
    assert first.input_shape == (None, 3, 8, 8)
    copy_and_compare(last, first, x, atol=1e-4, compiled=True)


def test_default_input_shapes_follow_the_format():
    assert architectures.small_cnn(data_format="channels_first").input_shape == (
        None, 1, 28, 28)
    assert architectures.wide_resnet(depth=10, width=1, data_format="channels_first"
                                     ).input_shape == (None, 3, 32, 32)


@pytest.mark.parametrize("kwargs,match", [
    ({"data_format": "NHWC"}, "`data_format`"),
    ({"data_format": "channels_first", "input_shape": (28, 28, 1)}, "looks like"),
    ({"data_format": "channels_last", "input_shape": (1, 28, 28)}, "looks like"),
    ({"data_format": "channels_first", "input_shape": (28, 28)}, r"\(channels, height"),
])
def test_architecture_layout_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        architectures.small_cnn(**kwargs)


# -- Backend patches (PyTorch layout, JAX max pooling) under channels-first ---------------


def test_compiled_calls_and_input_gradients_agree_across_layouts():
    # The compiled model functions and input gradients run under the backend patches
    # (PyTorch's layout permute, JAX's max pooling); odd sizes exercise the pool's edges.
    x, _ = data(n=3, h=13, w=11, c=2, seed=4)
    last = architectures.small_cnn(num_classes=4, input_shape=(13, 11, 2),
                                   data_format="channels_last")
    first = architectures.small_cnn(num_classes=4, input_shape=(2, 13, 11),
                                    data_format="channels_first")
    first.set_weights(last.get_weights())
    xf = to_nchw(x)

    np.testing.assert_allclose(predict(first, xf, True), predict(last, x, True),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(predict(first, xf, True), predict(first, xf),
                               rtol=1e-5, atol=1e-6)

    def grad(model, z):
        def run(f, v):
            return dyart_backend.value_and_grad(lambda t: keras.ops.max(f(t), axis=-1), v)

        v, g = dyart_backend.compile_model_fn(model, run, True)(z)
        return keras.ops.convert_to_numpy(v), keras.ops.convert_to_numpy(g)

    v_l, g_l = grad(last, x)
    v_f, g_f = grad(first, xf)
    np.testing.assert_allclose(v_f, v_l, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_f, to_nchw(g_l), rtol=1e-3, atol=1e-5)


def test_augmentation_follows_the_data_format():
    from keras_dyart import augment

    rng = np.random.RandomState(0)
    nhwc = rng.uniform(size=(4, 6, 5, 3)).astype("float32")
    nchw = np.transpose(nhwc, (0, 3, 1, 2))
    a = augment.random_crop_flip(nhwc, pad=2, rng=7, data_format="channels_last")
    b = augment.random_crop_flip(nchw, pad=2, rng=7, data_format="channels_first")
    np.testing.assert_array_equal(b, np.transpose(a, (0, 3, 1, 2)))
    layer_last = augment.RandomCropFlip(pad=2, seed=3, data_format="channels_last")
    layer_first = augment.RandomCropFlip(pad=2, seed=3, data_format="channels_first")
    out_last = keras.ops.convert_to_numpy(layer_last(nhwc, training=True))
    out_first = keras.ops.convert_to_numpy(layer_first(nchw, training=True))
    np.testing.assert_array_equal(out_first, np.transpose(out_last, (0, 3, 1, 2)))
    assert augment.RandomCropFlip.from_config(layer_first.get_config()).data_format == \
        "channels_first"
    with pytest.raises(ValueError, match="`data_format`"):
        augment.random_crop_flip(nhwc, data_format="nhwc")
