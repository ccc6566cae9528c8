"""Data augmentation of the DyART recipe: random crop with zero padding 4 + horizontal flip.

Two implementations of the same transform, both with an independent crop offset and flip for
every image (Keras's own ``RandomCrop`` draws one offset per *batch*):

- `random_crop_flip`: NumPy, used by `keras_dyart.datasets.pipeline` on the host, so it
  works unchanged under every backend and runs in the data-loader workers while the
  accelerator trains;
- `RandomCropFlip`: a Keras layer written in `keras.ops`, for augmenting batches that are
  already on the device (e.g. in a custom loop).

Augment in the *data pipeline*, not inside the classifier given to `DyARTModel`: the boundary
search and the loss must see the same images, and a random layer inside the model would
draw different crops for x and x̂.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_dyart import _checks


def check_pad(pad: int) -> int:
    """``pad`` as an int, refused unless it is an integer >= 0."""
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"`pad` must be an integer >= 0; got {pad!r}.")
    return int(pad)


def random_crop_flip(images: np.ndarray, pad: int = 4, flip: bool = True,
                     rng: np.random.Generator | int | None = None,
                     data_format: str | None = None) -> np.ndarray:
    """Randomly crop (after zero padding by ``pad``) and horizontally flip each image.

    Equivalent to torchvision's ``RandomCrop(size, padding=pad)`` followed by
    ``RandomHorizontalFlip()``: every image gets its own offset in ``[0, 2·pad]`` along both
    axes and is mirrored with probability ½.  Shape and dtype are kept, and so is the value
    range (padding is 0).

    Args:
        images: a batch of images, NHWC or NCHW by ``data_format`` (any dtype).
        pad: zero padding on every side before cropping back to the original size.
        flip: also mirror left-right with probability ½.
        rng: a `numpy.random.Generator`, a seed, or None (fresh entropy).
        data_format: ``"channels_last"`` (NHWC) or ``"channels_first"`` (NCHW); None:
            ``keras.config.image_data_format()``.  The same draws crop and flip the same
            pixels in either layout.

    >>> x = np.ones((2, 8, 8, 3), "float32")
    >>> random_crop_flip(x, pad=2, rng=0).shape
    (2, 8, 8, 3)
    """
    images = np.asarray(images)
    first = _checks.data_format(data_format) == "channels_first"
    if images.ndim != 4:
        layout = "(N, channels, height, width)" if first else "(N, height, width, channels)"
        raise ValueError(f"`images` must be a batch of shape {layout}; got shape "
                         f"{images.shape}.")
    if first:
        out = random_crop_flip(np.transpose(images, (0, 2, 3, 1)), pad, flip, rng,
                               "channels_last")
        return np.ascontiguousarray(np.transpose(out, (0, 3, 1, 2)))
    pad = check_pad(pad)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n, h, w, _ = images.shape
    if pad:
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        oy = rng.integers(0, 2 * pad + 1, size=n)
        ox = rng.integers(0, 2 * pad + 1, size=n)
    else:
        padded = images
        oy = ox = np.zeros(n, "int64")
    rows = oy[:, None] + np.arange(h)                      # (n, h)
    cols = ox[:, None] + np.arange(w)                      # (n, w)
    if flip:
        mirror = rng.random(n) < 0.5
        cols = np.where(mirror[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


@keras.saving.register_keras_serializable(package="keras_dyart")
class RandomCropFlip(keras.layers.Layer):
    """Per-image random crop (zero padding ``pad``) and horizontal flip, in `keras.ops`.

    Images are NHWC or NCHW by ``data_format`` (None: ``keras.config.image_data_format()``).

    Active only with ``training=True`` (identity otherwise), like Keras's random
    preprocessing layers.  Works on every backend and inside a compiled function; shapes
    stay static (the crop is a gather with per-image indices).

    >>> layer = RandomCropFlip(pad=2, seed=0)
    >>> tuple(layer(np.ones((2, 8, 8, 3), "float32"), training=True).shape)
    (2, 8, 8, 3)
    """

    def __init__(self, pad=4, flip=True, seed=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.pad = check_pad(pad)
        self.flip = bool(flip)
        self.seed = seed
        self.data_format = _checks.data_format(data_format)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        if not training:
            return images
        if self.data_format == "channels_first":
            out = self._crop_flip(ops.transpose(images, (0, 2, 3, 1)))
            return ops.transpose(out, (0, 3, 1, 2))
        return self._crop_flip(images)

    def _crop_flip(self, images):
        shape = ops.shape(images)
        n, h, w, c = shape[0], images.shape[1], images.shape[2], images.shape[3]
        if h is None or w is None or c is None:
            raise ValueError(
                "`RandomCropFlip` needs a known height, width and channel count; got input "
                f"shape {images.shape}.")
        p = self.pad
        padded = ops.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        hp, wp = h + 2 * p, w + 2 * p
        oy = keras.random.randint((n,), 0, 2 * p + 1, seed=self.seed_generator)
        ox = keras.random.randint((n,), 0, 2 * p + 1, seed=self.seed_generator)
        rows = ops.expand_dims(oy, 1) + ops.expand_dims(ops.arange(h, dtype="int32"), 0)
        cols = ops.expand_dims(ox, 1) + ops.expand_dims(ops.arange(w, dtype="int32"), 0)
        if self.flip:
            u = keras.random.uniform((n,), seed=self.seed_generator)
            mirror = ops.expand_dims(u < 0.5, 1)
            cols = ops.where(mirror, ops.flip(cols, axis=1), cols)
        base = ops.reshape(ops.arange(n, dtype="int32") * (hp * wp), (-1, 1, 1))
        index = base + ops.expand_dims(rows, 2) * wp + ops.expand_dims(cols, 1)
        flat = ops.reshape(padded, (-1, c))
        out = ops.take(flat, ops.reshape(index, (-1,)), axis=0)
        return ops.reshape(out, (n, h, w, c))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"pad": self.pad, "flip": self.flip, "seed": self.seed,
                       "data_format": self.data_format})
        return config
