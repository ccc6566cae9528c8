"""TensorFlow: `tf.GradientTape` for input gradients (outside any outer tape)."""

import contextlib

import tensorflow as tf


def value_and_grad(f, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        v = f(x)
    g = tape.gradient(v, x)
    if g is None:
        g = tf.zeros_like(x)
    return tf.stop_gradient(v), g


def inference(model, fn, state, *args):
    return fn(lambda z: model(z, training=False), *args), state


def step_scope():
    return contextlib.nullcontext()


def num_replicas():
    """Replicas of the current `tf.distribute` strategy (1 outside one)."""
    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def _xla_helps():
    """XLA only where an accelerator is present, as Keras's ``jit_compile="auto"`` decides
    (on CPU, TensorFlow's oneDNN kernels run the input gradients faster than XLA:CPU's;
    docs/performance.md)."""
    return bool(tf.config.list_physical_devices("GPU") or
                tf.config.list_physical_devices("TPU"))


def compile_model_fn(model, fn, jit=False):
    """``jit=True`` compiles a graph (``tf.function``), with XLA only on an accelerator;
    ``jit="xla"`` forces XLA; ``jit=False`` a graph without XLA as well."""
    def run(*args):
        return fn(lambda z: model(z, training=False), *args)

    xla = jit == "xla" or (bool(jit) and _xla_helps())
    return tf.function(run, jit_compile=xla, reduce_retracing=True, autograph=False)


def unroll_loops():
    """Write loops out where there is no accelerator: the graph runtime runs a
    ``tf.while_loop`` body on CPU slower than the same ops unrolled."""
    return not _xla_helps()


_fused = {}


def fuse(fn):
    """XLA for the elementwise work only (no convolutions, which XLA:CPU runs slowly): the
    graph runtime runs each op as its own pass through memory, XLA fuses them."""
    if fn not in _fused:
        _fused[fn] = tf.function(fn, jit_compile=True, autograph=False)
    return _fused[fn]
