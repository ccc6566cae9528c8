"""The DyART objective: CE(f(x), y) + λ·(1/N)·Σ_i w_i·(−φ(x̂_i; θ))."""

from __future__ import annotations

from typing import Any

from keras import ops

from keras_dyart.margins import soft_margin


def robust_term(logits_hat: Any, y: Any, weights: Any, beta: float = 5.0) -> Any:
    """(1/N)·Σ_i w_i·(−φ(x̂_i; θ)), N the batch size; x̂ and w are constants.

    ``y`` and ``weights`` are ``(N,)`` (``(N, 1)`` is read as ``(N,)``); float16 logits
    are computed in float32, as in `keras_dyart.margins.soft_margin`.
    """
    phi = soft_margin(logits_hat, y, beta)
    weights = ops.stop_gradient(ops.reshape(ops.cast(weights, phi.dtype), (-1,)))
    return ops.mean(weights * -phi)


def dyart_loss(logits: Any, logits_hat: Any, y: Any, weights: Any, beta: float = 5.0,
               lam: float = 1000.0) -> Any:
    """The full DyART loss on one batch: mean cross-entropy plus ``lam`` times the robust term.

    Args:
        logits: ``f(x)`` in training mode, ``(N, K)``.
        logits_hat: ``f(x̂)`` in training mode, ``(N, K)``.
        y: labels ``(N,)``.
        weights: ``(N,)`` per-point weights (zero for points without a usable boundary point).
    """
    ce = ops.mean(ops.sparse_categorical_crossentropy(y, logits, from_logits=True))
    return ce + lam * robust_term(logits_hat, y, weights, beta)
