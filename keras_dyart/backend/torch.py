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
import weakref

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
    # The search calls the model on the same batch shape every step: its forward pass is
    # replayed from recorded operations (`recorded_forward`), with each step's weights.
    with torch.no_grad():
        return fn(recorded_forward(model), *args), state


def step_scope():
    return fast_layout()


def num_replicas():
    """1: the train step sees the whole batch (JAX's data parallelism shards inside it)."""
    return 1


def compile_model_fn(model, fn, jit=False):
    # ``jit``: the model's forward pass is replayed from its recorded operations
    # (`recorded_forward`), PyTorch's counterpart of tracing it into a graph.  Both hold
    # the model by a weak reference: compiled functions are cached per model
    # (`keras_dyart.attacks.driver.compiled`) and must not keep it alive.
    if jit:
        forward = recorded_forward(model)
    else:
        model = weakref.proxy(model)

        def forward(z):
            return model(z, training=False)

    def run(*args):
        # No autograd graph outside our own input gradients (`value_and_grad` re-enables
        # it): a graph kept alive by a loop carry holds every intermediate activation.
        with torch.no_grad(), fast_layout():
            return fn(forward, *args)

    return run


# -- the inference forward pass, recorded once per input shape ------------------------------

# Keras's PyTorch backend runs a model call as Python, layer by layer: every layer's
# ``__call__`` (argument checks, scopes, the dtype policy, tracking) costs tens of
# microseconds around its kernels.  For the small CNN on 49 MNIST images the kernels take
# about 5 ms and the call 9-12 ms; Square calls the model 5,000 times per batch.  So, once
# a model has been called twice with one input shape, the PyTorch operations of
# ``model(z, training=False)`` are recorded (`make_fx` on fake tensors: no arithmetic, the
# weights as inputs) and later calls replay them: the same operations on the same tensors,
# so the same numbers bit for bit, with the weights' current values at every call.  What
# cannot be recorded (Python that branches on a tensor's values, an unbuilt model, an
# operation fake tensors do not support) runs as Keras runs it, for that model from then
# on.  As with `tf.function` and `jax.jit`, Python state that the call reads other than
# tensors (a flag on a layer) is fixed when a shape is recorded.
# `keras_dyart.config.set_fast_kernels(False)` turns the recording off.
_RECORDED = weakref.WeakKeyDictionary()


class _RecordedForward:
    """``model(z, training=False)``, replayed per input (shape, strides, dtype, device,
    grad mode) from the operations recorded at that input's second call."""

    LIMIT = 64      # recordings kept per model (the oldest go first)

    def __init__(self, model):
        self._model = weakref.ref(model)    # the cache of recordings must not keep it alive
        self.variables = None
        self.graphs = {}
        self.calls = {}
        self.failure = None     # why recording is off for this model, once it failed

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise ReferenceError("the model of this compiled function no longer exists")
        return model

    def __call__(self, z):
        model = self.model
        if (self.failure is not None or not isinstance(z, torch.Tensor)
                or not config.fast_kernels() or not model.built
                or torch.compiler.is_compiling()):     # `torch.compile` traces the call itself
            return model(z, training=False)
        key = (tuple(z.shape), z.stride(), z.dtype, z.device, torch.is_grad_enabled())
        graph = self.graphs.get(key)
        if graph is None:
            self.calls[key] = self.calls.get(key, 0) + 1
            if self.calls[key] < 2:         # a shape met once is not worth recording
                return model(z, training=False)
            graph = self._record(key, z)
            if graph is None:
                return model(z, training=False)
        return graph([v.value for v in self.variables], z)

    def _record(self, key, z):
        from torch.fx.experimental.proxy_tensor import make_fx

        model = self.model
        if self.variables is None:
            self.variables = list(model.variables)
        variables = self.variables

        def forward(values, z):
            # The variables read inside the scope are the graph's inputs; nothing is
            # created or initialised inside it.
            with keras.StatelessScope(state_mapping=list(zip(variables, values)),
                                      initialize_variables=False):
                return model(z, training=False)

        try:
            with fast_layout():
                graph = make_fx(forward, tracing_mode="fake")(
                    [v.value for v in variables], z)
            if len(model.variables) != len(variables):
                raise RuntimeError("the call created variables")
        except Exception as error:  # noqa: BLE001 - what cannot be recorded runs as Keras runs it
            self.failure = f"{type(error).__name__}: {error}"
            self.graphs.clear()
            return None
        if len(self.graphs) >= self.LIMIT:
            self.graphs.pop(next(iter(self.graphs)))
        self.graphs[key] = graph
        self.calls.pop(key, None)
        return graph


def recorded_forward(model):
    """``z -> model(z, training=False)`` for PyTorch tensors, replayed from the recorded
    operations of the call for each input met twice (`_RecordedForward`); one per model,
    shared by its compiled functions."""
    try:
        forward = _RECORDED.get(model)
    except TypeError:                       # a model that cannot be weakly referenced
        return _RecordedForward(model)
    if forward is None:
        forward = _RECORDED[model] = _RecordedForward(model)
    return forward


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
