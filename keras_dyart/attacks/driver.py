"""The one attack driver: the host-side (NumPy) work that every attack shares.

An attack module holds only its maths (a per-batch loop written in `keras.ops` and compiled
per backend) and a short public function that uses this module for the rest:

- `check`: the arguments every attack validates (inputs, labels, norm, eps, counts);
- `with_bounds` and `UnitBox`: models whose inputs live in other bounds are attacked in the
  unit box [0, 1] (one change of variables, used by every attack and by `run_sequence`);
- `rng`: NumPy random draws (the same seed gives the same noise on every backend; the norms'
  random starts are `keras_dyart.geometry.Norm.numpy_unit_direction` and friends);
- `compiled`: compiled per-batch functions, cached per model and key;
- `Loop` and `compiled_loop`: an attack's iterations as one compiled loop or as compiled
  calls from the host, whichever the backend runs faster;
- `sweep` and `call`: the runs (restarts, targets, query chunks) over the points still to
  attack, in chunks (padded to a few bucketed sizes where the backend compiles each batch
  size anew), with one progress signature, ``progress(done, total)``;
- `guard`: every returned point inside the eps ball and the box *exactly*, checked in
  float64 (float32 arithmetic can overshoot a radius by an ulp).
"""

from __future__ import annotations

import functools
import inspect
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_dyart import _checks, geometry
from keras_dyart import backend as dyart_backend
from keras_dyart.geometry import TINY

Progress = Callable[[int, int], None]

_COMPILED = weakref.WeakKeyDictionary()


# --- arguments -----------------------------------------------------------------------------

def check(x, y, norm: str = "linf", eps=None, **counts) -> tuple:
    """Validate an attack's shared arguments.

    Returns ``(x, y, norm, eps, *counts)``: float32 inputs in [0, 1], int32 labels, the
    `keras_dyart.geometry.Norm`, ``eps`` as a float (``None`` stays ``None``) and each keyword
    in ``counts`` as a positive integer (an error names the keyword).
    """
    norm = geometry.get(norm)
    eps = None if eps is None else _checks.parse_eps(eps)
    x = _checks.images(x)
    y = _checks.labels(y, len(x))
    ints = [_checks.positive(v, k, integer=True) for k, v in counts.items()]
    return (x, y, norm, eps, *ints)


def rng(seed) -> np.random.RandomState:
    """The NumPy generator of an attack's random draws (``seed``: an integer in
    [0, 2**32), or None for fresh entropy)."""
    if seed is not None and (isinstance(seed, bool)
                             or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed < 2**32):
        raise ValueError(f"`seed` must be an integer in [0, 2**32) or None; got {seed!r}.")
    return np.random.RandomState(seed)


def row_shape(ndim: int) -> tuple:
    """The shape ``(-1, 1, ...)`` that broadcasts one value per row against rank ``ndim``."""
    return (-1,) + (1,) * (ndim - 1)


# --- the model -----------------------------------------------------------------------------

def compiled(model, key, fn: Callable, jit: bool) -> Callable:
    """``compile_model_fn(model, fn, jit)``, cached per model and ``key``.

    Evaluating several epsilons or attacks on one model then traces each attack once.  The
    compiled callables read the model's current weights at every call, and see float32
    logits whatever the dtype policy (a ``mixed_float16`` network keeps its own compute).
    """
    try:
        per_model = _COMPILED.setdefault(model, {})
    except TypeError:                       # a model that cannot be weakly referenced
        return dyart_backend.compile_model_fn(model, fn, jit)
    full_key = (key, bool(jit))
    if full_key not in per_model:
        per_model[full_key] = dyart_backend.compile_model_fn(model, _float32_logits(fn), jit)
    return per_model[full_key]


