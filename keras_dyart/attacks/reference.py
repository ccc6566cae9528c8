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

# The reference AutoAttack "standard" runs APGD-CE, APGD-T and FAB-T with 100 iterations
# each (and Square with 5000 queries).  torchattacks 3.5.1's `AutoAttack(version="standard")`
# builds its attacks with their classes' default of 10 iterations, a weaker and about ten
# times cheaper attack; `torchattacks_autoattack` builds the same four attacks with the
# reference's counts unless told otherwise.
STANDARD_STEPS = 100


def torchattacks_autoattack(model: keras.Model, x: np.ndarray, y: np.ndarray, eps: float | str, *,
                            norm: str = "linf", seed: int = 0, steps: int = STANDARD_STEPS,
                            timings: dict | None = None) -> tuple[float, np.ndarray, float]:
    """AutoAttack "standard" by torchattacks' attacks on a Keras logits model (PyTorch
    backend only).

    The four attacks of torchattacks' ``AutoAttack(version="standard")`` (APGD-CE, APGD-T
    and FAB-T over 9 target classes, Square with 5000 queries), each run on the points the
    previous ones left robust, with ``steps`` iterations for the three gradient attacks:
    100 by default, as in the reference AutoAttack; torchattacks' own ``AutoAttack`` uses
    10 (``steps=10`` reproduces it).

    Args:
        model: a Keras model taking NHWC images in [0, 1] and returning logits ``(N, K)``.
        x: images ``(N, H, W, C)`` in [0, 1].
        y: integer labels ``(N,)``.
        eps: radius (a number or text such as ``"8/255"``).
        norm: ``"linf"`` or ``"l2"``.
        seed: torchattacks' seed.
        steps: iterations of APGD-CE, APGD-T and FAB-T.
        timings: a dict that receives each attack's seconds (by torchattacks' class name).

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
    steps = _checks.positive(steps, "steps", integer=True)
    ta_norm = "Linf" if norm == "linf" else "L2"
    n_classes = int(model.output_shape[-1])
    common = dict(norm=ta_norm, eps=eps, seed=seed, n_restarts=1)
    parts = [torchattacks.APGD(net, loss="ce", steps=steps, **common),
             torchattacks.APGDT(net, n_classes=n_classes, steps=steps, **common),
             torchattacks.FAB(net, multi_targeted=True, n_classes=n_classes, steps=steps,
                              **common),
             torchattacks.Square(net, n_queries=5000, **common)]
    if timings is not None:
        for part in parts:
            _time_forward(part, type(part).__name__, timings)
    attack = torchattacks.MultiAttack(parts)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype("int64"))
    t0 = time.perf_counter()
    adv = attack(xt, yt).detach()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred = net(adv).argmax(1).numpy()
    return float(np.mean(pred == y)), adv.numpy().transpose(0, 2, 3, 1), seconds


def _time_forward(attack, name: str, timings: dict) -> None:
    """Add the seconds of each of ``attack``'s runs to ``timings[name]``."""
    forward = attack.forward

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

    attack.forward = timed
