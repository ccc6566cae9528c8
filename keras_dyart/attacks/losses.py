"""Per-sample losses that the attacks ascend (or, for Square, descend).

All take logits ``(N, K)`` and integer labels ``(N,)`` and return one value per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops

LOSSES = ("ce", "cw", "dlr", "dlr-t")


def cw_margin(logits: Any, y: Any) -> Any:
    """The CW margin ``f_y − max_{j≠y} f_j`` per row (> 0: correctly classified)."""
    onehot = ops.one_hot(y, ops.shape(logits)[-1], dtype=logits.dtype)
    f_y = ops.sum(logits * onehot, axis=-1)
    return f_y - ops.max(logits - 1e9 * onehot, axis=-1)


def ce_loss(logits: Any, y: Any) -> Any:
    """Cross-entropy of the logits for labels ``y``, per row."""
    return ops.sparse_categorical_crossentropy(ops.cast(y, "int32"), logits, from_logits=True)


def cw_loss(logits: Any, y: Any) -> Any:
    """The CW / margin loss ``max_{j≠y} f_j − f_y`` (> 0: misclassified)."""
    return -cw_margin(logits, ops.cast(y, "int32"))


def _sorted_column(sorted_logits, k):
    """Column ``K − k`` of ascending-sorted logits (the k-th largest), clamped to column 0
    for models with fewer than ``k`` classes."""
    n_classes = ops.shape(sorted_logits)[-1]
    return sorted_logits[:, max(n_classes - k, 0)]


def dlr_loss(logits: Any, y: Any) -> Any:
    """Difference of Logits Ratio (Croce & Hein, 2020), untargeted.

    ``−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12)`` with ``z_π1 ≥ z_π2 ≥ …`` the sorted
    logits.  Invariant to shifting and rescaling the logits.  With two classes z_π3 is taken
    as the smallest logit.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> z = np.array([[4.0, 1.0, 0.0, 2.0]], "float32")
    >>> round(float(ops.convert_to_numpy(dlr_loss(z, np.array([0])))[0]), 4)  # -(4-2)/(4-1)
    -0.6667
    """
    logits = ops.convert_to_tensor(logits)
    s = ops.sort(logits, axis=-1)
    return -cw_margin(logits, ops.cast(y, "int32")) / (
        _sorted_column(s, 1) - _sorted_column(s, 3) + 1e-12)


def dlr_targeted_loss(logits: Any, y: Any, target: Any) -> Any:
    """Targeted DLR: ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)`` for target ``t``.

    With fewer than four classes the missing sorted logits are replaced by the smallest one.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> z = np.array([[4.0, 1.0, 0.0, 2.0]], "float32")
    >>> loss = dlr_targeted_loss(z, np.array([0]), np.array([3]))  # -(4-2)/(4-(1+0)/2)
    >>> round(float(ops.convert_to_numpy(loss)[0]), 4)
    -0.5714
    """
    logits = ops.convert_to_tensor(logits)
    k = ops.shape(logits)[-1]
    s = ops.sort(logits, axis=-1)
    f_y = ops.sum(logits * ops.one_hot(ops.cast(y, "int32"), k, dtype=logits.dtype), axis=-1)
    f_t = ops.sum(logits * ops.one_hot(ops.cast(target, "int32"), k, dtype=logits.dtype),
                  axis=-1)
    denom = _sorted_column(s, 1) - 0.5 * (_sorted_column(s, 3) + _sorted_column(s, 4))
    return -(f_y - f_t) / (denom + 1e-12)


def get(name: str) -> Callable:
    """The loss function for a name in ``LOSSES`` (``"dlr-t"`` takes a third argument)."""
    table = {"ce": ce_loss, "cw": cw_loss, "dlr": dlr_loss, "dlr-t": dlr_targeted_loss}
    if name not in table:
        raise ValueError(f"`loss` must be one of {LOSSES}; got {name!r}.")
    return table[name]
