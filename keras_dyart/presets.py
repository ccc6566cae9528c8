"""Presets: the published DyART recipes (Xu et al., ICLR 2023) as plain dicts.

Each preset holds everything a training run needs, with the names our API uses:

- ``dataset`` / ``dataset_kwargs``: for `keras_dyart.datasets.load`;
- ``model`` / ``model_kwargs``: for `keras_dyart.architectures.get`;
- ``method`` and ``dyart``: keyword arguments of `keras_dyart.DyARTModel`;
- ``burn_in_epochs``: clean training before DyART starts (the run is initialised from it);
- ``epochs``, ``batch_size``, ``optimizer``, ``schedule``, ``clipnorm``, ``ema``,
  ``augment``, ``extra_data``: the training loop;
- ``evaluation``: the attacks used during and after training;
- ``source``: where the settings come from.

Radii are floats in the [0, 1] pixel scale (``16 / 255``); `keras-dyart presets` prints
them as fractions of 255.

>>> get("cifar10-wrn28-10")["model"]
'wrn-28-10'
"""

import copy

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

PRESETS = {
    "cifar10-wrn28-10": {
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
        "optimizer": dict(_SGD), "schedule": dict(_COSINE), "clipnorm": 0.1,
        "ema": dict(_EMA), "augment": dict(_AUGMENT), "extra_data": None,
        "evaluation": copy.deepcopy(_EVALUATION),
        "source": "scripts/Cifar10_DyART.sh of the authors' code; method/dyart.md §5",
    },
    "cifar10-wrn28-10-gn": {
        "description": "CIFAR-10, WRN-28-10 (swish, GroupNorm): the GroupNorm recipe "
                       "(α 8, λ 400, step schedule over 100 epochs, no clipping).",
        "dataset": "cifar10", "dataset_kwargs": {},
        "model": "wrn-28-10",
        "model_kwargs": {"num_classes": 10, "input_shape": [32, 32, 3],
                         "activation": "swish", "norm": "group", "groups": 16},
        "method": "dyart",
        "dyart": {"norm": "linf", "r0": 16 / 255, "alpha": 8.0, "lam": 400.0, "beta": 5.0,
                  "n_iter": 20, "eps_fab": 8 / 255, "restarts": 1, "use_filter": True},
        "burn_in_epochs": 10,
        "epochs": 100, "batch_size": 256,
        "optimizer": dict(_SGD),
        "schedule": {"name": "step", "boundaries_fraction": [0.5, 0.75], "factor": 0.1},
        "clipnorm": None,
        "ema": dict(_EMA, copy_batchnorm_statistics=False), "augment": dict(_AUGMENT),
        "extra_data": None,
        "evaluation": copy.deepcopy(_EVALUATION),
        "source": "scripts/Cifar10_DyART.sh (GroupNorm block) of the authors' code",
    },
    "cifar10-wrn28-10-extra": {
        "description": "CIFAR-10, WRN-28-10 (swish, BatchNorm) with 1M DDPM-generated "
                       "images mixed into every batch at 0.7.",
        "dataset": "cifar10", "dataset_kwargs": {},
        "model": "wrn-28-10",
        "model_kwargs": {"num_classes": 10, "input_shape": [32, 32, 3],
                         "activation": "swish", "norm": "batch"},
        "method": "dyart",
        "dyart": {"norm": "linf", "r0": 16 / 255, "alpha": 3.0, "lam": 800.0, "beta": 5.0,
                  "n_iter": 20, "eps_fab": 8 / 255, "restarts": 1, "use_filter": True},
        "burn_in_epochs": 10,
        "epochs": 800, "batch_size": 512,
        "optimizer": dict(_SGD), "schedule": dict(_COSINE), "clipnorm": 0.1,
        "ema": dict(_EMA), "augment": dict(_AUGMENT),
        "extra_data": {"path": "cifar10_ddpm.npz", "x_key": "image", "y_key": "label",
                       "fraction": 0.7},
        "evaluation": copy.deepcopy(_EVALUATION),
        "source": "scripts/Cifar10_DyART_additional_data.sh of the authors' code",
    },
    "tinyimagenet-preact-resnet18": {
        "description": "Tiny-ImageNet-200 (64×64), PreAct ResNet-18 (BatchNorm), DyART L∞ "
                       "from a 20-epoch clean burn-in.",
        "dataset": "tinyimagenet",
        "dataset_kwargs": {"path": "tiny-imagenet-200", "dtype": "uint8"},
        "model": "preact-resnet18",
        "model_kwargs": {"num_classes": 200, "input_shape": [64, 64, 3], "norm": "batch"},
        "method": "dyart",
        "dyart": {"norm": "linf", "r0": 32 / 255, "alpha": 5.0, "lam": 500.0, "beta": 5.0,
                  "n_iter": 20, "eps_fab": 8 / 255, "restarts": 1, "use_filter": True},
        "burn_in_epochs": 20,
        "epochs": 100, "batch_size": 256,
        "optimizer": dict(_SGD), "schedule": dict(_COSINE), "clipnorm": 1.0,
        "ema": dict(_EMA), "augment": dict(_AUGMENT), "extra_data": None,
        "evaluation": copy.deepcopy(_EVALUATION),
        "source": "scripts/TinyImgNet_DyART.sh of the authors' code",
    },
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