class Loop(NamedTuple):
    """An attack's per-batch iteration in three parts, so that the backend can run the
    iterations either as one compiled loop or as compiled calls from the host
    (`compiled_loop`).

    - ``setup(logits_fn, *args) -> (consts, carry)``: the constants of the loop (tensors)
      and its first carry;
    - ``body(logits_fn, consts, i, carry) -> carry``: iteration ``i`` (an int32 tensor);
    - ``finish(logits_fn, consts, carry) -> dict``: the results.
    """
    setup: Callable
    body: Callable
    finish: Callable


def run_loop(loop: Loop, n_iter: int, logits_fn: Callable, *args) -> dict:
    """``loop`` with its ``n_iter`` iterations in one function (`keras_dyart.backend.fori_loop`)."""
    consts, carry = loop.setup(logits_fn, *args)
    carry = dyart_backend.fori_loop(
        0, n_iter, lambda i, c: loop.body(logits_fn, consts, i, c), carry)
    return loop.finish(logits_fn, consts, carry)


def compiled_loop(model, key, loop: Loop, n_iter: int, jit) -> Callable:
    """Like `compiled` for ``functools.partial(run_loop, loop, n_iter)``.

    Where the backend runs compiled loop bodies slowly and longer loops cannot be written
    out (`keras_dyart.backend.host_loops`: JAX on CPU, where XLA runs the convolutions of a
    ``while`` body about 1.4x slower than the same convolutions called from the host), the
    setup, one iteration and the finish are compiled separately and the host calls the
    iteration ``n_iter`` times: the same arithmetic, one small compilation.
    """
    if not (jit and dyart_backend.host_loops()):
        return compiled(model, key, functools.partial(run_loop, loop, n_iter), jit)
    setup, body, finish = (compiled(model, (key, part), fn, jit)
                           for part, fn in zip(("setup", "body", "finish"), loop))

    def run(*args):
        consts, carry = setup(*args)
        for i in range(n_iter):
            carry = body(consts, np.int32(i), carry)
        return finish(consts, carry)

    return run


def _float32_logits(fn):
    def run(logits_fn, *args):
        return fn(lambda z: ops.cast(logits_fn(z), "float32"), *args)

    run.__name__ = getattr(fn, "__name__", "attack")
    return run


def predict_labels(model, x, batch_size: int) -> np.ndarray:
    """Arg-max labels of ``model`` on ``x`` (NumPy), in inference mode."""
    out = []
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size], training=False)
        out.append(np.argmax(ops.convert_to_numpy(logits), axis=-1))
    return np.concatenate(out).astype("int32") if out else np.zeros(0, "int32")


#: Rows of ``x`` that `num_classes` runs the model on.
PROBE_ROWS = 16


def num_classes(model, x, y=None) -> int:
    """The number of classes ``K`` of a logits model, checked on its outputs for the first
    `PROBE_ROWS` rows of ``x``: one tensor ``(N, K)``, K >= 2, logits rather than
    probabilities (rows that are non-negative and sum to 1 are refused: margins and losses
    of probabilities are not the ones the attacks assume), inputs of a float dtype (an
    integer-input model has no input gradient: every attack would fail and report the
    clean accuracy as robust); with ``y``, also that every label is in [0, K)."""
    inner = model.model if isinstance(model, UnitBoxModel) else model
    _checks.one_input(inner, "model")
    _checks.continuous_inputs(inner, "model")
    _checks.probability_head(inner, "model")
    _checks.input_shape(inner, np.shape(x))
    n = max(1, min(len(x), PROBE_ROWS))
    out = model(x[:n], training=False)
    if not isinstance(out, (dict, list, tuple)):
        out = ops.convert_to_numpy(out)
    k = _checks.logits_output(out, len(x[:n]), "model")
    if y is not None:
        _checks.labels(y, len(y), num_classes=k)
    return k


# --- bounds --------------------------------------------------------------------------------

#: Layers that move, crop, resize or perturb pixels without changing their scale: a
#: `Rescaling` after them (Keras's tutorials put augmentation first) still rescales the
#: model's inputs.
_SCALE_KEEPING = ("InputLayer", "Sequential", "Functional", "RandomFlip", "RandomRotation",
                  "RandomZoom", "RandomTranslation", "RandomCrop", "RandomContrast",
                  "RandomBrightness", "Resizing", "CenterCrop", "ZeroPadding2D", "Cropping2D",
                  "GaussianNoise", "Dropout", "Identity")


