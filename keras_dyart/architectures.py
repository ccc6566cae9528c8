"""Model builders. Every builder returns a functional `keras.Model` that outputs logits.

Inputs are images in [0, 1] in the layout of ``data_format``: every builder takes one, and
``None`` (the default) follows ``keras.config.image_data_format()``.  ``input_shape`` is
``(height, width, channels)`` under ``"channels_last"`` and ``(channels, height, width)`` under
``"channels_first"``; left out, it is the builder's default in that layout.  The weights have
the same shapes in both layouts (Flatten keeps the channels-last order), so weights move from
one to the other with ``set_weights``.  A builder can put a per-channel standardisation inside
the model (``mean`` / ``std``), so attacks and margins keep working in the [0, 1] scale.

==========================  ==========================================  ====================
name                        builder                                     trainable (10 cls.)
==========================  ==========================================  ====================
``"small-cnn"``             `small_cnn`                                 (MNIST, 225,034)
``"wide-resnet"``           `wide_resnet` (choose depth / width)
``"wrn-28-10"``             `wrn_28_10`                                 36,479,194
``"wrn-34-10"``             `wrn_34_10`                                 46,160,474
``"preact-resnet18"``       `preact_resnet18`                           11,172,170
``"resnet18"``              `resnet18`                                  11,173,962
==========================  ==========================================  ====================

The counts are those of the usual PyTorch references (Zagoruyko & Komodakis' WRN as used by
Gowal et al. / Rebuffi et al., 36.5 M; the CIFAR ResNet-18 and PreAct ResNet-18 of
Rice et al.), trainable weights only: BatchNorm moving statistics are extra non-trainable
weights.  GroupNorm variants have the same trainable count.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import layers

from keras_dyart import _checks

NORMS = ("batch", "group")


def _layer_format(data_format):
    """The layout the layers compute in.  TensorFlow runs channels-first convolutions and
    pooling only on a GPU ("The Conv2D op currently only supports the NHWC tensor format on
    the CPU"); without one, a channels-first model transposes its input once (a ``Permute``
    after the input) and computes channels-last.  Same input shape, same weights."""
    if data_format == "channels_first" and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return "channels_last"
    return data_format


def _image_input(num_classes, input_shape, data_format, default_hwc):
    """A builder's ``keras.Input`` in the layout of ``data_format`` and the tensor its
    layers start from; returns ``(inputs, tensor, layer_format)``."""
    data_format = _checks.data_format(data_format)
    input_shape = _check_classes_and_shape(num_classes, input_shape, data_format, default_hwc)
    inputs = keras.Input(shape=input_shape)
    layer_format = _layer_format(data_format)
    return inputs, _layer_input(inputs, data_format, layer_format), layer_format


def _layer_input(inputs, data_format, layer_format):
    if data_format != layer_format:
        return layers.Permute((2, 3, 1))(inputs)           # (C, H, W) -> (H, W, C)
    return inputs


def _channel_axis(data_format):
    return 1 if data_format == "channels_first" else -1


def _check_classes_and_shape(num_classes, input_shape, data_format, default_hwc):
    """``input_shape`` in the layout of ``data_format`` (``None``: ``default_hwc`` there)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2; got {num_classes!r}.")
    first = data_format == "channels_first"
    layout = "(channels, height, width)" if first else "(height, width, channels)"
    if input_shape is None:
        h, w, c = default_hwc
        return (c, h, w) if first else (h, w, c)
    try:
        shape = tuple(operator.index(v) for v in input_shape
                      if not isinstance(v, bool))            # ints, NumPy ints; no bools
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3 or len(tuple(input_shape)) != 3 or min(shape) < 1:
        raise ValueError(
            f"`input_shape` must be {layout} for data_format {data_format!r}; "
            f"got {input_shape!r}.")
    # A shape written for the other layout would build a model that runs on the wrong axes
    # without an error ((28, 28, 1) read as 28 channels of 28 x 1): refuse the obvious cases.
    channels, other = (shape[0], shape[-1]) if first else (shape[-1], shape[0])
    if other in (1, 3) and channels > 4 and shape[1] > 4:
        other_layout = "(height, width, channels)" if first else "(channels, height, width)"
        raise ValueError(
            f"`input_shape` {shape!r} looks like {other_layout}, but data_format is "
            f"{data_format!r}, which expects {layout}; pass the shape in that layout or "
            f"the matching `data_format`.")
    return shape


