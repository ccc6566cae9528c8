"""Shared fixtures. The suite runs once per backend: KERAS_BACKEND selects it."""

import os

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()


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
