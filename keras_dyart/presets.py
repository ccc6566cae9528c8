"""Presets: the published DyART recipes (Xu et al., ICLR 2023) as plain dicts.

Each preset holds everything a training run needs, with the names our API uses:

- ``dataset`` / ``dataset_kwargs``: for `keras_dyart.datasets.load`;
- ``model`` / ``model_kwargs``: for `keras_dyart.architectures.get`;
- ``method`` and ``dyart``: keyword arguments of `keras_dyart.DyARTModel`;
- ``burn_in_epochs``: clean training before DyART starts (the run is initialised from it);
- ``epochs``, ``batch_size``, ``optimizer``, ``schedule``, ``global_clipnorm`` (clip of the
  global gradient norm), ``ema``: the arguments of `keras_dyart.recipe.build_optimizer`
  (`optimizer_kwargs` maps them), the one recipe that `keras-dyart train` also runs;
- ``augment``, ``extra_data``: the input pipeline (`pipeline_kwargs`);
- ``evaluation``: the PGD radius, step and steps during training (`averaged_checkpoint`)
  and the radius of the final evaluation;
- ``description``, ``source``: what the preset is and where its settings come from.

Every setting is read by `build_model`, `optimizer_kwargs`, `pipeline_kwargs`,
`averaged_checkpoint` or `keras-dyart train --preset`.

Radii are floats in the [0, 1] pixel scale (``16 / 255``); `keras-dyart presets` prints
them as fractions of 255.

>>> get("cifar10-wrn28-10")["model"]
'wrn-28-10'
"""

from __future__ import annotations

import copy

# PGD on the averaged model during training (steps, CW loss); the PGD-AT baselines of
# `keras-dyart train --preset` train with this radius and step.
_EVALUATION = {
    "during_training": {"steps": 40, "loss": "cw", "eps": "8/255", "step_size": "2/255"},
    "final": {"eps": "8/255"},
}

# SGD of the recipe: no weight decay on biases and normalisation weights
# (`keras_dyart.recipe.NO_DECAY`); the decay is PyTorch's (coupled), as in the reference
# code and in `keras-dyart train`.
_SGD = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True,
        "weight_decay": 5e-4, "weight_decay_mode": "coupled"}

# 'cosinew' of the reference code: cosine decay after a linear warm-up (from 0) over 2.5 %
# of the steps.
_COSINE = {"name": "cosine", "warmup_fraction": 0.025}

# The weight average: decay min(tau, (1 + t) / (10 + t)) after a warm-up that copies the
# weights (`keras_dyart.recipe.ema_decay`); BatchNorm statistics are the raw model's.
_EMA = {"tau": 0.995, "warmup_fraction": 0.025}

_AUGMENT = {"random_crop_pad": 4, "horizontal_flip": True}

