"""Per-example loss pieces shared by the methods: batch means, cross-entropy and KL."""

from __future__ import annotations

from typing import Any

from keras import ops


def weighted_mean(values: Any, sample_weight: Any = None) -> Any:
    """Batch mean of per-sample ``values``: ``Σ w_i·v_i / N`` (Keras's sum-over-batch)."""
    if sample_weight is not None:
        values = values * ops.cast(ops.reshape(sample_weight, (-1,)), values.dtype)
    return ops.mean(values)


def kl_divergence(logits_p: Any, logits_q: Any) -> Any:
    """Per-row KL(p ‖ q) of the softmax distributions of two logit batches."""
    log_p = ops.log_softmax(logits_p, axis=-1)
    log_q = ops.log_softmax(logits_q, axis=-1)
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


def cross_entropy(logits: Any, y: Any) -> Any:
    """Per-row cross-entropy of logits."""
    return ops.sparse_categorical_crossentropy(ops.cast(y, "int32"), logits, from_logits=True)


def usable_mean(values: Any, usable: Any) -> Any:
    """Mean of ``values`` over the rows where ``usable`` (0 where there are none)."""
    usable = ops.cast(usable, "float32")
    return ops.sum(values * usable) / ops.maximum(ops.sum(usable), 1.0)


__all__ = ["cross_entropy", "kl_divergence", "usable_mean", "weighted_mean"]
