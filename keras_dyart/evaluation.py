"""Robustness evaluation in one call: `evaluate` and `margins_report`.

`evaluate(model, x, y, attack="autoattack", epsilons=[...])` follows foolbox 3's shape: one
call takes a model, inputs, labels and a *list* of epsilons and returns a `RobustnessReport`
with clean accuracy, robust accuracy per attack and per eps, the per-point outcome and, for
FAB-T, the per-point minimal distance.  The report prints as a table and writes JSON and CSV.

`margins_report` estimates every point's minimal adversarial distance with FAB-T and writes a
CSV and a PNG histogram with the share of points below each eps.

Inputs live in the model's input bounds: ``bounds=(lower, upper)``, foolbox's convention,
default the model's own (a robust model's ``bounds``) or (0, 1); eps and distances are in
those units.  Works with any Keras model that outputs logits, `DyARTModel` or plain, built or
loaded from ``.keras``.  The attacks run in float32 whatever the dtype policy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np

from keras_dyart import _checks, io
from keras_dyart import inputs as _inputs
from keras_dyart.attacks import driver
from keras_dyart.attacks.autoattack import ATTACKS, NAMES, resolve, run_sequence
from keras_dyart.attacks.fab import fab_t


def eps_key(e) -> str:
    """How a radius is written in `RobustnessReport.to_dict`'s keys (``robust@0.3``,
    ``"robust_accuracy": {"0.0313725": ...}``): six significant digits."""
    return f"{e:.6g}"


class ByEps(dict):
    """A dict keyed by eps (floats) that also takes the radius as the user wrote it:
    ``report.robust_accuracy["8/255"]``, ``[8 / 255]`` or ``["0.0313725"]``."""

    def _key(self, key):
        if dict.__contains__(self, key):
            return key
        try:
            value = _checks.parse_eps(key, "eps")
        except ValueError:
            raise KeyError(key) from None
        for e in self:
            if abs(e - value) <= 1e-6 * max(abs(e), 1e-12):
                return e
        raise KeyError(key)

    def __getitem__(self, key):
        return dict.__getitem__(self, self._key(key))

    def __contains__(self, key):
        try:
            self._key(key)
        except KeyError:
            return False
        return True

    def get(self, key, default=None):
        return self[key] if key in self else default


def _eps_list(epsilons, arg="epsilons"):
    if isinstance(epsilons, (str, int, float, np.floating, np.integer)):
        epsilons = [epsilons]
    try:
        values = [_checks.parse_eps(e, arg) for e in epsilons]
    except TypeError:
        raise ValueError(
            f"`{arg}` must be a list of positive numbers or fractions; got {epsilons!r}."
        ) from None
    if not values:
        raise ValueError(f"`{arg}` must hold at least one radius; got {epsilons!r}.")
    return sorted(set(values))


@dataclass
class RobustnessReport:
    """The result of `evaluate`.

    Attributes:
        attack: the requested attack (``"autoattack"`` or a name); ``attacks``: the attacks
            run, in order.
        norm, epsilons, n: threat model and number of points.
        clean_accuracy: share of points classified correctly.
        robust_accuracy: ``{eps: share}``, points correct and not broken by any attack.
        accuracy_after: ``{attack: {eps: share}}``, robust accuracy after each attack of the
            sequence (cumulative: each attack runs only on the points still robust).
        labels, predictions: per point.  ``robust``: bool array ``(n, len(epsilons))``.
        broken_by: per point and eps, the attack that broke it (``"clean"``: misclassified
            already; ``""``: robust).
        distance: per-point FAB-T minimal distance (NaN where FAB-T did not run, 0 for clean
            errors, inf where it found nothing).
        seconds: wall time per attack.  ``adversarials``: ``{eps: x_adv}`` (not serialised).
        options: the per-attack keyword arguments the attacks ran with (`evaluate`'s
            ``options``); the labels follow them (``PGD-100 (CE)`` for 100 steps).
    """

    attack: str
    attacks: list
    norm: str
    epsilons: list
    n: int
    clean_accuracy: float
    robust_accuracy: dict
    accuracy_after: dict
    labels: np.ndarray
    predictions: np.ndarray
    robust: np.ndarray
    broken_by: list
    distance: np.ndarray
    seconds: dict
    backend: str = field(default_factory=lambda: keras.backend.backend())
    adversarials: dict = field(default_factory=dict, repr=False)
    options: dict = field(default_factory=dict)

    def label(self, name: str, default: str | None = None) -> str:
        """The table label of attack ``name`` as it ran (with its ``options``)."""
        if name in ATTACKS:
            return ATTACKS[name].label_for(self.options.get(name))
        return NAMES.get(name, name if default is None else default)

    def rows(self):
        """Table rows: ``(name, {eps: accuracy})``, clean first, the worst case last."""
        out = [("clean", {e: self.clean_accuracy for e in self.epsilons})]
        for a in self.attacks:
            out.append((self.label(a), self.accuracy_after[a]))
        if len(self.attacks) > 1:
            out.append((self.label(self.attack, "worst case"), self.robust_accuracy))
        return out

    def table(self):
        """The report as a plain-text table (accuracy in %, one column per eps)."""
        head = ["", *[f"eps={eps_key(e)}" for e in self.epsilons]]
        body = [[name, *[f"{100 * acc[e]:.1f}" for e in self.epsilons]]
                for name, acc in self.rows()]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

        def line(r):
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths)))
        title = (f"{self.label(self.attack)} ({self.norm}), {self.n} points, "
                 f"{self.backend} backend; accuracy in %"
                 + ("" if len(self.attacks) == 1 else
                    "; each row: after that attack (each runs on the points still robust)"))
        return "\n".join([title, line(head), *[line(r) for r in body]])

    def __str__(self):
        return self.table()

    def to_dict(self, per_point=True):
        d = {
            "attack": self.attack, "attacks": list(self.attacks), "norm": self.norm,
            "epsilons": list(self.epsilons), "n": self.n, "backend": self.backend,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": {eps_key(e): v for e, v in self.robust_accuracy.items()},
            "accuracy_after": {a: {eps_key(e): v for e, v in acc.items()}
                               for a, acc in self.accuracy_after.items()},
            "seconds": dict(self.seconds),
            "options": {a: dict(o) for a, o in self.options.items()},
        }
        if per_point:
            d["points"] = self.point_rows()
        return d

    def point_rows(self):
        """One dict per point: index, label, prediction, and per eps robust / broken_by;
        ``distance`` (FAB-T) where known."""
        rows = []
        for i in range(self.n):
            r = {"index": i, "label": int(self.labels[i]),
                 "prediction": int(self.predictions[i])}
            for j, e in enumerate(self.epsilons):
                r[f"robust@{eps_key(e)}"] = bool(self.robust[i, j])
                r[f"broken_by@{eps_key(e)}"] = self.broken_by[i][j]
            dist = float(self.distance[i])
            r["distance"] = None if np.isnan(dist) else (
                "inf" if np.isinf(dist) else dist)
            rows.append(r)
        return rows

    def to_json(self, path, per_point=True):
        """Write the report (and, by default, the per-point outcome) as JSON."""
        io.write_json(path, self.to_dict(per_point))
        return path

    def to_csv(self, path):
        """Write the per-point outcome as CSV (one row per point)."""
        io.write_csv(path, [{k: "" if v is None else v for k, v in r.items()}
                            for r in self.point_rows()])
        return path


def _parent(path):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray,
             attack: str | Sequence[str] = "autoattack",
             epsilons: float | str | Sequence[float | str] = (8 / 255,), *, norm: str = "linf",
             batch_size: int = 500, seed: int = 0, jit: bool = True, options: dict | None = None,
             progress: Callable | None = None,
             bounds: tuple[float, float] | None = None) -> RobustnessReport:
    """Evaluate robustness under one attack or AutoAttack at several radii.

    Args:
        model: a Keras model that outputs logits ``(N, K)`` (a `DyARTModel` or any other).
        x, y: inputs in [0, 1] and integer labels (arrays or backend tensors), or ``x`` a
            finite `tf.data.Dataset`, `keras.utils.PyDataset` or torch `DataLoader` of
            ``(inputs, labels)`` batches and ``y`` None (gathered whole first).
        attack: ``"autoattack"`` (APGD-CE, APGD-T, FAB-T, Square, worst case), one of
            ``"pgd"``, ``"pgd-cw"``, ``"apgd-ce"``, ``"apgd-dlr"``, ``"apgd-t"``, ``"fab-t"``,
            ``"square"``, or a list of those run in order, worst case.
        epsilons: radii (numbers or text such as ``"8/255"``).
        norm: ``"linf"`` or ``"l2"``.
        batch_size: points per compiled call.  ``seed``: seed of every random draw (NumPy, so
            every backend sees the same noise).
        options: per-attack keyword arguments, e.g. ``{"square": {"n_queries": 1000}}``.
        progress: optional ``progress(attack, eps, done, total)``.
        bounds: ``(lower, upper)`` of the model's inputs (default: the model's own
            ``bounds``, else (0, 1)); ``x`` must lie in them and eps is in their units.

    Returns:
        A `RobustnessReport`; ``report.robust_accuracy`` is indexed by eps as a number or
        as the text given (``report.robust_accuracy["8/255"]``).

    Example:

    >>> import os, tempfile
    >>> import keras_dyart as kd
    >>> _, _, x_test, y_test = kd.datasets.load("mnist5k")
    >>> model = kd.architectures.small_cnn()         # any logits model (train it first)
    >>> report = evaluate(model, x_test[:16], y_test[:16], "autoattack", [0.1, 0.3])
    >>> sorted(report.robust_accuracy)
    [0.1, 0.3]
    >>> report.robust_accuracy[0.3] <= report.robust_accuracy[0.1] <= report.clean_accuracy
    True
    >>> out = tempfile.mkdtemp()
    >>> _ = report.to_json(os.path.join(out, "eval_autoattack.json"))
    >>> _ = report.to_csv(os.path.join(out, "eval_autoattack.csv"))
    """
    norm = _checks.norm_name(norm)
    epsilons = _eps_list(epsilons)
    attacks = resolve(attack)
    x, y = _inputs.gather(x, y)
    if isinstance(attack, str) and attack.strip().lower() in ("autoattack", "aa", "standard"):
        name = "autoattack"
    else:
        name = ",".join(attacks)
    box = driver.model_bounds(model, bounds)
    driver.warn_if_pixel_model(model, box)
    x = _checks.images(x, box=box)
    y = _checks.labels(y, len(x))
    _checks.positive(batch_size, "batch_size", integer=True)
    out = run_sequence(model, x, y, epsilons, norm=norm, attacks=attacks,
                       batch_size=batch_size, seed=seed, jit=jit, options=options,
                       progress=progress, bounds=box)
    robust = np.stack([out["robust"][e] for e in epsilons], axis=1)
    broken = [[out["broken_by"][e][i] for e in epsilons] for i in range(len(x))]
    return RobustnessReport(
        attack=name, attacks=list(attacks),
        norm=norm, epsilons=epsilons, n=len(x),
        clean_accuracy=float(np.mean(out["clean_pred"] == y)),
        robust_accuracy=ByEps({e: float(np.mean(out["robust"][e])) for e in epsilons}),
        accuracy_after={a: ByEps(acc) for a, acc in out["after"].items()},
        labels=y, predictions=out["clean_pred"],
        robust=robust, broken_by=broken, distance=out["distance"],
        seconds=out["seconds"], adversarials=out["x_adv"],
        options={a: dict(o) for a, o in (options or {}).items() if a in attacks})


@dataclass
class MarginsReport:
    """Per-point minimal adversarial distance estimated by FAB-T (`margins_report`).

    ``distance`` is 0 for misclassified points and inf where FAB-T found nothing.
    """

    norm: str
    distance: np.ndarray
    labels: np.ndarray
    epsilons: list
    backend: str = field(default_factory=lambda: keras.backend.backend())

    def share_below(self, eps):
        """Share of all points whose distance is at most ``eps`` (clean errors included):
        an upper bound on the robust error at ``eps`` that FAB-T alone certifies."""
        return float(np.mean(self.distance <= _checks.parse_eps(eps)))

    def summary(self):
        finite = self.distance[np.isfinite(self.distance) & (self.distance > 0)]
        return {
            "norm": self.norm, "n": int(len(self.distance)), "backend": self.backend,
            "misclassified": float(np.mean(self.distance == 0)),
            "not_found": float(np.mean(np.isinf(self.distance))),
            "median": float(np.median(finite)) if len(finite) else None,
            "share_below": {eps_key(e): self.share_below(e) for e in self.epsilons},
        }

    def table(self):
        s = self.summary()
        lines = [f"FAB-T margins ({self.norm}), {s['n']} points, {self.backend} backend",
                 f"misclassified: {100 * s['misclassified']:.1f} %   no adversarial found: "
                 f"{100 * s['not_found']:.1f} %   median distance of the others: "
                 + ("-" if s["median"] is None else f"{s['median']:.4g}")]
        for e, v in s["share_below"].items():
            lines.append(f"share with distance <= {e}: {100 * v:.1f} %")
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def to_csv(self, path):
        """One row per point: index, label, distance (``inf`` when nothing was found)."""
        io.write_csv(path, [{"index": i, "label": int(lab),
                             "distance": "inf" if np.isinf(d) else repr(float(d))}
                            for i, (lab, d) in enumerate(zip(self.labels, self.distance))])
        return path

    def to_json(self, path):
        io.write_json(path, self.summary())
        return path

    def plot(self, path, bins=40):
        """Write a PNG histogram of the distances of correctly classified points, with a
        vertical line and the share of points below at each eps."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        d = self.distance[np.isfinite(self.distance) & (self.distance > 0)]
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        if len(d):
            ax.hist(d, bins=bins, color="#4c72b0", alpha=0.85)
        for e in self.epsilons:
            ax.axvline(e, color="#c44e52", linestyle="--", linewidth=1)
            ax.text(e, ax.get_ylim()[1] * 0.95, f" {100 * self.share_below(e):.0f}% ≤ "
                    f"{eps_key(e)}", color="#c44e52", fontsize=8, va="top")
        label = {"linf": "L∞", "l2": "L2"}[self.norm]
        ax.set_xlabel(f"minimal adversarial distance ({label}, FAB-T)")
        ax.set_ylabel("points")
        ax.set_title(f"Margins of {len(self.distance)} points ({self.backend}); "
                     f"{100 * np.mean(self.distance == 0):.0f}% misclassified")
        fig.tight_layout()
        _parent(path)
        fig.savefig(path)
        plt.close(fig)
        return path


