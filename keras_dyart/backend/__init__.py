"""The only backend-specific code: input gradients, the train-step hook and compiled calls.

Each module (``jax``, ``tensorflow``, ``torch``) exposes the same three functions, the way
Keras keeps one ``trainer.py`` per backend:

- ``value_and_grad(f, x)``: per-row values of ``f`` and the gradient of their sum w.r.t. ``x``.
- ``robust_train_step(model, parent_step, *args)``: run the model's boundary search with the
  step's own state, then hand the weight update to Keras's ``train_step`` (``parent_step``).
- ``compile_model_fn(model, fn, jit)``: a callable running ``fn(logits_fn, *args)`` with the
  model in inference mode, compiled where the backend allows.
"""

import importlib

import keras


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
