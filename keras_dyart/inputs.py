"""The first batch of any input pipeline, for checking it before training starts.

`fit`, `evaluate` and the validation data of the robust models accept what Keras accepts:
NumPy arrays and backend tensors, a `tf.data.Dataset`, a `keras.utils.PyDataset`, a Python
generator or a `torch.utils.data.DataLoader`.  `peek` returns the first batch of each as NumPy
arrays (without consuming it: a generator is handed back as a new generator that yields the
peeked batch first), so that `keras_dyart._checks` can check the values the model will see,
whatever the pipeline.  `gather` reads a finite pipeline whole, for the attacks.
"""

from __future__ import annotations

import itertools
import types
from typing import Any

import numpy as np
from keras.utils import unpack_x_y_sample_weight

from keras_dyart import _checks


def to_numpy(value):
    """A batch part as NumPy (torch and TensorFlow tensors too); structures as they are."""
    if value is None:
        return None
    if isinstance(value, (dict, list, tuple)):
        return value
    if hasattr(value, "detach"):               # torch tensors
        value = value.detach().cpu()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        try:
            return np.asarray(value.numpy())
        except Exception:  # noqa: BLE001 - fall back to the array protocol
            pass
    return np.asarray(value)


def is_array(x) -> bool:
    """Whether ``x`` is an in-memory array (NumPy or a backend tensor)."""
    return _kind(x) == "array"


def _kind(x):
    module = type(x).__module__
    if module.startswith("tensorflow") and hasattr(x, "take") and hasattr(x, "element_spec"):
        return "tf.data"
    if module.startswith("torch.utils.data"):
        return "torch"
    try:
        import keras

        if isinstance(x, keras.utils.PyDataset):
            return "pydataset"
    except AttributeError:  # pragma: no cover - Keras without PyDataset
        pass
    if isinstance(x, types.GeneratorType):
        return "generator"
    if isinstance(x, np.ndarray) or (hasattr(x, "shape") and hasattr(x, "dtype")):
        return "array"
    return "other"


_BATCH_IT = {"tf.data": "dataset.batch(128)", "torch": "DataLoader(..., batch_size=128)",
             "pydataset": "__getitem__ returning a batch of rows",
             "generator": "yield batches of rows"}


def _batched(by: Any, kind: str, arg: str) -> None:
    """Refuse a pipeline that yields single examples (a label of shape ()) rather than
    batches: its inputs would be taken for a batch of rows of one fewer axis."""
    if by is not None and not isinstance(by, (dict, list, tuple)) and np.ndim(by) == 0:
        raise ValueError(
            f"`{arg}` yields single examples (labels of shape ()), not batches: batch it "
            f"first ({_BATCH_IT[kind]}).")


def peek(x: Any, y: Any = None, arg: str = "x") -> tuple[Any, Any, Any]:
    """The first batch of ``x`` (and ``y`` for arrays) as NumPy, and ``x`` to train on.

    Returns ``(x_batch, y_batch, x)``: ``x_batch`` / ``y_batch`` are NumPy arrays (or the
    structure the pipeline yields, for dict or tuple inputs; ``y_batch`` is None where the
    pipeline yields no labels); ``x`` is the input to hand on (a fresh generator that yields
    the peeked batch first, for generators; ``x`` itself otherwise).
    """
    kind = _kind(x)
    if kind == "other":                 # dict inputs, lists, ...: Keras's own checks apply
        return None, None, x
    if kind == "array":                  # in memory: checked whole
        return to_numpy(x), to_numpy(y), x
    if kind == "tf.data":
        batch = next(iter(x.take(1)))
    elif kind == "pydataset":
        batch = x[0]
    elif kind == "torch":
        batch = next(iter(x))
    else:  # a generator
        try:
            batch = next(x)
        except StopIteration:
            raise ValueError("`x` is an empty generator: it yielded no batch.") from None
        rest = x

        def replay():
            yield from itertools.chain([batch], rest)

        x = replay()
    if isinstance(batch, dict):
        return batch, None, x
    if isinstance(batch, list):
        batch = tuple(batch)
    bx, by, _ = unpack_x_y_sample_weight(batch) if isinstance(batch, tuple) else (
        batch, None, None)
    by = to_numpy(by)
    _batched(by, kind, arg)
    return to_numpy(bx), by, x


def gather(x: Any, y: Any = None, arg: str = "x") -> tuple[Any, Any]:
    """``(x, y)`` whole, as NumPy arrays, from arrays or a finite pipeline: a
    `tf.data.Dataset`, a `keras.utils.PyDataset` or a `torch.utils.data.DataLoader` that
    yields ``(inputs, labels)`` batches (``y`` must then be None).  For an attack, which
    needs every point at once; a generator is refused (it may never end)."""
    kind = _kind(x)
    if kind in ("array", "other"):
        return x, y
    if kind == "generator":
        raise ValueError(
            f"`{arg}` is a generator, which may never end: the attacks need every point at "
            f"once. Pass arrays (e.g. np.concatenate of the batches), or a finite "
            f"tf.data.Dataset, PyDataset or DataLoader.")
    if y is not None:
        raise ValueError(
            f"`y` must be None when `{arg}` is a {kind} pipeline: its batches carry the "
            f"labels ((inputs, labels) pairs).")
    if kind == "tf.data":
        import tensorflow as tf

        if int(x.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError(
                f"`{arg}` is an infinite tf.data.Dataset (.repeat()?): the attacks need "
                f"every point once. Take a finite part, e.g. dataset.take(n_batches).")
        batches = iter(x)
    elif kind == "pydataset":
        batches = (x[i] for i in range(len(x)))
    else:
        batches = iter(x)
    xs, ys = [], []
    for batch in batches:
        if isinstance(batch, list):
            batch = tuple(batch)
        if not isinstance(batch, tuple) or len(batch) < 2:
            raise ValueError(
                f"`{arg}`'s batches must be (inputs, labels) pairs; got "
                f"{type(batch).__name__}{'' if isinstance(batch, tuple) else ' alone'}.")
        bx, by, _ = unpack_x_y_sample_weight(batch)
        _checks.single_input(bx, arg)
        by = to_numpy(by)
        _batched(by, kind, arg)
        xs.append(to_numpy(bx))
        ys.append(by)
    if not xs:
        raise ValueError(f"`{arg}` yielded no batch.")
    return np.concatenate(xs), np.concatenate(ys)
