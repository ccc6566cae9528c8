"""PGD adversarial training (Madry et al., ICLR 2018)."""

from __future__ import annotations

import keras

from keras_dyart.methods.ascent import ascend_in_box, check_attack
from keras_dyart.methods.base import RobustModel
from keras_dyart.methods.terms import cross_entropy


@keras.saving.register_keras_serializable(package="keras_dyart")
class PGDATModel(RobustModel):
    """PGD adversarial training: minimise the cross-entropy at a PGD example.

        min_θ  E  max_{‖δ‖ ≤ eps, x+δ ∈ [0,1]^d}  CE(f(x + δ), y)

    The inner maximisation is PGD with cross-entropy, ``steps`` steps of ``step_size``
    (sign of the gradient for L∞, normalised gradient for L2) from a uniform random start,
    with the classifier in inference mode.  Keras's own forward pass, loss and metrics then
    run on the adversarial batch only (so the logged ``accuracy`` is the training accuracy
    under attack, and BatchNorm sees only adversarial inputs, as in the reference).

    Args:
        classifier: a Keras model that outputs logits.
        eps: radius of the threat model (a number or text such as ``"8/255"``).
        step_size: PGD step (default 2/255).
        steps: PGD steps (default 10).
        norm: ``"linf"`` (default) or ``"l2"``.
        random_start: start from a uniform point of the ball (default True).
        seed: seed of the random starts.

    Logs ``loss`` (the adversarial cross-entropy) and the compiled metrics on the
    adversarial batch.
    """

    hyper_parameters = ("eps", "step_size", "steps", "norm", "random_start")

    def __init__(self, classifier: keras.layers.Layer, eps: float | str = 8 / 255,
                 step_size: float | str = 2 / 255, steps: int = 10, norm: str = "linf",
                 random_start: bool = True, seed: int = 0, **kwargs):
        super().__init__(classifier, seed=seed, **kwargs)
        self.eps, self.step_size, self.steps, self.norm = check_attack(eps, step_size, steps,
                                                                       norm, self.bounds)
        self.random_start = bool(random_start)

    def inner(self, logits_fn, x, y):
        x_adv = ascend_in_box(self, lambda z: cross_entropy(logits_fn(z), y), x, self.eps,
                              self.step_size, self.steps, self.norm, start=self.random_start)
        return {"x_adv": x_adv}

    def forward_inputs(self, x, inner):
        """Keras's forward pass, compiled loss and metrics run on the adversarial batch."""
        return inner["x_adv"]

    def objective(self, x, y, y_pred, sample_weight, inner):
        # ``y_pred`` are the logits of the adversarial batch (`forward_inputs`).
        return {"loss": self.keras_loss(x, y, y_pred, sample_weight)}
