"""`keras_dyart.config`: the switches, their environment variables and what they control."""

import numpy as np
import pytest

from keras_dyart import backend as dyart_backend
from keras_dyart import config
from tests.conftest import BACKEND


def test_setters_and_getters_round_trip():
    config.set_unroll_loops(True)
    assert config.unroll_loops() is True and dyart_backend.unroll_loops() is True
    config.set_unroll_loops(False)
    assert dyart_backend.unroll_loops() is False
    config.set_unroll_loops(None)          # the backend's own choice
    assert dyart_backend.unroll_loops() is dyart_backend.current().unroll_loops()
    config.set_torch_compile(True)
    assert config.torch_compile() == "on"
    config.set_torch_compile("auto")
    assert config.torch_compile() == "auto"
    config.set_fast_kernels(False)
    assert config.fast_kernels() is False


@pytest.mark.parametrize("setter, value", [
    (config.set_unroll_loops, "yes"), (config.set_torch_compile, "sometimes"),
    (config.set_fast_kernels, 1)])
def test_setters_refuse_other_values(setter, value):
    with pytest.raises(ValueError, match="must be"):
        setter(value)


def test_environment_gives_the_starting_values(monkeypatch):
    monkeypatch.setenv("KERAS_DYART_UNROLL", "0")
    monkeypatch.setenv("KERAS_DYART_TORCH_COMPILE", "1")
    monkeypatch.setenv("KERAS_DYART_FAST_KERNELS", "0")
    config.reload()
    assert (config.unroll_loops(), config.torch_compile(), config.fast_kernels()) == (
        False, "on", False)
    monkeypatch.setenv("KERAS_DYART_FAST_KERNELS", "maybe")
    with pytest.raises(ValueError, match="KERAS_DYART_FAST_KERNELS"):
        config.reload()


@pytest.mark.skipif(BACKEND == "tensorflow", reason="TensorFlow patches nothing")
def test_fast_kernels_off_leaves_keras_untouched():
    import importlib

    module = importlib.import_module(f"keras_dyart.backend.{BACKEND}")
    if BACKEND == "jax":
        target, name = module._keras_jax_nn, "max_pool"
    else:
        target, name = module._keras_torch_nn, "_transpose_spatial_inputs"
    original = getattr(target, name)
    with dyart_backend.step_scope():
        assert getattr(target, name) is not original      # on by default
    assert getattr(target, name) is original              # and put back
    config.set_fast_kernels(False)
    with dyart_backend.step_scope():
        assert getattr(target, name) is original


def test_a_missing_keras_function_warns_once_and_changes_nothing():
    import types

    from keras_dyart.backend.swap import swapped

    owner = types.SimpleNamespace()
    with pytest.warns(RuntimeWarning, match="test kernel fast path is off"):
        with swapped(owner, "helper", len, "test kernel"):
            assert not hasattr(owner, "helper")
    owner.helper = abs
    with swapped(owner, "helper", len, "test kernel"):
        assert owner.helper is len
        with swapped(owner, "helper", len, "test kernel"):     # nested: the outer restores
            pass
        assert owner.helper is len
    assert owner.helper is abs


# -- choices keyed on the platform, with the device faked ----------------------------------

def test_loops_are_written_out_on_cpu_and_kept_on_accelerators(monkeypatch):
    assert dyart_backend.unroll_loops() is True           # this machine: a CPU
    if BACKEND == "jax":
        import jax

        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    else:
        pytest.skip("eager PyTorch runs a loop in Python on any device")
    assert dyart_backend.unroll_loops() is False


def test_attack_iterations_are_host_calls_only_under_jax_on_a_cpu(monkeypatch):
    """XLA:CPU runs a loop body's convolutions slowly, so JAX on a CPU calls one compiled
    attack iteration from the host; TensorFlow's graph and eager PyTorch keep their loop."""
    assert dyart_backend.host_loops() is (BACKEND == "jax")   # this machine: a CPU
    if BACKEND == "jax":
        import jax

        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        assert dyart_backend.host_loops() is False


@pytest.mark.skipif(BACKEND != "jax", reason="the JAX pooling fast path")
def test_jax_pooling_swap_is_cpu_only(monkeypatch):
    import jax

    from keras_dyart.backend import jax as jax_backend

    original = jax_backend._keras_jax_nn.max_pool
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with dyart_backend.step_scope():
        assert jax_backend._keras_jax_nn.max_pool is original


@pytest.mark.skipif(BACKEND != "jax", reason="the JAX pooling fast path")
@pytest.mark.parametrize("shape, pool, data_format", [
    ((3, 13, 4), 2, "channels_last"),
    ((2, 11, 9, 3), 2, "channels_last"),
    ((2, 3, 11, 9), (2, 3), "channels_first"),
    ((2, 7, 6, 5, 2), (2, 3, 2), "channels_last"),
])
def test_jax_pooling_swap_equals_keras_pooling_with_ties(shape, pool, data_format):
    # The reshape pooling's values, reverse-mode gradient and forward-mode derivative are
    # Keras's own exactly, on odd sizes (cropped edges) and with many ties in a window (the
    # derivative goes to the first maximum in scan order, as `reduce_window`'s does).
    import jax
    import jax.numpy as jnp

    from keras_dyart.backend import jax as jax_backend

    rng = np.random.RandomState(0)
    x = jnp.asarray(np.maximum(rng.randint(-2, 3, size=shape), 0).astype("float32"))
    t = jnp.asarray(rng.normal(size=shape).astype("float32"))

    def keras_pool(z):
        return jax_backend._keras_max_pool(z, pool, pool, "valid", data_format)

    def ours(z):
        return jax_backend._reshape_max_pool(z, pool, None, "valid", data_format)

    a = keras_pool(x)
    np.testing.assert_array_equal(ours(x), a)
    g = jnp.asarray(rng.normal(size=a.shape).astype("float32"))
    np.testing.assert_array_equal(jax.vjp(ours, x)[1](g)[0], jax.vjp(keras_pool, x)[1](g)[0])
    np.testing.assert_array_equal(jax.jvp(ours, (x,), (t,))[1],
                                  jax.jvp(keras_pool, (x,), (t,))[1])
    # one window, one element that gets its gradient
    assert int(jnp.sum(jax.vjp(ours, x)[1](jnp.ones_like(a))[0])) == a.size


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's torch.compile of the FAB update")
def test_torch_fuses_every_batch_on_a_gpu_and_large_ones_on_the_cpu(monkeypatch):
    import torch

    from keras_dyart.backend import torch as torch_backend

    small = [torch.zeros(4, 6)]
    assert not torch_backend._worth_compiling(small)
    assert torch_backend._worth_compiling([torch.zeros(torch_backend.FUSE_MIN_ELEMENTS)])
    monkeypatch.setattr(torch_backend, "on_accelerator", lambda tensors: True)
    assert torch_backend._worth_compiling(small)


def test_input_gradient_of_numpy_inputs_runs_where_keras_puts_tensors():
    import numpy as np
    from keras import ops

    x = np.arange(6, dtype="float32").reshape(2, 3)
    v, g = dyart_backend.value_and_grad(lambda z: ops.sum(z * z, axis=-1), x)
    np.testing.assert_allclose(ops.convert_to_numpy(g), 2 * x)
    np.testing.assert_allclose(ops.convert_to_numpy(v), (x * x).sum(-1))
