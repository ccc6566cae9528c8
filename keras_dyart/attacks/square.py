"""Square Attack (Andriushchenko et al., ECCV 2020): score-based random search, L∞.

No gradients: only logits.  The start is a set of vertical stripes of ±eps; each query adds
a square window of side s with one random sign per channel (±2·eps, then projected back to
the ball and the box), and keeps the change if the margin loss ``f_y − max_{j≠y} f_j``
decreases (or the point becomes misclassified).  The side follows the published schedule:
the fraction p of pixels starts at ``p_init`` = 0.8 and is halved after 10, 50, 200, 500,
1000, 2000, 4000, 6000 and 8000 queries; s = max(round(√(p·h·w)), 1).  As in the reference,
the window position and the signs are shared by the batch at each query.  One deliberate
difference: window positions are uniform over all h − s + 1 rows (and columns); the reference
draws ⌊U·(h − s)⌋, so its windows never touch the last row or column once s is 1.

The window positions, signs and stripes are drawn with NumPy from ``seed`` and passed in, so
every backend sees the same queries.  The queries run in compiled chunks of fixed length
(``chunk``); between chunks the points already fooled are dropped, as the reference does.
Inputs are channels-last images ``(N, H, W, C)``; ``(N, H, W)`` and flat ``(N, D)`` inputs
are treated as ``(N, H, W, 1)`` and ``(N, D, 1, 1)``.
"""

import math

import numpy as np
from keras import ops

from keras_dyart import _checks
from keras_dyart.attacks import _common as C

P_INIT = 0.8


def p_selection(i, p_init=P_INIT):
    """Fraction of pixels changed at query ``i`` (0-based), the published schedule."""
    for bound, div in ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32),
                       (500, 16), (200, 8), (50, 4), (10, 2)):
        if i > bound:
            return p_init / div
    return p_init


def _as_image(shape):
    if len(shape) == 4:
        return shape[1:]
    if len(shape) == 3:
        return shape[1:] + (1,)
    if len(shape) == 2:
        return (shape[1], 1, 1)
    raise ValueError(
        f"`x` must have shape (N, H, W, C), (N, H, W) or (N, D) for the Square attack; got "
        f"shape {shape}.")


def square_chunk(logits_fn, x, y, x_best, margin_best, eps, side, top, left, signs):
    """Run ``len(side)`` Square queries on one batch of images ``(B, H, W, C)``.

    Args:
        x, y: clean images and labels; ``x_best``, ``margin_best``: the current points and
            their margins (points with margin <= 0 are no longer changed).
        eps: radius per row ``(B,)``.
        side, top, left: int32 ``(Q,)``, the window of each query; ``signs``: ``(Q, C)``.

    Returns:
        ``(x_best, margin_best)`` after the queries.
    """
    x, x_best, eps, signs = (ops.convert_to_tensor(v, "float32")
                             for v in (x, x_best, eps, signs))
    margin_best = ops.convert_to_tensor(margin_best, "float32")
    y = ops.cast(ops.convert_to_tensor(y), "int32")
    side, top, left = (ops.cast(ops.convert_to_tensor(v), "int32") for v in (side, top, left))
    _, h, w, _ = ops.shape(x)
    e = C.rows(eps, 4)
    rows_idx = ops.arange(h, dtype="int32")[:, None]
    cols_idx = ops.arange(w, dtype="int32")[None, :]

    def body(q, carry):
        x_best, margin_best = carry
        s, a, b = ops.take(side, q), ops.take(top, q), ops.take(left, q)
        window = ((rows_idx >= a) & (rows_idx < a + s) & (cols_idx >= b) & (cols_idx < b + s))
        sign = ops.take(signs, q, axis=0)
        delta = ops.cast(window, "float32")[None, :, :, None] * sign[None, None, None, :]
        x_new = C.project_linf_ball(x_best + 2.0 * e * delta, x, e)
        margin = C.cw_margin(logits_fn(x_new), y)
        active = margin_best > 0
        take = active & ((margin < margin_best) | (margin <= 0))
        x_best = ops.where(C.rows(take, 4), x_new, x_best)
        margin_best = ops.where(take, margin, margin_best)
        return x_best, margin_best

    return ops.fori_loop(0, ops.shape(side)[0], body, (x_best, margin_best))


def _margin_fn(logits_fn, z, y):
    return C.cw_margin(logits_fn(ops.convert_to_tensor(z, "float32")),
                       ops.cast(ops.convert_to_tensor(y), "int32"))


