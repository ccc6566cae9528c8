"""Presets: the published DyART recipes (Xu et al., ICLR 2023) as plain dicts.

Each preset holds everything a training run needs, with the names our API uses:

- ``dataset`` / ``dataset_kwargs``: for `keras_dyart.datasets.load`;
- ``model`` / ``model_kwargs``: for `keras_dyart.architectures.get`;
- ``method`` and ``dyart``: keyword arguments of `keras_dyart.DyARTModel`;
- ``burn_in_epochs``: clean training before DyART starts (the run is initialised from it);
- ``epochs``, ``batch_size``, ``optimizer``, ``schedule``, ``global_clipnorm`` (clip of the
  global gradient norm), ``ema``, ``augment``, ``extra_data``: the training loop;
- ``evaluation``: the attacks used during and after training;
- ``source``: where the settings come from.

Radii are floats in the [0, 1] pixel scale (``16 / 255``); `keras-dyart presets` prints
them as fractions of 255.

>>> get("cifar10-wrn28-10")["model"]
'wrn-28-10'
"""

import copy

import keras

_EVALUATION = {
    "during_training": {"attack": "pgd", "steps": 40, "loss": "cw", "eps": "8/255",
                        "step_size": "2/255", "on": "ema"},
    "final": {"attack": "autoattack", "version": "standard", "eps": "8/255"},
}

_SGD = {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True,
        "weight_decay": 5e-4, "no_weight_decay_on": ["normalization"]}

# 'cosinew' of the reference code: one-cycle cosine, linear warm-up over 2.5 % of epochs.
_COSINE = {"name": "cosine", "warmup": "linear", "warmup_fraction": 0.025}

_EMA = {"tau": 0.995, "decay": "min(tau, (1 + t) / (10 + t))", "warmup_fraction": 0.025,
        "copy_batchnorm_statistics": True}

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
        schedule={"name": "step", "boundaries_fraction": [0.5, 0.75], "factor": 0.1},
        global_clipnorm=None,
        ema={"+": {"copy_batchnorm_statistics": False}},
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


def names():
    """The preset names, sorted."""
    return sorted(PRESETS)


def get(name):
    """A deep copy of preset ``name`` (edit it freely)."""
    if name not in PRESETS:
        raise ValueError(f"`preset` must be one of {names()}; got {name!r}.")
    return copy.deepcopy(PRESETS[name])


def flatten(preset, prefix=""):
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


def build_model(preset, model=None, model_kwargs=None, dyart=None):
    """The preset's classifier wrapped in a `DyARTModel`, not compiled.

    Args:
        preset: a preset name or dict.
        model: another architecture name (e.g. ``"wide-resnet"`` for a small stand-in).
        model_kwargs: overrides of ``preset["model_kwargs"]``.
        dyart: overrides of ``preset["dyart"]``.
    """
    from keras_dyart import architectures
    from keras_dyart.models import DyARTModel

    p = _preset(preset)
    kwargs = dict(p["model_kwargs"], **(model_kwargs or {}))
    if "input_shape" in kwargs:
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
    classifier = architectures.get(model or p["model"], **kwargs)
    return DyARTModel(classifier, **dict(p["dyart"], **(dyart or {})))


def learning_rate_schedule(preset, steps_per_epoch, epochs=None):
    """The preset's learning-rate schedule per optimizer step.

    ``cosine``: linear warm-up from lr/25 to lr over ``warmup_fraction`` of the steps, then
    cosine decay to 0 (the reference's ``OneCycleLR(pct_start=0.025)``, per step instead of
    per epoch).  ``step``: lr, ×0.1 and ×0.01 after the given fractions of the steps.
    """
    p = _preset(preset)
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) \
            or steps_per_epoch < 1:
        raise ValueError(f"`steps_per_epoch` must be an integer >= 1; got {steps_per_epoch!r}.")
    total = steps_per_epoch * (p["epochs"] if epochs is None else int(epochs))
    lr = float(p["optimizer"]["learning_rate"])
    schedule = p["schedule"]
    if schedule["name"] == "cosine":
        warmup = max(1, round(schedule.get("warmup_fraction", 0.0) * total))
        return keras.optimizers.schedules.CosineDecay(
            lr / 25, decay_steps=max(1, total - warmup), warmup_target=lr, warmup_steps=warmup)
    if schedule["name"] == "step":
        boundaries = [max(1, int(f * total)) for f in schedule["boundaries_fraction"]]
        values = [lr * schedule["factor"] ** i for i in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    raise ValueError(f"unknown schedule {schedule['name']!r} in the preset.")


def build_optimizer(preset, steps_per_epoch, epochs=None):
    """SGD with the preset's momentum, Nesterov, weight decay (none on normalisation
    weights), schedule, global gradient-norm clip and weight EMA.

    Keras's EMA (``use_ema``) averages trainable weights with a fixed momentum τ from the
    first step: no ``min(τ, (1+t)/(10+t))`` warm-up; BatchNorm statistics stay those of
    the raw model, as in the recipe.  Evaluate the averaged weights with
    `keras.callbacks.SwapEMAWeights`.
    """
    p = _preset(preset)
    o = p["optimizer"]
    if o["name"] != "sgd":
        raise ValueError(f"unknown optimizer {o['name']!r} in the preset.")
    ema = p.get("ema") or {}
    optimizer = keras.optimizers.SGD(
        learning_rate=learning_rate_schedule(p, steps_per_epoch, epochs),
        momentum=o["momentum"], nesterov=o["nesterov"], weight_decay=o["weight_decay"],
        global_clipnorm=p["global_clipnorm"], use_ema=bool(ema),
        ema_momentum=ema.get("tau", 0.99))
    if o.get("no_weight_decay_on"):
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta"])
    return optimizer


def pipeline_kwargs(preset):
    """Keyword arguments of `keras_dyart.datasets.pipeline` for the preset (batch size and
    augmentation; load ``extra_data`` yourself with `datasets.load_npz`)."""
    p = _preset(preset)
    out = {"batch_size": p["batch_size"], "augment": bool(p["augment"]),
           "pad": p["augment"]["random_crop_pad"] if p["augment"] else 0}
    if p["extra_data"]:
        out["extra_fraction"] = p["extra_data"]["fraction"]
    return out
