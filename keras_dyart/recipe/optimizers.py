"""The recipe's optimizers: SGD with selective (decoupled or coupled) weight decay, and the
same with an exponential moving average (EMA) of the weights, plus `build_optimizer`.

Only public Keras extension points are used: the constructor arguments of
`keras.optimizers.SGD` (``weight_decay``, ``global_clipnorm``, ...) and
`~keras.optimizers.Optimizer.exclude_from_weight_decay` for the decoupled decay; ``build``
(optimizer variables made with ``add_variable_from_reference``) and ``apply`` for the
coupled decay and the weight average.  The averages are optimizer variables, so
``model.save``, ``save_weights`` and `AtomicBackupAndRestore` keep them, and JAX's stateless
training step (``stateless_apply``, which runs ``apply``) carries them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras
from keras import ops

from keras_dyart import _checks
from keras_dyart.recipe.schedules import SCHEDULES, ema_decay, learning_rate_schedule

#: How weight decay is applied: Keras's decoupled form or PyTorch SGD's coupled one.
WEIGHT_DECAY_MODES = ("decoupled", "coupled")

#: Variable names that get no weight decay: biases and normalisation scales and offsets.
NO_DECAY = ("bias", "gamma", "beta")

_CLIPS = ("clipnorm", "clipvalue", "global_clipnorm")
_EMA_KEYS = ("use_ema", "ema_momentum", "ema_overwrite_frequency")


class _Untracked:
    """A plain holder: Keras optimizers track every variable assigned to an attribute
    (and would list the model's weights among their own); what this holds is not."""

    def __init__(self, items):
        self.items = tuple(items)


@keras.saving.register_keras_serializable(package="keras_dyart")
class DecaySGD(keras.optimizers.SGD):
    """SGD (Nesterov by default) whose weight decay skips names and follows Keras or PyTorch.

    Weight decay is not applied to variables whose name matches one of ``no_decay``.  With
    ``weight_decay_mode="decoupled"`` (the default) it is Keras's form, ``w ← w − lr·wd·w``
    before the step.  With ``"coupled"`` it is PyTorch's ``SGD(weight_decay=wd)``: ``wd·w``
    is added to the (clipped) gradient, so momentum m amplifies it by about 1/(1 − m) and the
    clipping does not bound it, as in the reference code.

    In the coupled form this optimizer clips the gradients itself in ``apply`` (with Keras's
    formulas for ``clipnorm``, ``clipvalue`` and ``global_clipnorm``) before adding the decay
    term, and hands Keras unclipped-by-Keras gradients; ``gradient_accumulation_steps`` and
    ``loss_scale_factor`` (which Keras applies before clipping) are refused there.

    Args:
        learning_rate: a float or a schedule (`cosine_schedule`).
        momentum: as `keras.optimizers.SGD` (default 0.9).
        nesterov: as `keras.optimizers.SGD` (default True).
        weight_decay: weight decay (default 5e-4; 0 or None for none).
        no_decay: variable-name patterns (regular expressions searched in the variable's
            name) excluded from weight decay.
        weight_decay_mode: ``"decoupled"`` (Keras, default) or ``"coupled"`` (PyTorch).
        name: the optimizer's name.
        **kwargs: other `keras.optimizers.SGD` arguments (``global_clipnorm``, ...).
    """

    def __init__(self, learning_rate=0.1, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float | None = 5e-4, no_decay: Sequence[str] = NO_DECAY,
                 weight_decay_mode: str = "decoupled", name: str = "decay_sgd", **kwargs):
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(f"`weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}; got "
                             f"{weight_decay_mode!r}.")
        coupled = weight_decay_mode == "coupled"
        clip = {key: kwargs.get(key) for key in _CLIPS}
        if coupled:
            for key in ("gradient_accumulation_steps", "loss_scale_factor"):
                if kwargs.get(key):
                    raise ValueError(f"`{key}` is not supported with "
                                     "weight_decay_mode='coupled'.")
            if sum(value is not None for value in clip.values()) > 1:
                raise ValueError("Only one of `clipnorm`, `clipvalue` and `global_clipnorm` "
                                 f"can be set; got {clip}.")
            kwargs.update(dict.fromkeys(_CLIPS))
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         weight_decay=None if coupled else (weight_decay or None), name=name,
                         **kwargs)
        self.weight_decay_mode = weight_decay_mode
        self.no_decay = tuple(no_decay or ())
        #: The coupled decay rate (None in the decoupled form, where Keras's
        #: ``weight_decay`` holds it).
        self.coupled_weight_decay = (weight_decay or None) if coupled else None
        #: The clipping this optimizer applies itself (coupled form; else all None).
        self.coupled_clip = clip if coupled else dict.fromkeys(_CLIPS)
        self._no_decay_pattern = re.compile("|".join(self.no_decay)) if self.no_decay else None
        self._built_with = _Untracked(())
        if self.no_decay and not coupled:
            self.exclude_from_weight_decay(var_names=list(self.no_decay))

    def decays(self, variable) -> bool:
        """Whether ``variable`` gets weight decay (its name matches no ``no_decay``)."""
        return self._no_decay_pattern is None or \
            self._no_decay_pattern.search(variable.name) is None

    def build(self, variables):
        if self.built:
            return
        self._built_with = _Untracked(variables)
        super().build(variables)

    def _coupled(self, grads, variables):
        """Clip ``grads`` as Keras would, then add ``wd·w`` where the variable decays.

        Variables that Keras overwrites with their gradient are left out, as Keras does."""
        grads = list(grads)
        keep = [g is not None and not getattr(v, "overwrite_with_gradient", False)
                for g, v in zip(grads, variables)]
        picked = [g for g, k in zip(grads, keep) if k]
        clip = self.coupled_clip
        if not picked:
            return grads
        if clip["clipnorm"] and clip["clipnorm"] > 0:
            picked = [_clip_by_norm(g, clip["clipnorm"]) for g in picked]
        elif clip["global_clipnorm"] and clip["global_clipnorm"] > 0:
            picked = _clip_by_global_norm(picked, clip["global_clipnorm"])
        elif clip["clipvalue"] and clip["clipvalue"] > 0:
            value = clip["clipvalue"]
            picked = [ops.clip(g, -value, value) for g in picked]
        picked = iter(picked)
        out = []
        for g, v, k in zip(grads, variables, keep):
            if k:
                g = next(picked)
                if self.coupled_weight_decay and self.decays(v):
                    g = g + ops.cast(self.coupled_weight_decay, g.dtype) * v
            out.append(g)
        return out

    def apply(self, grads, trainable_variables=None):
        """Keras's ``apply``; in the coupled form the gradients are clipped and get the
        decay term first (Keras's own clipping is off there)."""
        if self.weight_decay_mode == "coupled" and len(grads):
            if trainable_variables is not None:
                trainable_variables = list(trainable_variables)
                if not self.built:
                    self.build(trainable_variables)
                variables = trainable_variables
            elif self.built:
                variables = list(self._built_with.items)
            else:
                variables = None        # Keras raises its own error below
            if variables is not None:
                grads = self._coupled(grads, variables)
        return super().apply(grads, trainable_variables)

    def get_config(self) -> dict:
        config = super().get_config()
        if self.weight_decay_mode == "coupled":
            config["weight_decay"] = self.coupled_weight_decay
            config.update(self.coupled_clip)
        config.update({"no_decay": list(self.no_decay),
                       "weight_decay_mode": self.weight_decay_mode})
        return config


