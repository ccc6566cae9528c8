"""TensorFlow: `tf.GradientTape` for input gradients (outside any outer tape)."""

import contextlib
import weakref

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
    # A weak reference: compiled functions are cached per model
    # (`keras_dyart.attacks.driver.compiled`) and must not keep it alive.
    model = weakref.proxy(model)

    def run(*args):
        return fn(lambda z: model(z, training=False), *args)

    xla = jit == "xla" or (bool(jit) and _xla_helps())
    return tf.function(run, jit_compile=xla, reduce_retracing=True, autograph=False)


def pads_batches():
    """XLA (on an accelerator) compiles once per input shape; without it, a
    ``tf.function`` with ``reduce_retracing`` traces a second shape once with the batch
    dimension left open and reuses that graph for every size, so padding would only add
    rows to compute."""
    return _xla_helps()


def host_loops():
    """No: on CPU, TensorFlow's graph ran APGD-T's iterations no faster written out than
    as its loop (docs/performance.md), so host calls would have nothing to win."""
    return False


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


# glibc's mallopt parameters, and the values its dynamic thresholds grow to on 64-bit
# systems (DEFAULT_MMAP_THRESHOLD_MAX, and twice that for trimming).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 64 << 20


def _glibc():
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def restore_malloc_thresholds() -> bool:
    """Undo TensorFlow's malloc setting for generator datasets; True where it was set.

    Creating a ``tf.data.Dataset.from_generator`` (which Keras does for every `PyDataset`
    and Python generator given to ``fit`` on this backend) calls glibc's
    ``mallopt(M_TRIM_THRESHOLD, 128 KB)``.  Setting any threshold turns off glibc's dynamic
    thresholds, so from then on every allocation above 128 KB (a batch of activations) is a
    fresh ``mmap`` whose pages fault in and are returned at ``free``: on the CPU a DyART
    epoch on MNIST spent 84 s in the kernel against 3 s, and took 30 s instead of 16 s.
    This sets the thresholds to the values glibc's dynamic rule would reach (mmap above
    32 MiB, trim above 64 MiB free), so freed memory is reused as it was before the
    generator.  A no-op outside Linux with glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
