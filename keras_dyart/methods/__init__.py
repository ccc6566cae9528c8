"""Training methods behind one API: each is a `keras.Model` wrapping a logits classifier.

>>> import keras_dyart as kd
>>> from keras_dyart import methods
>>> model = methods.get("trades", kd.architectures.small_cnn(), beta=6.0, eps=0.3)
>>> sorted(methods.METHODS)
['clean', 'dyart', 'mart', 'mma', 'pgd-at', 'trades']

Every method model is used like any Keras model (``compile``, ``fit``, ``evaluate``,
``save``); `keras_dyart.methods.base` has the shared pattern and the train step.
"""

from keras_dyart.methods.base import RobustModel
from keras_dyart.methods.clean import CleanModel
from keras_dyart.methods.dyart import DyARTModel
from keras_dyart.methods.mart import MARTModel, mart_loss, mart_terms
from keras_dyart.methods.mma import MMAModel, mma_loss, mma_terms
from keras_dyart.methods.pgd_at import PGDATModel
from keras_dyart.methods.terms import kl_divergence
from keras_dyart.methods.trades import TRADESModel, trades_loss

METHODS = {
    "clean": CleanModel,
    "pgd-at": PGDATModel,
    "trades": TRADESModel,
    "mart": MARTModel,
    "mma": MMAModel,
    "dyart": DyARTModel,
}


def get(method: str, classifier, **kwargs) -> RobustModel:
    """Wrap ``classifier`` in the model of a training method.

    Args:
        method: one of ``"clean"``, ``"pgd-at"``, ``"trades"``, ``"mart"``, ``"mma"``,
            ``"dyart"``.
        classifier: a Keras model that outputs logits.
        **kwargs: the method's hyper-parameters (see its class).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {sorted(METHODS)}; got {method!r}.")
    return METHODS[method](classifier, **kwargs)


__all__ = ["METHODS", "CleanModel", "DyARTModel", "MARTModel", "MMAModel", "PGDATModel",
           "RobustModel", "TRADESModel", "get", "kl_divergence", "mart_loss", "mart_terms",
           "mma_loss", "mma_terms", "trades_loss"]
