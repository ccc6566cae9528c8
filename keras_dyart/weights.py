"""Per-point DyART weights: w_i = h'(R_i) / ‖∇_x φ(x̂_i)‖_q.

With these weights the gradient of the robust term −Σ w_i·φ(x̂_i; θ) equals −Σ h'(R_i)·∇_θ R_i
at locally closest boundary points, so a descent step ascends Σ h(R_i).
"""

from __future__ import annotations

from typing import Any

from keras import ops

from keras_dyart import geometry


def h_prime(r: Any, alpha: float = 3.0, r0: float = 16 / 255) -> Any:
    """Derivative of the margin utility: exp(−α·r) for r < r0, 0 beyond (truncated).

    >>> import numpy as np
    >>> from keras import ops
    >>> np.round(ops.convert_to_numpy(h_prime(np.array([0.0, 0.1, 0.5]), 3.0, 0.3)), 4)
    array([1.    , 0.7408, 0.    ], dtype=float32)
    """
    r = ops.cast(r, "float32")
    return ops.where(r < r0, ops.exp(-alpha * r), 0.0)


def dyart_weights(margin: Any, grad_hat: Any, usable: Any, norm: str = "linf", alpha: float = 3.0,
                  r0: float = 16 / 255) -> Any:
    """Weights ``usable · h'(R) / ‖∇_x φ(x̂)‖_q`` (zero where unusable or the norm is 0)."""
    gq = geometry.get(norm).dual_size(ops.convert_to_tensor(grad_hat))
    keep = ops.logical_and(ops.convert_to_tensor(usable), gq > 0)
    return ops.where(keep, h_prime(margin, alpha, r0) / ops.where(keep, gq, 1.0), 0.0)
