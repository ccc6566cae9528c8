"""Shared fixtures. The suite runs once per backend: KERAS_BACKEND selects it."""

import os

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

if BACKEND == "jax":
    # Many tests compile the same functions (the same small models, steps and attacks at the
    # same shapes); XLA's compilation cache, in a folder of this session, lets later ones
    # load what an earlier one compiled.  Only compile time changes, never a result.
    import tempfile

    import jax

    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="keras_dyart_xla_"))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def pytest_report_header(config):
    return f"keras backend: {BACKEND} (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')})"


def linear_classifier(weights, bias=None):
    """A one-layer logits model z -> z·W + b with given weights ``W (d, K)``."""
    weights = np.asarray(weights, "float32")
    d, k = weights.shape
    inputs = keras.Input((d,))
    outputs = keras.layers.Dense(k)(inputs)
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights(
        [weights, np.zeros(k, "float32") if bias is None else np.asarray(bias, "float32")])
    return model


@pytest.fixture
def make_linear():
    return linear_classifier


@pytest.fixture(scope="session")
def mnist5k():
    from keras_dyart import datasets

    return datasets.load("mnist5k")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(autouse=True)
def _fresh_config():
    """A test may change `keras_dyart.config` (or the environment it reads): the next test
    starts from the settings before it."""
    from keras_dyart import config

    saved = config.unroll_loops(), config.torch_compile(), config.fast_kernels()
    yield
    config.set_unroll_loops(saved[0])
    config.set_torch_compile(saved[1])
    config.set_fast_kernels(saved[2])
