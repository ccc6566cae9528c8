"""Checks and conversions of image arrays and label vectors (NumPy), shared by the data
loaders (`keras_dyart.datasets`) and the input pipeline (`keras_dyart.pipeline`)."""

from __future__ import annotations

from typing import Any

import numpy as np


def pixels(x: np.ndarray, dtype: str, arg: str = "x") -> np.ndarray:
    """0–255 integer pixels (or floats in [0, 1]) → the requested dtype."""
    x = np.asarray(x)
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(
                f"`{arg}` holds integers outside 0–255 (got [{x.min()}, {x.max()}]); "
                "expected 8-bit pixels.")
        return x.astype("uint8") if dtype == "uint8" else x.astype("float32") / 255.0
    if x.dtype.kind == "f":
        if x.size and (not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"`{arg}` holds floats outside [0, 1]; expected images scaled to [0, 1] "
                "or 0–255 integer pixels.")
        if dtype == "uint8":
            return np.round(x * 255.0).astype("uint8")
        return x.astype("float32", copy=False)
    raise ValueError(f"`{arg}` must hold numeric pixels; got dtype {x.dtype}.")


def label_vector(y: Any, n: int, arg: str = "y") -> np.ndarray:
    """``y`` as int32 class indices of shape ``(n,)`` (``(n, 1)`` is taken too)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(
            f"`{arg}` must hold one integer label per image ({n}); got shape {y.shape}.")
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise ValueError(f"`{arg}` must hold integer class indices; got non-integer values.")
    if y.dtype.kind not in "iuf":
        raise ValueError(f"`{arg}` must hold integer class indices; got dtype {y.dtype}.")
    return y.astype("int32")


def nhwc(x: np.ndarray, arg: str = "x") -> np.ndarray:
    """``x`` as a batch of images ``(N, H, W, C)`` (grey images ``(N, H, W)`` gain C = 1)."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"`{arg}` must hold images of shape (N, height, width[, channels]); got shape "
            f"{x.shape}.")
    if x.shape[1] in (1, 3) and x.shape[3] not in (1, 3, 4):
        # (N, C, H, W) read as (N, H, W, C) would be images C pixels high with W channels
        raise ValueError(
            f"`{arg}` has shape {x.shape}, which looks channels-first (N, channels, height, "
            f"width); images here are channels-last (N, height, width, channels). Transpose "
            f"them: x.transpose(0, 2, 3, 1).")
    return x
