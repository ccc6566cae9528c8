"""The only backend-specific code: input gradients, inference inside a train step, compiled
calls and replica scaling.

Each module (``jax``, ``tensorflow``, ``torch``) exposes the same functions, the way
Keras keeps one ``trainer.py`` per backend:

- ``value_and_grad(f, x)``: per-row values of ``f`` and the gradient of their sum w.r.t. ``x``.
- ``inference(model, fn, state, *args)``: ``fn(logits_fn, *args)`` inside a train step, with
  ``logits_fn`` the model in inference mode at the step's own weights; returns ``(result,
  state)`` (JAX's step state carries the seed generator's new value; the other backends
  have no state, ``()``).
- ``step_scope()``: a context manager around a whole train step (the fast kernels of
  `keras_dyart.config.fast_kernels`).
- ``compile_model_fn(model, fn, jit)``: a callable running ``fn(logits_fn, *args)`` with the
  model in inference mode, compiled where the backend allows;
- ``num_replicas()``: how many replicas each run the train step on part of the batch
  (TensorFlow's ``tf.distribute``; 1 elsewhere): Keras divides its loss by it;
- ``pads_batches()``: whether compiled attack functions are specialised to their batch
  size (each new size a compilation), so that the attacks pad their chunks to a few sizes
  (`keras_dyart.attacks.driver.bucket`); where they are not, padding is only wasted work;
- ``host_loops()``: whether an attack's iterations run faster as one compiled iteration
  called from the host than as a compiled loop (written out or not)
  (`keras_dyart.attacks.driver.compiled_loop`);
- ``unroll_loops()``: whether the iterations of a search or attack run faster written out one
  after another than as a compiled loop (see `fori_loop`);
- ``fuse(fn)``: ``fn``, a function of tensors doing elementwise work only (the FAB update),
  compiled into fused kernels where the backend would otherwise run it op by op: XLA on
  TensorFlow, ``torch.compile`` on PyTorch (large batches), the identity under JAX's jit.
- ``restore_malloc_thresholds()``: undo what the backend's input pipeline did to the host
  allocator (TensorFlow's generator datasets; `keras_dyart.recipe.HostMemory`); ``True``
  where something was set.
"""

from __future__ import annotations

import importlib

import keras
from keras import ops

from keras_dyart import config

# Loops longer than this stay compiled loops even where unrolling runs faster: the boundary
# search (20 iterations) and the inner attacks of training (10 steps) compile once per run,
# but an evaluation compiles its 100-iteration attacks once per padded batch size, and there
# the compile time of the written-out loop outweighs its speed (docs/performance.md).
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


def inference(model, fn, state, *args):
    return current().inference(model, fn, state, *args)


def step_scope():
    return current().step_scope()


def num_replicas() -> int:
    return current().num_replicas()


def pads_batches() -> bool:
    return current().pads_batches()


def host_loops() -> bool:
    return current().host_loops()


def unroll_loops() -> bool:
    """Whether `fori_loop` writes loops out: `keras_dyart.config.unroll_loops` where set,
    else the backend's choice."""
    forced = config.unroll_loops()
    return current().unroll_loops() if forced is None else forced


def fuse(fn):
    """``fn`` (elementwise work between two network passes) compiled into fused kernels
    where the backend runs it op by op and fusing is enabled; else ``fn`` itself."""
    return current().fuse(fn)


def restore_malloc_thresholds() -> bool:
    return current().restore_malloc_thresholds()


def fori_loop(lower, upper, body, init):
    """``keras.ops.fori_loop`` over static bounds, written out iteration by iteration where
    the backend runs loop bodies slowly.

    On CPU, XLA (JAX) and TensorFlow's graph runtime execute a convolution inside a
    ``while`` loop several times slower than the same convolution outside one (partial
    unrolling does not help; docs/performance.md).  Writing the loop out costs compile time
    that grows with the number of iterations, so loops longer than `MAX_UNROLL` (32) stay
    loops.  ``body`` receives the iteration index as an int32 tensor either way.
    """
    if (unroll_loops() and isinstance(lower, int) and isinstance(upper, int)
            and upper - lower <= MAX_UNROLL):
        carry = init
        for i in range(lower, upper):
            carry = body(ops.convert_to_tensor(i, "int32"), carry)
        return carry
    return ops.fori_loop(lower, upper, body, init)