def _clip_by_norm(g, clipnorm):
    # Keras's per-variable norm clip (`Optimizer(clipnorm=...)`), in keras.ops.
    l2sum = ops.sum(ops.square(g), None, keepdims=True)
    pred = l2sum > 0
    l2norm = ops.where(pred, ops.sqrt(ops.where(pred, l2sum, ops.ones_like(l2sum))), l2sum)
    return ops.convert_to_tensor(ops.multiply(g, clipnorm)) / ops.maximum(l2norm, clipnorm)


def _clip_by_global_norm(grads, clipnorm):
    # Keras's `Optimizer(global_clipnorm=...)`, in keras.ops: a non-finite norm gives NaN.
    norm = ops.sqrt(ops.sum(ops.stack([ops.sum(ops.square(g)) for g in grads])))
    scale = clipnorm * ops.minimum(1.0 / norm, 1.0 / clipnorm)
    scale = scale + (norm - norm)
    return [g * scale for g in grads]


@keras.saving.register_keras_serializable(package="keras_dyart")
class AveragingSGD(DecaySGD):
    """`DecaySGD` that also keeps an EMA of the weights.

    After each update the average moves as ``avg ← d·avg + (1 − d)·w`` with
    ``d = ema_decay(t, ema_tau, ema_warmup_steps)`` (`ema_decay`, t = 0 at the first
    update); it starts equal to the weights.  Non-trainable variables (BatchNorm statistics)
    are not averaged: use `averaged_model`, which takes them from the raw model, as the
    recipe does.  The model keeps its raw weights at the end of ``fit`` (Keras's own
    ``use_ema`` is not used).  Weight decay (``weight_decay``, ``weight_decay_mode``,
    ``no_decay``) is `DecaySGD`'s.

    Args:
        learning_rate: a float or a schedule (`cosine_schedule`).
        momentum: as `keras.optimizers.SGD` (default 0.9).
        nesterov: as `keras.optimizers.SGD` (default True).
        weight_decay: weight decay (default 5e-4).
        global_clipnorm: clip the global gradient norm (default 0.1; None for none).
        ema_tau: the EMA's τ (default 0.995).
        ema_warmup_steps: steps during which the average just copies the weights.
        no_decay: variable-name patterns excluded from weight decay.
        weight_decay_mode: ``"decoupled"`` (Keras, default) or ``"coupled"`` (PyTorch).
        name: the optimizer's name.
        **kwargs: other `keras.optimizers.SGD` arguments (Keras's ``use_ema`` and
            ``ema_*`` arguments are ignored).
    """

    def __init__(self, learning_rate=0.1, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float | None = 5e-4, global_clipnorm: float | None = 0.1,
                 ema_tau: float = 0.995, ema_warmup_steps: int = 0,
                 no_decay: Sequence[str] = NO_DECAY, weight_decay_mode: str = "decoupled",
                 name: str = "averaging_sgd", **kwargs):
        for key in _EMA_KEYS:
            kwargs.pop(key, None)
        ema_tau = _checks.in_range(ema_tau, "ema_tau", 0.0, 1.0)
        ema_warmup_steps = _checks.positive(ema_warmup_steps, "ema_warmup_steps",
                                            integer=True, allow_zero=True)
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, no_decay=no_decay,
                         weight_decay_mode=weight_decay_mode, global_clipnorm=global_clipnorm,
                         name=name, **kwargs)
        self.ema_tau, self.ema_warmup_steps = ema_tau, ema_warmup_steps
        self._averaged = _Untracked(())

    def build(self, variables):
        if self.built:
            return
        # The averages are made before SGD's momentums: the optimizer variables keep the
        # order of the earlier versions (which used Keras's EMA), so their files still load.
        variables = list(variables)
        averages = [None if getattr(v, "overwrite_with_gradient", False)
                    else self.add_variable_from_reference(v, "average") for v in variables]
        for var, average in zip(variables, averages):
            if average is not None:
                average.assign(ops.copy(var.value))     # a copy: JAX must not alias them
        self._averaged = _Untracked((v, a) for v, a in zip(variables, averages)
                                    if a is not None)
        super().build(variables)

    def apply(self, grads, trainable_variables=None):
        """Keras's ``apply`` (with `DecaySGD`'s decay), then the weight average's update."""
        if not len(grads):
            return super().apply(grads, trainable_variables)
        super().apply(grads, trainable_variables)
        # `iterations` already counts this update: the decay of update t uses t.
        decay = ema_decay(self.iterations - 1, self.ema_tau, self.ema_warmup_steps)
        for var, average in self._averaged.items:
            d = ops.cast(decay, var.dtype)
            average.assign(d * average + (1.0 - d) * var)

    def averages(self) -> dict:
        """``{id(variable): average}`` for the variables this optimizer was built with."""
        return {id(v): a for v, a in self._averaged.items}

    def get_config(self) -> dict:
        config = super().get_config()
        for key in _EMA_KEYS:
            config.pop(key, None)
        config.update({"ema_tau": self.ema_tau, "ema_warmup_steps": self.ema_warmup_steps})
        return config


