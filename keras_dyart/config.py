"""Switches of keras-dyart's execution (none changes a result, only how it is computed).

Each switch has a getter and a setter, like ``keras.config``; its starting value comes from
an environment variable read once, when keras-dyart is imported (`reload` reads them
again):

- `unroll_loops`: ``None`` (the backend decides: written out on CPU, compiled loops on
  accelerators), ``True`` or ``False``; environment ``KERAS_DYART_UNROLL`` = ``0`` / ``1``.
- `torch_compile`: ``"auto"`` (every batch on a GPU, large batches only on the CPU),
  ``"on"`` or ``"off"``; environment
  ``KERAS_DYART_TORCH_COMPILE`` = ``auto`` / ``1`` / ``0``.
- `fast_kernels`: ``True`` or ``False``; environment ``KERAS_DYART_FAST_KERNELS`` = ``1`` /
  ``0``.

What they do:

- ``unroll_loops``: whether the fixed-length loops of the searches and attacks
  (`keras_dyart.backend.fori_loop`, up to 32 iterations) are written out iteration by
  iteration or kept as compiled loops.
- ``torch_compile``: whether PyTorch fuses the boundary search's elementwise work with
  ``torch.compile`` (`keras_dyart.backend.fuse`).
- ``fast_kernels``: while keras-dyart runs a train step or a compiled search or attack, JAX's
  non-overlapping max pooling gets its own gradient rule (on the CPU only, whose
  pooling gradient is slow) and PyTorch's 4-D layout change is a view instead of a copy;
  and PyTorch replays the model's inference forward pass from its recorded operations
  instead of running Keras's layer calls in Python each time (the same numbers; see
  docs/performance.md).  The first two replace a function inside Keras's backend for the
  duration of the call (Keras has no public hook for it); ``False`` leaves Keras untouched.

>>> from keras_dyart import config
>>> config.set_unroll_loops(False)
>>> config.unroll_loops()
False
>>> config.set_unroll_loops(None)   # back to the backend's choice
"""

from __future__ import annotations

import os

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
TORCH_COMPILE_MODES = ("auto", "on", "off")

_settings: dict = {}


def _flag(name: str, text: str | None, allow_unset: bool):
    value = (text or "").strip().lower()
    if not value and allow_unset:
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be 0 or 1" + (" (or unset)" if allow_unset else "")
                     + f"; got {text!r}.")


def unroll_loops() -> bool | None:
    """Whether searches and attacks write short loops out (``None``: the backend's
    choice)."""
    return _settings["unroll_loops"]


def set_unroll_loops(value: bool | None) -> None:
    """``True`` / ``False`` to force writing loops out or keeping them compiled; ``None``
    for the backend's choice."""
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"`value` must be True, False or None; got {value!r}.")
    _settings["unroll_loops"] = value


def torch_compile() -> str:
    """``"auto"``, ``"on"`` or ``"off"``: see the module docstring."""
    return _settings["torch_compile"]


def set_torch_compile(mode: str | bool) -> None:
    """``"auto"`` (every batch on a GPU; on the CPU batches of at least
    `keras_dyart.backend.torch.FUSE_MIN_ELEMENTS` numbers), ``"on"`` / ``True`` (every
    batch) or ``"off"`` / ``False``."""
    if isinstance(mode, bool):
        mode = "on" if mode else "off"
    if mode not in TORCH_COMPILE_MODES:
        raise ValueError(f"`mode` must be one of {TORCH_COMPILE_MODES} or a bool; got "
                         f"{mode!r}.")
    _settings["torch_compile"] = mode


def fast_kernels() -> bool:
    """Whether the JAX pooling, PyTorch layout and PyTorch recorded-forward fast paths are
    on."""
    return _settings["fast_kernels"]


def set_fast_kernels(enabled: bool) -> None:
    """Turn the JAX pooling, PyTorch layout and PyTorch recorded-forward fast paths on or
    off."""
    if not isinstance(enabled, bool):
        raise ValueError(f"`enabled` must be True or False; got {enabled!r}.")
    _settings["fast_kernels"] = enabled


def reload() -> None:
    """Read the switches from the environment again (unset variables: the defaults)."""
    env = os.environ
    unroll = _flag("KERAS_DYART_UNROLL", env.get("KERAS_DYART_UNROLL"), allow_unset=True)
    text = env.get("KERAS_DYART_TORCH_COMPILE", "").strip().lower()
    if text in ("", "auto"):
        mode = "auto"
    elif text in _TRUE + _FALSE:
        mode = "on" if text in _TRUE else "off"
    else:
        raise ValueError(f"KERAS_DYART_TORCH_COMPILE must be 'auto', 0 or 1; got "
                         f"{env['KERAS_DYART_TORCH_COMPILE']!r}.")
    fast = _flag("KERAS_DYART_FAST_KERNELS", env.get("KERAS_DYART_FAST_KERNELS"),
                 allow_unset=True)
    _settings.update(unroll_loops=unroll, torch_compile=mode,
                     fast_kernels=True if fast is None else fast)


reload()

__all__ = ["TORCH_COMPILE_MODES", "fast_kernels", "reload", "set_fast_kernels",
           "set_torch_compile", "set_unroll_loops", "torch_compile", "unroll_loops"]
