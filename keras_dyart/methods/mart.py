"""MART (Wang et al., ICLR 2020): boosted cross-entropy plus a misclassification-weighted KL."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_dyart.methods.ascent import KLAttackModel
from keras_dyart.methods.terms import cross_entropy, kl_divergence, weighted_mean


def mart_terms(logits: Any, logits_adv: Any, y: Any) -> tuple[Any, Any]:
    """Per-sample MART terms from training-mode logits of x and of x_adv.

    Returns ``(boost, weighted_kl)``:

    - ``boost_i = −log(1.0001 − p_adv[i, k_i] + 1e-12)``, ``k_i`` the most probable class
      other than ``y_i`` under x_adv (the term that, with the adversarial cross-entropy,
      makes MART's boosted cross-entropy);
    - ``weighted_kl_i = KL(p(x_i) ‖ p(x_adv_i)) · (1.0000001 − p(x_i)[y_i])``: the KL is
      weighted up for points the model misclassifies (small p_y).

    The constants are those of the reference code.
    """
    y = ops.cast(y, "int32")
    k = ops.shape(logits)[-1]
    onehot = ops.one_hot(y, k, dtype=logits.dtype)
    p_adv = ops.softmax(logits_adv, axis=-1)
    p_other = ops.max(p_adv - 2.0 * onehot, axis=-1)
    boost = -ops.log(1.0001 - p_other + 1e-12)
    p_true = ops.sum(ops.softmax(logits, axis=-1) * onehot, axis=-1)
    weighted_kl = kl_divergence(logits, logits_adv) * (1.0000001 - p_true)
    return boost, weighted_kl


def mart_loss(logits: Any, logits_adv: Any, y: Any, beta: float = 6.0) -> Any:
    """The MART loss of one batch: mean(CE(f(x_adv)) + boost) + β · mean(weighted KL)."""
    boost, weighted_kl = mart_terms(logits, logits_adv, y)
    ce_adv = ops.sparse_categorical_crossentropy(ops.cast(y, "int32"), logits_adv,
                                                 from_logits=True)
    return ops.mean(ce_adv + boost) + beta * ops.mean(weighted_kl)


@keras.saving.register_keras_serializable(package="keras_dyart")
class MARTModel(KLAttackModel):
    """MART: misclassification-aware adversarial training.

        BCE(f(x'), y) + β · KL(p(x) ‖ p(x')) · (1 − p_y(x)),
        BCE = CE(f(x'), y) − log(1 − max_{k≠y} p_k(x'))

    The inner example x' is PGD on cross-entropy from ``x + 0.001·N(0, 1)`` in inference
    mode, as in the reference code; both loss terms use training mode.

    Args:
        classifier: a Keras model that outputs logits.
        beta: weight β of the KL term (default 6).
        eps, step_size, steps, norm: the inner attack (defaults 8/255, 2/255, 10, "linf").
        seed: seed of the random starts.

    Logs ``loss``, ``bce_loss`` (boosted adversarial cross-entropy plus regularisation) and
    ``kl_loss`` (β times the weighted KL).  The compiled metrics are on the clean batch.
    """

    loss_terms = ("bce_loss", "kl_loss")

    def inner(self, logits_fn, x, y):
        return {"x_adv": self.ascend(lambda z: cross_entropy(logits_fn(z), y), x)}

    def objective(self, x, y, y_pred, sample_weight, inner):
        logits_adv = self.train_logits(inner["x_adv"])
        boost, weighted_kl = mart_terms(y_pred, logits_adv, y)
        # The compiled loss (cross-entropy) on the adversarial logits, plus the boost.
        bce = (self.keras_loss(x, y, logits_adv, sample_weight)
               + weighted_mean(boost, sample_weight))
        kl = self.beta * weighted_mean(weighted_kl, sample_weight)
        return {"loss": bce + kl, "bce_loss": bce, "kl_loss": kl}
