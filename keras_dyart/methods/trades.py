"""TRADES (Zhang et al., ICML 2019): clean cross-entropy plus β times a KL term."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_dyart.methods.ascent import KLAttackModel
from keras_dyart.methods.terms import kl_divergence, weighted_mean


def trades_loss(logits: Any, logits_adv: Any, y: Any, beta: float = 6.0) -> tuple[Any, Any, Any]:
    """The TRADES loss of one batch (training-mode logits of x and of x_adv):

        mean_i CE(f(x_i), y_i) + β · mean_i KL(softmax f(x_i) ‖ softmax f(x_adv_i))

    Returns ``(loss, ce, kl)`` where ``kl`` is the mean KL (before the factor β).
    """
    ce = ops.mean(ops.sparse_categorical_crossentropy(ops.cast(y, "int32"), logits,
                                                      from_logits=True))
    kl = ops.mean(kl_divergence(logits, logits_adv))
    return ce + beta * kl, ce, kl


@keras.saving.register_keras_serializable(package="keras_dyart")
class TRADESModel(KLAttackModel):
    """TRADES: trade robustness against accuracy with a KL term.

        CE(f(x), y) + β · KL(p(x) ‖ p(x')),   x' = argmax_{‖x'−x‖ ≤ eps} KL(p(x) ‖ p(x'))

    The inner maximisation starts at ``x + 0.001·N(0, 1)`` and takes ``steps`` gradient
    steps on the KL to the (fixed) clean prediction, in inference mode, as the reference
    code does.  Both loss terms use training mode; the gradient flows through p(x) and
    p(x').

    Args:
        classifier: a Keras model that outputs logits.
        beta: weight β of the KL term (default 6).
        eps, step_size, steps, norm: the inner attack (defaults 8/255, 2/255, 10, "linf").
        seed: seed of the random starts.

    Logs ``loss``, ``ce_loss`` (clean cross-entropy plus regularisation) and ``kl_loss``
    (β times the mean KL).
    """

    loss_terms = ("ce_loss", "kl_loss")

    def inner(self, logits_fn, x, y):
        clean = ops.stop_gradient(logits_fn(x))
        return {"x_adv": self.ascend(lambda z: kl_divergence(clean, logits_fn(z)), x)}

    def objective(self, x, y, y_pred, sample_weight, inner):
        ce = self.keras_loss(x, y, y_pred, sample_weight)
        logits_adv = self.train_logits(inner["x_adv"])
        kl = self.beta * weighted_mean(kl_divergence(y_pred, logits_adv), sample_weight)
        return {"loss": ce + kl, "ce_loss": ce, "kl_loss": kl}
