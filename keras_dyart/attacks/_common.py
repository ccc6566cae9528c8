"""Pieces shared by the attacks: the NumPy driver loop, random starts, exact ball guard.

The math of every attack lives in its own module, written once in `keras.ops`.  This module
only holds host-side (NumPy) helpers: splitting the data into batches of a few fixed sizes
(so compiled functions are traced a few times at most), random draws made with NumPy (so the
same seed gives the same noise on every backend), and a final guard that puts every returned
point inside the eps ball and the box [0, 1] *exactly* in float64 arithmetic.
"""

import functools
import inspect
import weakref

import keras
import numpy as np
from keras import ops

from keras_dyart import _checks
from keras_dyart import backend as dyart_backend

TINY = 1e-12

_COMPILED = weakref.WeakKeyDictionary()


def compiled(model, key, fn, jit):
    """``compile_model_fn(model, fn, jit)``, cached per model and ``key``.

    Evaluating several epsilons or attacks on one model then traces each attack once.
    The compiled callables read the model's current weights at every call.
    """
    try:
        per_model = _COMPILED.setdefault(model, {})
    except TypeError:                       # a model that cannot be weakly referenced
        return dyart_backend.compile_model_fn(model, fn, jit)
    full_key = (key, bool(jit))
    if full_key not in per_model:
        per_model[full_key] = dyart_backend.compile_model_fn(model, _float32_logits(fn), jit)
    return per_model[full_key]


def _float32_logits(fn):
    """``fn`` seeing float32 logits: the attacks run in float32 whatever the dtype policy
    (a ``mixed_float16`` network keeps its own compute in 16 bits)."""
    def run(logits_fn, *args):
        return fn(lambda z: ops.cast(logits_fn(z), "float32"), *args)

    run.__name__ = getattr(fn, "__name__", "attack")
    return run


def model_bounds(model, bounds=None, arg="bounds"):
    """The input box of an attack: ``bounds`` if given, else the model's own ``bounds``
    (a robust model's), else (0, 1)."""
    if bounds is None:
        bounds = getattr(model, "bounds", (0.0, 1.0))
    return _checks.bounds(bounds, arg)


def with_bounds(returns="success"):
    """Let an attack written for inputs in [0, 1] take ``bounds=(lower, upper)``.

    The decorated attack ``attack(model, x, y, ...)`` gains a keyword ``bounds`` (default:
    the model's own ``bounds``, else (0, 1)).  Other bounds run the attack on the unit box
    (`UnitBoxModel`, ``eps`` and ``stop_at`` divided by ``upper − lower``); the points come
    back in input units, guarded in the eps ball and the box.  ``returns``: what the attack's
    second output is, ``"success"`` (re-checked on the returned points) or ``"distance"``
    (scaled back to input units).
    """
    def decorate(attack):
        signature = inspect.signature(attack)

        @functools.wraps(attack)
        def run(model, x, y, *args, bounds=None, **kwargs):
            box = model_bounds(model, bounds)
            if box == (0.0, 1.0):
                return attack(model, x, y, *args, **kwargs)
            lo, hi = box
            scale = hi - lo
            x = _checks.images(x, box=box)
            bound = signature.bind(model, x, y, *args, **kwargs)
            a = bound.arguments
            norm = _checks.norm_name(a.get("norm", signature.parameters["norm"].default))
            eps = a.get("eps")
            eps = None if eps is None else _checks.parse_eps(eps)
            if eps is not None:
                a["eps"] = eps / scale
            if a.get("stop_at") is not None:
                a["stop_at"] = np.asarray(a["stop_at"], "float64") / scale
            a["model"], a["x"] = UnitBoxModel(model, box), (x - lo) / scale
            u_adv, second = attack(*bound.args, **bound.kwargs)
            x_adv = guard(lo + scale * np.asarray(u_adv, "float64"), x,
                          np.inf if eps is None else eps, norm, box)
            if returns == "distance":
                return x_adv, second * scale
            batch = a.get("batch_size", signature.parameters["batch_size"].default)
            return x_adv, predict_labels(model, x_adv, batch) != np.asarray(y)

        run.__signature__ = signature.replace(parameters=[
            *signature.parameters.values(),
            inspect.Parameter("bounds", inspect.Parameter.KEYWORD_ONLY, default=None)])
        return run

    return decorate


