"""Parity with an independent implementation: torchattacks' AutoAttack "standard".

On the torch backend a Keras model is a `torch.nn.Module`, so the `torchattacks` package
(its own PyTorch code for APGD-CE, APGD-T, FAB-T and Square) can attack the very same model.
A small CNN is trained in the test on MNIST-5k; both implementations attack the same 500 test
points and must agree on robust accuracy within 1 percentage point.  torchattacks' attacks
run with the reference AutoAttack's 100 iterations (its own ``AutoAttack`` uses 10).
torchattacks feeds NCHW images, so a thin wrapper transposes them to the model's NHWC.

Skipped on the other backends (torchattacks needs torch tensors end to end) and, outside
CI, where torchattacks is not installed (`make` installs it with ``pip install --no-deps
torchattacks==3.5.1``; it needs only torch, numpy, scipy, requests and tqdm).
"""

import os
import time

import keras
import numpy as np
import pytest

from tests.conftest import BACKEND

pytestmark = pytest.mark.slow

EPS = 0.1
N = 500


def small_cnn():
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


@pytest.mark.skipif(BACKEND != "torch", reason="torchattacks attacks torch modules")
def test_autoattack_standard_agrees_with_torchattacks(mnist5k):
    if os.environ.get("CI"):
        import torchattacks  # noqa: F401  (`make` installs it: CI must not skip this test)
    else:
        pytest.importorskip("torchattacks")
    from keras_dyart.attacks.reference import torchattacks_autoattack
    from keras_dyart.evaluation import evaluate

    x_train, y_train, x_test, y_test = mnist5k
    keras.utils.set_random_seed(0)
    model = small_cnn()
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    x, y = x_test[:N], y_test[:N]

    t0 = time.perf_counter()
    ours = evaluate(model, x, y, "autoattack", [EPS], batch_size=N, seed=0)
    ours_s = time.perf_counter() - t0

    timings = {}
    theirs, adv, theirs_s = torchattacks_autoattack(model, x, y, EPS, timings=timings)
    assert np.abs(adv - x).max() <= EPS + 1e-6
    print(f"\nAutoAttack standard, eps={EPS}, {N} points: keras-dyart "
          f"{100 * ours.robust_accuracy[EPS]:.1f} % in {ours_s:.0f} s; torchattacks "
          f"{100 * theirs:.1f} % in {theirs_s:.0f} s; clean {100 * ours.clean_accuracy:.1f} %; "
          f"ours per attack: " + ", ".join(f"{a} {t:.0f} s" for a, t in ours.seconds.items())
          + "; theirs: " + ", ".join(f"{a} {t:.0f} s" for a, t in timings.items()))
    assert 0.1 < ours.robust_accuracy[EPS] < ours.clean_accuracy   # a non-trivial case
    assert abs(ours.robust_accuracy[EPS] - theirs) <= 0.01


@pytest.mark.skipif(BACKEND == "torch", reason="checks the refusal on the other backends")
def test_reference_refuses_other_backends():
    from keras_dyart.attacks.reference import torchattacks_autoattack

    with pytest.raises(RuntimeError, match="KERAS_BACKEND=torch"):
        torchattacks_autoattack(small_cnn(), np.zeros((2, 28, 28, 1), "float32"), [0, 1], 0.1)
