"""Parity with an independent implementation: torchattacks' AutoAttack "standard".

On the torch backend a Keras model is a `torch.nn.Module`, so the `torchattacks` package
(its own PyTorch code for APGD-CE, APGD-T, FAB-T and Square) can attack the very same model.
A small CNN is trained in the test on MNIST-5k; both implementations attack the same 500 test
points and must agree on robust accuracy within 1 percentage point.  torchattacks feeds NCHW
images, so a thin wrapper transposes them to the model's NHWC.

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
    torch = pytest.importorskip("torch")
    if os.environ.get("CI"):
        import torchattacks             # `make` installs it: CI must not skip this test
    else:
        torchattacks = pytest.importorskip("torchattacks")
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

    class NCHW(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            return self.inner(z.permute(0, 2, 3, 1), training=False)

    net = NCHW(model).eval()
    attack = torchattacks.AutoAttack(net, norm="Linf", eps=EPS, version="standard",
                                     n_classes=10, seed=0)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype("int64"))
    t0 = time.perf_counter()
    adv = attack(xt, yt).detach()
    theirs_s = time.perf_counter() - t0
    with torch.no_grad():
        theirs_pred = net(adv).argmax(1).numpy()
    assert np.abs(adv.numpy() - xt.numpy()).max() <= EPS + 1e-6
    theirs = float(np.mean(theirs_pred == y))

    print(f"\nAutoAttack standard, eps={EPS}, {N} points: keras-dyart "
          f"{100 * ours.robust_accuracy[EPS]:.1f} % in {ours_s:.0f} s; torchattacks "
          f"{100 * theirs:.1f} % in {theirs_s:.0f} s; clean {100 * ours.clean_accuracy:.1f} %; "
          f"ours per attack: " + ", ".join(f"{a} {t:.0f} s" for a, t in ours.seconds.items()))
    assert 0.1 < ours.robust_accuracy[EPS] < ours.clean_accuracy   # a non-trivial case
    assert abs(ours.robust_accuracy[EPS] - theirs) <= 0.01
