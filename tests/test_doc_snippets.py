"""Every Python example in README.md and docs/ runs, on a tiny budget.

The blocks of a page run in order in one namespace (a later block may use what an earlier
one defined).  Names a page uses without defining (``model``, ``x_test``, a checkpoint file)
come from `page_namespace` below.  The budget is cut without touching the examples' code
paths: data sets are small slices (CIFAR-10 is synthetic: no download), ``epochs=...``
becomes 1, and the WRN-28-10 builder makes a WRN-10-1 (a WRN-28-10 DyART step takes
minutes on a CPU).  Docstring examples run as doctests (``--doctest-modules``).
"""

import pathlib
import re

import keras
import numpy as np
import pytest

import keras_dyart as kd
from keras_dyart import architectures, datasets

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BACKEND = keras.backend.backend()


def blocks(page):
    return BLOCK.findall((ROOT / page).read_text())


def tiny(code):
    """The example with a one-epoch budget."""
    return re.sub(r"epochs=[^,)\n]+", "epochs=1", code)


def fake_load(mnist):
    """`datasets.load` on a budget: slices of the real MNIST-5k split ``mnist``."""
    def load(name="mnist5k", **kwargs):
        if name == "mnist5k":
            assert not kwargs, f"the docs load mnist5k with options {kwargs}: serve them here"
            x, y, xt, yt = mnist
            return x[:64], y[:64], xt[:32], yt[:32]
        if name == "cifar10":                          # synthetic, no download
            rng = np.random.RandomState(0)
            uint8 = kwargs.get("dtype") == "uint8"
            x = rng.randint(0, 256, (96, 32, 32, 3)).astype("uint8")
            x = x if uint8 else x.astype("float32") / 255
            y = rng.randint(0, 10, 96)
            return x[:64], y[:64], x[64:], y[64:]
        raise AssertionError(f"the docs load an unexpected data set {name!r}")
    return load


def small_wrn(**kwargs):
    kwargs.update(depth=10, width=1)
    return architectures.wide_resnet(**kwargs)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """What every page reads and none changes, made once: the data and the files (two
    checkpoints, an extra-data file)."""
    files = tmp_path_factory.mktemp("files")
    architectures.small_cnn().save(files / "ckpt-1.keras")
    architectures.small_cnn().save(files / "ckpt-2.keras")
    rng = np.random.RandomState(1)
    np.savez(files / "cifar10_ddpm.npz",
             image=rng.randint(0, 256, (32, 32, 32, 3)).astype("uint8"),
             label=rng.randint(0, 10, 32))
    return datasets.load("mnist5k"), files


def page_namespace(tmp_path, shared, page):
    """What the pages use without defining it: small data, a compiled DyART model (MNIST,
    or CIFAR-shaped for docs/scale.md, which trains one it does not define), the files of
    `shared` in the working directory."""
    mnist, files = shared
    # the slices `datasets.load` serves (the whole split made a page's AutoAttack and
    # FAB-T examples run on all 1,000 test digits)
    x_train, y_train, x_test, y_test = fake_load(mnist)("mnist5k")
    for f in files.iterdir():
        (tmp_path / f.name).symlink_to(f)
    if page == "docs/scale.md":
        model = kd.DyARTModel(small_wrn(num_classes=10), n_iter=2)
        model.compile(optimizer=keras.optimizers.SGD(0.05))
    else:
        model = kd.DyARTModel(architectures.small_cnn(), n_iter=3)
        model.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"])
    return {
        "keras": keras, "np": np, "kd": kd, "epochs": 1,
        "x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
        "x_batch": x_train[:16], "y_batch": y_train[:16],
        "x_probe": x_test[:16], "y_probe": y_test[:16],
        "model": model,
    }


@pytest.fixture
def tiny_world(tmp_path, monkeypatch, shared):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load", fake_load(shared[0]))
    monkeypatch.setitem(architectures.BUILDERS, "wrn-28-10", small_wrn)
    monkeypatch.setattr(architectures, "wrn_28_10", small_wrn)
    return lambda page: page_namespace(tmp_path, shared, page)


def test_every_page_is_collected():
    assert "README.md" in PAGES and "docs/quickstart.md" in PAGES
    assert sum(len(blocks(p)) for p in PAGES) >= 11


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)])
def test_examples_of_a_page_run(page, tiny_world):
    namespace = tiny_world(page)
    for i, code in enumerate(blocks(page)):
        if "data_parallel()" in code and BACKEND == "torch":
            # Documented: Keras 3 has no multi-device fit for PyTorch; the call must say so.
            with pytest.raises(NotImplementedError, match="jax or tensorflow"):
                exec(compile(tiny(code), f"{page}[{i}]", "exec"), namespace)
            continue
        exec(compile(tiny(code), f"{page}[{i}]", "exec"), namespace)
