"""Input validation shared by the public API.

Every public entry point checks its arguments here so that bad input fails early with a
message that names the argument, what was expected and what was given, instead of a crash
deep inside a backend.
"""

from fractions import Fraction

import numpy as np

NORMS = ("linf", "l2")


def norm_name(norm, arg="norm"):
    """Return the canonical norm name (``"linf"`` or ``"l2"``)."""
    aliases = {"linf": "linf", "l_inf": "linf", "inf": "linf", "Linf": "linf",
               "l2": "l2", "L2": "l2", "2": "l2"}
    key = str(norm)
    if key not in aliases and key.lower() not in aliases:
        raise ValueError(f"`{arg}` must be one of {NORMS}; got {norm!r}.")
    return aliases.get(key, aliases.get(key.lower()))


def parse_eps(value, arg="eps"):
    """Parse a perturbation size: a positive float or a fraction as text ("8/255")."""
    given = value
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f"`{arg}` must be a positive number or a fraction such as '8/255'; "
                f"got {given!r}."
            ) from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{arg}` must be a positive number; got {given!r}.") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{arg}` must be a positive finite number; got {given!r}.")
    return value


def positive(value, arg, integer=False, allow_zero=False):
    """Check a positive (or non-negative) scalar hyper-parameter."""
    kind = "integer" if integer else "number"
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(
        value, (int, float, np.integer, np.floating))
    if isinstance(value, bool) or not ok_type or not np.isfinite(value):
        raise ValueError(f"`{arg}` must be a finite {kind}; got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{arg}` must be {bound}; got {value!r}.")
    return int(value) if integer else float(value)


def in_range(value, arg, low, high):
    """Check a scalar in the closed interval [low, high]."""
    value = positive(value, arg, allow_zero=True) if low >= 0 else float(value)
    if not low <= value <= high:
        raise ValueError(f"`{arg}` must be in [{low}, {high}]; got {value!r}.")
    return value


def images(x, arg="x"):
    """Check a batch of inputs: float, finite, non-empty, values in [0, 1]."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"`{arg}` must be a batch of inputs with shape (N, ...); got shape {x.shape}.")
    if x.shape[0] == 0:
        raise ValueError(f"`{arg}` is empty (shape {x.shape}); expected at least one input.")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"`{arg}` must hold floats in [0, 1]; got dtype {x.dtype}. "
            "Divide 0-255 pixels by 255 first.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{arg}` contains NaN or inf values.")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"`{arg}` must lie in [0, 1]; got values in [{lo:.4g}, {hi:.4g}].")
    return x.astype("float32", copy=False)


def labels(y, n, num_classes=None, arg="y"):
    """Check integer class labels of length ``n`` in [0, num_classes)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"`{arg}` must be a 1-D array of class indices; got shape {y.shape}.")
    if y.shape[0] != n:
        raise ValueError(f"`{arg}` has {y.shape[0]} labels but the inputs have {n} rows.")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"`{arg}` must hold integer class indices; got non-integer values.")
    elif y.dtype.kind not in "iu":
        raise ValueError(f"`{arg}` must hold integer class indices; got dtype {y.dtype}.")
    y = y.astype("int32")
    if n and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        raise ValueError(
            f"`{arg}` must be in [0, {num_classes}); got values in [{y.min()}, {y.max()}].")
    return y


def logits_shape(shape, n, arg="model"):
    """Check that a model output has shape (N, K) with K >= 2."""
    shape = tuple(shape)
    if len(shape) != 2 or shape[0] != n or shape[1] is None or shape[1] < 2:
        raise ValueError(
            f"`{arg}` must output logits of shape (N, K) with K >= 2 classes; for "
            f"{n} inputs it returned shape {shape}.")
    return int(shape[1])
