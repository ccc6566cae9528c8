"""JAX: `jax.value_and_grad` for input gradients; every model evaluation in the train step
goes through `stateless_call` with the step's traced state.

Max pooling: Keras lowers ``MaxPooling*D`` to ``lax.reduce_window``, whose gradient XLA:CPU
computes with ``select_and_scatter``, slow on CPU (many times the forward pool;
docs/performance.md).  While this module traces a step or
a compiled model function, non-overlapping "valid" max pooling (strides equal to the pool
size, the common case) keeps Keras's values but gets its own derivative rule (a
``custom_jvp``: the tangent of the first maximum of each window in scan order, read through
a reshape of the input into windows, which reverse mode turns into one elementwise pass):
the same derivatives, forward and reverse, as ``reduce_window``'s; other pooling keeps
Keras's implementation.
Keras has no public hook for this: the function is replaced for the duration of the block
only, `keras_dyart.config.set_fast_kernels(False)` turns it off, and a Keras without it gets
a warning and Keras's own pooling.
"""

import contextlib
import functools
import inspect
import itertools
import weakref

import jax
import jax.numpy as jnp
import keras
from keras import StatelessScope

from keras_dyart.backend.swap import swapped

try:  # Keras's JAX ops module, looked up by `keras.ops.max_pool` at call time
    from keras.src.backend.jax import nn as _keras_jax_nn
except ImportError:  # pragma: no cover - other Keras layouts
    _keras_jax_nn = None

_keras_max_pool = getattr(_keras_jax_nn, "max_pool", None)


def _tuple(v, n):
    return (int(v),) * n if isinstance(v, int) else tuple(int(s) for s in v)