def pixel_scale(model, box) -> float | None:
    """The factor of a `Rescaling` layer that ``model`` begins with (its largest entry;
    augmentation, cropping or resizing layers before it count as the beginning) where it is
    1/255 of ``box``'s width or less, i.e. the model takes 0-255 pixels but is given ``box``
    (of about unit width): it then sees its inputs 255 times too dark; else None."""
    first = next((layer for layer in _checks.model_layers(model)
                  if type(layer).__name__ not in _SCALE_KEEPING), None)
    if type(first).__name__ != "Rescaling":
        return None
    scale = float(np.max(np.abs(np.asarray(first.scale, "float64"))))
    lo, hi = box
    return scale if 0 < scale and scale * (hi - lo) <= 0.1 else None


def warn_if_pixel_model(model, box, arg: str = "bounds") -> None:
    """Warn where `pixel_scale` finds ``model`` takes 0-255 pixels but is attacked in
    ``box``."""
    scale = pixel_scale(model, box)
    if scale is not None:
        lo, hi = box
        warnings.warn(
            f"The model begins with Rescaling(scale={scale:.4g}), so it takes inputs in "
            f"about [0, {1 / scale:.4g}], but `{arg}` is [{lo:g}, {hi:g}]: it would see "
            f"the inputs {1 / (scale * (hi - lo)):.0f} times too dark. Pass the 0-255 "
            f"pixels with {arg}=(0, {1 / scale:.4g}) (eps in those units).",
            UserWarning, stacklevel=3)


def model_bounds(model, bounds=None, arg: str = "bounds") -> tuple:
    """The input box of an attack: ``bounds`` if given, else the model's own ``bounds``
    (a robust model's), else (0, 1)."""
    if bounds is None:
        bounds = getattr(model, "bounds", (0.0, 1.0))
    return _checks.bounds(bounds, arg)


