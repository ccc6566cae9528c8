"""In-memory batches whose shuffle depends only on (seed, epoch), and the callback that
starts such a stream at the epoch ``fit`` starts (after a resume); each epoch's wall time
in the logs; a CSV history appended by its own columns; the host allocator's settings kept
fast under a Python input pipeline."""

from __future__ import annotations

import csv
import math
import os
import time

import keras
import numpy as np

from keras_dyart import _checks
from keras_dyart import backend as dyart_backend
from keras_dyart.methods.warm import indexed


class ArrayBatches(keras.utils.PyDataset):
    """Batches of in-memory arrays, reshuffled each epoch by ``RandomState(seed + epoch)``.

    The batches form one stream indexed by the global batch number g: batch g is batch
    ``g mod n`` of epoch ``g // n`` (n = ``steps_per_epoch``), so what a batch holds depends
    on its index only, never on when Keras prefetches it.  The stream is endless: pass
    ``steps_per_epoch=data.steps_per_epoch`` and ``shuffle=False`` to ``fit``, and
    `SyncEpoch(data)` so that a run resumed by `AtomicBackupAndRestore` at epoch k
    continues with epoch k's batches, as an uninterrupted run does.

    Args:
        x: inputs (first dimension: rows).
        y: labels, as many rows as ``x``.
        batch_size: batch size (the last batch of an epoch may be smaller).
        seed: seed of the shuffles.
        shuffle: ``False`` keeps the given order.
        sample_weight: optional per-sample weights.
        index: ``True`` yields each batch's inputs with the rows' indices
            (`keras_dyart.methods.warm.indexed`), which a `DyARTModel` with ``warm_start``
            needs; default ``False``.
        **kwargs: `keras.utils.PyDataset` arguments (``workers``, ...).
    """

    def __init__(self, x, y, batch_size: int = 128, seed: int = 0, shuffle: bool = True,
                 sample_weight=None, index: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = np.asarray(x), np.asarray(y)
        if len(self.y) != len(self.x):
            raise ValueError(f"`y` has {len(self.y)} rows but `x` has {len(self.x)}.")
        if len(self.x) == 0:
            raise ValueError("`x` is empty; expected at least one row.")
        self.sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        self.batch_size = _checks.positive(batch_size, "batch_size", integer=True)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.index = bool(index)
        self.steps_per_epoch = math.ceil(len(self.x) / self.batch_size)
        self.offset = 0
        self._orders = {}

    @property
    def num_batches(self):
        """None: the stream is endless (``fit`` needs ``steps_per_epoch``)."""
        return None

    def order(self, epoch: int) -> np.ndarray:
        """The row order of epoch ``epoch``."""
        if epoch not in self._orders:
            self._orders = {epoch: (np.random.RandomState(self.seed + epoch)
                                    .permutation(len(self.x)) if self.shuffle
                                    else np.arange(len(self.x))),
                            **{e: o for e, o in self._orders.items() if e >= epoch - 1}}
        return self._orders[epoch]

    def start_at_epoch(self, epoch: int) -> None:
        """Make the stream that ``fit`` starts reading begin with epoch ``epoch``."""
        self.offset = int(epoch) * self.steps_per_epoch

    def __getitem__(self, index):
        epoch, position = divmod(self.offset + int(index), self.steps_per_epoch)
        rows = self.order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
        x = indexed(self.x[rows], rows) if self.index else self.x[rows]
        if self.sample_weight is None:
            return x, self.y[rows]
        return x, self.y[rows], self.sample_weight[rows]


class SyncEpoch(keras.callbacks.Callback):
    """Start a data stream at the epoch ``fit`` starts (after a resume, not 0).

    ``data`` has a ``start_at_epoch(epoch)`` method (`ArrayBatches`).  After
    `AtomicBackupAndRestore` restores a run at epoch k, ``fit`` starts at epoch k but a
    fresh data object would start at epoch 0's batches; this callback moves it to epoch k's
    before the first batch is read.

    Args:
        data: the stream (`ArrayBatches`, `keras_dyart.datasets.pipeline`).
    """

    def __init__(self, data):
        super().__init__()
        if not callable(getattr(data, "start_at_epoch", None)):
            raise TypeError(
                "`data` must have a `start_at_epoch(epoch)` method (e.g. `ArrayBatches`); "
                f"got {type(data).__name__}.")
        self.data = data
        self._first = True

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first:
            self.data.start_at_epoch(epoch)
            self._first = False


class EpochSeconds(keras.callbacks.Callback):
    """Add each epoch's wall time to its logs as ``epoch_seconds`` (compilation included).

    Callbacks after it in the list (`keras.callbacks.CSVLogger`, ``fit``'s History) record
    the value with the epoch's loss and metrics; `keras-dyart train` writes it to
    history.csv.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


class HostMemory(keras.callbacks.Callback):
    """Keep the host allocator fast when ``fit`` reads a `PyDataset` or a generator.

    On TensorFlow, Keras feeds a `PyDataset` (`ArrayBatches`, `keras_dyart.datasets.
    pipeline`) through ``tf.data.Dataset.from_generator``, which sets glibc's malloc trim
    threshold to 128 KB and so turns every large allocation of the train step into fresh
    pages from the kernel: about twice the epoch time of the same step fed from arrays on
    the CPU (docs/performance.md).  At the first batch of every epoch, evaluation and
    prediction, after the dataset is made, this puts the thresholds back to what glibc's
    own rule reaches (`keras_dyart.backend.tensorflow.restore_malloc_thresholds`).  A
    no-op on JAX and PyTorch and outside Linux with glibc.  `RobustModel.fit` adds it;
    add it yourself to the ``fit`` of a plain Keras model.
    """

    def _restore(self, batch):
        if batch == 0:
            dyart_backend.restore_malloc_thresholds()

    def on_train_batch_begin(self, batch, logs=None):
        self._restore(batch)

    def on_test_batch_begin(self, batch, logs=None):
        self._restore(batch)

    def on_predict_batch_begin(self, batch, logs=None):
        self._restore(batch)


class AppendingCSVLogger(keras.callbacks.CSVLogger):
    """`keras.callbacks.CSVLogger` that, appending to an existing file, writes its rows in
    that file's columns.

    Keras's logger writes a row with the keys of the running ``fit``'s logs; appending to a
    history written with other keys (a run resumed by a newer version that logs one more
    value) would shift every value of the new rows under the wrong column.  Here the
    file's header decides: a key it lacks is left out of the appended rows, a column the
    logs lack is written ``NA``.  A new or empty file gets the logs' own columns.

    Args:
        filename: the CSV file.
        separator: the column separator.
    """

    def __init__(self, filename, separator=","):
        super().__init__(filename, separator=separator, append=True)

    def on_train_begin(self, logs=None):
        header = []
        if os.path.exists(self.filename) and os.path.getsize(self.filename):
            with open(self.filename, newline="") as f:
                header = next(csv.reader(f, delimiter=self.sep), [])
        super().on_train_begin(logs)
        if header:
            self.keys = [k for k in header if k != "epoch"]     # rows: these, in order
