"""Jacobian-vector products with respect to the weights: the one per-backend piece of the
boundary-speed analysis (`keras_dyart.dynamics`).

``param_jvp(model, fn, tangents, *args)`` evaluates ``v = fn(logits_fn, *args)`` (per-row
values, ``logits_fn`` runs the model in inference mode at its current weights) and returns
``(v, J·t)``: the derivative of each row of ``v`` along the weight change ``tangents`` (one
array per entry of ``model.trainable_variables``, same order and shapes).  Non-trainable
state (BatchNorm statistics, seeds) is held fixed.

- JAX: ``jax.jvp`` through ``stateless_call`` (compiled once per model and ``fn``);
- TensorFlow: ``tf.autodiff.ForwardAccumulator`` watching the trainable variables;
- PyTorch: the double-backward identity J·t = ∂/∂u [(Jᵀu)·t] (exact, no forward-mode AD
  needed on Keras layers).
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras


def _jax(model, fn, tangents, *args):
    import jax

    cache = model.__dict__.setdefault("_dyart_jvp_cache", {})
    compiled = cache.get(fn)
    if compiled is None:
        from keras_dyart.backend.jax import inference_kwargs

        kwargs = inference_kwargs(model)

        def pure(trainable, non_trainable, tangents, *args):
            def values(weights):
                return fn(lambda z: model.stateless_call(weights, non_trainable, z,
                                                         **kwargs)[0], *args)

            return jax.jvp(values, (trainable,), (tangents,))

        compiled = cache[fn] = jax.jit(pure)
    trainable = [v.value for v in model.trainable_variables]
    tangents = [jax.numpy.asarray(t, dtype=w.dtype) for t, w in zip(tangents, trainable)]
    return compiled(trainable, [v.value for v in model.non_trainable_variables], tangents,
                    *args)


def _tensorflow(model, fn, tangents, *args):
    import tensorflow as tf

    primals = [v.value for v in model.trainable_variables]
    tangents = [tf.convert_to_tensor(t, dtype=p.dtype) for t, p in zip(tangents, primals)]
    with tf.autodiff.ForwardAccumulator(primals, tangents) as acc:
        values = fn(lambda z: model(z, training=False), *args)
    jvp = acc.jvp(values, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return tf.stop_gradient(values), jvp


def _torch(model, fn, tangents, *args):
    import torch

    params = [v.value for v in model.trainable_variables]
    tangents = [torch.as_tensor(t, dtype=p.dtype, device=p.device)
                for t, p in zip(tangents, params)]
    with torch.enable_grad():
        values = fn(lambda z: model(z, training=False), *args)
        u = torch.zeros_like(values, requires_grad=True)
        grads = torch.autograd.grad(values, params, grad_outputs=u, create_graph=True,
                                    allow_unused=True)
        dot = sum((g * t).sum() for g, t in zip(grads, tangents) if g is not None)
        if not torch.is_tensor(dot) or not dot.requires_grad:
            return values.detach(), torch.zeros_like(values).detach()
        (jvp,) = torch.autograd.grad(dot, u, allow_unused=True)
    if jvp is None:
        jvp = torch.zeros_like(values)
    return values.detach(), jvp.detach()


_IMPLS = {"jax": _jax, "tensorflow": _tensorflow, "torch": _torch}


def param_jvp(model: keras.Model, fn: Callable, tangents: Sequence, *args) -> tuple:
    """Per-row values of ``fn(logits_fn, *args)`` and their derivative along ``tangents``.

    Args:
        model: the network; ``logits_fn`` runs it in inference mode at its current weights.
        fn: ``(logits_fn, *args) -> (N,)`` values.  On JAX its compiled JVP is cached on
            the model per ``fn``, so pass the same (module-level) function each time.
        tangents: the weight change, one array per entry of
            ``model.trainable_variables``.
        *args: the further arguments of ``fn`` (batches of inputs, labels, settings).

    Returns:
        ``(values, jvp)``: backend tensors of shape ``(N,)``.
    """
    name = keras.backend.backend()
    if name not in _IMPLS:
        raise RuntimeError(
            f"keras-dyart supports the jax, tensorflow and torch backends; "
            f"KERAS_BACKEND is {name!r}.")
    return _IMPLS[name](model, fn, tangents, *args)
