"""AutoAttack (Croce & Hein, ICML 2020) and any sequence of attacks run worst-case.

"standard" runs APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and Square (5000 queries), each
with 100 iterations and one restart, in that order; each attack runs only on the points that
are still robust, and a point counts as robust only if no attack found an adversarial.

`run_sequence` is the engine: it takes a *list* of epsilons and shares work across them.
FAB-T does not depend on eps (it starts at x and minimises the distance), so it runs once per
point, on the points still robust at some eps, and a point is broken at eps when its FAB-T
distance is at most eps; it stops early on a point once that distance is below the largest
eps at which the point was still robust.
"""

from __future__ import annotations

import inspect
import time
import warnings

import numpy as np

from keras_dyart import _checks, geometry
from keras_dyart.attacks import driver, registry

# Importing the attacks registers them.
from keras_dyart.attacks.apgd import apgd  # noqa: F401
from keras_dyart.attacks.fab import fab_t  # noqa: F401
from keras_dyart.attacks.pgd import pgd  # noqa: F401
from keras_dyart.attacks.registry import ATTACKS, Labels
from keras_dyart.attacks.square import square  # noqa: F401

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
NAMES = Labels({"autoattack": "AutoAttack"})


def resolve(attack) -> list:
    """The list of attack names behind ``attack``: a registered name (`ATTACKS`),
    ``"autoattack"`` (the standard sequence) or a list / comma-separated text of names."""
    if isinstance(attack, str):
        key = attack.strip().lower()
        if key in ("autoattack", "aa", "standard"):
            return list(STANDARD)
        names = [a.strip().lower() for a in key.split(",") if a.strip()]
    else:
        try:
            names = [str(a).strip().lower() for a in attack]
        except TypeError:
            names = [attack]
    bad = [a for a in names if a not in ATTACKS]
    if not names or bad:
        raise ValueError(f"`attack` must be 'autoattack' or one or more of "
                         f"{tuple(ATTACKS)}; got {attack!r}.")
    return names


#: What `run_sequence` passes every attack itself (not settable through ``options``).
_SET_BY_SEQUENCE = ("model", "x", "y", "eps", "norm", "seed", "batch_size", "jit",
                    "progress", "stop_at", "bounds")