def _variant(base, **changes):
    """A deep copy of ``base`` with ``changes``; a dict value given as ``{"+": {...}}``
    updates the base's dict instead of replacing it."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and set(value) == {"+"}:
            out[key] = dict(out[key], **value["+"])
        else:
            out[key] = value
    return out


_CIFAR10 = {
    "description": "CIFAR-10, WRN-28-10 (swish, BatchNorm), DyART L∞ from a 10-epoch "
                   "clean burn-in; the paper's main setting.",
    "dataset": "cifar10", "dataset_kwargs": {},
    "model": "wrn-28-10",
    "model_kwargs": {"num_classes": 10, "input_shape": [32, 32, 3],
                     "activation": "swish", "norm": "batch"},
    "method": "dyart",
    "dyart": {"norm": "linf", "r0": 16 / 255, "alpha": 3.0, "lam": 1000.0, "beta": 5.0,
              "n_iter": 20, "eps_fab": 8 / 255, "restarts": 1, "use_filter": True},
    "burn_in_epochs": 10,
    "epochs": 200, "batch_size": 256,
    "optimizer": dict(_SGD), "schedule": dict(_COSINE), "global_clipnorm": 0.1,
    "ema": dict(_EMA), "augment": dict(_AUGMENT), "extra_data": None,
    "evaluation": copy.deepcopy(_EVALUATION),
    "source": "scripts/Cifar10_DyART.sh of the authors' code; method/dyart.md §5",
}

PRESETS = {
    "cifar10-wrn28-10": _CIFAR10,
    "cifar10-wrn28-10-gn": _variant(
        _CIFAR10,
        description="CIFAR-10, WRN-28-10 (swish, GroupNorm): the GroupNorm recipe "
                    "(α 8, λ 400, step schedule over 100 epochs, no clipping).",
        model_kwargs={"+": {"norm": "group", "groups": 16}},
        dyart={"+": {"alpha": 8.0, "lam": 400.0}},
        epochs=100,
        schedule={"name": "step"},
        global_clipnorm=None,
        source="scripts/Cifar10_DyART.sh (GroupNorm block) of the authors' code"),
    "cifar10-wrn28-10-extra": _variant(
        _CIFAR10,
        description="CIFAR-10, WRN-28-10 (swish, BatchNorm) with 1M DDPM-generated images "
                    "mixed into every batch at 0.7.",
        dyart={"+": {"lam": 800.0}},
        epochs=800, batch_size=512,
        extra_data={"path": "cifar10_ddpm.npz", "x_key": "image", "y_key": "label",
                    "fraction": 0.7},
        source="scripts/Cifar10_DyART_additional_data.sh of the authors' code"),
    "tinyimagenet-preact-resnet18": _variant(
        _CIFAR10,
        description="Tiny-ImageNet-200 (64×64), PreAct ResNet-18 (BatchNorm), DyART L∞ "
                    "from a 20-epoch clean burn-in.",
        dataset="tinyimagenet",
        dataset_kwargs={"path": "tiny-imagenet-200", "dtype": "uint8"},
        model="preact-resnet18",
        model_kwargs={"num_classes": 200, "input_shape": [64, 64, 3], "norm": "batch"},
        dyart={"+": {"r0": 32 / 255, "alpha": 5.0, "lam": 500.0}},
        burn_in_epochs=20, epochs=100, global_clipnorm=1.0,
        source="scripts/TinyImgNet_DyART.sh of the authors' code"),
}


def names() -> list[str]:
    """The preset names, sorted."""
    return sorted(PRESETS)


def get(name: str) -> dict:
    """A deep copy of preset ``name`` (edit it freely)."""
    if name not in PRESETS:
        raise ValueError(f"`preset` must be one of {names()}; got {name!r}.")
    return copy.deepcopy(PRESETS[name])


def flatten(preset: dict, prefix: str = "") -> dict:
    """``{"dyart.lam": 1000.0, ...}``: a preset as dotted keys, for tables and overrides."""
    out = {}
    for key, value in preset.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _preset(preset):
    return get(preset) if isinstance(preset, str) else copy.deepcopy(preset)


def build_model(preset, model: str | None = None, model_kwargs: dict | None = None,
                dyart: dict | None = None):
    """The preset's classifier wrapped in a `DyARTModel`, not compiled.

    Args:
        preset: a preset name or dict.
        model: another architecture name (e.g. ``"wide-resnet"`` for a small stand-in).
        model_kwargs: overrides of ``preset["model_kwargs"]``.
        dyart: overrides of ``preset["dyart"]``.
    """
    from keras_dyart import architectures
    from keras_dyart.methods import DyARTModel

    p = _preset(preset)
    kwargs = dict(p["model_kwargs"], **(model_kwargs or {}))
    if "input_shape" in kwargs:
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
    classifier = architectures.get(model or p["model"], **kwargs)
    return DyARTModel(classifier, **dict(p["dyart"], **(dyart or {})))


def _total_steps(p, steps_per_epoch, epochs):
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) \
            or steps_per_epoch < 1:
        raise ValueError(f"`steps_per_epoch` must be an integer >= 1; got {steps_per_epoch!r}.")
    return steps_per_epoch * (p["epochs"] if epochs is None else int(epochs))


def optimizer_kwargs(preset) -> dict:
    """The preset's arguments of `keras_dyart.recipe.build_optimizer` (all but the step
    count): what `keras-dyart train --preset` sets too.

    >>> optimizer_kwargs("cifar10-wrn28-10-gn")["schedule"]
    'step'
    """
    p = _preset(preset)
    o, schedule, ema = p["optimizer"], p["schedule"], p["ema"] or {}
    if o["name"] != "sgd":
        raise ValueError(f"unknown optimizer {o['name']!r} in the preset.")
    return {"learning_rate": float(o["learning_rate"]), "momentum": o["momentum"],
            "nesterov": o["nesterov"], "weight_decay": o["weight_decay"],
            "weight_decay_mode": o.get("weight_decay_mode", "decoupled"),
            "global_clipnorm": p["global_clipnorm"] or None, "schedule": schedule["name"],
            "lr_warmup": schedule.get("warmup_fraction", 0.0),
            "ema_tau": ema.get("tau", 0.0), "ema_warmup": ema.get("warmup_fraction", 0.0)}


def learning_rate_schedule(preset, steps_per_epoch: int, epochs: int | None = None):
    """The preset's learning rate per optimizer step (the recipe's
    `keras_dyart.recipe.learning_rate_schedule`).

    ``cosine``: linear warm-up from 0 to lr over ``warmup_fraction`` of the steps, then
    cosine decay to 0.  ``step``: lr, ×0.1 and ×0.01 after half and three quarters of the
    steps.
    """
    from keras_dyart import recipe

    p = _preset(preset)
    total = _total_steps(p, steps_per_epoch, epochs)
    kwargs = optimizer_kwargs(p)
    return recipe.learning_rate_schedule(total, kwargs["learning_rate"], kwargs["schedule"],
                                         kwargs["lr_warmup"])


def build_optimizer(preset, steps_per_epoch: int, epochs: int | None = None):
    """The recipe's optimizer (`keras_dyart.recipe.build_optimizer`) with the preset's
    settings: the same optimizer as ``keras-dyart train --preset``.

    SGD with the preset's momentum, Nesterov, weight decay (coupled as PyTorch's, none on
    biases and normalisation weights), schedule, global gradient-norm clip and weight average
    (`keras_dyart.recipe.AveragingSGD`, with the average's warm-up).  The model keeps its
    raw weights; evaluate or save the averaged ones with `keras_dyart.recipe.averaged_model`
    (BatchNorm statistics from the raw model, as in the recipe).

    Args:
        preset: a preset name or dict.
        steps_per_epoch: optimizer steps per epoch (``len(train)``).
        epochs: epochs of the run (default the preset's).
    """
    from keras_dyart import recipe

    p = _preset(preset)
    return recipe.build_optimizer(_total_steps(p, steps_per_epoch, epochs),
                                  **optimizer_kwargs(p))


def averaged_checkpoint(preset, x, y, filepath: str, **kwargs):
    """`keras_dyart.recipe.AveragedCheckpoint` with the preset's PGD during training
    (radius, steps, loss); ``kwargs`` override them or add others (``every``, ...)."""
    from keras_dyart import recipe

    during = _preset(preset)["evaluation"]["during_training"]
    settings = {"eps": during["eps"], "steps": during["steps"], "loss": during["loss"]}
    return recipe.AveragedCheckpoint(x, y, filepath, **dict(settings, **kwargs))


def pipeline_kwargs(preset) -> dict:
    """Keyword arguments of `keras_dyart.datasets.pipeline` for the preset (batch size and
    augmentation; load ``extra_data`` yourself with `datasets.load_npz`)."""
    p = _preset(preset)
    augment = p["augment"]
    if augment and not augment.get("horizontal_flip", True):
        raise ValueError("the preset's augmentation has no horizontal flip; "
                         "`datasets.pipeline` always flips when it augments.")
    out = {"batch_size": p["batch_size"], "augment": bool(augment),
           "pad": augment["random_crop_pad"] if augment else 0}
    if p["extra_data"]:
        out["extra_fraction"] = p["extra_data"]["fraction"]
    return out
