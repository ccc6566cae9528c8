"""Per-example memory of boundary points, for warm-started boundary searches.

Between two visits of a training example (one epoch) the decision boundary moves little, so
a search that starts at the boundary point found at the last visit needs far fewer
iterations than one that starts at the example (docs/performance.md, "Warm-started boundary
search").  `ExampleCache` keeps, per example, the offset ``p − x`` of the point p where its
last search ended (the boundary point it found, or, where it found none, FAB's last
iterate, so that the next visit continues the search rather than restarting it), in the
unit box, as ``scale · q`` with ``scale = max |p − x|`` (a float32 per example) and ``q`` in
[−1, 1] stored in 16 bits (``"float16"``) or 8 bits (``"int8"``, ``round(127·q)``: half the
memory, a quantisation error of at most ``scale/254`` per coordinate).  ``scale`` also
says what the example's last visit left: −1 never visited, 0 visited without a point to
continue from (the example was misclassified; its next search starts at x), > 0 a start.
A signature of the inputs (a fixed weighted mean of their pixels) is kept with each entry:
an example whose inputs differ from those of its last visit (an augmented image, another
array given the same index) counts as not visited, so the memory never starts a search
from another image's point.

The example's identity travels with the batch as an integer index (`INDEX_KEY`); see
`indexed` and `split_indexed`.  Everything here is `keras.ops`, so the cache is read and
written inside the train step on every backend (under JAX through the step's state, like
the seed generator).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_dyart.geometry import flat

#: Keys of a batch whose inputs carry each example's index: ``{INPUTS_KEY: images,
#: INDEX_KEY: integer indices}``.
INPUTS_KEY = "inputs"
INDEX_KEY = "example_index"

#: How much further from x than the remembered point a warm search starts: a point on the
#: boundary (refined to φ = 0, stored in 16 or 8 bits) then lies just past it while the
#: boundary has not moved, and counts as reached.  Much further hurts: started FAB's
#: η = 1.05 times as far, DyART trained to 0.84 training accuracy in four epochs where
#: this start and the cold search reach 0.93–0.94 (docs/performance.md).
START_PAST = 1.002

#: Storage of the cached offsets: bytes per input coordinate and the largest stored value.
CACHE_DTYPES = {"float16": (2, 1.0), "int8": (1, 127.0)}


def indexed(x: Any, index: Any = None) -> dict:
    """``x`` with each row's index, the form a warm-started `DyARTModel` trains on.

    ``indexed(x)`` is ``{"inputs": x, "example_index": arange(len(x))}``; pass it (with the
    labels) to ``tf.data.Dataset.from_tensor_slices``, a generator or ``fit`` and the index
    follows each row through shuffling and batching.  ``index`` gives other indices (each in
    ``[0, n_examples)`` of the model).

    >>> batch = indexed(np.zeros((3, 2), "float32"))
    >>> sorted(batch), batch["example_index"].tolist()
    (['example_index', 'inputs'], [0, 1, 2])
    """
    n = len(x)
    if index is None:
        index = np.arange(n, dtype="int32")
    index = np.asarray(index)
    if index.shape != (n,) or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"`index` must be {n} integers, one per row of `x`; got shape "
                         f"{index.shape} of {index.dtype}.")
    return {INPUTS_KEY: x, INDEX_KEY: index.astype("int32")}


def is_indexed(x: Any) -> bool:
    """Whether a batch's inputs are `indexed` ones."""
    return isinstance(x, dict) and set(x) == {INPUTS_KEY, INDEX_KEY}


def split_indexed(x: Any) -> tuple[Any, Any]:
    """``(inputs, index)`` of a batch: ``index`` is None for plain inputs."""
    if is_indexed(x):
        return x[INPUTS_KEY], x[INDEX_KEY]
    return x, None


def check_cache_dtype(value: Any, arg: str = "cache_dtype") -> str:
    """``value`` if it names a storage of `CACHE_DTYPES`, else a ValueError naming ``arg``."""
    if value not in CACHE_DTYPES:
        raise ValueError(f"`{arg}` must be one of {sorted(CACHE_DTYPES)}; got {value!r}.")
    return value


def cache_bytes(n_examples: int, input_shape, cache_dtype: str = "float16") -> int:
    """Bytes an `ExampleCache` of ``n_examples`` examples of ``input_shape`` takes."""
    per_coordinate = CACHE_DTYPES[cache_dtype][0]
    # the offsets, plus a float32 scale and signature per example
    return int(n_examples) * (int(np.prod(input_shape)) * per_coordinate + 8)


