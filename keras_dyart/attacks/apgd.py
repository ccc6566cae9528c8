"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and targeted APGD-T, L∞ and L2.

APGD is PGD with momentum (0.75) and a step size that starts at 2·eps and is halved at
checkpoints w_j = ⌈p_j·N_iter⌉, p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} −
0.03, 0.06), when either

1. the loss increased in at most ρ = 0.75 of the steps since the last checkpoint, or
2. the step size was not halved at the last checkpoint and the best loss has not improved
   since then.

After halving, the iterate restarts from the best point found so far.  The rules follow the
reference implementation (the AutoAttack package) step for step, including its counting of
the first window (the loss before the first step is taken as 0).

The iteration is one loop (`keras_dyart.backend.fori_loop`) over a batch with static shapes,
compiled per backend through `keras_dyart.backend.compile_model_fn`.  Each iteration costs
one forward and one backward pass: the logits needed for the success check ride along with
the loss as a gradient-free column.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from keras import ops

from keras_dyart import _checks, geometry
from keras_dyart import backend as dyart_backend
from keras_dyart.attacks import driver
from keras_dyart.attacks import losses as L
from keras_dyart.attacks.registry import register
from keras_dyart.geometry import rows

if TYPE_CHECKING:
    import keras

RHO = 0.75


def apgd_checkpoints(n_iter: int) -> list:
    """The iterations (1-based counts) after which APGD checks its step size.

    Follows the reference counter: the first window has ``max(⌊0.22·n_iter⌋, 1)`` steps, each
    next one ``max(⌊0.03·n_iter⌋, 1)`` fewer, down to ``max(⌊0.06·n_iter⌋, 1)``.  Returns a
    list of ``(iteration, window_length)``.

    Examples:

    >>> print(*[w for w, _ in apgd_checkpoints(100)])
    22 41 57 70 80 87 93 99
    """
    n_iter = _checks.positive(n_iter, "n_iter", integer=True)
    k = max(int(0.22 * n_iter), 1)
    k_min = max(int(0.06 * n_iter), 1)
    decrease = max(int(0.03 * n_iter), 1)
    out, counter = [], 0
    for i in range(n_iter):
        counter += 1
        if counter == k:
            out.append((i + 1, k))
            k = max(k - decrease, k_min)
            counter = 0
    return out


def _schedule(n_iter):
    is_check = np.zeros(n_iter, "float32")
    window = np.ones(n_iter, "float32")
    for it, k in apgd_checkpoints(n_iter):
        is_check[it - 1] = 1.0
        window[it - 1] = k
    return is_check, window


def apgd_batch(logits_fn: Callable, x: Any, y: Any, start: Any, eps: Any, target_rank: Any, *,
               n_iter: int = 100, norm: str = "linf", loss: str = "ce", rho: float = RHO) -> dict:
    """APGD on one batch.

    Args:
        logits_fn: ``z -> logits`` (inference mode).
        x, y: inputs ``(B, ...)`` and labels ``(B,)``.
        start: unit-norm random directions shaped like ``x``; the start is
            ``clip(x + eps·start, 0, 1)`` (zeros: start at ``x``).
        eps: radius per row ``(B,)``.
        target_rank: per row, which class to target for ``loss="dlr-t"``: 2 is the
            second-highest logit of the clean input, 3 the third, … (ignored otherwise).
        n_iter: iterations; ``norm``: ``"linf"`` or ``"l2"``; ``loss``: ``"ce"``, ``"cw"``,
            ``"dlr"`` or ``"dlr-t"``; ``rho``: the checkpoint threshold of condition 1.

    Returns:
        dict with ``x_adv`` (the last misclassified iterate per row, else the start),
        ``success`` (bool ``(B,)``), ``loss_best`` and the final ``step_size``.
    """
    return driver.run_loop(_loop(n_iter, norm, loss, rho), n_iter, logits_fn, x, y, start,
                           eps, target_rank)