class UnitBoxModel(keras.Model):
    """``model`` seen from the unit box: ``call(u) = model(lower + (upper − lower)·u)``.

    The attacks are written for inputs in [0, 1]; a model whose inputs live in other bounds
    is attacked through this view, with eps divided by ``upper − lower``.  It holds no
    variables of its own (the model's are its variables).
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


def rows(v, ndim):
    """Reshape a per-row tensor ``(B,)`` to broadcast against a batch of rank ``ndim``."""
    return ops.reshape(v, (-1,) + (1,) * (ndim - 1))


def flat(x):
    return ops.reshape(x, (ops.shape(x)[0], -1))


def norm_rows(v, norm):
    """Per-row L∞ or L2 norm of a batch."""
    v = flat(v)
    if norm == "linf":
        return ops.max(ops.abs(v), axis=-1)
    return ops.sqrt(ops.sum(v * v, axis=-1))


def project_l2_ball(z, x, eps_rows):
    """Rows of ``z`` pulled into the L2 ball of radius ``eps`` around ``x`` and the box."""
    d = z - x
    n = rows(norm_rows(d, "l2"), len(z.shape))
    return ops.clip(x + d / (n + TINY) * ops.minimum(eps_rows, n), 0.0, 1.0)


def project_linf_ball(z, x, eps_rows):
    return ops.clip(ops.minimum(ops.maximum(z, x - eps_rows), x + eps_rows), 0.0, 1.0)


def cw_margin(logits, y):
    """``f_y − max_{j≠y} f_j`` per row (> 0: correctly classified)."""
    onehot = ops.one_hot(y, ops.shape(logits)[-1], dtype=logits.dtype)
    f_y = ops.sum(logits * onehot, axis=-1)
    return f_y - ops.max(logits - 1e9 * onehot, axis=-1)


def predict_labels(model, x, batch_size):
    """Arg-max labels of ``model`` on ``x`` (NumPy), in inference mode."""
    out = []
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size], training=False)
        out.append(np.argmax(ops.convert_to_numpy(logits), axis=-1))
    return np.concatenate(out).astype("int32") if out else np.zeros(0, "int32")


def num_classes(model, x):
    logits = ops.convert_to_numpy(model(x[:1], training=False))
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"`model` must output logits of shape (N, K) with K >= 2 classes; for 1 input "
            f"it returned shape {tuple(logits.shape)}.")
    return int(logits.shape[1])


def bucket(n, batch_size):
    """Padded size of a chunk of ``n`` rows: a power of two (>= 32) capped at ``batch_size``,
    so each compiled function sees a handful of shapes at most."""
    size = 32
    while size < n:
        size *= 2
    return min(size, batch_size) if n <= batch_size else batch_size


def chunks(index, batch_size):
    """Split an index array into chunks of at most ``batch_size``."""
    for start in range(0, len(index), batch_size):
        yield index[start:start + batch_size]


def pad(arrays, size):
    """Pad each array along axis 0 to ``size`` rows by repeating its first row."""
    out = []
    for a in arrays:
        a = np.asarray(a)
        if len(a) < size:
            a = np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)], axis=0)
        out.append(a)
    return out


def unit_noise(rng, shape, norm):
    """Random directions of unit norm per row: L∞ (uniform, scaled to max |t| = 1, as in
    AutoAttack's APGD) or L2 (Gaussian, normalised)."""
    if norm == "linf":
        t = rng.uniform(-1.0, 1.0, size=shape)
        m = np.abs(t.reshape(shape[0], -1)).max(axis=1)
    else:
        t = rng.normal(size=shape)
        m = np.sqrt((t.reshape(shape[0], -1) ** 2).sum(axis=1))
    return (t / np.maximum(m, TINY).reshape((-1,) + (1,) * (len(shape) - 1))).astype("float32")


def guard(x_adv, x, eps, norm, box=(0.0, 1.0)):
    """Return float32 points inside the ``eps`` ball around ``x`` and inside ``box``
    (default [0, 1]), exactly.

    Computations in float32 can overshoot the radius by an ulp; this pulls such points in,
    checking in float64.  ``eps`` is a scalar or one value per row (``inf``: box only).
    """
    b_lo, b_hi = (float(b) for b in box)
    x_adv = np.asarray(x_adv, "float32")
    x = np.asarray(x, "float32")
    n = len(x)
    e = np.broadcast_to(np.asarray(eps, "float64"), (n,)).reshape(
        (-1,) + (1,) * (x.ndim - 1))
    out = np.clip(x_adv, b_lo, b_hi).astype("float32")
    x64 = x.astype("float64")
    if norm == "linf":
        lo = np.maximum(x64 - e, b_lo)
        hi = np.minimum(x64 + e, b_hi)
        out = np.clip(out.astype("float64"), lo, hi).astype("float32")
        for _ in range(4):
            o64 = out.astype("float64")
            up, down = o64 > hi, o64 < lo
            if not (up.any() or down.any()):
                break
            out = np.where(up, np.nextafter(out, np.float32(-np.inf)), out)
            out = np.where(down, np.nextafter(out, np.float32(np.inf)), out)
        return out
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
        out = np.clip(scaled, b_lo, b_hi).astype("float32")
    bad = np.sqrt(((out.astype("float64") - x64).reshape(n, -1) ** 2).sum(axis=1)) > e_row
    out[bad] = x[bad]
    return out