def _window_shape(shape, first, pool):
    """``shape`` with each pooled spatial size ``s`` (cropped to whole windows) split into
    ``(s // p, p)``: the window offset axis follows its spatial axis."""
    out = list(shape[:first])
    for s, p in zip(shape[first:first + len(pool)], pool):
        out += [s // p, p]
    return tuple(out + list(shape[first + len(pool):]))


def _crop(inputs, first, pool):
    index = [slice(None)] * inputs.ndim
    for i, p in enumerate(pool):
        index[first + i] = slice(0, (inputs.shape[first + i] // p) * p)
    return inputs[tuple(index)]


def _windows(inputs, first, pool):
    return _crop(inputs, first, pool).reshape(_window_shape(inputs.shape, first, pool))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _window_max(inputs, first, pool):
    # Keras's own pooling for the values (XLA's forward ``reduce_window`` is fast)
    data_format = "channels_last" if first == 1 else "channels_first"
    return _keras_max_pool(inputs, pool, pool, "valid", data_format)


@_window_max.defjvp
def _window_max_jvp(first, pool, primals, tangents):
    """The tangent of the first maximum of each window in scan order, the element
    ``reduce_window``'s gradient (XLA's ``select_and_scatter``) picks; reverse mode
    transposes it into one elementwise pass instead of ``select_and_scatter``."""
    (inputs,), (tangent,) = primals, tangents
    out = _window_max(inputs, first, pool)
    windows, tangent = _windows(inputs, first, pool), _windows(tangent, first, pool)
    seen, tangent_out = None, None
    for offset in itertools.product(*(range(p) for p in pool)):
        index = [slice(None)] * windows.ndim
        for i, o in enumerate(offset):
            index[first + 2 * i + 1] = o
        index = tuple(index)
        hit = windows[index] == out
        first_hit = hit if seen is None else jnp.logical_and(hit, jnp.logical_not(seen))
        seen = hit if seen is None else jnp.logical_or(seen, hit)
        term = jnp.where(first_hit, tangent[index], jnp.zeros_like(out))
        tangent_out = term if tangent_out is None else tangent_out + term
    return out, tangent_out


def _reshape_max_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    """Keras's ``max_pool`` for non-overlapping valid windows, with its own derivative rule
    (to the first maximum of each window, as with ``reduce_window``)."""
    fmt = (data_format or keras.config.image_data_format()).lower()
    nd = inputs.ndim - 2
    try:
        pool = _tuple(pool_size, nd)
        stride = pool if strides is None else _tuple(strides, nd)
    except TypeError:
        pool, stride = None, None
    if (nd < 1 or pool is None or len(pool) != nd or stride != pool
            or str(padding).lower() != "valid"):
        return _keras_max_pool(inputs, pool_size, strides, padding, data_format)
    first = 1 if fmt == "channels_last" else 2
    return _window_max(inputs, first, pool)


def fast_pooling():
    """Within the block, Keras's JAX ``max_pool`` has the derivative rule above where it applies
    (unless `keras_dyart.config.fast_kernels` is off).  CPU only: it exists because
    XLA:CPU's pooling gradient is slow; on accelerators Keras's pooling is kept."""
    if jax.default_backend() != "cpu":
        return contextlib.nullcontext()
    return swapped(_keras_jax_nn, "max_pool", _reshape_max_pool, "JAX max-pooling")


def inference_kwargs(model) -> dict:
    """``{"training": False}`` where ``model.call`` takes it.  ``stateless_call`` hands its
    keywords to ``call`` as they are (``model(...)`` drops those ``call`` lacks), so a
    subclassed model whose ``call(self, x)`` has no ``training`` would fail on it."""
    try:
        params = inspect.signature(model.call).parameters.values()
    except (TypeError, ValueError):
        return {"training": False}
    takes = any(p.name == "training" or p.kind is p.VAR_KEYWORD for p in params)
    return {"training": False} if takes else {}


def value_and_grad(f, x):
    def summed(z):
        v = f(z)
        return jnp.sum(v), v

    (_, v), g = jax.value_and_grad(summed, has_aux=True)(x)
    return v, g


def inference(model, fn, state, *args):
    """``state`` is ``(step_state,)``, the ``(trainable, non_trainable, optimizer, metrics)``
    values Keras's JAX trainer hands its ``train_step``."""
    (trainable, non_trainable, optimizer_vars, metrics_vars), = state

    kwargs = inference_kwargs(model)

    def logits_fn(z):
        return model.stateless_call(trainable, non_trainable, z, **kwargs)[0]

    # The scope makes the seed generator (a non-trainable variable) read and write the
    # traced state; its new value travels on in the state handed to Keras's step.
    mapping = list(zip(model.non_trainable_variables, non_trainable))
    with StatelessScope(state_mapping=mapping) as scope:
        out = fn(logits_fn, *args)
    non_trainable = [
        scope.get_current_value(v) if scope.get_current_value(v) is not None else old
        for v, old in zip(model.non_trainable_variables, non_trainable)
    ]
    return out, ((trainable, non_trainable, optimizer_vars, metrics_vars),)


def step_scope():
    return fast_pooling()


def num_replicas():
    """1: the train step sees the whole batch (JAX's data parallelism shards inside it)."""
    return 1


def compile_model_fn(model, fn, jit=True):
    # A weak reference: compiled functions are cached per model
    # (`keras_dyart.attacks.driver.compiled`) and must not keep it alive.
    kwargs = inference_kwargs(model)
    model = weakref.proxy(model)

    def pure(trainable, non_trainable, *args):
        def logits_fn(z):
            return model.stateless_call(trainable, non_trainable, z, **kwargs)[0]

        return fn(logits_fn, *args)

    compiled = jax.jit(pure) if jit else pure

    def run(*args):
        with fast_pooling():
            return compiled([v.value for v in model.trainable_variables],
                            [v.value for v in model.non_trainable_variables], *args)

    return run


def pads_batches():
    """``jax.jit`` compiles once per input shape: the attacks pad their chunks."""
    return True


def host_loops():
    """On CPU: XLA runs the convolutions of a ``while`` body about 1.4x slower than
    the same convolutions called from the host, so the attacks' 100-iteration loops run as
    one compiled iteration called from the host (`keras_dyart.attacks.driver.compiled_loop`)."""
    return jax.default_backend() == "cpu"


def unroll_loops():
    """Write loops out on CPU: XLA:CPU runs convolutions inside a ``while`` body several
    times slower than outside one; on accelerators the compiled loop is kept."""
    return jax.default_backend() == "cpu"


def fuse(fn):
    """The identity: the whole search runs under ``jax.jit``, where XLA fuses the
    elementwise work already."""
    return fn


def restore_malloc_thresholds() -> bool:
    """Nothing to undo: only TensorFlow's generator datasets change malloc's settings."""
    return False