class UnitBoxModel(keras.Model):
    """``model`` seen from the unit box: ``call(u) = model(lower + (upper − lower)·u)``.

    It holds no variables of its own (the model's are its variables).
    """

    def __init__(self, model, bounds, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.lower, self.upper = (float(b) for b in bounds)
        if getattr(model, "built", False):
            self.built = True

    def call(self, u, training=False):
        scale = self.upper - self.lower
        return self.model(self.lower + scale * u, training=training)


class UnitBox:
    """The change of variables ``u = (x − lower) / (upper − lower)`` of a model's input box.

    The attacks are written for inputs in [0, 1]; a model whose inputs live in ``box`` is
    attacked as `model` (a `UnitBoxModel`) on `inputs` with every length divided by the
    scale (`length`); `outputs` brings the points back in input units, guarded in the eps
    ball and the box.
    """

    def __init__(self, model, box):
        self.box = tuple(float(b) for b in box)
        self.lower, upper = self.box
        self.scale = upper - self.lower
        self.model = UnitBoxModel(model, self.box)

    def inputs(self, x: np.ndarray) -> np.ndarray:
        """``x`` (checked to lie in the box, in its own precision) in the unit box.  The clip
        only absorbs rounding: a float32 end such as float32(0.2) maps to 1 + 1e-7."""
        return np.clip((x - self.lower) / self.scale, 0.0, 1.0)

    def length(self, value):
        """A length (eps, a distance) in unit-box units."""
        return value / self.scale

    def outputs(self, u, x, eps, norm) -> np.ndarray:
        """Points ``u`` of the unit box back in input units, exactly in the ball and box."""
        return guard(self.lower + self.scale * np.asarray(u, "float64"), x, eps, norm,
                     self.box)


def with_bounds(returns: str = "success"):
    """Let an attack written for inputs in [0, 1] take ``bounds=(lower, upper)``.

    The decorated attack ``attack(model, x, y, ...)`` gains a keyword ``bounds`` (default:
    the model's own ``bounds``, else (0, 1)); other bounds run it through a `UnitBox`
    (``eps`` and ``stop_at`` divided by the scale).  ``returns``: what the attack's second
    output is, ``"success"`` (re-checked on the returned points) or ``"distance"`` (scaled
    back to input units).
    """
    def decorate(attack):
        signature = inspect.signature(attack)

        @functools.wraps(attack)
        def run(model, x, y, *args, bounds=None, **kwargs):
            box = model_bounds(model, bounds)
            bound = signature.bind(model, x, y, *args, **kwargs)
            a = bound.arguments
            norm = geometry.get(a.get("norm", signature.parameters["norm"].default))
            eps = a.get("eps")
            if eps is not None:
                eps = _checks.eps_in_box(_checks.parse_eps(eps), norm.name, box)
            if box == (0.0, 1.0):
                return attack(model, x, y, *args, **kwargs)
            unit = UnitBox(model, box)
            x = _checks.images(x, box=box)
            if eps is not None:
                a["eps"] = unit.length(eps)
            if a.get("stop_at") is not None:
                a["stop_at"] = unit.length(np.asarray(a["stop_at"], "float64"))
            a["model"], a["x"] = unit.model, unit.inputs(x)
            u_adv, second = attack(*bound.args, **bound.kwargs)
            x_adv = unit.outputs(u_adv, x, np.inf if eps is None else eps, norm)
            if returns == "distance":
                return x_adv, second * unit.scale
            batch = a.get("batch_size", signature.parameters["batch_size"].default)
            return x_adv, predict_labels(model, x_adv, batch) != np.asarray(y)

        run.__signature__ = signature.replace(parameters=[
            *signature.parameters.values(),
            inspect.Parameter("bounds", inspect.Parameter.KEYWORD_ONLY, default=None)])
        return run

    return decorate


# --- runs over chunks ----------------------------------------------------------------------

def bucket(n: int, batch_size: int) -> int:
    """Padded size of a chunk of ``n`` rows (``n <= batch_size``).

    Where the backend compiles each batch size anew (`keras_dyart.backend.pads_batches`:
    JAX, TensorFlow with XLA), the next of 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, ...
    (four sizes per doubling: at most 25 % added rows, against up to 100 % with powers of
    two), capped at ``batch_size``, so each compiled function sees a few shapes; elsewhere
    ``n`` itself (padding would only add rows to compute).
    """
    if not dyart_backend.pads_batches():
        return min(n, batch_size)
    if n >= batch_size:
        return batch_size
    octave = 32
    while 2 * octave < n:
        octave *= 2
    size = next(octave * k // 4 for k in (4, 5, 6, 7, 8) if octave * k // 4 >= n)
    return min(size, batch_size)


def chunks(index: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    """Split an index array into chunks of at most ``batch_size``."""
    for start in range(0, len(index), batch_size):
        yield index[start:start + batch_size]


def pad(arrays: Sequence, size: int) -> list:
    """Pad each array along axis 0 to ``size`` rows by repeating its first row."""
    out = []
    for a in arrays:
        a = np.asarray(a)
        if len(a) < size:
            a = np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)], axis=0)
        out.append(a)
    return out


