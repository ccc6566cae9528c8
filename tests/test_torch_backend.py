"""PyTorch only: the layout fast path (`keras_dyart.backend.torch.fast_layout`) gives exactly
Keras's numbers, forward and input gradient, for every layer that goes through Keras's NHWC →
NCHW helper, and restores Keras's helper afterwards; compiled model functions (the attacks)
build no autograd graph beyond their own input gradients; `fuse` compiles the FAB update
only when asked or worth it, and falls back to eager code when compilation fails."""

import warnings

import keras
import numpy as np
import pytest
from keras import layers

from keras_dyart import architectures, config
from tests.conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="PyTorch backend only")


def _every_spatial_layer():
    inputs = keras.Input((12, 12, 3))
    h = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = layers.MaxPooling2D(3, strides=2, padding="same")(h)
    h = layers.DepthwiseConv2D(3, padding="valid")(h)
    h = layers.SeparableConv2D(6, 3, strides=2, padding="same")(h)
    h = layers.Conv2DTranspose(4, 3, strides=2)(h)
    h = layers.AveragePooling2D(2)(h)
    h = layers.Conv1D(5, 2)(layers.Reshape((-1, 4))(h))
    h = layers.MaxPooling1D(2)(h)
    outputs = layers.Dense(3)(layers.Flatten()(h))
    return keras.Model(inputs, outputs)


MODELS = {
    "small-cnn": lambda: architectures.small_cnn(input_shape=(14, 14, 1)),
    "wrn-10-1": lambda: architectures.wide_resnet(depth=10, width=1, input_shape=(16, 16, 3)),
    "preact-resnet": lambda: architectures.preact_resnet(blocks=(1, 1), width=8,
                                                         input_shape=(16, 16, 3)),
    "every-spatial-layer": _every_spatial_layer,
    "sequential-bn-dropout": lambda: keras.Sequential([
        keras.Input((10, 10, 1)), layers.Rescaling(2.0, -1.0), layers.Conv2D(4, 3),
        layers.BatchNormalization(), layers.Dropout(0.5), layers.Flatten(), layers.Dense(5)]),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fast_layout_is_exact(name):
    import torch

    from keras_dyart.backend import torch as torch_backend

    model = MODELS[name]()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4,) + tuple(model.input_shape[1:])).astype("float32")

    def forward_and_grad():
        z = torch.as_tensor(x).requires_grad_(True)
        out = model(z, training=False)
        (g,) = torch.autograd.grad((out * torch.arange(out.shape[-1])).sum(), z)
        return out.detach().numpy(), g.numpy()

    keras_out, keras_grad = forward_and_grad()
    with torch_backend.fast_layout():
        fast_out, fast_grad = forward_and_grad()
    np.testing.assert_array_equal(fast_out, keras_out)
    np.testing.assert_array_equal(fast_grad, keras_grad)


def test_fast_layout_restores_keras_helper_on_error():
    from keras.src.backend.torch import nn as keras_torch_nn

    from keras_dyart.backend import torch as torch_backend

    before = keras_torch_nn._transpose_spatial_inputs
    with pytest.raises(RuntimeError, match="inside"):
        with torch_backend.fast_layout():
            assert keras_torch_nn._transpose_spatial_inputs is not before
            with torch_backend.fast_layout():   # nested: the outer block restores
                pass
            assert keras_torch_nn._transpose_spatial_inputs is not before
            raise RuntimeError("inside")
    assert keras_torch_nn._transpose_spatial_inputs is before


def test_compiled_model_functions_keep_no_graph():
    """A graph kept alive by an attack's loop carry held every activation of every query
    (Square on 256 points peaked at 13 GB); outputs must not require grad, while input
    gradients inside still work."""
    from keras_dyart import backend as dyart_backend
    from keras_dyart.margins import soft_margin

    model = MODELS["small-cnn"]()
    x = np.random.default_rng(0).uniform(size=(3, 14, 14, 1)).astype("float32")
    y = np.array([0, 1, 2], "int32")

    def fn(logits_fn, xb, yb):
        phi, grad = dyart_backend.value_and_grad(
            lambda z: soft_margin(logits_fn(z), yb), xb)
        return logits_fn(xb), phi, grad

    logits, phi, grad = dyart_backend.compile_model_fn(model, fn, True)(x, y)
    assert not logits.requires_grad and not phi.requires_grad
    assert float(abs(grad).sum()) > 0


def _tiny_update_args():
    import torch

    rng = np.random.RandomState(0)
    x0 = torch.tensor(rng.rand(4, 6).astype("float32"))
    return (x0 + 0.01, torch.tensor([0.5, -0.5, 0.2, -0.1]),
            torch.tensor(rng.randn(4, 6).astype("float32")), x0, x0,
            torch.full((4,), float("inf")), torch.zeros(4))


SETTINGS = dict(norm="linf", overshoot=1.05, alpha_max=0.1, step_back=0.9)


def test_fuse_setting_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv("KERAS_DYART_TORCH_COMPILE", "maybe")
    with pytest.raises(ValueError, match="KERAS_DYART_TORCH_COMPILE"):
        config.reload()
    with pytest.raises(ValueError, match="mode"):
        config.set_torch_compile("maybe")


@pytest.mark.parametrize("mode, compiles", [("auto", False), ("0", False), ("1", True)])
def test_fuse_compiles_only_when_asked_or_large(mode, compiles, monkeypatch):
    # "auto" leaves batches under FUSE_MIN_ELEMENTS numbers eager (4 × 6 here).
    import torch

    from keras_dyart.backend import torch as torch_backend
    from keras_dyart.boundary import _fab_update

    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch_backend, "_compiled", {})
    monkeypatch.setenv("KERAS_DYART_TORCH_COMPILE", mode)
    config.reload()
    torch_backend.fuse(_fab_update)(*_tiny_update_args(), **SETTINGS)
    assert bool(calls) is compiles


