"""The soft margin function (norms and balls: `keras_dyart.geometry`).

φ(x; θ) = f_y(x) − (1/β)·log Σ_{j≠y} exp(β·f_j(x)).  The smooth maximum is at least the
hard maximum, so φ > 0 implies a correct prediction; its zero level set is the *soft
decision boundary* of the point.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# Added to the true-class logit before the smooth maximum so that it drops out of the sum.
_EXCLUDE = 1e9


def soft_margin(logits: Any, y: Any, beta: float = 5.0) -> Any:
    """Soft margin φ of each row of ``logits`` for labels ``y``.

    Args:
        logits: tensor of shape ``(N, K)``; float16 and bfloat16 logits are computed in
            float32 (the excluded true class would overflow them).
        y: integer labels of shape ``(N,)`` (or ``(N, 1)``).
        beta: temperature of the smooth maximum over the other classes.

    Returns:
        Tensor of shape ``(N,)``: ``f_y − logsumexp(β·f_{j≠y}) / β``.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> phi = soft_margin(np.array([[3.0, 1.0]], "float32"), np.array([0]))
    >>> float(ops.convert_to_numpy(phi)[0])  # two classes: f_y - f_other
    2.0
    """
    logits = ops.convert_to_tensor(logits)
    if keras.backend.standardize_dtype(logits.dtype) in ("float16", "bfloat16"):
        logits = ops.cast(logits, "float32")
    y = ops.reshape(ops.cast(y, "int32"), (-1,))       # (N, 1) labels as (N,)
    onehot = ops.one_hot(y, ops.shape(logits)[-1], dtype=logits.dtype)
    f_y = ops.sum(logits * onehot, axis=-1)
    others = beta * (logits - _EXCLUDE * onehot)
    return f_y - ops.logsumexp(others, axis=-1) / beta

