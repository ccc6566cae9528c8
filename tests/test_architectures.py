"""Architectures: parameter counts of the published models, shapes, a forward/backward pass on
tiny variants and argument errors.  A DyART step on a tiny WRN (swish) runs in
tests/test_presets.py::test_a_preset_runs_on_a_small_slice."""

import keras
import numpy as np
import pytest

from keras_dyart import architectures

_BUILT = {}


def built(name, **kwargs):
    """Build each published model once per session: WRN-28-10 takes seconds to build."""
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _BUILT:
        _BUILT[key] = architectures.get(name, **kwargs)
    return _BUILT[key]


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


# Trainable weights of the PyTorch references (sum of p.numel() over model.parameters()).
PUBLISHED = [
    ("wrn-28-10", {}, 36_479_194),                       # "36.5 M"
    ("preact-resnet18", {}, 11_172_170),
    ("preact-resnet18", {"num_classes": 200, "input_shape": (64, 64, 3)}, 11_269_640),
    ("resnet18", {}, 11_173_962),
    ("small-cnn", {}, 225_034),
]


@pytest.mark.parametrize("name,kwargs,count", PUBLISHED,
                         ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}"
                              for n, k, _ in PUBLISHED])
def test_parameter_count_and_output_shape(name, kwargs, count):
    model = built(name, **kwargs)
    assert trainable_count(model) == count
    assert model.output_shape == (None, kwargs.get("num_classes", 10))
    assert model.input_shape == (None,) + tuple(
        kwargs.get("input_shape", (28, 28, 1) if name == "small-cnn" else (32, 32, 3)))


def test_wrn_28_10_uses_swish_and_the_chosen_norm():
    bn = built("wrn-28-10")
    acts = {l.activation for l in bn.layers if isinstance(l, keras.layers.Activation)}
    assert acts == {keras.activations.get("swish")}
    # 25 norms = 12 blocks x 2 + the final one; 12 = 3 groups x (28 - 4) / 6 blocks.
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in bn.layers) == 25
    # GroupNorm replaces every BatchNorm and has as many trainable weights (gamma, beta);
    # checked on WRN-28-1, which has the same layers as WRN-28-10 with 10x fewer channels.
    bn1 = architectures.wide_resnet(28, 1, activation="swish", norm="batch")
    gn1 = architectures.wide_resnet(28, 1, activation="swish", norm="group", groups=16)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in gn1.layers)
    assert sum(isinstance(l, keras.layers.GroupNormalization) for l in gn1.layers) == 25
    assert trainable_count(gn1) == trainable_count(bn1) == 369_498


TINY = {
    "wrn-bn-swish": lambda **kw: architectures.wide_resnet(
        depth=10, width=2, activation="swish", **kw),
    "preact": lambda **kw: architectures.preact_resnet(blocks=(1, 1), width=8, **kw),
    "resnet-gn": lambda **kw: architectures.resnet(blocks=(1, 1), width=8, norm="group",
                                                   groups=4, **kw),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_forward_backward(name):
    model = TINY[name](num_classes=3, input_shape=(8, 8, 3))
    x = np.random.default_rng(0).random((4, 8, 8, 3)).astype("float32")
    y = np.array([0, 1, 2, 0])
    logits = keras.ops.convert_to_numpy(model(x, training=False))
    assert logits.shape == (4, 3) and np.all(np.isfinite(logits))
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    # Every trainable weight received a gradient and moved.
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))


def test_standardisation_inside_the_model():
    x = np.random.default_rng(2).random((2, 8, 8, 3)).astype("float32")
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    plain = architectures.preact_resnet(blocks=(1,), width=4, input_shape=(8, 8, 3))
    normed = architectures.preact_resnet(blocks=(1,), width=4, input_shape=(8, 8, 3),
                                         mean=mean, std=std)
    plain.set_weights(normed.get_weights())   # the Normalization layer has no weights
    expected = plain((x - np.array(mean, "float32")) / np.array(std, "float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(normed(x)),
                               keras.ops.convert_to_numpy(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,arg", [
    ({"depth": 27}, "`depth`"),
    ({"width": 0}, "`width`"),
    ({"norm": "layer"}, "`norm`"),
    ({"norm": "group", "groups": 3}, "`groups`"),
    ({"activation": "no-such-act"}, "`activation`"),
    ({"num_classes": 1}, "`num_classes`"),
    ({"input_shape": (32, 32)}, "`input_shape`"),
    ({"mean": [0.5], "std": [0.2]}, "`mean`"),
    ({"dropout": 1.5}, "`dropout`"),
])
def test_wide_resnet_argument_errors(kwargs, arg):
    args = {"depth": 10, "width": 1, **kwargs}
    with pytest.raises(ValueError, match=arg):
        architectures.wide_resnet(**args)


def test_resnet_argument_errors_and_unknown_name():
    with pytest.raises(ValueError, match="`blocks`"):
        architectures.preact_resnet(blocks=(2, 0))
    with pytest.raises(ValueError, match="`groups`"):
        architectures.resnet(blocks=(1,), width=8, norm="group", groups=3)
    with pytest.raises(ValueError, match="`model` must be one of"):
        architectures.get("wrn-99-99")
