"""Square Attack (Andriushchenko et al., ECCV 2020): score-based random search, L∞ and L2.

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
Images follow ``data_format`` (``keras.config.image_data_format()`` unless given):
``(N, H, W, C)`` channels-last or ``(N, C, H, W)`` channels-first.  Channels-first batches are
transposed to ``(N, H, W, C)`` on the host and back inside the compiled step before each
model call, so the windows always cover the spatial axes and every random draw is the same
for both layouts: the same network on the same images gives the same points either way.
``(N, H, W)`` and flat ``(N, D)`` inputs are treated as ``(N, H, W, 1)`` and
``(N, D, 1, 1)`` in both layouts.

L2 follows the reference's L2 variant: the start is a grid of "meta pseudo-Gaussian" blocks
scaled to norm eps; each query picks two windows of odd side s >= 3, moves the perturbation
mass of the second into the first, adds a centred pyramid pattern with a random sign per point
and channel to the first, rescales it so the total norm stays eps, and keeps the change if
the margin decreases.  The window masks and patterns are built on the host (NumPy) and passed
in, so the compiled step has static shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from keras import ops

from keras_dyart import _checks, geometry
from keras_dyart import backend as dyart_backend
from keras_dyart.attacks import driver
from keras_dyart.attacks.losses import cw_margin
from keras_dyart.attacks.registry import register
from keras_dyart.geometry import rows

if TYPE_CHECKING:
    import keras

P_INIT = 0.8


def p_selection(i: int, p_init: float = P_INIT) -> float:
    """Fraction of pixels changed at query ``i`` (0-based), the published schedule."""
    for bound, div in ((8000, 512), (6000, 256), (4000, 128), (2000, 64), (1000, 32),
                       (500, 16), (200, 8), (50, 4), (10, 2)):
        if i > bound:
            return p_init / div
    return p_init


def _as_image(shape, data_format="channels_last"):
    """``(H, W, C)`` of a batch of shape ``shape`` in ``data_format``."""
    shape = tuple(shape)
    if len(shape) == 4:
        if data_format == "channels_first":
            return shape[2], shape[3], shape[1]
        return shape[1:]
    if len(shape) == 3:
        return shape[1:] + (1,)
    if len(shape) == 2:
        return (shape[1], 1, 1)
    layout = "(N, C, H, W)" if data_format == "channels_first" else "(N, H, W, C)"
    raise ValueError(
        f"`x` must have shape {layout}, (N, H, W) or (N, D) for the Square attack "
        f"(data_format {data_format!r}); got shape {shape}.")


def square_chunk(logits_fn: Callable, x: Any, y: Any, x_best: Any, margin_best: Any, eps: Any,
                 side: Any, top: Any, left: Any, signs: Any) -> tuple[Any, Any]:
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
    e = rows(eps, 4)
    linf = geometry.get("linf")
    rows_idx = ops.arange(h, dtype="int32")[:, None]
    cols_idx = ops.arange(w, dtype="int32")[None, :]

    def body(q, carry):
        x_best, margin_best = carry
        s, a, b = ops.take(side, q), ops.take(top, q), ops.take(left, q)
        window = ((rows_idx >= a) & (rows_idx < a + s) & (cols_idx >= b) & (cols_idx < b + s))
        sign = ops.take(signs, q, axis=0)
        delta = ops.cast(window, "float32")[None, :, :, None] * sign[None, None, None, :]
        x_new = linf.project(x_best + 2.0 * e * delta, x, e)
        margin = cw_margin(logits_fn(x_new), y)
        active = margin_best > 0
        take = active & ((margin < margin_best) | (margin <= 0))
        x_best = ops.where(rows(take, 4), x_new, x_best)
        margin_best = ops.where(take, margin, margin_best)
        return x_best, margin_best

    return dyart_backend.fori_loop(0, ops.shape(side)[0], body, (x_best, margin_best))


def _eta_rectangles(a, b):
    """The reference's centred pyramid pattern of shape (a, b), unit L2 norm."""
    delta = np.zeros((a, b))
    xc, yc = a // 2 + 1, b // 2 + 1
    c0, c1 = xc - 1, yc - 1
    for counter in range(max(xc, yc)):
        delta[max(c0, 0):min(c0 + 2 * counter + 1, a),
              max(0, c1):min(c1 + 2 * counter + 1, b)] += 1.0 / (counter + 1) ** 2
        c0 -= 1
        c1 -= 1
    n = np.sqrt((delta ** 2).sum())
    return delta / n if n > 0 else delta


