"""Learning-rate schedules and the EMA decay of the training recipe."""

from __future__ import annotations

import keras
from keras import ops

from keras_dyart import _checks

#: The learning-rate schedules of `learning_rate_schedule` (and `build_optimizer`).
SCHEDULES = ("cosine", "constant", "step")


def cosine_schedule(learning_rate: float, total_steps: int, warmup: float = 0.025,
                    alpha: float = 0.0) -> keras.optimizers.schedules.CosineDecay:
    """Cosine decay with a linear warm-up from 0, over ``total_steps`` optimizer steps.

    Args:
        learning_rate: peak learning rate, reached after the warm-up.
        total_steps: number of optimizer steps of the run (epochs × steps per epoch).
        warmup: share of the steps spent warming up (default 2.5 %; 0 for none).
        alpha: final learning rate as a fraction of the peak.

    Returns:
        A `keras.optimizers.schedules.CosineDecay`.

    >>> float(cosine_schedule(0.1, 100, warmup=0.1)(5))
    0.05...
    """
    learning_rate = _checks.positive(learning_rate, "learning_rate")
    total_steps = _checks.positive(total_steps, "total_steps", integer=True)
    warmup = _checks.in_range(warmup, "warmup", 0.0, 1.0)
    warmup_steps = min(int(round(warmup * total_steps)), total_steps - 1)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, total_steps, alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup_steps, alpha, warmup_target=learning_rate,
        warmup_steps=warmup_steps)


def learning_rate_schedule(total_steps: int, learning_rate: float = 0.1,
                           schedule: str = "cosine", warmup: float = 0.025):
    """The recipe's learning rate per optimizer step, for a run of ``total_steps`` steps.

    Args:
        total_steps: number of optimizer steps of the run.
        learning_rate: the peak (``"cosine"``) or initial learning rate.
        schedule: ``"cosine"`` (`cosine_schedule`: linear warm-up from 0 over ``warmup``
            of the steps, then cosine decay to 0), ``"constant"`` (no warm-up) or
            ``"step"`` (divided by 10 after half and after three quarters of the steps,
            the GroupNorm recipe).
        warmup: share of the steps spent warming up (``"cosine"`` only).

    Returns:
        A Keras learning-rate schedule, or the float ``learning_rate`` for ``"constant"``.
    """
    total_steps = _checks.positive(total_steps, "total_steps", integer=True)
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}; got {schedule!r}.")
    if schedule == "cosine":
        return cosine_schedule(learning_rate, total_steps, warmup)
    if schedule == "step":
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            [max(1, total_steps // 2), max(2, (3 * total_steps) // 4)],
            [learning_rate, learning_rate / 10, learning_rate / 100])
    return learning_rate


def ema_decay(step, tau: float = 0.995, warmup_steps: int = 0):
    """The recipe's EMA decay at optimizer step ``step`` (0 for the first update).

    0 (copy the weights) during the first ``warmup_steps`` steps, then
    ``min(tau, (1 + t) / (10 + t))`` with ``t = step − warmup_steps``.

    >>> tuple(round(float(d), 3) for d in ema_decay([0, 1, 2, 100], tau=0.9, warmup_steps=1))
    (0.0, 0.1, 0.182, 0.9)
    """
    step = ops.cast(step, "float32")
    t = ops.maximum(step - warmup_steps, 0.0)
    return ops.where(step < warmup_steps, 0.0, ops.minimum(tau, (1.0 + t) / (10.0 + t)))