def margins_report(model: keras.Model, x: np.ndarray, y: np.ndarray, *, norm: str = "linf",
                   epsilons: float | str | Sequence[float | str] = (), n_iter: int = 100,
                   n_target_classes: int = 9, batch_size: int = 500, seed: int = 0,
                   jit: bool = True, progress: Callable | None = None,
                   bounds: tuple[float, float] | None = None) -> MarginsReport:
    """Per-point minimal adversarial distance by FAB-T (all targets, refined).

    Args:
        epsilons: radii at which to report the share of points below (and draw lines).
        n_iter, n_target_classes: FAB-T budget (AutoAttack's: 100 and 9).
        progress: optional ``progress(done, total)`` over the targets.
        bounds: ``(lower, upper)`` of the model's inputs (default: the model's own
            ``bounds``, else (0, 1)); distances are in their units.

    Returns:
        A `MarginsReport`; ``.to_csv(path)``, ``.plot(path)`` (PNG), ``.share_below(eps)``.
    """
    norm = _checks.norm_name(norm)
    epsilons = _eps_list(epsilons) if len(list(epsilons)) else []
    x, y = _inputs.gather(x, y)
    box = driver.model_bounds(model, bounds)
    for e in epsilons:
        _checks.eps_in_box(e, norm, box, "epsilons")
    driver.warn_if_pixel_model(model, box)
    x = _checks.images(x, box=box)
    y = _checks.labels(y, len(x))
    # fab_t takes the bounds itself (`attacks.driver.with_bounds`): distances in their units
    _, dist = fab_t(model, x, y, norm=norm, n_iter=n_iter, n_target_classes=n_target_classes,
                    batch_size=batch_size, seed=seed, jit=jit, progress=progress, bounds=box)
    return MarginsReport(norm=norm, distance=dist, labels=y, epsilons=epsilons)
