"""Projected gradient descent (Madry et al., 2018) for L∞ and L2, with CE or CW loss."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from keras import ops

from keras_dyart import backend as dyart_backend
from keras_dyart import geometry
from keras_dyart.attacks import driver
from keras_dyart.attacks import losses as L
from keras_dyart.attacks.registry import register

if TYPE_CHECKING:
    import keras

_LOSSES = {"ce": L.ce_loss, "cw": L.cw_loss}


def attack_loss(logits, y, loss: str = "ce"):
    """Per-sample loss to ascend: cross-entropy (``"ce"``) or the CW margin loss
    ``max_{j≠y} f_j − f_y`` (``"cw"``)."""
    return _LOSSES[loss](logits, y)


def pgd_batch(logits_fn: Callable, x: Any, y: Any, noise: Any, eps: Any, step_size: Any, steps: int,
              norm: str = "linf", loss: str = "ce") -> tuple[Any, Any]:
    """PGD on one batch from ``x + noise`` (noise already scaled into the ball).

    Returns ``(x_adv, success)`` for the last iterate; ``success`` is a bool per row.
    """
    out = driver.run_loop(_loop(norm, loss), steps, logits_fn, x, y, noise, eps, step_size)
    return out["x_adv"], out["success"]


def _loop(norm, loss) -> driver.Loop:
    """PGD as a `keras_dyart.attacks.driver.Loop` (setup, one step, finish)."""
    return driver.Loop(functools.partial(_setup, norm=norm),
                       functools.partial(_body, norm=norm, loss=loss), _finish)


def _setup(logits_fn, x, y, noise, eps, step_size, *, norm):
    x, noise = (ops.convert_to_tensor(v, "float32") for v in (x, noise))
    y = ops.cast(ops.convert_to_tensor(y), "int32")
    return (x, y, eps, step_size), geometry.get(norm).project(x + noise, x, eps)


def _body(logits_fn, consts, i, z, *, norm, loss):
    x, y, eps, step_size = consts
    ball = geometry.get(norm)
    _, g = dyart_backend.value_and_grad(lambda v: attack_loss(logits_fn(v), y, loss), z)
    return ball.project(z + step_size * ball.ascent(g), x, eps)


def _finish(logits_fn, consts, z):
    return {"x_adv": z, "success": ops.argmax(logits_fn(z), axis=-1) != consts[1]}


@driver.with_bounds(returns="success")
def pgd(model: keras.Model, x: np.ndarray, y: np.ndarray, eps: float | str, *, norm: str = "linf",
        steps: int = 40, rel_step: float = 0.1, loss: str = "ce", random_start: bool = True,
        restarts: int = 1, batch_size: int = 250, seed: int = 0, jit: bool = True,
        progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
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
        restarts: each restart attacks the points no earlier one broke; a point keeps its
            first successful restart (else the last one's point).
        batch_size: points per compiled call.
        seed: seed of the random starts (NumPy, so the same seed gives the same starts on
            every backend).
        jit: compile the attack step (default True).
        progress: optional callable ``progress(done, total)`` after each restart.
        bounds: ``(lower, upper)`` of the model's inputs (default: the model's own
            ``bounds``, else (0, 1)); x and every length are in their units.

    Returns:
        ``(x_adv, success)`` as NumPy arrays: adversarial inputs inside the ball and the box
        (exactly, checked in float64), and whether each is misclassified.
    """
    x, y, ball, eps, steps, restarts, batch_size = driver.check(
        x, y, norm, eps, steps=steps, restarts=restarts, batch_size=batch_size)
    loss = loss.lower() if isinstance(loss, str) else loss
    if loss not in _LOSSES:
        raise ValueError(f"`loss` must be 'ce' or 'cw'; got {loss!r}.")
    driver.num_classes(model, x, y)
    rng = driver.rng(seed)
    run = driver.compiled_loop(model, ("pgd", ball.name, steps, loss), _loop(ball.name, loss),
                               steps, jit)
    # eps and the step are inputs of the compiled function, so one trace serves every eps.
    shared = (np.float32(eps), np.float32(rel_step * eps))
    x_adv = x.copy()
    done = np.zeros(len(x), bool)

    def attack(_, idx, size):
        shape = (len(idx),) + x.shape[1:]
        noise = (ball.numpy_uniform_ball(rng, shape, eps) if random_start
                 else np.zeros(shape, "float32"))
        out = driver.call(run, size, [x[idx], y[idx], noise], shared)
        adv, ok = out["x_adv"], out["success"]
        x_adv[idx] = adv                 # the first success stays: idx holds undone points
        done[idx] = ok.astype(bool)

    driver.sweep(range(restarts), lambda: np.flatnonzero(~done), attack,
                 batch_size=batch_size, progress=progress)
    x_adv = driver.guard(x_adv, x, eps, ball)
    return x_adv, driver.predict_labels(model, x_adv, batch_size) != y


def _label(loss: str):
    """PGD's table label for the options it ran with: its steps, and restarts if several."""
    def label_of(options: dict) -> str:
        restarts = int(options.get("restarts", 1))
        return (f"PGD-{int(options.get('steps', 40))} ({loss})"
                + (f", {restarts} restarts" if restarts > 1 else ""))
    return label_of


register("pgd", "PGD-40 (CE)", functools.partial(pgd, loss="ce"), label_of=_label("CE"))
register("pgd-cw", "PGD-40 (CW)", functools.partial(pgd, loss="cw"), label_of=_label("CW"))

__all__ = ["attack_loss", "pgd", "pgd_batch"]