def _meta_pseudo_gaussian(s, rng):
    delta = np.zeros((s, s))
    delta[:s // 2] = _eta_rectangles(s // 2, s)
    delta[s // 2:] = -_eta_rectangles(s - s // 2, s)
    delta /= max(np.sqrt((delta ** 2).sum()), 1e-12)
    if rng.uniform() > 0.5:
        delta = delta.T
    return delta


def _l2_init(rng, n, h, w, c):
    """The reference's L2 start: blocks of side h // 5 with pseudo-Gaussian patterns and a
    random sign per point and channel (one pattern draw per block, shared by the batch)."""
    s = max(h // 5, 1)
    sp = (h - s * 5) // 2 if h >= 5 else 0
    delta = np.zeros((n, h, w, c))
    vh = sp
    for _ in range(h // s):
        vw = sp
        for _ in range(w // s):
            pert = _meta_pseudo_gaussian(s, rng)
            sign = rng.choice([-1.0, 1.0], size=(n, 1, 1, c))
            hh, ww = delta[:, vh:vh + s, vw:vw + s].shape[1:3]
            delta[:, vh:vh + s, vw:vw + s] += pert[None, :hh, :ww, None] * sign
            vw += s
        vh += s
    return delta.astype("float32")


def square_l2_chunk(logits_fn: Callable, x: Any, y: Any, x_best: Any, margin_best: Any, eps: Any,
                    window: Any, window2: Any, pattern: Any, signs: Any) -> tuple[Any, Any]:
    """Run L2 Square queries on a batch of images ``(B, H, W, C)``.

    ``window``, ``window2`` and ``pattern`` are ``(Q, H, W)`` maps of each query (the two
    windows as 0/1 masks and the pyramid pattern placed in the first); ``signs`` is
    ``(B, Q, C)``.  Returns ``(x_best, margin_best)``.
    """
    x, x_best, eps, window, window2, pattern, signs = (
        ops.convert_to_tensor(v, "float32")
        for v in (x, x_best, eps, window, window2, pattern, signs))
    margin_best = ops.convert_to_tensor(margin_best, "float32")
    y = ops.cast(ops.convert_to_tensor(y), "int32")
    c = ops.shape(x)[-1]

    norm_all = geometry.get("l2").size

    def body(q, carry):
        x_best, margin_best = carry
        m1 = ops.take(window, q, axis=0)[None, :, :, None]
        m2 = ops.take(window2, q, axis=0)[None, :, :, None]
        eta = ops.take(pattern, q, axis=0)[None, :, :, None]
        sign = ops.take(signs, q, axis=1)[:, None, None, :]
        delta = x_best - x
        norm_w1 = ops.sqrt(ops.sum(m1 * ops.square(delta), axis=(1, 2), keepdims=True))
        norm_image = norm_all(delta)
        norm_windows = norm_all(delta * ops.maximum(m1, m2))
        new = eta * sign + m1 * delta / (norm_w1 + 1e-12)
        norm_new = ops.sqrt(ops.sum(m1 * ops.square(new), axis=(1, 2), keepdims=True))
        room = ops.maximum(ops.square(eps) - ops.square(norm_image), 0.0) / c
        scale = ops.sqrt(room + ops.square(norm_windows))
        new = m1 * new / (norm_new + 1e-12) * rows(scale, 4)
        delta = delta * (1.0 - m2)
        delta = delta * (1.0 - m1) + new
        delta = delta / (rows(norm_all(delta), 4) + 1e-12) * rows(eps, 4)
        x_new = ops.clip(x + delta, 0.0, 1.0)
        margin = cw_margin(logits_fn(x_new), y)
        active = (margin_best > 0) & (ops.sum(m1) > 0)     # padding queries change nothing
        take = active & ((margin < margin_best) | (margin <= 0))
        x_best = ops.where(rows(take, 4), x_new, x_best)
        margin_best = ops.where(take, margin, margin_best)
        return x_best, margin_best

    return dyart_backend.fori_loop(0, ops.shape(window)[0], body, (x_best, margin_best))


def _l2_maps(rng, start, q, chunk, h, w, p_init):
    """Host-side draws of ``q`` L2 query windows, padded to ``chunk`` with empty windows."""
    window = np.zeros((chunk, h, w), "float32")
    window2 = np.zeros((chunk, h, w), "float32")
    pattern = np.zeros((chunk, h, w), "float32")
    for j in range(q):
        p = p_selection(start + j, p_init)
        s = max(int(round(math.sqrt(p * h * w))), 3)
        if s % 2 == 0:
            s += 1
        s = min(s, h, w)
        a, b = int(rng.uniform() * (h - s + 1)), int(rng.uniform() * (w - s + 1))
        a2, b2 = int(rng.uniform() * (h - s + 1)), int(rng.uniform() * (w - s + 1))
        window[j, a:a + s, b:b + s] = 1.0
        window2[j, a2:a2 + s, b2:b2 + s] = 1.0
        pattern[j, a:a + s, b:b + s] = _eta_rectangles(s, s)
    return window, window2, pattern


def _l2_queries(rng, start, q, chunk, image, n, p_init):
    """L2 queries: ``([signs per point], [window, window2, pattern])``."""
    h, w, c = image
    maps = _l2_maps(rng, start, q, chunk, h, w, p_init)
    signs = rng.choice([-1.0, 1.0], size=(n, chunk, c)).astype("float32")
    return [signs], list(maps)


def _linf_queries(rng, start, q, chunk, image, n, p_init):
    """L∞ queries: ``([], [side, top, left, signs])``, padded to ``chunk`` with empty
    windows (always ``chunk`` queries per call: one trace)."""
    h, w, c = image
    side, top, left = (np.zeros(chunk, "int32") for _ in range(3))
    for j in range(q):
        p = p_selection(start + j, p_init)
        s = min(max(int(round(math.sqrt(p * h * w))), 1), h, w)
        side[j] = s
        # Uniform over all h − s + 1 positions (the reference draws ⌊U·(h − s)⌋, which
        # never reaches the last row and column of positions).
        top[j] = int(rng.uniform() * (h - s + 1))
        left[j] = int(rng.uniform() * (w - s + 1))
    signs = np.ones((chunk, c), "float32")
    signs[:q] = rng.choice([-1.0, 1.0], size=(q, c))
    return [], [side, top, left, signs]


def _linf_start(rng, n, h, w, c):
    """The initial stripes: one sign per column and channel, per point."""
    return rng.choice([-1.0, 1.0], size=(n, 1, w, c)).astype("float32")


def _l2_start(rng, n, h, w, c):
    """A start of L2 norm exactly 1 per point (scaled by eps when used)."""
    d0 = _l2_init(rng, n, h, w, c)
    n0 = np.sqrt((d0.reshape(n, -1).astype("float64") ** 2).sum(1))
    return (d0 / (n0.reshape(-1, 1, 1, 1) + 1e-12)).astype("float32")


def _l2_step(logits_fn, x, y, x_best, margin_best, eps, signs, window, window2, pattern):
    return square_l2_chunk(logits_fn, x, y, x_best, margin_best, eps, window, window2,
                           pattern, signs)


# Per norm: (start, queries, compiled step); the step takes the per-row arrays first.
_PLANS = {"linf": (_linf_start, _linf_queries, square_chunk),
          "l2": (_l2_start, _l2_queries, _l2_step)}


def _margin_fn(logits_fn, z, y):
    return cw_margin(logits_fn(ops.convert_to_tensor(z, "float32")),
                       ops.cast(ops.convert_to_tensor(y), "int32"))


@driver.with_bounds(returns="success")
def square(model: keras.Model, x: np.ndarray, y: np.ndarray, eps: float | str, *,
           norm: str = "linf", n_queries: int = 5000, p_init: float = P_INIT, chunk: int = 100,
           batch_size: int = 500, seed: int = 0, jit: bool = True, progress: Callable | None = None,
           data_format: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Square Attack adversarial examples (margin loss, one restart, as in AutoAttack).

    Args:
        model: a Keras model that outputs logits.
        x, y: inputs in [0, 1] and integer labels; eps: radius.
        norm: ``"linf"`` or ``"l2"``.
        n_queries: model queries per point (5000 in AutoAttack standard).
        p_init: initial fraction of pixels per square.
        chunk: queries per compiled call; fooled points are dropped between chunks.
        batch_size, seed, jit: as for the other attacks.  ``progress(done, total)`` is
            called after each chunk with the number of queries done.
        data_format: ``"channels_last"`` (``x`` is ``(N, H, W, C)``) or
            ``"channels_first"`` (``(N, C, H, W)``); ``None`` (default):
            ``keras.config.image_data_format()``, and a 4-D ``x`` whose shape looks like
            the other layout (at most 4 on one channel axis, more on the other) is then
            refused rather than attacked over the wrong axes.  The squares cover the
            spatial axes either way, and the same seed draws the same queries for both
            layouts.
        bounds: ``(lower, upper)`` of the model's inputs (default: the model's own
            ``bounds``, else (0, 1)); x and eps are in their units.

    Returns:
        ``(x_adv, success)`` as NumPy arrays, ``x_adv`` in the ball and the box.
    """
    x, y, ball, eps, n_queries, chunk, batch_size = driver.check(
        x, y, norm, eps, n_queries=n_queries, chunk=chunk, batch_size=batch_size)
    p_init = _checks.in_range(p_init, "p_init", 0.0, 1.0)
    given = data_format is not None
    data_format = _checks.data_format(data_format)
    if not given and x.ndim == 4:
        first, last = x.shape[1], x.shape[3]
        other = "channels_first" if data_format == "channels_last" else "channels_last"
        if (first <= 4 < last) if data_format == "channels_last" else (last <= 4 < first):
            raise ValueError(
                f"`x` of shape {x.shape} looks {other} while `data_format` defaults to "
                f"keras.config.image_data_format() = {data_format!r}: the Square attack "
                f"would draw its squares over the wrong axes (a weaker attack). Pass "
                f"data_format={other!r} (in evaluate: options={{'square': {{'data_format': "
                f"{other!r}}}}}), or data_format={data_format!r} if the layout is right.")
    image = _as_image(x.shape, data_format)
    driver.num_classes(model, x, y)
    shape = x.shape
    # The attack works on (N, H, W, C); a channels-first batch is transposed here and its
    # points are transposed back before every model call and at the end.
    transpose = len(shape) == 4 and data_format == "channels_first"
    xi = x.transpose(0, 2, 3, 1) if transpose else x.reshape((len(x),) + image)
    xi = np.ascontiguousarray(xi)
    rng = driver.rng(seed)
    start, queries, step = _PLANS[ball.name]

    def to_model(z):
        if transpose:
            return ops.transpose(z, (0, 3, 1, 2))
        return ops.reshape(z, (-1,) + shape[1:])

    def init_fn(logits_fn, xb, yb, stripes, e):
        xb, stripes, e = (ops.convert_to_tensor(v, "float32") for v in (xb, stripes, e))
        x0 = ops.clip(xb + rows(e, 4) * stripes, 0.0, 1.0)
        return x0, _margin_fn(lambda z: logits_fn(to_model(z)), x0, yb)

    def chunk_fn(logits_fn, *args):
        return step(lambda z: logits_fn(to_model(z)), *args)

    # The compiled functions close over the layout and the input shape: both are in the key.
    layout = (data_format if transpose else "channels_last", shape[1:])
    run_init = driver.compiled(model, ("square-init",) + layout, init_fn, jit)
    run = driver.compiled(model, ("square", ball.name) + layout, chunk_fn, jit)

    stripes = start(rng, len(x), *image)
    x_best = xi.copy()
    margin = np.zeros(len(x), "float32")
    for idx in driver.chunks(np.arange(len(x)), batch_size):
        size = driver.bucket(len(idx), batch_size)
        x_best[idx], margin[idx] = driver.call(
            run_init, size, [xi[idx], y[idx], stripes[idx], np.full(len(idx), eps, "float32")])

    def draw(run_start):
        return queries(rng, run_start, min(chunk, n_queries - run_start), chunk, image,
                       len(x), p_init)

    def attack(drawn, idx, size):
        per_row, shared = drawn
        x_best[idx], margin[idx] = driver.call(
            run, size, [xi[idx], y[idx], x_best[idx], margin[idx],
                        np.full(len(idx), eps, "float32"), *(a[idx] for a in per_row)], shared)

    starts = range(0, n_queries, chunk)
    driver.sweep(starts, lambda: np.flatnonzero(margin > 0), attack, batch_size=batch_size,
                 progress=progress, prepare=draw,
                 units=[min(chunk, n_queries - s) for s in starts])
    x_best = x_best.transpose(0, 3, 1, 2) if transpose else x_best.reshape(shape)
    x_adv = driver.guard(np.ascontiguousarray(x_best), x, eps, ball)
    return x_adv, driver.predict_labels(model, x_adv, batch_size) != y


register("square", "Square", square)

__all__ = ["p_selection", "square", "square_chunk", "square_l2_chunk"]
