"""Input validation shared by the public API.

Every public entry point checks its arguments here so that bad input fails early with a
message that names the argument, what was expected and what was given, instead of a crash
deep inside a backend.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

NORMS = ("linf", "l2")
DATA_FORMATS = ("channels_last", "channels_first")


def norm_name(norm: str, arg: str = "norm") -> str:
    """Return the canonical norm name (``"linf"`` or ``"l2"``)."""
    aliases = {"linf": "linf", "l_inf": "linf", "inf": "linf", "Linf": "linf",
               "l2": "l2", "L2": "l2", "2": "l2"}
    key = str(norm)
    if key not in aliases and key.lower() not in aliases:
        raise ValueError(f"`{arg}` must be one of {NORMS}; got {norm!r}.")
    return aliases.get(key, aliases.get(key.lower()))


def data_format(value: str | None, arg: str = "data_format") -> str:
    """The image layout: ``"channels_last"`` or ``"channels_first"``; ``None``:
    ``keras.config.image_data_format()``."""
    if value is None:
        import keras

        value = keras.config.image_data_format()
    if not isinstance(value, str) or value.lower() not in DATA_FORMATS:
        raise ValueError(
            f"`{arg}` must be one of {DATA_FORMATS} (or None for "
            f"keras.config.image_data_format()); got {value!r}.")
    return value.lower()


def parse_eps(value: float | str, arg: str = "eps") -> float:
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


def _levels_hint(length: float, width: float) -> str:
    """The /255 form of a length beyond a unit-width box (pixel levels), else ''."""
    if width <= 1.0 + 1e-6 and length >= 1:
        return f" For {length:g} levels of 255 give {length:g}/255 (= {length / 255:.4g})."
    return ""


def eps_in_box(eps: float, norm: str, box: tuple, arg: str = "eps") -> float:
    """Refuse an L∞ radius ``eps`` beyond the width of the input box ``box = (lower,
    upper)``.

    No two inputs of the box are farther apart than its width under L∞, so such a ball
    holds the whole box, the same as the width: it is almost always a radius given in pixel
    levels (``8`` for ``8/255``).  The width itself is allowed (the end of a sweep).  Caps
    such as DyART's ``r0`` or MMA's ``d_max`` only warn (`cap_in_box`): beyond the width
    they cap nothing.  Returns ``eps``.
    """
    lo, hi = (float(b) for b in box)
    width = hi - lo
    if norm_name(norm) == "linf" and eps > width * (1 + 1e-6):
        hint = _levels_hint(eps, width)
        raise ValueError(
            f"`{arg}` is {eps:g} but the inputs live in [{lo:g}, {hi:g}]: under L∞ no two "
            f"inputs of that box are more than its width ({width:g}) apart, so a length "
            f"beyond it means the same as the width (every input within reach). Lengths "
            f"are in the inputs' units.{hint}")
    return eps


def cap_in_box(cap: float, norm: str, box: tuple, arg: str) -> float:
    """Warn about an L∞ cap (DyART's ``r0`` and ``eps_fab``, MMA's ``d_max``, the
    dynamics' ``r0``) beyond the width of the input box: no margin in the box exceeds the
    width, so such a cap caps nothing, and it is most often pixel levels (``16`` for
    ``16/255``).  Not refused: "no cap" is a legitimate wish, which the width itself
    expresses without the warning.  Returns ``cap``."""
    lo, hi = (float(b) for b in box)
    width = hi - lo
    if norm_name(norm) == "linf" and cap > width * (1 + 1e-6):
        hint = _levels_hint(cap, width)
        warnings.warn(
            f"`{arg}` is {cap:g} but the inputs live in [{lo:g}, {hi:g}]: under L∞ no margin "
            f"in that box exceeds its width ({width:g}), so `{arg}` caps nothing. Lengths "
            f"are in the inputs' units.{hint} (Give {width:g}, the width, for no cap without "
            f"this warning.)", UserWarning, stacklevel=3)
    return cap


def positive(value: float, arg: str, integer: bool = False,
             allow_zero: bool = False) -> int | float:
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


def in_range(value: float, arg: str, low: float, high: float) -> float:
    """Check a scalar in the closed interval [low, high]."""
    value = positive(value, arg, allow_zero=True) if low >= 0 else float(value)
    if not low <= value <= high:
        raise ValueError(f"`{arg}` must be in [{low}, {high}]; got {value!r}.")
    return value


def labels(y: Any, n: int, num_classes: int | None = None, arg: str = "y") -> np.ndarray:
    """Check integer class labels of length ``n`` in [0, num_classes)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2 and y.shape[1] > 1:
        raise ValueError(
            f"`{arg}` must hold integer class indices of shape (N,); got shape {y.shape}, "
            f"which looks like one-hot labels: pass np.argmax({arg}, axis=-1) instead.")
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


def logits_shape(shape: Sequence[int | None], n: int, arg: str = "model") -> int:
    """Check that a model output has shape (N, K) with K >= 2."""
    shape = tuple(shape)
    if len(shape) != 2 or shape[0] != n or shape[1] is None or shape[1] < 2:
        raise ValueError(
            f"`{arg}` must output logits of shape (N, K) with K >= 2 classes; for "
            f"{n} inputs it returned shape {shape}.")
    return int(shape[1])


def bounds(value: tuple[float, float], arg: str = "bounds") -> tuple[float, float]:
    """Check input bounds ``(lower, upper)``: two finite numbers with lower < upper."""
    try:
        lo, hi = value
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{arg}` must be a pair (lower, upper) of numbers, such as (0, 1) or (0, 255); "
            f"got {value!r}.") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo >= hi:
        raise ValueError(
            f"`{arg}` must be two finite numbers with lower < upper; got {value!r}.")
    return (lo, hi)


def _bounds_text(lo, hi):
    return f"[{lo:g}, {hi:g}]"


def input_values(x: np.ndarray, arg: str = "x",
                 box: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Check the values of a batch of inputs against the model's input bounds ``box``.

    ``x`` is a NumPy array (a batch or a whole data set).  Integer pixels, NaN/inf and values
    outside ``box`` fail with a message that names ``arg`` and says what to do.
    """
    lo, hi = box
    if x.ndim < 2:
        raise ValueError(
            f"`{arg}` must be a batch of inputs with shape (N, ...); got shape {x.shape}.")
    if x.shape[0] == 0:
        raise ValueError(f"`{arg}` is empty (shape {x.shape}); expected at least one input.")
    if not np.issubdtype(x.dtype, np.floating):
        hint = ("Divide 0-255 pixels by 255 first" if (lo, hi) == (0.0, 1.0) else
                "Cast them to float32 first")
        raise ValueError(
            f"`{arg}` must hold floats in {_bounds_text(lo, hi)} (the model's input bounds); "
            f"got dtype {x.dtype}. {hint}, or declare the model's bounds, e.g. "
            f"bounds=(0, 255) for a model that rescales 0-255 pixels itself.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{arg}` contains NaN or inf values.")
    xmin, xmax = float(x.min()), float(x.max())
    # Compare in the inputs' own precision: a float32 batch cannot hold a decimal end such as
    # 0.2 exactly, and its nearest float32 is the end as the model and attacks see it (they
    # clip in float32 too).  A value beyond that rounded end is still refused.
    lo_x, hi_x = (float(np.asarray(b, dtype=x.dtype)) for b in (lo, hi))
    if xmin < lo_x or xmax > hi_x:
        hint = (" (0-255 pixels? divide them by 255, or declare bounds=(0, 255))"
                if (lo, hi) == (0.0, 1.0) and xmax > 1.0 else "")
        raise ValueError(
            f"`{arg}` must lie in the model's input bounds {_bounds_text(lo, hi)}; got values "
            f"in [{xmin:.4g}, {xmax:.4g}]{hint}.")
    if np.isfinite(hi - lo) and hi - lo >= 100 and xmax - lo <= (hi - lo) / 100:
        warnings.warn(
            f"`{arg}` holds values in [{xmin:.4g}, {xmax:.4g}], within 1% of the model's input "
            f"bounds {_bounds_text(lo, hi)}: pixels already divided by 255 for a model that "
            f"takes 0-255 pixels? Every length (eps, r0, margins) is in the bounds' units, so "
            f"on such inputs they are about 255 times too large. Pass the 0-255 pixels, or "
            f"declare bounds=(0, 1).", UserWarning, stacklevel=3)
    return x


def images(x: Any, arg: str = "x", box: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Check a batch of inputs: float, finite, non-empty, values within ``box``
    (default [0, 1]).  Returns float32."""
    if isinstance(x, dict):
        single_input(x, arg)
    x = input_values(np.asarray(x), arg, box)
    return x.astype("float32", copy=False)


def logits_output(out: Any, n: int, arg: str = "classifier") -> int:
    """Check one batch of a classifier's output: a single tensor of logits ``(N, K)``,
    K >= 2, not probabilities.  Returns K."""
    if isinstance(out, (dict, list, tuple)):
        raise ValueError(
            f"`{arg}` must return one tensor of logits (N, K); it returned a "
            f"{type(out).__name__} of {len(out)} outputs. Wrap it so that it returns only "
            f"the class logits.")
    out = np.asarray(out, dtype="float64")
    k = logits_shape(out.shape, n, arg)
    if n and np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(
            f"`{arg}` returns probabilities (every row is non-negative and sums to 1): it "
            f"must return logits. Remove the final softmax (e.g. Dense(K) instead of "
            f"Dense(K, activation='softmax')); margins of probabilities are not the "
            f"margins that the method and the attacks assume.")
    return k


def probability_head(model: Any, arg: str = "classifier") -> None:
    """Refuse a model whose last layer is a softmax or a sigmoid (a `Softmax` layer, or an
    activation of that name): it outputs probabilities, whose margins are not those of the
    logits that the methods and the attacks assume (a sigmoid's outputs need not sum to 1,
    so `logits_output` cannot see them)."""
    layers = getattr(model, "layers", None)
    last = layers[-1] if layers else model
    name = getattr(getattr(last, "activation", None), "__name__", "")
    if type(last).__name__ == "Softmax" or name in ("softmax", "sigmoid"):
        raise ValueError(
            f"`{arg}` ends in a {name or 'softmax'} ({last.name!r}): it must output "
            "logits. Remove the final activation (e.g. Dense(K) instead of Dense(K, "
            "activation='softmax')); margins and attacks on probabilities are not those the "
            "methods assume. Apply the softmax at prediction time if you need probabilities.")


_PROBABILITY_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy",
                       "binary_crossentropy", "sparsecategoricalcrossentropy",
                       "categoricalcrossentropy", "binarycrossentropy")

# Cross-entropies on one-hot labels (names with the underscores removed, lower case).
_ONE_HOT_LOSSES = ("categoricalcrossentropy", "categoricalfocalcrossentropy")


def logits_loss(loss: Any, arg: str = "loss") -> Any:
    """Refuse a cross-entropy that expects probabilities (``from_logits=False``) or one-hot
    labels (a categorical cross-entropy): the robust models' classifiers output logits and
    they train on integer class labels."""
    name, from_logits = None, None
    if isinstance(loss, str):
        name, from_logits = loss, False
    elif isinstance(loss, type):
        name = loss.__name__
    elif hasattr(loss, "get_config"):
        try:
            config = loss.get_config()
        except Exception:  # noqa: BLE001 - a custom loss without a usable config
            config = {}
        name = type(loss).__name__
        from_logits = config.get("from_logits")
    elif callable(loss):
        name = getattr(loss, "__name__", "")
        if name.lower() in _PROBABILITY_LOSSES:
            from_logits = False
    key = str(name).lower().replace("_", "")
    if key in _ONE_HOT_LOSSES:
        on = " on probabilities (from_logits=False)" if from_logits is False else ""
        raise ValueError(
            f"`{arg}` ({name}) is a categorical cross-entropy{on}, which takes one-hot "
            f"labels, but the robust models train on integer class labels (the attacks and "
            f"the boundary search need the label's index) and their classifiers output "
            f"logits. Leave `loss` unset (cross-entropy on logits) or pass "
            f"keras.losses.SparseCategoricalCrossentropy(from_logits=True), with integer "
            f"labels (np.argmax(y, axis=-1) of one-hot ones).")
    if from_logits is False and key in {n.replace("_", "") for n in _PROBABILITY_LOSSES}:
        raise ValueError(
            f"`{arg}`={loss!r} computes cross-entropy on probabilities (from_logits=False), "
            f"but the classifier outputs logits. Leave `loss` unset (cross-entropy on "
            f"logits) or pass keras.losses.SparseCategoricalCrossentropy(from_logits=True).")
    return loss


def one_input(model: Any, arg: str = "model", dict_too: bool = False) -> None:
    """Refuse a model that declares several inputs (or, with ``dict_too``, one input in a
    dict): the boundary search and the attacks move one input tensor."""
    try:
        inputs, structure = model.inputs, model.input
    except (AttributeError, ValueError):
        return
    as_dict = dict_too and isinstance(structure, dict)
    if as_dict or (inputs is not None and len(inputs) > 1):
        names = (list(structure) if isinstance(structure, dict)
                 else [getattr(t, "name", "?") for t in inputs])
        raise ValueError(
            f"`{arg}` must take one input tensor (the images); it takes "
            f"{'a dict of inputs' if as_dict else f'{len(inputs)} inputs'} {names}. "
            "The boundary search and the attacks move one input: build the model on "
            "keras.Input(shape) directly (e.g. keras.Model(inp, out), not "
            "keras.Model({'name': inp}, out) or keras.Model([inp1, inp2], out)).")


def continuous_inputs(model: Any, arg: str = "classifier") -> None:
    """Refuse a model whose declared input dtype is an integer or bool type, or that has an
    Embedding layer (declared input or not): token ids or indices cannot be moved by the
    small steps of an attack or a boundary search."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    for tensor in inputs or ():
        dtype = str(getattr(tensor, "dtype", "") or "")
        if dtype == "bool" or dtype.startswith(("int", "uint")):
            raise ValueError(
                f"`{arg}` takes inputs of dtype {dtype} (token ids or indices, e.g. for an "
                f"Embedding): the methods need continuous inputs, since the attacks and the "
                f"boundary search move them by small steps in the input box. Give the "
                f"classifier a float input (keras.Input(shape, dtype='float32')) that "
                f"takes continuous values.")
    for layer in model_layers(model):
        if type(layer).__name__ == "Embedding":
            raise ValueError(
                f"`{arg}` has an Embedding layer ({layer.name!r}), which takes token ids: "
                f"the methods need continuous inputs, since the attacks and the boundary "
                f"search move them by small steps in the input box (an Embedding casts them "
                f"to integers, so no step moves its output). Give the classifier inputs "
                f"that take continuous values.")


def input_shape(model: Any, x_shape: tuple, model_arg: str = "model",
                x_arg: str = "x") -> None:
    """Refuse inputs whose row shape does not fit the one the model declares (a
    ``keras.Input`` shape; None entries fit anything), by name, before the model is called
    (Keras's own error prints the whole batch).  A model without a declared input shape
    is not checked; a method model is checked by its classifier's."""
    from keras_dyart.methods.base import RobustModel  # here: methods import this module

    if isinstance(model, RobustModel):
        model = model.classifier
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return
    if not inputs or len(inputs) != 1:
        return
    want = tuple(inputs[0].shape)[1:]
    got = tuple(int(d) for d in x_shape[1:])
    # Keras adds or drops a trailing axis of size 1 ((N, 28, 28) for Input((28, 28, 1))).
    a, b = want, got
    if len(b) == len(a) + 1 and b[-1] == 1:
        b = b[:-1]
    elif len(b) == len(a) - 1 and a[-1] == 1:
        a = a[:-1]
    if len(a) == len(b) and all(w is None or w == g for w, g in zip(a, b)):
        return
    shown = "(" + ", ".join("None" if w is None else str(w) for w in want) + \
        ("," if len(want) == 1 else "") + ")"
    hint = ""
    if len(want) == 3 and len(got) == 3 and None not in want:
        if got == (want[2], want[0], want[1]):
            hint = (f" These look like channels-first images for a channels-last model: "
                    f"pass {x_arg}.transpose(0, 2, 3, 1).")
        elif got == (want[1], want[2], want[0]):
            hint = (f" These look like channels-last images for a channels-first model: "
                    f"pass {x_arg}.transpose(0, 3, 1, 2).")
    elif None not in want and int(np.prod(want)) == int(np.prod(got)):
        hint = (f" Reshape them: {x_arg}.reshape(-1, {', '.join(map(str, want))}) has the "
                f"same values.")
    raise ValueError(
        f"`{x_arg}` has rows of shape {got} but `{model_arg}` takes inputs of shape "
        f"{shown}.{hint}")


def model_layers(model: Any, depth: int = 0):
    """The layers of ``model``, nested models' included (built or not)."""
    if depth > 8:
        return
    for layer in getattr(model, "layers", None) or ():
        yield layer
        if getattr(layer, "layers", None):
            yield from model_layers(layer, depth + 1)


def single_input(x: Any, arg: str = "x") -> None:
    """Refuse inputs given as a dict, list or tuple: the classifiers take one input tensor,
    the one the attacks and the boundary search move."""
    if isinstance(x, dict):
        keys = sorted(map(str, x))
        first = repr(keys[0]) if keys else "'...'"
        raise ValueError(
            f"`{arg}` is a dict of inputs (keys {keys}), but the classifier must take one "
            f"input tensor (the one the attacks and the boundary search move). Pass the "
            f"array itself, e.g. {arg}[{first}], not a dict (a pipeline yields (inputs, "
            f"labels) with the inputs an array).")
    if isinstance(x, (list, tuple)):
        raise ValueError(
            f"`{arg}` is a {type(x).__name__} of {len(x)} inputs, but the classifier must "
            f"take one input tensor (the one the attacks and the boundary search move). "
            f"Pass the array itself (a pipeline yields (inputs, labels) with the inputs an "
            f"array).")