class ExampleCache:
    """The boundary-point memory of ``n_examples`` examples of ``input_shape`` (variables of
    ``owner``, so they are saved with its weights and travel in its JAX state)."""

    def __init__(self, owner: keras.layers.Layer, n_examples: int, input_shape,
                 cache_dtype: str = "float16"):
        check_cache_dtype(cache_dtype)
        self.n_examples = int(n_examples)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.dim = int(np.prod(self.input_shape))
        self.cache_dtype = cache_dtype
        self.q_max = CACHE_DTYPES[cache_dtype][1]
        self.offsets = owner.add_weight(
            shape=(self.n_examples, self.dim), dtype=cache_dtype, initializer="zeros",
            trainable=False, name="warm_start_offsets")
        self.scales = owner.add_weight(
            shape=(self.n_examples,), dtype="float32",
            initializer=keras.initializers.Constant(-1.0), trainable=False,
            name="warm_start_scales")
        self.signatures = owner.add_weight(
            shape=(self.n_examples,), dtype="float32", initializer="zeros",
            trainable=False, name="warm_start_signatures")
        # fixed weights in [0.5, 1.5): a permutation of the pixels changes the signature
        self._weights = np.random.RandomState(0).uniform(
            0.5, 1.5, (1, self.dim)).astype("float32")

    def signature(self, u):
        """``(N,)``: the weighted mean of each row's inputs (unit box)."""
        return ops.mean(flat(ops.cast(u, "float32")) * ops.convert_to_tensor(self._weights),
                        axis=-1)

    @property
    def bytes(self) -> int:
        """The memory's size in bytes (`cache_bytes`)."""
        return cache_bytes(self.n_examples, self.input_shape, self.cache_dtype)

    def in_range(self, index):
        """Bool ``(N,)``: the indices that name an example of the cache."""
        index = ops.reshape(ops.cast(index, "int32"), (-1,))
        return (index >= 0) & (index < self.n_examples)

    def read(self, u, index, stretch: float = START_PAST):
        """Starts for a batch ``u`` (unit box, ``(N, ...)``) of examples ``index``.

        Returns ``(start, visited)``: ``start`` is ``u`` plus ``stretch`` times the cached
        offset (clipped to the box; ``u`` itself where nothing is cached; `START_PAST` by
        default).  ``visited``
        (bool ``(N,)``): whether a visit of the same inputs is recorded (indices out of
        range, or inputs other than those remembered: not visited).
        """
        index = ops.reshape(ops.cast(index, "int32"), (-1,))
        rows = ops.clip(index, 0, self.n_examples - 1)
        sig = self.signature(u)
        same = ops.abs(ops.take(self.signatures, rows, axis=0) - sig) <= 1e-5 * (
            ops.abs(sig) + 1e-3)
        ok = self.in_range(index) & same
        scale = ops.where(ok, ops.take(self.scales, rows, axis=0), -1.0)
        q = ops.cast(ops.take(self.offsets, rows, axis=0), "float32") / self.q_max
        offset = q * ops.expand_dims(ops.maximum(scale, 0.0) * stretch, -1)
        start = ops.reshape(ops.clip(flat(u) + offset, 0.0, 1.0), ops.shape(u))
        return start, scale >= 0.0

    def write(self, u, u_hat, keep, index):
        """Record a batch's search: the offset ``u_hat − u`` where ``keep``, "visited
        without a point" elsewhere.  Rows whose index is out of range are not written."""
        index = ops.reshape(ops.cast(index, "int32"), (-1,))
        ok = self.in_range(index)
        rows = ops.clip(index, 0, self.n_examples - 1)
        delta = flat(u_hat) - flat(u)
        scale = ops.max(ops.abs(delta), axis=-1)
        keep = ops.logical_and(ops.convert_to_tensor(keep, "bool"), scale > 0.0)
        safe = ops.where(keep, scale, 1.0)
        q = delta / ops.expand_dims(safe, -1) * self.q_max
        if self.cache_dtype == "int8":
            q = ops.round(q)
        q = ops.where(ops.expand_dims(keep, -1), q, 0.0)
        new_scale = ops.where(keep, scale, 0.0)
        # rows out of range write back what their clipped row holds (the epoch's input
        # check stops the run at its end: see `RobustModel`'s input errors)
        old_scale = ops.take(self.scales, rows, axis=0)
        old_q = ops.take(self.offsets, rows, axis=0)
        new_scale = ops.where(ok, new_scale, old_scale)
        q = ops.where(ops.expand_dims(ok, -1), ops.cast(q, self.cache_dtype), old_q)
        sig = ops.where(ok, self.signature(u), ops.take(self.signatures, rows, axis=0))
        at = ops.expand_dims(rows, -1)
        self.offsets.assign(ops.scatter_update(self.offsets, at, q))
        self.scales.assign(ops.scatter_update(self.scales, at, new_scale))
        self.signatures.assign(ops.scatter_update(self.signatures, at, sig))
