"""Cross-checks against an independent implementation: torchattacks' AutoAttack.

On the PyTorch backend a Keras model is a `torch.nn.Module`, so the `torchattacks` package
(its own PyTorch code for APGD-CE, APGD-T, FAB-T and Square) can attack the very same model.
`torchattacks` is optional and not a dependency of keras-dyart (``pip install --no-deps
torchattacks``; it needs only torch, numpy, scipy, requests and tqdm).
"""

from __future__ import annotations

import time

import keras
import numpy as np

from keras_dyart import _checks


def torchattacks_autoattack(model: keras.Model, x: np.ndarray, y: np.ndarray, eps: float | str, *,
                            norm: str = "linf", seed: int = 0) -> tuple[float, np.ndarray, float]:
    """torchattacks' AutoAttack "standard" on a Keras logits model (PyTorch backend only).

    Args:
        model: a Keras model taking NHWC images in [0, 1] and returning logits ``(N, K)``.
        x: images ``(N, H, W, C)`` in [0, 1].
        y: integer labels ``(N,)``.
        eps: radius (a number or text such as ``"8/255"``).
        norm: ``"linf"`` or ``"l2"``.
        seed: torchattacks' seed.

    Returns:
        ``(robust_accuracy, x_adv, seconds)``: accuracy on torchattacks' adversarial
        examples, those examples (NHWC NumPy) and the attack's wall time.
    """
    if keras.backend.backend() != "torch":
        raise RuntimeError("`torchattacks_autoattack` needs KERAS_BACKEND=torch (torchattacks "
                           f"attacks torch modules); the backend is {keras.backend.backend()!r}.")
    try:
        import torch
        import torchattacks
    except ImportError as err:
        raise ImportError("`torchattacks_autoattack` needs the torchattacks package: "
                          "pip install --no-deps torchattacks") from err
    norm = _checks.norm_name(norm)
    eps = _checks.parse_eps(eps)
    x = _checks.images(x)
    y = _checks.labels(y, len(x))

    from keras_dyart.backend.torch import fast_layout

    class NCHW(torch.nn.Module):
        """torchattacks feeds NCHW images; the Keras model takes NHWC.  The model runs with
        the same layout fast path as our attacks, so that timings compare the attacks."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            with fast_layout():
                return self.inner(z.permute(0, 2, 3, 1), training=False)

    net = NCHW(model).eval()
    attack = torchattacks.AutoAttack(net, norm="Linf" if norm == "linf" else "L2", eps=eps,
                                     version="standard", n_classes=int(model.output_shape[-1]),
                                     seed=seed)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype("int64"))
    t0 = time.perf_counter()
    adv = attack(xt, yt).detach()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred = net(adv).argmax(1).numpy()
    return float(np.mean(pred == y)), adv.numpy().transpose(0, 2, 3, 1), seconds
