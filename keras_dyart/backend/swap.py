"""Swapping a function inside Keras's backend for the length of a block: the JAX pooling and
PyTorch layout fast paths (`keras_dyart.config.fast_kernels`).  Keras has no public hook for
either, so the swap is loud where the function is missing and off with the switch."""

from __future__ import annotations

import contextlib
import warnings

from keras_dyart import config

_warned: set = set()


@contextlib.contextmanager
def swapped(owner, name: str, replacement, what: str):
    """Within the block, ``owner.name`` is ``replacement`` (and is put back after, also on
    an error; a nested block leaves it to the outer one).  Nothing is swapped where
    `keras_dyart.config.fast_kernels` is off; where ``owner`` lacks ``name`` (another Keras
    layout) a warning says so once, naming ``what``, and Keras's own function runs."""
    if not config.fast_kernels():
        yield
        return
    original = getattr(owner, name, None) if owner is not None else None
    if original is None:
        if what not in _warned:
            _warned.add(what)
            warnings.warn(
                f"keras-dyart's {what} fast path is off: this Keras has no {name} where it "
                f"is expected. Results are the same, only slower; "
                f"keras_dyart.config.set_fast_kernels(False) silences this.",
                RuntimeWarning, stacklevel=4)
        yield
        return
    if original is replacement:
        yield
        return
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)
