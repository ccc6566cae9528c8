"""Attacks, each written once in `keras.ops` and compiled per backend.

=====================  =====================================================================
`pgd`                  PGD with random start and restarts, CE or CW loss (Madry et al.)
`apgd`                 APGD-CE, APGD-DLR and targeted APGD-T (Croce & Hein, 2020)
`fab_t`                FAB-T, targeted minimal-norm FAB with a final refinement
`square`               Square Attack, score-based (Andriushchenko et al., 2020), L∞
`autoattack`           AutoAttack "standard": APGD-CE, APGD-T, FAB-T, Square, worst case
=====================  =====================================================================

Every attack takes a Keras model that outputs logits, inputs in [0, 1] and integer labels, and
returns NumPy arrays; every returned point lies in the eps ball and in [0, 1].
"""

from keras_dyart.attacks.apgd import apgd, apgd_checkpoints
from keras_dyart.attacks.autoattack import ATTACKS, STANDARD, autoattack, run_sequence
from keras_dyart.attacks.fab import fab_t
from keras_dyart.attacks.losses import ce_loss, cw_loss, dlr_loss, dlr_targeted_loss
from keras_dyart.attacks.pgd import pgd, project_ball
from keras_dyart.attacks.square import p_selection, square

__all__ = [
    "ATTACKS", "STANDARD", "apgd", "apgd_checkpoints", "autoattack", "ce_loss", "cw_loss",
    "dlr_loss", "dlr_targeted_loss", "fab_t", "p_selection", "pgd", "project_ball",
    "run_sequence", "square",
]
