"""The make-train recipe in plain PyTorch, following the reference code's choices.

    KERAS_BACKEND=torch python benchmarks/reference_dyart_torch.py [--seed 0] [--out FILE]

An independent check of `keras-dyart train`'s accuracy: nothing of `DyARTModel` is used
except the box-constrained projection (`keras_dyart.projection`, tested against an LP
solver). Everything else is written here in PyTorch as the reference code does it (see
docs/method.md): a PyTorch small CNN with PyTorch's default initialisation, SGD with
*coupled* weight decay on every parameter, `clip_grad_norm_` after every backward pass
(burn-in included unless --no-burn-in-clip), the scalar FAB search always from a random
start of radius ½·eps_FAB with no refinement, the reference's quality filter, weights
h'(R)/‖∇φ‖₁, and loss CE + λ/N·Σ w·(−φ(x̂)).

The trained weights are copied into `keras_dyart.architectures.small_cnn` and evaluated
with the same PGD-40 as `keras-dyart train` (L∞, uniform start, step eps/10, CE, 1,000
test digits), so the two numbers come from one evaluator.

``--alpha-quirk`` (off by default) reproduces a quirk of the reference FAB: it uses the
first point's mixing weight α for the whole batch, as the reference's
``torch.max(...)[0]`` does.  Results on this machine: docs/method.md, "Accuracy of make
train".  One run takes about 4 minutes on 2 CPU cores.
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import keras_dyart as kd  # noqa: E402
from keras_dyart import evaluation, projection  # noqa: E402


class SmallCNN(nn.Module):
    """conv 32 → pool → conv 64 → pool → dense 128 → logits (valid padding, ReLU)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(64 * 5 * 5, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):                                   # x: N, 1, 28, 28
        h = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = torch.max_pool2d(torch.relu(self.conv2(h)), 2)
        h = torch.relu(self.fc1(h.flatten(1)))
        return self.fc2(h)


