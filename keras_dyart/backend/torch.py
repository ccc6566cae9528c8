"""PyTorch: `torch.autograd.grad` on a detached input for input gradients (eager)."""

import torch
from keras.utils import unpack_x_y_sample_weight


def value_and_grad(f, x):
    with torch.enable_grad():
        z = torch.as_tensor(x).detach().requires_grad_(True)
        v = f(z)
        (g,) = torch.autograd.grad(v.sum(), z, allow_unused=True)
    if g is None:
        g = torch.zeros_like(z)
    return v.detach(), g.detach()


def robust_train_step(model, parent_step, data):
    x, y, _ = unpack_x_y_sample_weight(data)
    model._prepare_robust_batch(lambda z: model(z, training=False), x, y)
    return parent_step(data)


def compile_model_fn(model, fn, jit=False):
    def run(*args):
        return fn(lambda z: model(z, training=False), *args)

    return run


def unroll_loops():
    """Eager PyTorch runs a loop in Python either way."""
    return True