def _loop(n_iter, norm, loss, rho=RHO) -> driver.Loop:
    """APGD as a `keras_dyart.attacks.driver.Loop` (setup, one iteration, finish)."""
    static = {"n_iter": n_iter, "norm": norm, "loss": loss, "rho": rho}
    return driver.Loop(functools.partial(_setup, **static), functools.partial(_body, **static),
                       _finish)


def _value_and_grad(logits_fn, consts, loss):
    """``z -> (loss per row, misclassified, input gradient)``: one forward and one backward
    pass, the logits riding along with the loss as a gradient-free column."""
    x, y, eps, target = consts[:4]
    loss_fn = L.get(loss)

    def f(z):
        logits = logits_fn(z)
        per_row = loss_fn(logits, y, target) if loss == "dlr-t" else loss_fn(logits, y)
        return ops.concatenate([per_row[:, None], ops.stop_gradient(logits)], axis=1)

    def vg(z):
        v, g = dyart_backend.value_and_grad(f, z)
        return v[:, 0], ops.argmax(v[:, 1:], axis=-1) != y, g

    return vg


def _setup(logits_fn, x, y, start, eps, target_rank, *, n_iter, norm, loss, rho):
    x, start, eps = (ops.convert_to_tensor(v, "float32") for v in (x, start, eps))
    y = ops.cast(ops.convert_to_tensor(y), "int32")
    if loss == "dlr-t":
        order = ops.argsort(logits_fn(x), axis=-1)
        k = ops.shape(order)[-1]
        col = ops.clip(k - ops.cast(target_rank, "int32"), 0, k - 1)
        target = ops.take_along_axis(order, col[:, None], axis=-1)[:, 0]
    else:
        target = y
    is_check, window = (ops.convert_to_tensor(v) for v in _schedule(n_iter))
    consts = (x, y, eps, target, is_check, window)
    x0 = ops.clip(x + rows(eps, len(x.shape)) * start, 0.0, 1.0)
    loss0, wrong0, g0 = _value_and_grad(logits_fn, consts, loss)(x0)
    n = ops.shape(x)[0]
    zeros = ops.zeros((n,))
    carry = (x0, x0, g0, x0, g0, loss0, x0, wrong0, 2.0 * eps, zeros, zeros, loss0,
             ops.ones((n,), dtype="bool"))
    return consts, carry


def _body(logits_fn, consts, i, carry, *, n_iter, norm, loss, rho):
    x, _, eps, _, is_check, window = consts
    nd = len(x.shape)
    ball = geometry.get(norm)
    vg = _value_and_grad(logits_fn, consts, loss)
    (x_adv, x_old, g, x_best, g_best, loss_best, x_best_adv, success, step_size,
     n_up, loss_prev, loss_best_last, reduced_last) = carry
    a = ops.where(i > 0, 0.75, 1.0)
    momentum = x_adv - x_old
    x_old = x_adv
    z = ball.project(x_adv + rows(step_size, nd) * ball.ascent(g), x, eps)
    x_adv = ball.project(x_adv + (z - x_adv) * a + momentum * (1.0 - a), x, eps)

    loss, wrong, g = vg(x_adv)
    x_best_adv = ops.where(rows(wrong, nd), x_adv, x_best_adv)
    success = success | wrong
    n_up = n_up + ops.cast(loss > loss_prev, "float32")
    loss_prev = loss
    better = loss > loss_best
    x_best = ops.where(rows(better, nd), x_adv, x_best)
    g_best = ops.where(rows(better, nd), g, g_best)
    loss_best = ops.where(better, loss, loss_best)

    check = ops.take(is_check, i) > 0
    k = ops.take(window, i)
    oscillating = n_up <= k * rho
    stalled = ~reduced_last & (loss_best_last >= loss_best)
    reduce = check & (oscillating | stalled)
    reduced_last = ops.where(check, oscillating | stalled, reduced_last)
    loss_best_last = ops.where(check, loss_best, loss_best_last)
    step_size = ops.where(reduce, 0.5 * step_size, step_size)
    x_adv = ops.where(rows(reduce, nd), x_best, x_adv)
    g = ops.where(rows(reduce, nd), g_best, g)
    n_up = ops.where(check, 0.0, n_up)
    return (x_adv, x_old, g, x_best, g_best, loss_best, x_best_adv, success, step_size,
            n_up, loss_prev, loss_best_last, reduced_last)


