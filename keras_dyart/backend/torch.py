"""PyTorch: `torch.autograd.grad` on a detached input for input gradients (eager).

Layout: Keras's PyTorch convolution and pooling take NHWC tensors, permute them to NCHW and
copy them with ``.contiguous()``; the convolution then copies them back to PyTorch's
``channels_last`` memory format, which is NHWC memory again.  Two full copies per layer, and
their backward: a third of the small CNN's input-gradient time on CPU and half of a DyART
step's.  While this module runs a train step, an input gradient or a compiled model
function, 4-D inputs are only permuted (a view: an NHWC-contiguous tensor viewed as NCHW *is*
``channels_last``), which PyTorch's convolution and pooling kernels take as they are.  The
numbers are bit-for-bit those of Keras's path (tested); only the copies go
(docs/performance.md).  Keras has no public hook for this: the helper is replaced for the
duration of the block only, `keras_dyart.config.set_fast_kernels(False)` turns it off, and
a Keras without the helper gets a warning and Keras's own path.
"""

import warnings

import keras
import torch

from keras_dyart import config
from keras_dyart.backend.swap import swapped

try:  # Keras's PyTorch ops module; its layout helper is looked up at call time
    from keras.src.backend.torch import nn as _keras_torch_nn
except ImportError:  # pragma: no cover - other Keras layouts
    _keras_torch_nn = None

_keras_transpose = getattr(_keras_torch_nn, "_transpose_spatial_inputs", None)


def _permute_spatial_inputs(inputs):
    """NHWC → NCHW as a view for 4-D tensors (``channels_last`` memory); else Keras's own."""
    if inputs.ndim == 4:
        return torch.permute(inputs, (0, 3, 1, 2))
    return _keras_transpose(inputs)


def fast_layout():
    """Within the block, Keras's PyTorch convolutions and pooling skip the layout copies
    (unless `keras_dyart.config.fast_kernels` is off)."""
    return swapped(_keras_torch_nn, "_transpose_spatial_inputs", _permute_spatial_inputs,
                   "PyTorch layout")


def value_and_grad(f, x):
    with torch.enable_grad(), fast_layout():
        if not isinstance(x, torch.Tensor):     # NumPy: onto Keras's device (a GPU too)
            x = keras.ops.convert_to_tensor(x)
        z = x.detach().requires_grad_(True)
        v = f(z)
        (g,) = torch.autograd.grad(v.sum(), z, allow_unused=True)
    if g is None:
        g = torch.zeros_like(z)
    return v.detach(), g.detach()


def inference(model, fn, state, *args):
    # The result is a constant of the loss: no autograd graph for its forward passes
    # (`value_and_grad` re-enables it for its own input gradients).
    with torch.no_grad():
        return fn(lambda z: model(z, training=False), *args), state


def step_scope():
    return fast_layout()


def num_replicas():
    """1: the train step sees the whole batch (JAX's data parallelism shards inside it)."""
    return 1


def compile_model_fn(model, fn, jit=False):
    def run(*args):
        # No autograd graph outside our own input gradients (`value_and_grad` re-enables
        # it): a graph kept alive by a loop carry holds every intermediate activation.
        with torch.no_grad(), fast_layout():
            return fn(lambda z: model(z, training=False), *args)

    return run


def pads_batches():
    """Eager PyTorch runs any batch size as it comes (the fused elementwise parts turn
    dynamic after one change of shape): padding would only add rows to compute."""
    return False


def host_loops():
    """No: eager PyTorch runs every loop from the host already."""
    return False


def unroll_loops():
    """Eager PyTorch runs a loop in Python either way."""
    return True


# -- fused elementwise work (`keras_dyart.backend.fuse`) ------------------------------------

# A FAB iteration's elementwise work (record, step back, projection, mix: ~80 ops over
# (N, d)) runs op by op in eager PyTorch, each op a pass through memory; `torch.compile`
# fuses it into a few loops.  Compiling costs a few seconds per function and input shape
# class (shapes are specialised first, then made dynamic on the first change), so "auto"
# compiles only batches of at least `FUSE_MIN_ELEMENTS` numbers, where the saving pays for
# it within a few epochs (docs/performance.md); `keras_dyart.config.set_torch_compile`
# ("on": every batch, "off": none).  A compilation that fails (no C++ compiler, say) warns
# once and runs eagerly.
FUSE_MIN_ELEMENTS = 65536

_compiled = {}
_failed = set()


def on_accelerator(tensors) -> bool:
    """Whether the tensors live on a GPU (or another non-CPU device)."""
    return any(t.device.type != "cpu" for t in tensors)


def _worth_compiling(tensors) -> bool:
    # On a GPU each op of the update is a kernel launch, which fusing saves at any size; on
    # the CPU small batches do not repay the compile time.
    if on_accelerator(tensors):
        return True
    return max((t.numel() for t in tensors), default=0) >= FUSE_MIN_ELEMENTS


def fuse(fn):
    """``fn`` compiled by `torch.compile` as `keras_dyart.config.torch_compile` asks
    (``"auto"``: every batch on a GPU, batches of at least `FUSE_MIN_ELEMENTS` numbers on
    the CPU); else ``fn`` itself."""
    mode = config.torch_compile()
    if mode == "off":
        return fn

    def run(*args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if fn in _failed or (mode == "auto" and not _worth_compiling(tensors)):
            return fn(*args, **kwargs)
        if fn not in _compiled:
            _compiled[fn] = torch.compile(fn)
        try:
            return _compiled[fn](*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure: run eagerly
            _failed.add(fn)
            warnings.warn(
                f"torch.compile of {fn.__name__} failed ({type(error).__name__}: {error}); "
                f"running it eagerly. keras_dyart.config.set_torch_compile('off') (or "
                f"KERAS_DYART_TORCH_COMPILE=0) skips the attempt.",
                RuntimeWarning, stacklevel=2)
            return fn(*args, **kwargs)

    return run


def restore_malloc_thresholds() -> bool:
    """Nothing to undo: only TensorFlow's generator datasets change malloc's settings."""
    return False