def square(model, x, y, eps, *, norm="linf", n_queries=5000, p_init=P_INIT, chunk=100,
           batch_size=500, seed=0, jit=True, progress=None):
    """Square Attack adversarial examples (margin loss, one restart, as in AutoAttack).

    Args:
        model: a Keras model that outputs logits.
        x, y: inputs in [0, 1] and integer labels; eps: radius.
        norm: ``"linf"`` (the L2 variant is not implemented yet).
        n_queries: model queries per point (5000 in AutoAttack standard).
        p_init: initial fraction of pixels per square.
        chunk: queries per compiled call; fooled points are dropped between chunks.
        batch_size, seed, jit: as for the other attacks.  ``progress(done, total)`` is
            called after each chunk with the number of queries done.

    Returns:
        ``(x_adv, success)`` as NumPy arrays, ``x_adv`` in the ball and the box.
    """
    norm = _checks.norm_name(norm)
    if norm != "linf":
        raise NotImplementedError(
            f"`norm` must be 'linf' for the Square attack in this version; got {norm!r}.")
    eps = _checks.parse_eps(eps)
    x = _checks.images(x)
    y = _checks.labels(y, len(x))
    n_queries = _checks.positive(n_queries, "n_queries", integer=True)
    chunk = _checks.positive(chunk, "chunk", integer=True)
    batch_size = _checks.positive(batch_size, "batch_size", integer=True)
    p_init = _checks.in_range(p_init, "p_init", 0.0, 1.0)
    h, w, c = _as_image(x.shape)
    xi = x.reshape((len(x), h, w, c))
    shape = x.shape
    rng = np.random.RandomState(seed)

    def logits_img(logits_fn):
        return lambda z: logits_fn(ops.reshape(z, (-1,) + shape[1:]))

    def init_fn(logits_fn, xb, yb, stripes, e):
        xb, stripes, e = (ops.convert_to_tensor(v, "float32") for v in (xb, stripes, e))
        x0 = ops.clip(xb + C.rows(e, 4) * stripes, 0.0, 1.0)
        return x0, _margin_fn(logits_img(logits_fn), x0, yb)

    def chunk_fn(logits_fn, *args):
        return square_chunk(logits_img(logits_fn), *args)

    run_init = C.compiled(model, ("square-init",), init_fn, jit)
    run = C.compiled(model, ("square", norm), chunk_fn, jit)

    # The initial stripes: one sign per column and channel, per point.
    stripes = rng.choice([-1.0, 1.0], size=(len(x), 1, w, c)).astype("float32")
    x_best = xi.copy()
    margin = np.zeros(len(x), "float32")
    for idx in C.chunks(np.arange(len(x)), batch_size):
        size = C.bucket(len(idx), batch_size)
        xb, yb, sb = C.pad([xi[idx], y[idx], stripes[idx]], size)
        x0, m0 = run_init(xb, yb, sb, np.full(size, eps, "float32"))
        x_best[idx] = ops.convert_to_numpy(x0)[:len(idx)]
        margin[idx] = ops.convert_to_numpy(m0)[:len(idx)]

    done = 0
    while done < n_queries and (margin > 0).any():
        q = min(chunk, n_queries - done)
        # Always `chunk` queries per call (one trace); padding queries have an empty window.
        side, top, left = (np.zeros(chunk, "int32") for _ in range(3))
        for j in range(q):
            p = p_selection(done + j, p_init)
            s = max(int(round(math.sqrt(p * h * w))), 1)
            s = min(s, h, w)
            side[j] = s
            # Uniform over all h − s + 1 positions (the reference draws ⌊U·(h − s)⌋, which
            # never reaches the last row and column of positions).
            top[j] = int(rng.uniform() * (h - s + 1))
            left[j] = int(rng.uniform() * (w - s + 1))
        signs = np.ones((chunk, c), "float32")
        signs[:q] = rng.choice([-1.0, 1.0], size=(q, c))
        for idx in C.chunks(np.flatnonzero(margin > 0), batch_size):
            size = C.bucket(len(idx), batch_size)
            xb, yb, bb, mb = C.pad([xi[idx], y[idx], x_best[idx], margin[idx]], size)
            xn, mn = run(xb, yb, bb, mb, np.full(size, eps, "float32"), side, top, left, signs)
            x_best[idx] = ops.convert_to_numpy(xn)[:len(idx)]
            margin[idx] = ops.convert_to_numpy(mn)[:len(idx)]
        done += q
        if progress is not None:
            progress(done, n_queries)
    x_adv = C.guard(x_best.reshape(shape), x, eps, norm)
    return x_adv, C.predict_labels(model, x_adv, batch_size) != y