def call(run: Callable, size: int, rows: Sequence, shared: Sequence = ()):
    """``run(*rows padded to size, *shared)`` with its outputs (a tensor, tuple or dict of
    them) as NumPy arrays cut back to the real rows."""
    n = len(rows[0])
    out = run(*pad(rows, size), *shared)
    if isinstance(out, dict):
        return {k: ops.convert_to_numpy(v)[:n] for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return tuple(ops.convert_to_numpy(v)[:n] for v in out)
    return ops.convert_to_numpy(out)[:n]


def sweep(runs: Sequence, todo: Callable[[], np.ndarray], attack: Callable, *,
          batch_size: int, progress: Progress | None = None, prepare: Callable | None = None,
          units: Sequence[int] | None = None) -> None:
    """The runs of an attack (restarts, targets, query chunks), each on the points still to
    attack.

    For each ``run`` in ``runs``: ``index = todo()`` (stop when empty: the sets only shrink);
    ``shared = prepare(run)`` (host draws shared by the chunks; default ``run`` itself); then
    ``attack(shared, idx, size)`` for each chunk ``idx`` of ``index`` with its padded
    ``size``; then ``progress(done, total)``, counting runs (or ``units`` per run).
    """
    units = [1] * len(runs) if units is None else list(units)
    total, done = int(sum(units)), 0
    for run, unit in zip(runs, units):
        index = todo()
        if not len(index):
            break
        shared = run if prepare is None else prepare(run)
        for idx in chunks(index, batch_size):
            attack(shared, idx, bucket(len(idx), batch_size))
        done += unit
        if progress is not None:
            progress(done, total)
    if progress is not None and done < total:
        progress(total, total)


# --- exact results -------------------------------------------------------------------------

def distance(a, b, norm) -> np.ndarray:
    """Per-row L∞ or L2 distance of two batches, in float64."""
    d = (np.asarray(a, "float64") - np.asarray(b, "float64")).reshape(len(a), -1)
    return _NUMPY_SIZE[geometry.get(norm).name](d)


_NUMPY_SIZE = {"linf": lambda d: np.abs(d).max(axis=1) if d.size else np.zeros(len(d)),
               "l2": lambda d: np.sqrt((d * d).sum(axis=1))}


def _guard_linf(out, x64, e, box):
    lo = np.maximum(x64 - e, box[0])
    hi = np.minimum(x64 + e, box[1])
    out = np.clip(out.astype("float64"), lo, hi).astype("float32")
    for _ in range(4):
        o64 = out.astype("float64")
        up, down = o64 > hi, o64 < lo
        if not (up.any() or down.any()):
            break
        out = np.where(up, np.nextafter(out, np.float32(-np.inf)), out)
        out = np.where(down, np.nextafter(out, np.float32(np.inf)), out)
    return out


def _guard_l2(out, x64, e, box):
    n = len(x64)
    e_row = e.reshape(-1)
    for k in range(12):
        d = out.astype("float64") - x64
        r = np.sqrt((d.reshape(n, -1) ** 2).sum(axis=1))
        bad = r > e_row
        if not bad.any():
            return out
        # Shrink a little more each round: rounding to float32 can undo a tiny shrink.
        scale = np.where(bad, e_row / np.maximum(r, TINY) * (1 - 1e-7 * 4.0 ** k), 1.0)
        scaled = (x64 + d * scale.reshape(e.shape)).astype("float32")
        out = np.clip(scaled, box[0], box[1]).astype("float32")
    bad = np.sqrt(((out.astype("float64") - x64).reshape(n, -1) ** 2).sum(axis=1)) > e_row
    out[bad] = x64[bad].astype("float32")
    return out


_GUARDS = {"linf": _guard_linf, "l2": _guard_l2}


def guard(x_adv, x, eps, norm, box=(0.0, 1.0)) -> np.ndarray:
    """Return float32 points inside the ``eps`` ball around ``x`` and inside ``box``
    (default [0, 1]), exactly.

    Computations in float32 can overshoot the radius by an ulp; this pulls such points in,
    checking in float64.  ``eps`` is a scalar or one value per row (``inf``: box only).
    """
    box = tuple(float(b) for b in box)
    x = np.asarray(x, "float32")
    if not len(x):
        return np.asarray(x_adv, "float32").reshape(x.shape)
    e = np.broadcast_to(np.asarray(eps, "float64"), (len(x),)).reshape(row_shape(x.ndim))
    out = np.clip(np.asarray(x_adv, "float32"), box[0], box[1]).astype("float32")
    return _GUARDS[geometry.get(norm).name](out, x.astype("float64"), e, box)