def test_fuse_falls_back_to_eager_when_compilation_fails(monkeypatch):
    import torch

    from keras_dyart.backend import torch as torch_backend
    from keras_dyart.boundary import _fab_update

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    monkeypatch.setattr(torch_backend, "_compiled", {})
    monkeypatch.setattr(torch_backend, "_failed", set())
    monkeypatch.setenv("KERAS_DYART_TORCH_COMPILE", "1")
    config.reload()
    fused = torch_backend.fuse(_fab_update)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        out = fused(*_tiny_update_args(), **SETTINGS)
    expected = _fab_update(*_tiny_update_args(), **SETTINGS)
    for a, b in zip(out, expected):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with warnings.catch_warnings():                    # later calls: eager, no new warning
        warnings.simplefilter("error")
        fused(*_tiny_update_args(), **SETTINGS)


# -- the recorded forward pass (`recorded_forward`) ------------------------------------------


def _forward_and_input_grad(forward, x):
    import torch

    z = torch.as_tensor(x).requires_grad_(True)
    out = forward(z)
    (g,) = torch.autograd.grad((out * torch.arange(out.shape[-1])).sum(), z)
    return out.detach().numpy(), g.numpy()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_recorded_forward_is_exact_and_follows_the_weights(name):
    """Replayed calls give Keras's outputs and input gradients bit for bit, with and
    without autograd, and read the weights' values at every call: a change of the weights
    (as a train step makes, in place) shows at the next call of an already recorded shape."""
    import torch

    from keras_dyart.backend import torch as torch_backend

    model = MODELS[name]()
    x = np.random.default_rng(0).uniform(
        size=(5,) + tuple(model.input_shape[1:])).astype("float32")
    forward = torch_backend.recorded_forward(model)
    assert torch_backend.recorded_forward(model) is forward      # one per model

    def keras_forward(z):
        with torch_backend.fast_layout():
            return model(z, training=False)

    with torch_backend.fast_layout():
        for _ in range(3):
            with torch.no_grad():
                replayed = forward(torch.as_tensor(x)).numpy()
            np.testing.assert_array_equal(replayed, keras_forward(torch.as_tensor(x)).detach())
            replayed = _forward_and_input_grad(forward, x)
            expected = _forward_and_input_grad(keras_forward, x)
            np.testing.assert_array_equal(replayed[0], expected[0])
            np.testing.assert_array_equal(replayed[1], expected[1])
        assert forward.failure is None and len(forward.graphs) == 2    # no-grad and grad
        for v in model.trainable_variables:                             # new weights
            v.assign(keras.ops.convert_to_numpy(v) * 1.5 + 0.01)
        with torch.no_grad():
            replayed = forward(torch.as_tensor(x)).numpy()
        np.testing.assert_array_equal(replayed, keras_forward(torch.as_tensor(x)).detach())
    assert len(forward.graphs) == 2


def test_recorded_forward_keeps_a_mixed_precision_policy():
    import torch

    from keras_dyart.backend import torch as torch_backend

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = MODELS["small-cnn"]()
    finally:
        keras.config.set_dtype_policy(before)
    x = torch.as_tensor(np.random.default_rng(2).uniform(size=(3, 14, 14, 1)).astype("float32"))
    forward = torch_backend.recorded_forward(model)
    with torch.no_grad(), torch_backend.fast_layout():
        outs = [forward(x) for _ in range(3)]
        expected = model(x, training=False)
    assert forward.graphs and expected.dtype == torch.bfloat16
    for out in outs:
        assert out.dtype == expected.dtype and torch.equal(out, expected)


def test_recorded_forward_falls_back_where_the_call_cannot_be_recorded():
    """Python that branches on a tensor's values cannot be recorded (it would be fixed at
    the recorded branch): such a model keeps running as Keras runs it, and both branches
    stay right."""
    import torch

    from keras_dyart.backend import torch as torch_backend

    class Branching(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(3)

        def call(self, x, training=False):
            h = self.dense(x)
            if keras.ops.convert_to_numpy(keras.ops.max(h)) > 0:
                return h * 2.0
            return -h

    model = Branching()
    x = np.random.default_rng(1).uniform(size=(4, 6)).astype("float32")
    model(x)
    forward = torch_backend.recorded_forward(model)
    with torch.no_grad():
        for sign in (1.0, -1.0, 1.0, -1.0):
            z = torch.as_tensor(sign * x)
            np.testing.assert_array_equal(forward(z).numpy(), model(z).numpy())
    assert forward.failure is not None and not forward.graphs


def test_recorded_forward_records_a_shape_only_at_its_second_call():
    import torch

    from keras_dyart.backend import torch as torch_backend

    model = MODELS["small-cnn"]()
    forward = torch_backend.recorded_forward(model)
    with torch.no_grad():
        for n in (1, 2, 3):
            forward(torch.zeros((n, 14, 14, 1)))
        assert not forward.graphs
        forward(torch.zeros((2, 14, 14, 1)))
        assert [key[0] for key in forward.graphs] == [(2, 14, 14, 1)]
        before = config.fast_kernels()
        config.set_fast_kernels(False)
        try:
            forward(torch.zeros((3, 14, 14, 1)))
            forward(torch.zeros((3, 14, 14, 1)))
        finally:
            config.set_fast_kernels(before)
        assert len(forward.graphs) == 1
