"""JAX: `jax.value_and_grad` for input gradients; every model evaluation in the train step
goes through `stateless_call` with the step's traced state."""

import jax
import jax.numpy as jnp
from keras import StatelessScope
from keras.utils import unpack_x_y_sample_weight


def value_and_grad(f, x):
    def summed(z):
        v = f(z)
        return jnp.sum(v), v

    (_, v), g = jax.value_and_grad(summed, has_aux=True)(x)
    return v, g


def robust_train_step(model, parent_step, state, data):
    trainable, non_trainable, optimizer_vars, metrics_vars = state
    x, y, _ = unpack_x_y_sample_weight(data)

    def logits_fn(z):
        return model.stateless_call(trainable, non_trainable, z, training=False)[0]

    # The scope makes the seed generator (a non-trainable variable) read and write the
    # traced state; its new value travels on in the state handed to Keras's step.
    mapping = list(zip(model.non_trainable_variables, non_trainable))
    with StatelessScope(state_mapping=mapping) as scope:
        model._prepare_robust_batch(logits_fn, x, y)
    non_trainable = [
        scope.get_current_value(v) if scope.get_current_value(v) is not None else old
        for v, old in zip(model.non_trainable_variables, non_trainable)
    ]
    return parent_step((trainable, non_trainable, optimizer_vars, metrics_vars), data)


def compile_model_fn(model, fn, jit=True):
    def pure(trainable, non_trainable, *args):
        def logits_fn(z):
            return model.stateless_call(trainable, non_trainable, z, training=False)[0]

        return fn(logits_fn, *args)

    compiled = jax.jit(pure) if jit else pure

    def run(*args):
        return compiled([v.value for v in model.trainable_variables],
                        [v.value for v in model.non_trainable_variables], *args)

    return run