def build_optimizer(total_steps: int, learning_rate: float = 0.1, momentum: float = 0.9,
                    nesterov: bool = True, weight_decay: float | None = 5e-4,
                    global_clipnorm: float | None = 0.1, lr_warmup: float = 0.025,
                    ema_tau: float = 0.995, ema_warmup: float = 0.025,
                    schedule: str = "cosine",
                    weight_decay_mode: str = "decoupled") -> AveragingSGD:
    """The recipe's optimizer for a run of ``total_steps`` optimizer steps.

    SGD with Nesterov momentum 0.9, peak learning rate 0.1 on a cosine schedule with linear
    warm-up from 0 (``lr_warmup`` share of the steps), decoupled weight decay 5e-4 except on
    biases and normalisation parameters, global gradient-norm clipping 0.1, and an EMA of
    the weights with τ = 0.995 after a warm-up of ``ema_warmup`` (2.5 %) of the steps.
    ``schedule="constant"`` keeps the learning rate fixed instead (no warm-up);
    ``schedule="step"`` divides it by 10 after half and after three quarters of the steps
    (the GroupNorm recipe); see `learning_rate_schedule`.  ``weight_decay_mode="coupled"``
    applies the decay as PyTorch's SGD does (see `DecaySGD`).  The CLI, the presets
    (`keras_dyart.presets.build_optimizer`) and Python users all build it here.

    Returns:
        An `AveragingSGD`.
    """
    total_steps = _checks.positive(total_steps, "total_steps", integer=True)
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}; got {schedule!r}.")
    ema_warmup = _checks.in_range(ema_warmup, "ema_warmup", 0.0, 1.0)
    lr = learning_rate_schedule(total_steps, learning_rate, schedule, lr_warmup)
    return AveragingSGD(
        lr, momentum=momentum,
        nesterov=nesterov, weight_decay=weight_decay, global_clipnorm=global_clipnorm,
        ema_tau=ema_tau, ema_warmup_steps=int(round(ema_warmup * total_steps)),
        weight_decay_mode=weight_decay_mode)
