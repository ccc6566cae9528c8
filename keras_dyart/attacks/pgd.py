"""Projected gradient descent (Madry et al., 2018) for L∞ and L2, with CE or CW loss."""

import numpy as np
from keras import ops

from keras_dyart import _checks
from keras_dyart import backend as dyart_backend
from keras_dyart.attacks import _common as C
from keras_dyart.margins import flat

_TINY = 1e-12


def attack_loss(logits, y, loss="ce"):
    """Per-sample loss to ascend: cross-entropy (``"ce"``) or the CW margin
    ``max_{j≠y} f_j − f_y`` (``"cw"``)."""
    if loss == "ce":
        return ops.sparse_categorical_crossentropy(y, logits, from_logits=True)
    onehot = ops.one_hot(y, ops.shape(logits)[-1], dtype=logits.dtype)
    f_y = ops.sum(logits * onehot, axis=-1)
    return ops.max(logits - 1e9 * onehot, axis=-1) - f_y


def project_ball(x_adv, x, eps, norm):
    """Project ``x_adv`` onto the ``eps`` ball around ``x`` (rows) and the box [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = ops.clip(delta, -eps, eps)
    else:
        d = flat(delta)
        n = ops.sqrt(ops.sum(d * d, axis=-1))
        scale = ops.minimum(1.0, eps / ops.maximum(n, _TINY))
        delta = delta * ops.reshape(scale, (-1,) + (1,) * (len(x.shape) - 1))
    return ops.clip(x + delta, 0.0, 1.0)


def _ascent_direction(g, norm):
    if norm == "linf":
        return ops.sign(g)
    n = ops.sqrt(ops.sum(flat(g) ** 2, axis=-1))
    return g / ops.reshape(ops.maximum(n, _TINY), (-1,) + (1,) * (len(g.shape) - 1))


def pgd_batch(logits_fn, x, y, noise, eps, step_size, steps, norm="linf", loss="ce"):
    """PGD on one batch from ``x + noise`` (noise already scaled into the ball).

    Returns ``(x_adv, success)`` for the last iterate; ``success`` is a bool per row.
    """
    x, noise = (ops.convert_to_tensor(v, "float32") for v in (x, noise))
    y = ops.cast(ops.convert_to_tensor(y), "int32")

    def value(z):
        return attack_loss(logits_fn(z), y, loss)

    def body(_, z):
        _, g = dyart_backend.value_and_grad(value, z)
        z = z + step_size * _ascent_direction(g, norm)
        return project_ball(z, x, eps, norm)

    x_adv = dyart_backend.fori_loop(0, steps, body, project_ball(x + noise, x, eps, norm))
    success = ops.argmax(logits_fn(x_adv), axis=-1) != y
    return x_adv, success


def _pgd_fn(steps, norm, loss):
    def fn(logits_fn, xb, yb, noise, eps, step_size):
        return pgd_batch(logits_fn, xb, yb, noise, eps, step_size, steps, norm, loss)
    return fn


def _noise(rng, shape, eps, norm):
    if norm == "linf":
        return rng.uniform(-eps, eps, size=shape).astype("float32")
    g = rng.normal(size=shape).astype("float32")
    g /= np.maximum(np.sqrt((g.reshape(shape[0], -1) ** 2).sum(1)), 1e-12).reshape(
        (-1,) + (1,) * (len(shape) - 1))
    r = rng.uniform(0, 1, size=(shape[0],) + (1,) * (len(shape) - 1)) ** (
        1.0 / np.prod(shape[1:]))
    return (g * eps * r).astype("float32")


@C.with_bounds(returns="success")
def pgd(model, x, y, eps, *, norm="linf", steps=40, rel_step=0.1, loss="ce",
        random_start=True, restarts=1, batch_size=250, seed=0, jit=True, progress=None):
    """PGD adversarial examples for a logits model.

    Args:
        model: a Keras model that outputs logits ``(N, K)``.
        x: inputs in [0, 1].
        y: integer labels.
        eps: radius of the threat model (a number or text such as ``"8/255"``).
        norm: ``"linf"`` or ``"l2"``.
        steps: iterations per restart.
        rel_step: step size as a fraction of ``eps``.
        loss: ``"ce"`` (cross-entropy) or ``"cw"`` (margin loss).
        random_start: start from a uniform point in the ball (Gaussian direction for L2).
        restarts: the first successful restart is kept per point.
        batch_size: points per compiled call.
        seed: seed of the random starts (NumPy, so the same seed gives the same starts on
            every backend).
        jit: compile the attack step (default True).
        progress: optional callable ``progress(n_done)`` called after each batch.
        bounds: ``(lower, upper)`` of the model's inputs (default: the model's own
            ``bounds``, else (0, 1)); x and every length are in their units.

    Returns:
        ``(x_adv, success)`` as NumPy arrays: adversarial inputs inside the ball and the box
        (exactly, checked in float64), and whether each is misclassified.
    """
    norm = _checks.norm_name(norm)
    eps = _checks.parse_eps(eps)
    x = _checks.images(x)
    y = _checks.labels(y, len(x))
    if loss not in ("ce", "cw"):
        raise ValueError(f"`loss` must be 'ce' or 'cw'; got {loss!r}.")
    steps = _checks.positive(steps, "steps", integer=True)
    restarts = _checks.positive(restarts, "restarts", integer=True)
    batch_size = _checks.positive(batch_size, "batch_size", integer=True)
    rng = np.random.RandomState(seed)

    run = C.compiled(model, ("pgd", norm, steps, loss), _pgd_fn(steps, norm, loss), jit)
    # eps and the step are inputs of the compiled function, so one trace serves every eps.
    eps_t, step_t = np.float32(eps), np.float32(rel_step * eps)
    x_adv = x.copy()
    success = np.zeros(len(x), bool)
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        xb, yb = x[sl], y[sl]
        best, done = xb.copy(), np.zeros(len(xb), bool)
        for _ in range(restarts):
            noise = (_noise(rng, xb.shape, eps, norm) if random_start
                     else np.zeros_like(xb))
            adv, ok = run(xb, yb, noise, eps_t, step_t)
            adv, ok = ops.convert_to_numpy(adv), ops.convert_to_numpy(ok).astype(bool)
            take = ok & ~done
            best[take] = adv[take]
            best[~done & ~ok] = adv[~done & ~ok]
            done |= ok
            if done.all():
                break
        x_adv[sl], success[sl] = best, done
        if progress is not None:
            progress(min(start + batch_size, len(x)))
    # float32 rounding can leave a point an ulp outside the ball: pull it in exactly, and
    # report success on the points actually returned.
    x_adv = C.guard(x_adv, x, eps, norm)
    success = C.predict_labels(model, x_adv, batch_size) != y
    return x_adv, success
