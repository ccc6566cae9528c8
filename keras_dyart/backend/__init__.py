"""The only backend-specific code: input gradients, the train-step hook and compiled calls.

Each module (``jax``, ``tensorflow``, ``torch``) exposes the same functions, the way
Keras keeps one ``trainer.py`` per backend:

- ``value_and_grad(f, x)``: per-row values of ``f`` and the gradient of their sum w.r.t. ``x``.
- ``robust_train_step(model, parent_step, *args)``: run the model's boundary search with the
  step's own state, then hand the weight update to Keras's ``train_step`` (``parent_step``).
- ``compile_model_fn(model, fn, jit)``: a callable running ``fn(logits_fn, *args)`` with the
  model in inference mode, compiled where the backend allows;
- ``unroll_loops()``: whether the iterations of a search or attack run faster written out one
  after another than as a compiled loop (see `fori_loop`);
- ``fuse(fn)``: ``fn``, a function of tensors doing elementwise work only (the FAB update),
  compiled into fused kernels where the backend would otherwise run it op by op: XLA on
  TensorFlow, ``torch.compile`` on PyTorch (large batches), the identity under JAX's jit.
"""

import importlib
import os

import keras
from keras import ops

# Loops longer than this stay compiled loops even where unrolling runs faster: the boundary
# search (20 iterations) and the inner attacks of training (10 steps) compile once per run,
# but an evaluation compiles its 100-iteration attacks once per padded batch size, and there
# the compile time of the written-out loop outweighs its speed (AutoAttack on 100 points under
# JAX: 477 s written out, 299 s as loops).
MAX_UNROLL = 32


def current():
    """The backend module matching ``keras.backend.backend()``."""
    name = keras.backend.backend()
    if name not in ("jax", "tensorflow", "torch"):
        raise RuntimeError(
            f"keras-dyart supports the jax, tensorflow and torch backends; "
            f"KERAS_BACKEND is {name!r}.")
    return importlib.import_module(f"keras_dyart.backend.{name}")


def value_and_grad(f, x):
    return current().value_and_grad(f, x)


def compile_model_fn(model, fn, jit=True):
    return current().compile_model_fn(model, fn, jit)


def unroll_loops():
    """Whether `fori_loop` writes loops out; ``KERAS_DYART_UNROLL=0/1`` overrides the
    backend's choice."""
    env = os.environ.get("KERAS_DYART_UNROLL", "").strip().lower()
    if env in ("0", "false", "no"):
        return False
    if env in ("1", "true", "yes"):
        return True
    if env:
        raise ValueError(
            f"KERAS_DYART_UNROLL must be 0 or 1 (or unset for the backend's choice); got "
            f"{os.environ['KERAS_DYART_UNROLL']!r}.")
    return current().unroll_loops()


def fuse(fn):
    """``fn`` (elementwise work between two network passes) compiled into fused kernels
    where the backend runs it op by op and fusing is enabled; else ``fn`` itself."""
    return current().fuse(fn)


def fori_loop(lower, upper, body, init):
    """``keras.ops.fori_loop`` over static bounds, written out iteration by iteration where
    the backend runs loop bodies slowly.

    On CPU, XLA (JAX) and TensorFlow's graph runtime execute a convolution inside a
    ``while`` loop 2–5× slower than the same convolution outside one (a PreAct ResNet's
    20 input-gradient passes: 2.4 s as a loop, 0.48 s written out, under JAX; partial
    unrolling does not help).  Writing the loop out costs compile time that grows with the
    number of iterations, so loops longer than `MAX_UNROLL` (32) stay loops.  ``body`` receives
    the iteration index as an int32 tensor either way.
    """
    if (unroll_loops() and isinstance(lower, int) and isinstance(upper, int)
            and upper - lower <= MAX_UNROLL):
        carry = init
        for i in range(lower, upper):
            carry = body(ops.convert_to_tensor(i, "int32"), carry)
        return carry
    return ops.fori_loop(lower, upper, body, init)