def _check_options(name: str, kwargs) -> None:
    """``options[name]`` must be a dict of keyword arguments that attack ``name`` takes."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"`options[{name!r}]` must be a dict of keyword arguments of "
                         f"{name}; got {type(kwargs).__name__}.")
    run = registry.get(name).run
    fixed = set(getattr(run, "keywords", None) or ())     # apgd-ce: apgd with loss="ce"
    takes = [p for p in inspect.signature(run).parameters
             if p not in _SET_BY_SEQUENCE and p not in fixed]
    shared = sorted(k for k in kwargs if k in _SET_BY_SEQUENCE)
    if shared:
        raise ValueError(f"`options[{name!r}]` sets {shared}, which the evaluation sets for "
                         f"every attack: pass them to it instead.")
    unknown = sorted(k for k in kwargs if k not in takes)
    if unknown:
        raise ValueError(f"`options[{name!r}]` has {unknown}, which {name} does not take; "
                         f"it takes {takes}.")


def run_sequence(model, x, y, epsilons, *, norm="linf", attacks=STANDARD, batch_size=500,
                 seed=0, jit=True, options=None, progress=None, bounds=None) -> dict:
    """Run ``attacks`` in order at every eps, each on the points still robust.

    A point broken at one radius counts as broken at every larger one, with the same
    adversarial point (the larger ball holds it), so robust accuracy never rises with eps.

    Args:
        epsilons: list of radii.  ``options``: per-attack keyword arguments, e.g.
            ``{"square": {"n_queries": 1000}, "apgd-t": {"n_iter": 50}}``.
        progress: optional ``progress(attack, eps, done, total)`` (``eps`` is None for an
            attack that serves every eps at once, such as FAB-T).
        bounds: ``(lower, upper)`` of the model's inputs (default: the model's own
            ``bounds``, else (0, 1)); ``x`` must lie in them and every eps is in their units.

    Returns:
        dict with ``clean_pred`` (N,), ``robust`` {eps: bool (N,)}, ``x_adv`` {eps: array},
        ``broken_by`` {eps: list of str}, ``after`` {attack: {eps: robust accuracy}},
        ``seconds`` {attack: float} and ``distance`` (N,) FAB-T distances (NaN where FAB-T
        did not run).
    """
    norm = geometry.get(norm).name
    box = driver.model_bounds(model, bounds)
    x = _checks.images(x, box=box)
    y = _checks.labels(y, len(x))
    attacks = resolve(attacks)
    epsilons = [_checks.eps_in_box(_checks.parse_eps(e, "epsilons"), norm, box, "epsilons")
                for e in epsilons]
    if box != (0.0, 1.0):
        return _in_unit_box(driver.UnitBox(model, box), x, y, epsilons, norm=norm,
                            attacks=attacks, batch_size=batch_size, seed=seed, jit=jit,
                            options=options, progress=progress)
    options = dict(options or {})
    unknown = [k for k in options if k not in ATTACKS]
    if unknown:
        raise ValueError(f"`options` keys must be attack names in {tuple(ATTACKS)}; "
                         f"got {unknown}.")
    for name, kwargs in options.items():
        _check_options(name, kwargs)
    unused = sorted(k for k in options if k not in attacks)
    if unused:
        warnings.warn(f"`options` sets {unused}, which this evaluation does not run "
                      f"(attacks {attacks}): ignored.", stacklevel=3)
    k = driver.num_classes(model, x, y)
    dlr = [name for name in attacks if name in ("apgd-t", "apgd-dlr")]
    if k < 3 and dlr:
        raise ValueError(
            f"The attacks {dlr} use the DLR loss, which needs at least 3 classes; the model "
            f"has {k}. For 2 classes run the others, e.g. attack=['apgd-ce', 'fab-t', "
            f"'square'].")
    clean_pred = driver.predict_labels(model, x, batch_size)
    correct = clean_pred == y
    robust = {e: correct.copy() for e in epsilons}
    x_adv = {e: x.copy() for e in epsilons}
    broken = {e: np.where(correct, "", "clean").astype(object) for e in epsilons}
    after, seconds = {}, {}
    distance = np.full(len(x), np.nan)

    def mark(name, e, sel, adv):
        x_adv[e][sel] = adv
        robust[e][sel] = False
        broken[e][sel] = name

    for name in attacks:
        t0 = time.perf_counter()
        attack = registry.get(name)
        common = dict(norm=norm, seed=seed, batch_size=batch_size, jit=jit,
                      **options.get(name, {}))
        if attack.returns == "distance":
            # Independent of eps: one run per point still robust at some eps, stopped early
            # once below the largest eps at which the point is still robust.
            need = np.zeros(len(x), bool)
            stop = np.full(len(x), -1.0)
            for e in epsilons:
                need |= robust[e]
                stop = np.where(robust[e], np.maximum(stop, e), stop)
            idx = np.flatnonzero(need)
            if len(idx):
                p = None if progress is None else (
                    lambda d, t, name=name: progress(name, None, d, t))
                adv, dist = attack.run(model, x[idx], y[idx], stop_at=stop[idx], progress=p,
                                       **common)
                distance[idx] = dist
                for e in epsilons:
                    hit = robust[e][idx] & (dist <= e)
                    sel = idx[hit]
                    mark(name, e, sel, driver.guard(adv[hit], x[sel], e, norm))
        else:
            for e in sorted(epsilons):
                idx = np.flatnonzero(robust[e])
                if not len(idx):
                    continue
                p = None if progress is None else (
                    lambda d, t, e=e, name=name: progress(name, e, d, t))
                adv, ok = attack.run(model, x[idx], y[idx], e, progress=p, **common)
                mark(name, e, idx[ok], adv[ok])
                _carry(robust, x_adv, broken)
        _carry(robust, x_adv, broken)
        seconds[name] = time.perf_counter() - t0
        after[name] = {e: float(np.mean(robust[e])) for e in epsilons}

    # Worst case, checked on the returned points themselves.
    for e in epsilons:
        x_adv[e] = driver.guard(x_adv[e], x, e, norm)
        wrong = driver.predict_labels(model, x_adv[e], batch_size) != y
        robust[e] &= ~wrong
    _carry(robust, x_adv, broken)
    return {"clean_pred": clean_pred, "robust": robust, "x_adv": x_adv,
            "broken_by": {e: list(broken[e]) for e in epsilons}, "after": after,
            "seconds": seconds, "distance": distance}


def _carry(robust, x_adv, broken):
    """Carry each point broken at a radius to the larger radii where it still counts as
    robust: its adversarial point lies in their balls too (in place; ascending radii, so a
    point broken at the smallest reaches the largest)."""
    order = sorted(robust)
    for small, large in zip(order, order[1:]):
        sel = np.flatnonzero(~robust[small] & robust[large])
        if len(sel):
            x_adv[large][sel] = x_adv[small][sel]
            robust[large][sel] = False
            broken[large][sel] = broken[small][sel]


def _in_unit_box(unit, x, y, epsilons, *, norm, batch_size, progress, **kwargs):
    """`run_sequence` through a `keras_dyart.attacks.driver.UnitBox`: the attacks run in
    the unit box; the points come back in input units, guarded in the eps ball and the box,
    and are checked again on the model itself."""
    model = unit.model.model
    unit_eps = {e: unit.length(e) for e in epsilons}
    unit_progress = None if progress is None else (
        lambda a, e, d, t: progress(a, None if e is None else e * unit.scale, d, t))
    out = run_sequence(unit.model, unit.inputs(x), y, list(unit_eps.values()), norm=norm,
                       batch_size=batch_size, progress=unit_progress, bounds=(0.0, 1.0),
                       **kwargs)
    robust, x_adv, broken = {}, {}, {}
    for e, u in unit_eps.items():
        x_adv[e] = unit.outputs(out["x_adv"][u], x, e, norm)
        wrong = driver.predict_labels(model, x_adv[e], batch_size) != y
        robust[e] = out["robust"][u] & ~wrong
        broken[e] = np.asarray(out["broken_by"][u], dtype=object)
    _carry(robust, x_adv, broken)
    broken = {e: list(b) for e, b in broken.items()}
    after = {a: {e: acc[unit_eps[e]] for e in epsilons} for a, acc in out["after"].items()}
    return {"clean_pred": out["clean_pred"], "robust": robust, "x_adv": x_adv,
            "broken_by": broken, "after": after, "seconds": out["seconds"],
            "distance": out["distance"] * unit.scale}


def autoattack(model, x, y, eps, *, norm="linf", attacks=STANDARD, batch_size=500, seed=0,
               jit=True, options=None, progress=None, bounds=None) -> tuple:
    """AutoAttack "standard" (or any list of ``attacks``) at one radius.

    ``bounds``: the model's input box (default: the model's own ``bounds``, else (0, 1));
    ``eps`` is in its units.  Returns ``(x_adv, success)`` as NumPy arrays: ``x_adv`` in the
    eps ball and the box; ``success`` True where it is misclassified (including clean errors).
    """
    eps = _checks.parse_eps(eps)
    out = run_sequence(model, x, y, [eps], norm=norm, attacks=attacks,
                       batch_size=batch_size, seed=seed, jit=jit, options=options,
                       progress=progress, bounds=bounds)
    return out["x_adv"][eps], ~out["robust"][eps]


__all__ = ["ATTACKS", "NAMES", "STANDARD", "autoattack", "resolve", "run_sequence"]
