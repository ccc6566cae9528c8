"""Attacks, each written once in `keras.ops` and compiled per backend.

=====================  =====================================================================
`pgd`                  PGD with random start and restarts, CE or CW loss (Madry et al.)
`apgd`                 APGD-CE, APGD-DLR and targeted APGD-T (Croce & Hein, 2020)
`fab_t`                FAB-T, targeted minimal-norm FAB with a final refinement
`square`               Square Attack, score-based (Andriushchenko et al., 2020), L∞ and L2
`autoattack`           AutoAttack "standard": APGD-CE, APGD-T, FAB-T, Square, worst case
=====================  =====================================================================

Every attack takes a Keras model that outputs logits, inputs in [0, 1] (or its ``bounds``)
and integer labels, and returns NumPy arrays; every returned point lies in the eps ball and
in the box.  Each module holds the attack's maths; the shared host-side work (checks, bounds,
random draws, chunks, restarts, the exact-ball guard, progress) is `driver`'s.  Attacks are
registered by name (`register`, `get`, `ATTACKS`), which `run_sequence` and `evaluate` use.
"""

from keras_dyart.attacks.apgd import apgd, apgd_checkpoints
from keras_dyart.attacks.autoattack import NAMES, STANDARD, autoattack, run_sequence
from keras_dyart.attacks.fab import fab_t
from keras_dyart.attacks.losses import ce_loss, cw_loss, cw_margin, dlr_loss, dlr_targeted_loss
from keras_dyart.attacks.pgd import pgd
from keras_dyart.attacks.registry import ATTACKS, Attack, get, register
from keras_dyart.attacks.square import p_selection, square

__all__ = [
    "ATTACKS", "Attack", "NAMES", "STANDARD", "apgd", "apgd_checkpoints", "autoattack",
    "ce_loss", "cw_loss", "cw_margin", "dlr_loss", "dlr_targeted_loss", "fab_t", "get",
    "p_selection", "pgd", "register", "run_sequence", "square",
]