def _finish(logits_fn, consts, carry):
    return {"x_adv": carry[6], "success": carry[7], "loss_best": carry[5],
            "step_size": carry[8]}


@driver.with_bounds(returns="success")
def apgd(model: keras.Model, x: np.ndarray, y: np.ndarray, eps: float | str, *, norm: str = "linf",
         loss: str = "ce", n_iter: int = 100, restarts: int = 1, n_target_classes: int = 9,
         batch_size: int = 500, seed: int = 0, jit: bool = True,
         progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """APGD adversarial examples (APGD-CE, APGD-DLR or targeted APGD-T).

    Args:
        model: a Keras model that outputs logits ``(N, K)``.
        x, y: inputs in [0, 1] and integer labels.
        eps: radius (a number or text such as ``"8/255"``).
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR), ``"cw"`` or ``"dlr-t"`` (APGD-T: one
            run per target class, the ``n_target_classes`` highest other logits of the clean
            input in turn).
        n_iter: iterations per run (100 in AutoAttack); ``restarts``: random restarts per
            target (the first starts at a random point of the sphere of radius ``eps``).
        batch_size: points per compiled call.  ``seed``: NumPy seed of the random starts.
        progress: optional callable ``progress(done, total)`` after each run.
        bounds: ``(lower, upper)`` of the model's inputs (default: the model's own
            ``bounds``, else (0, 1)); x and every length are in their units.

    Only points still correctly classified are attacked by each run.

    Returns:
        ``(x_adv, success)`` as NumPy arrays: ``x_adv`` lies in the eps ball and in [0, 1]
        (it is ``x`` where no adversarial was found); ``success`` is True where ``x_adv`` is
        misclassified (including clean errors).
    """
    x, y, ball, eps, n_iter, restarts, batch_size = driver.check(
        x, y, norm, eps, n_iter=n_iter, restarts=restarts, batch_size=batch_size)
    loss = loss.lower() if isinstance(loss, str) else loss
    L.get(loss)
    k = driver.num_classes(model, x, y)
    if loss in ("dlr", "dlr-t") and k < 3:
        raise ValueError(
            f"`loss` {loss!r} needs a model with at least 3 classes (with two, the DLR loss "
            f"is constant); the model has {k}. Use loss='ce' or 'cw'.")
    if loss == "dlr-t":
        n_target_classes = _checks.positive(n_target_classes, "n_target_classes",
                                            integer=True)
        targets = list(range(2, min(n_target_classes, k - 1) + 2))
    else:
        targets = [0]
    rng = driver.rng(seed)
    run = driver.compiled_loop(model, ("apgd", ball.name, loss, n_iter),
                               _loop(n_iter, ball.name, loss), n_iter, jit)

    x_adv = x.copy()
    success = driver.predict_labels(model, x, batch_size) != y

    def attack(rank, idx, size):
        start = ball.numpy_unit_direction(rng, (len(idx),) + x.shape[1:])
        out = driver.call(run, size, [x[idx], y[idx], start],
                          [np.full(size, eps, "float32"), np.full(size, rank, "int32")])
        ok = out["success"].astype(bool)
        x_adv[idx[ok]] = out["x_adv"][ok]
        success[idx[ok]] = True

    driver.sweep([rank for rank in targets for _ in range(restarts)],
                 lambda: np.flatnonzero(~success), attack, batch_size=batch_size,
                 progress=progress)
    x_adv = driver.guard(x_adv, x, eps, ball)
    return x_adv, driver.predict_labels(model, x_adv, batch_size) != y


register("apgd-ce", "APGD-CE", functools.partial(apgd, loss="ce"))
register("apgd-dlr", "APGD-DLR", functools.partial(apgd, loss="dlr"))
register("apgd-t", "APGD-T", functools.partial(apgd, loss="dlr-t"))

__all__ = ["apgd", "apgd_batch", "apgd_checkpoints"]