def _positive_int(value, arg, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{arg}` must be an integer >= {minimum}; got {value!r}.")
    return value


def _norm_factory(norm, groups, bn_momentum, epsilon, data_format="channels_last"):
    axis = _channel_axis(data_format)
    if norm == "batch":
        return lambda: layers.BatchNormalization(axis=axis, momentum=bn_momentum,
                                                 epsilon=epsilon)
    if norm == "group":
        _positive_int(groups, "groups")
        return lambda: layers.GroupNormalization(groups=groups, axis=axis, epsilon=epsilon)
    raise ValueError(f"`norm` must be one of {NORMS}; got {norm!r}.")


def _activation(activation):
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError):
        raise ValueError(
            "`activation` must be a Keras activation name (e.g. 'relu', 'swish') or a "
            f"callable; got {activation!r}.") from None
    return lambda: layers.Activation(activation)


def _stem(inputs, mean, std, data_format="channels_last"):
    """Optional per-channel standardisation (x - mean) / std, kept inside the model."""
    if mean is None and std is None:
        return inputs
    axis = _channel_axis(data_format)
    channels = inputs.shape[axis]
    mean = [0.0] * channels if mean is None else list(mean)
    std = [1.0] * channels if std is None else list(std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"`mean` and `std` must have one value per input channel ({channels}); "
            f"got mean={mean!r}, std={std!r}.")
    if min(std) <= 0:
        raise ValueError(f"`std` must be positive; got {std!r}.")
    return layers.Normalization(axis=axis, mean=mean, variance=[s * s for s in std])(inputs)


def _conv(filters, kernel, stride, h, data_format="channels_last"):
    """A bias-free convolution padded like PyTorch's ``padding=kernel // 2``."""
    if stride > 1 and kernel > 1:
        h = layers.ZeroPadding2D(kernel // 2, data_format=data_format)(h)
        return layers.Conv2D(filters, kernel, strides=stride, padding="valid",
                             use_bias=False, data_format=data_format)(h)
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         data_format=data_format)(h)


def small_cnn(num_classes: int = 10, input_shape: tuple[int, ...] | None = None,
              name: str = "small_cnn", data_format: str | None = None) -> keras.Model:
    """Small CNN for MNIST-sized inputs: conv 32 → pool → conv 64 → pool → dense 128 → logits.

    Args:
        num_classes: number of logits.
        input_shape: ``(28, 28, 1)`` by default, ``(1, 28, 28)`` under ``"channels_first"``.
        data_format: ``"channels_last"`` or ``"channels_first"``; ``None``:
            ``keras.config.image_data_format()``.

    >>> model = small_cnn()
    >>> model.output_shape
    (None, 10)
    """
    inputs, h, data_format = _image_input(num_classes, input_shape, data_format,
                                            (28, 28, 1))
    h = layers.Conv2D(32, 3, activation="relu", data_format=data_format)(h)
    h = layers.MaxPooling2D(2, data_format=data_format)(h)
    h = layers.Conv2D(64, 3, activation="relu", data_format=data_format)(h)
    h = layers.MaxPooling2D(2, data_format=data_format)(h)
    # Flatten reads channels-first maps in channels-last order: the same dense weights.
    h = layers.Flatten(data_format=data_format)(h)
    h = layers.Dense(128, activation="relu")(h)
    outputs = layers.Dense(num_classes)(h)
    return keras.Model(inputs, outputs, name=name)


# -- Wide ResNet ---------------------------------------------------------------------------


def wide_resnet(depth: int = 28, width: int = 10, num_classes: int = 10,
                input_shape: tuple[int, ...] | None = None, activation: str | Callable = "relu",
                norm: str = "batch", groups: int = 16, dropout: float = 0.0,
                bn_momentum: float = 0.9, epsilon: float = 1e-5,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                name: str | None = None, data_format: str | None = None) -> keras.Model:
    """Wide ResNet WRN-``depth``-``width`` (Zagoruyko & Komodakis, 2016), pre-activation.

    Three groups of ``(depth - 4) / 6`` blocks with 16·width, 32·width and 64·width channels
    (strides 1, 2, 2) after a 16-channel 3×3 stem; each block is
    norm → act → conv3×3 → norm → act → (dropout) → conv3×3 plus a 1×1 projection shortcut
    where the shape changes; then norm → act → global average pooling → dense logits.
    This is the network of Gowal et al. / Rebuffi et al. that the DyART recipe trains with
    ``activation="swish"``.

    Args:
        depth: total depth; ``depth - 4`` must be a positive multiple of 6 (28, 34, 70, ...).
        width: widening factor k (10 in WRN-28-10).
        num_classes: number of logits.
        input_shape: ``(height, width, channels)``, ``(32, 32, 3)`` by default;
            ``(channels, height, width)`` under ``"channels_first"``.
        activation: any Keras activation name or callable (``"relu"``, ``"swish"``, ...).
        norm: ``"batch"`` (BatchNormalization) or ``"group"`` (GroupNormalization).
        groups: number of groups for ``norm="group"``; must divide 16 and 16·width.
        dropout: dropout rate inside the blocks (0 = none).
        bn_momentum: BatchNorm moving-average momentum (0.9 is PyTorch's default 0.1).
        epsilon: normalisation epsilon.
        mean, std: optional per-channel standardisation applied inside the model.
        data_format: ``"channels_last"`` or ``"channels_first"``; ``None``:
            ``keras.config.image_data_format()``.

    >>> wide_resnet(depth=10, width=1, input_shape=(16, 16, 3)).output_shape
    (None, 10)
    """
    inputs, stem_input, data_format = _image_input(num_classes, input_shape, data_format,
                                            (32, 32, 3))
    depth = _positive_int(depth, "depth", 10)
    if (depth - 4) % 6:
        raise ValueError(f"`depth` must be 6·n + 4 (10, 16, 22, 28, 34, ...); got {depth!r}.")
    width = _positive_int(width, "width")
    if norm == "group" and (16 % groups or (16 * width) % groups):
        raise ValueError(
            f"`groups` must divide the channel counts 16 and {16 * width}; got {groups!r}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); got {dropout!r}.")
    make_norm = _norm_factory(norm, groups, bn_momentum, epsilon, data_format)
    make_act = _activation(activation)
    n = (depth - 4) // 6
    axis = _channel_axis(data_format)

    def conv(filters, kernel, stride, h):
        return _conv(filters, kernel, stride, h, data_format)

    h = conv(16, 3, 1, _stem(stem_input, mean, std, data_format))
    for channels, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
        for i in range(n):
            s = stride if i == 0 else 1
            o = make_act()(make_norm()(h))
            shortcut = h if (s == 1 and h.shape[axis] == channels) else conv(
                channels, 1, s, o)
            r = conv(channels, 3, s, o)
            r = make_act()(make_norm()(r))
            if dropout:
                r = layers.Dropout(dropout)(r)
            r = conv(channels, 3, 1, r)
            h = layers.Add()([shortcut, r])
    h = make_act()(make_norm()(h))
    h = layers.GlobalAveragePooling2D(data_format=data_format)(h)
    outputs = layers.Dense(num_classes)(h)
    return keras.Model(inputs, outputs, name=name or f"wrn_{depth}_{width}")


def wrn_28_10(num_classes: int = 10, input_shape: tuple[int, ...] | None = None,
              activation: str | Callable = "swish", norm: str = "batch",
              **kwargs: Any) -> keras.Model:
    """WRN-28-10 with swish, the DyART CIFAR-10 model: 36,479,194 trainable weights (10
    classes), as the published 36.5 M. Other arguments as `wide_resnet`."""
    return wide_resnet(28, 10, num_classes=num_classes, input_shape=input_shape,
                       activation=activation, norm=norm, **kwargs)


def wrn_34_10(num_classes: int = 10, input_shape: tuple[int, ...] | None = None,
              activation: str | Callable = "relu", norm: str = "batch",
              **kwargs: Any) -> keras.Model:
    """WRN-34-10 (the TRADES / MART model): 46,160,474 trainable weights (10 classes)."""
    return wide_resnet(34, 10, num_classes=num_classes, input_shape=input_shape,
                       activation=activation, norm=norm, **kwargs)


# -- ResNet-18 and PreAct ResNet-18 ------------------------------------------------------


def _resnet(preact, blocks, width, num_classes, input_shape, activation, norm, groups,
            bn_momentum, epsilon, mean, std, name, data_format):
    inputs, stem_input, data_format = _image_input(num_classes, input_shape, data_format,
                                            (32, 32, 3))
    width = _positive_int(width, "width")
    blocks = tuple(blocks)
    if not blocks or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                         for b in blocks):
        raise ValueError(f"`blocks` must be a non-empty tuple of positive integers; "
                         f"got {blocks!r}.")
    if norm == "group" and width % groups:
        raise ValueError(f"`groups` must divide `width` ({width}); got {groups!r}.")
    make_norm = _norm_factory(norm, groups, bn_momentum, epsilon, data_format)
    make_act = _activation(activation)
    axis = _channel_axis(data_format)

    def conv(filters, kernel, stride, h):
        return _conv(filters, kernel, stride, h, data_format)

    h = conv(width, 3, 1, _stem(stem_input, mean, std, data_format))
    if not preact:
        h = make_act()(make_norm()(h))
    for stage, count in enumerate(blocks):
        channels = width * 2 ** stage
        for i in range(count):
            s = 2 if (stage > 0 and i == 0) else 1
            project = s != 1 or h.shape[axis] != channels
            if preact:
                # PreActBlock: act(norm(x)) feeds both the residual and a projection.
                o = make_act()(make_norm()(h))
                shortcut = conv(channels, 1, s, o) if project else h
                r = conv(channels, 3, s, o)
                r = conv(channels, 3, 1, make_act()(make_norm()(r)))
                h = layers.Add()([shortcut, r])
            else:
                # BasicBlock: conv-norm-act-conv-norm, add, act.
                shortcut = make_norm()(conv(channels, 1, s, h)) if project else h
                r = make_act()(make_norm()(conv(channels, 3, s, h)))
                r = make_norm()(conv(channels, 3, 1, r))
                h = make_act()(layers.Add()([shortcut, r]))
    if preact:
        h = make_act()(make_norm()(h))
    h = layers.GlobalAveragePooling2D(data_format=data_format)(h)
    outputs = layers.Dense(num_classes)(h)
    return keras.Model(inputs, outputs, name=name)


def preact_resnet(blocks: Sequence[int] = (2, 2, 2, 2), width: int = 64, num_classes: int = 10,
                  input_shape: tuple[int, ...] | None = None, activation: str | Callable = "relu",
                  norm: str = "batch", groups: int = 32, bn_momentum: float = 0.9,
                  epsilon: float = 1e-5, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, name: str = "preact_resnet",
                  data_format: str | None = None) -> keras.Model:
    """Pre-activation ResNet (He et al., 2016) for small images.

    A 3×3 stem with ``width`` channels, stages of ``blocks[i]`` pre-activation basic blocks
    with ``width·2^i`` channels (stride 2 from the second stage on), a final norm → act,
    global average pooling and dense logits (the PreAct ResNet-18 of Rice et al., 2020, with
    global pooling so 64×64 Tiny-ImageNet inputs work too).

    Args:
        blocks: blocks per stage; ``(2, 2, 2, 2)`` is ResNet-18.
        width: channels of the stem and the first stage (64).
        norm, groups: ``"batch"`` or ``"group"`` (``groups`` must divide ``width``).

    The other arguments are those of `wide_resnet` (``input_shape`` ``(32, 32, 3)`` by
    default, ``(3, 32, 32)`` under ``"channels_first"``).
    """
    return _resnet(True, blocks, width, num_classes, input_shape, activation, norm, groups,
                   bn_momentum, epsilon, mean, std, name, data_format)


def preact_resnet18(num_classes: int = 10, input_shape: tuple[int, ...] | None = None,
                    **kwargs: Any) -> keras.Model:
    """PreAct ResNet-18, the DyART Tiny-ImageNet model: 11,172,170 trainable weights for 10
    classes, 11,269,640 for Tiny-ImageNet's 200 at 64×64. Arguments as `preact_resnet`."""
    kwargs.setdefault("name", "preact_resnet18")
    return preact_resnet((2, 2, 2, 2), num_classes=num_classes, input_shape=input_shape,
                         **kwargs)


def resnet(blocks: Sequence[int] = (2, 2, 2, 2), width: int = 64, num_classes: int = 10,
           input_shape: tuple[int, ...] | None = None, activation: str | Callable = "relu",
           norm: str = "batch", groups: int = 32, bn_momentum: float = 0.9, epsilon: float = 1e-5,
           mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
           name: str = "resnet", data_format: str | None = None) -> keras.Model:
    """ResNet with basic blocks for small images (3×3 stem, no max-pool), post-activation.

    Arguments as `preact_resnet`; ``blocks=(2, 2, 2, 2)`` is the CIFAR ResNet-18.
    """
    return _resnet(False, blocks, width, num_classes, input_shape, activation, norm, groups,
                   bn_momentum, epsilon, mean, std, name, data_format)


def resnet18(num_classes: int = 10, input_shape: tuple[int, ...] | None = None,
             **kwargs: Any) -> keras.Model:
    """CIFAR ResNet-18: 11,173,962 trainable weights for 10 classes. Arguments as `resnet`."""
    kwargs.setdefault("name", "resnet18")
    return resnet((2, 2, 2, 2), num_classes=num_classes, input_shape=input_shape, **kwargs)


BUILDERS = {
    "small-cnn": small_cnn,
    "wide-resnet": wide_resnet,
    "wrn-28-10": wrn_28_10,
    "wrn-34-10": wrn_34_10,
    "preact-resnet": preact_resnet,
    "preact-resnet18": preact_resnet18,
    "resnet": resnet,
    "resnet18": resnet18,
}


def get(name: str, **kwargs: Any) -> keras.Model:
    """Build an architecture by name, e.g. ``get("wrn-28-10", norm="group")``.

    Names: ``"small-cnn"``, ``"wide-resnet"``, ``"wrn-28-10"``, ``"wrn-34-10"``,
    ``"preact-resnet"``, ``"preact-resnet18"``, ``"resnet"``, ``"resnet18"``; keyword
    arguments go to the builder.
    """
    if name not in BUILDERS:
        raise ValueError(f"`model` must be one of {sorted(BUILDERS)}; got {name!r}.")
    return BUILDERS[name](**kwargs)
