"""The training input pipeline: shuffled, augmented batches with extra data mixed in.

`pipeline` turns arrays into a `keras.utils.PyDataset` for `fit`: shuffling, the recipe's
random crop (pad 4) + horizontal flip per image, and an extra data set mixed into every batch
at a fixed fraction.  It runs on the host in NumPy, so it is the same under every backend.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from keras_dyart.augment import check_pad, random_crop_flip
from keras_dyart.images import label_vector, nhwc, pixels
from keras_dyart.methods.warm import indexed


class Batches(keras.utils.PyDataset):
    """Shuffled, augmented batches ``(x, y)`` with extra data mixed in; see `pipeline`."""

    def __init__(self, x, y, batch_size=128, augment=True, pad=4, extra=None,
                 extra_fraction=0.0, shuffle=True, drop_remainder=False, seed=0, workers=1,
                 use_multiprocessing=False, max_queue_size=10, index=False):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        self.x = nhwc(np.asarray(x))
        if self.x.dtype.kind not in "uif":
            raise ValueError(f"`x` must hold numeric pixels; got dtype {self.x.dtype}.")
        self.y = label_vector(y, len(self.x))
        if len(self.x) == 0:
            raise ValueError("`x` is empty; expected at least one image.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1; got {batch_size!r}.")
        self.batch_size = int(batch_size)
        self.augment = bool(augment)
        self.pad = check_pad(pad)
        if not 0.0 <= float(extra_fraction) < 1.0:
            raise ValueError(f"`extra_fraction` must be in [0, 1); got {extra_fraction!r}.")
        self.n_extra = int(round(float(extra_fraction) * self.batch_size))
        if extra is None:
            if extra_fraction:
                raise ValueError("`extra_fraction` > 0 needs `extra`: a pair (x, y) of "
                                 "extra images and labels.")
            self.extra_x = self.extra_y = None
        else:
            try:
                ex, ey = extra
            except (TypeError, ValueError):
                raise ValueError("`extra` must be a pair (x, y) of images and labels, e.g. "
                                 "from `load_npz`.") from None
            self.extra_x = nhwc(np.asarray(ex), "extra")
            self.extra_y = label_vector(ey, len(self.extra_x), "extra")
            if self.extra_x.shape[1:] != self.x.shape[1:]:
                raise ValueError(
                    f"`extra` images have shape {self.extra_x.shape[1:]}; expected "
                    f"{self.x.shape[1:]} like `x`.")
            if len(self.extra_x) == 0 and self.n_extra:
                raise ValueError("`extra` is empty; expected at least one image.")
        self.n_base = self.batch_size - self.n_extra
        if self.n_base < 1:
            raise ValueError(
                f"`extra_fraction` {extra_fraction!r} leaves no room for `x` in a batch of "
                f"{self.batch_size}.")
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        if self.drop_remainder and len(self.x) < self.n_base:
            raise ValueError(
                f"`x` has {len(self.x)} images, fewer than the {self.n_base} a batch takes "
                "from it; with `drop_remainder=True` no batch would be full.")
        self.index = bool(index)
        self.seed = int(seed)
        self.epoch = 0
        self._extra_offset = 0
        self._order()

    def _order(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        n = len(self.x)
        self.base_order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.n_extra:
            m = len(self.extra_x)
            self.extra_order = rng.permutation(m) if self.shuffle else np.arange(m)

    def __len__(self):
        n = len(self.x) / self.n_base
        return int(n) if self.drop_remainder else int(math.ceil(n))

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)}).")
        rows = self.base_order[index * self.n_base:(index + 1) * self.n_base]
        x, y, ids = self.x[rows], self.y[rows], rows
        if self.n_extra:
            # The extra set is walked through in its own shuffled order, across epochs.
            m = len(self.extra_x)
            start = self._extra_offset + index * self.n_extra
            pick = self.extra_order[(start + np.arange(self.n_extra)) % m]
            x = np.concatenate([pixels(x, "float32"), pixels(self.extra_x[pick], "float32")])
            y = np.concatenate([y, self.extra_y[pick]])
            ids = np.concatenate([rows, len(self.x) + pick])
        else:
            x = pixels(x, "float32")
        if self.augment:
            x = random_crop_flip(x, self.pad,
                                 rng=np.random.default_rng((self.seed, self.epoch, index, 1)),
                                 data_format="channels_last")     # the loaders' layout
        x = np.ascontiguousarray(x, "float32")
        return (indexed(x, ids) if self.index else x), y

    @property
    def n_examples(self):
        """How many examples the indices of ``index=True`` batches name: ``x``'s rows,
        then the extra set's."""
        return len(self.x) + (0 if self.extra_x is None else len(self.extra_x))

    def on_epoch_end(self):
        self._extra_offset += len(self) * self.n_extra
        self.epoch += 1
        self._order()

    def start_at_epoch(self, epoch):
        """Continue with the batches of ``epoch`` (after a resume; see
        `keras_dyart.recipe.SyncEpoch`)."""
        self.epoch = int(epoch)
        self._extra_offset = self.epoch * len(self) * self.n_extra
        self._order()


def pipeline(x: np.ndarray, y: np.ndarray, batch_size: int = 128, augment: bool = True,
             pad: int = 4, extra: tuple[np.ndarray, np.ndarray] | None = None,
             extra_fraction: float = 0.0, shuffle: bool = True, drop_remainder: bool = False,
             seed: int = 0, workers: int = 1, use_multiprocessing: bool = False,
             max_queue_size: int = 10, index: bool = False) -> Batches:
    """Training batches for `Model.fit` under any backend (a `keras.utils.PyDataset`).

    Every epoch shuffles ``x``; every batch holds ``batch_size - k`` images of ``x`` and,
    with ``extra=(x_extra, y_extra)``, ``k = round(extra_fraction · batch_size)`` images of
    the extra set (the recipe's 1M generated images at 0.7), which is walked through in its
    own shuffled order.  An epoch is one pass over ``x``.  With ``augment`` every image is
    randomly cropped after zero padding ``pad`` and flipped left-right (`random_crop_flip`).
    Images may be uint8 (0–255; scaled per batch, so large sets stay 4× smaller in memory)
    or floats in [0, 1]; batches are float32 in [0, 1] with int32 labels.

    ``workers > 1`` prepares batches in threads (processes with ``use_multiprocessing``)
    while the accelerator trains.  Augmentation is reproducible from ``seed``.

    ``index=True`` yields each batch's inputs with the examples' indices
    (`keras_dyart.methods.warm.indexed`: ``x``'s row numbers, the extra set's rows after
    them), which a `DyARTModel` with ``warm_start`` needs.  An augmented image is a new
    input at every visit, so its search starts cold: warm starts pay off with
    ``augment=False``.

    >>> x = np.zeros((10, 8, 8, 3), "uint8"); y = np.arange(10) % 2
    >>> xb, yb = pipeline(x, y, batch_size=4)[0]
    >>> xb.shape, yb.shape
    ((4, 8, 8, 3), (4,))
    """
    return Batches(x, y, batch_size=batch_size, augment=augment, pad=pad, extra=extra,
                   extra_fraction=extra_fraction, shuffle=shuffle,
                   drop_remainder=drop_remainder, seed=seed, workers=workers,
                   use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size,
                   index=index)
