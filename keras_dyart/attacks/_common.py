"""Pieces shared by the attacks: the NumPy driver loop, random starts, exact ball guard.

The math of every attack lives in its own module, written once in `keras.ops`.  This module
only holds host-side (NumPy) helpers: splitting the data into batches of a few fixed sizes
(so compiled functions are traced a few times at most), random draws made with NumPy (so the
same seed gives the same noise on every backend), and a final guard that puts every returned
point inside the eps ball and the box [0, 1] *exactly* in float64 arithmetic.
"""

import weakref

import numpy as np
from keras import ops

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
        per_model[full_key] = dyart_backend.compile_model_fn(model, fn, jit)
    return per_model[full_key]


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


def guard(x_adv, x, eps, norm):
    """Return float32 points inside the ``eps`` ball around ``x`` and inside [0, 1], exactly.

    Computations in float32 can overshoot the radius by an ulp; this pulls such points in,
    checking in float64.  ``eps`` is a scalar or one value per row (``inf``: box only).
    """
    x_adv = np.asarray(x_adv, "float32")
    x = np.asarray(x, "float32")
    n = len(x)
    e = np.broadcast_to(np.asarray(eps, "float64"), (n,)).reshape(
        (-1,) + (1,) * (x.ndim - 1))
    out = np.clip(x_adv, 0.0, 1.0).astype("float32")
    x64 = x.astype("float64")
    if norm == "linf":
        lo = np.maximum(x64 - e, 0.0)
        hi = np.minimum(x64 + e, 1.0)
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
        out = np.clip(scaled, 0.0, 1.0).astype("float32")
    bad = np.sqrt(((out.astype("float64") - x64).reshape(n, -1) ** 2).sum(axis=1)) > e_row
    out[bad] = x[bad]
    return out