def soft_margin(logits, y, beta):
    """φ = f_y − (1/β)·logsumexp_{j≠y} β·f_j."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), -math.inf)
    return true - torch.logsumexp(beta * others, dim=1) / beta


def phi_and_grad(model, x, y, beta):
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        phi = soft_margin(model(x), y, beta)
        (grad,) = torch.autograd.grad(phi.sum(), x)
    return phi.detach(), grad.detach()


def project(points, w, b):
    """Minimal L∞ step from each row of ``points`` onto {z : w·z = b} inside [0, 1]^d."""
    return projection.project_to_hyperplane(points, w, b, norm="linf")


def fab_scalar(model, x, y, beta, n_iter, eps, eta=1.05, back=0.9, alpha_max=0.1,
               alpha_quirk=False, generator=None):
    """Closest point with φ < 0 to each row of x (φ(x) > 0), from a random start."""
    n = x.shape[0]
    x0 = x.reshape(n, -1)
    # the reference's start: x + ½·min(best, eps)·t/‖t‖∞, t uniform in [−1, 1]^d
    t = 2 * torch.rand(x0.shape, generator=generator) - 1
    x1 = (x0 + 0.5 * eps * t / t.abs().max(dim=1, keepdim=True)[0]).clamp(0, 1)
    best = x0.clone()
    best_r = torch.full((n,), 1e10)
    for _ in range(n_iter):
        phi, grad = phi_and_grad(model, x1.reshape(x.shape), y, beta)
        w = grad.reshape(n, -1)
        b = (w * x1).sum(1) - phi
        d = project(torch.cat([x1, x0]), torch.cat([w, w]), torch.cat([b, b]))
        d1, d2 = d[:n], d[n:]
        a1 = d1.abs().amax(1).clamp_min(1e-8)
        a2 = d2.abs().amax(1).clamp_min(1e-8)
        alpha = (a1 / (a1 + a2)).clamp_min(0)
        if alpha_quirk:
            alpha = alpha[:1].expand(n)
        alpha = alpha.clamp_max(alpha_max)[:, None]
        x1 = ((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha).clamp(0, 1)
        with torch.no_grad():
            adv = soft_margin(model(x1.reshape(x.shape)), y, beta) < 0
        r = (x1 - x0).abs().amax(1)
        closer = adv & (r < best_r)
        best = torch.where(closer[:, None], x1, best)
        best_r = torch.where(closer, r, best_r)
        x1 = torch.where(adv[:, None], x0 + (x1 - x0) * back, x1)
    return best.reshape(x.shape)


def dyart_loss(model, x, y, args, generator):
    model.eval()
    with torch.no_grad():
        phi = soft_margin(model(x), y, args.beta)
    correct = phi > 1e-9
    x_hat = x.clone()
    if correct.any():
        x_hat[correct] = fab_scalar(model, x[correct], y[correct], args.beta, args.n_iter,
                                    args.eps_fab, alpha_quirk=args.alpha_quirk,
                                    generator=generator)
    phi_hat, grad_hat = phi_and_grad(model, x_hat, y, args.beta)
    n = x.shape[0]
    delta = (x_hat - x).reshape(n, -1)
    r = delta.abs().amax(1)
    g = grad_hat.reshape(n, -1)
    big = delta.abs() > 0.8 * r[:, None].clamp_min(1e-12)
    good_max = ((delta * g < -1e-7) & big).sum(1) / big.sum(1).clamp_min(1)
    small_rest = ((~big) & (g.abs() <= 0.1)).sum(1)
    keep = correct & (phi_hat < 0) & (phi_hat > -0.3) & (good_max > 0.9) & (small_rest > 0)
    weights = torch.exp(-args.alpha * r) * (r < args.r0) / g.abs().sum(1).clamp_min(1e-12)
    weights = (weights * keep).detach()
    model.train()
    robust = (-soft_margin(model(x_hat.detach()), y, args.beta) * weights).sum() / n
    ce = nn.functional.cross_entropy(model(x), y)
    mean_margin = r[keep].mean().item() if keep.any() else 0.0
    return ce + args.lam * robust, keep.float().mean().item(), mean_margin


def to_keras(model):
    """The trained weights in `architectures.small_cnn` (NHWC, Keras's flatten order)."""
    k = kd.architectures.small_cnn()
    conv1, conv2, fc1, fc2 = (layer for layer in k.layers if hasattr(layer, "kernel"))
    sd = {name: p.detach().numpy() for name, p in model.state_dict().items()}
    conv1.set_weights([sd["conv1.weight"].transpose(2, 3, 1, 0), sd["conv1.bias"]])
    conv2.set_weights([sd["conv2.weight"].transpose(2, 3, 1, 0), sd["conv2.bias"]])
    w = sd["fc1.weight"].reshape(128, 64, 5, 5).transpose(2, 3, 1, 0).reshape(-1, 128)
    fc1.set_weights([w, sd["fc1.bias"]])
    fc2.set_weights([sd["fc2.weight"].T, sd["fc2.bias"]])
    return k


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--burn-in", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--clip", type=float, default=0.1)
    p.add_argument("--no-burn-in-clip", action="store_true")
    p.add_argument("--lam", type=float, default=1000.0)
    p.add_argument("--alpha", type=float, default=3.0)
    p.add_argument("--r0", type=float, default=0.6)
    p.add_argument("--eps-fab", type=float, default=0.3)
    p.add_argument("--beta", type=float, default=5.0)
    p.add_argument("--n-iter", type=int, default=20)
    p.add_argument("--alpha-quirk", action="store_true")
    p.add_argument("--out", default=None, help="append the result as a JSON line here")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_train, y_train, x_test, y_test = kd.datasets.load("mnist5k")
    xt = torch.from_numpy(x_train).permute(0, 3, 1, 2).contiguous()
    yt = torch.from_numpy(y_train.astype("int64"))
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    t0 = time.time()
    for epoch in range(args.burn_in + args.epochs):
        robust_stage = epoch >= args.burn_in
        order = torch.randperm(len(xt), generator=gen)
        stats = []
        for i in range(0, len(xt), args.batch_size):
            idx = order[i:i + args.batch_size]
            x, y = xt[idx], yt[idx]
            opt.zero_grad()
            if robust_stage:
                loss, share, margin = dyart_loss(model, x, y, args, gen)
                stats.append((share, margin))
            else:
                model.train()
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if args.clip and (robust_stage or not args.no_burn_in_clip):
                nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
        share, margin = np.mean(stats, 0) if stats else (float("nan"), float("nan"))
        print(f"epoch {epoch + 1}: {'dyart' if robust_stage else 'clean'} "
              f"usable {share:.3f} mean margin {margin:.3f} ({time.time() - t0:.0f} s)",
              flush=True)
    train_s = time.time() - t0
    report = evaluation.evaluate(to_keras(model), x_test, y_test, attack="pgd",
                                 epsilons=[0.1, 0.2, 0.3], seed=args.seed)
    print(report)
    result = {"args": vars(args), "clean_accuracy": report.clean_accuracy,
              "pgd40": {str(k): v for k, v in report.robust_accuracy.items()},
              "train_seconds": round(train_s, 1)}
    print(json.dumps(result))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
