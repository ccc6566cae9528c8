"""The attacks by name: each attack module registers what it offers, and `run_sequence`,
`evaluate` and the CLI look names up here instead of testing them one by one.

>>> from keras_dyart import attacks
>>> attacks.get("apgd-t").label, attacks.get("fab-t").returns
('APGD-T', 'distance')
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Attack:
    """One registered attack.

    Attributes:
        name: the name used in ``attack=`` / ``attacks=`` (e.g. ``"apgd-t"``).
        label: the name shown in tables (e.g. ``"APGD-T"``).
        run: for ``returns="success"``, ``run(model, x, y, eps, *, norm, seed, batch_size,
            jit, progress, **options) -> (x_adv, success)``; for ``returns="distance"`` (a
            minimal-norm attack that does not depend on eps), ``run(model, x, y, *, stop_at,
            norm, seed, batch_size, jit, progress, **options) -> (x_adv, distance)``.
            ``progress(done, total)`` in both.
        returns: ``"success"`` or ``"distance"``.
        label_of: optional ``label_of(options) -> str``, the label of a run with those
            keyword arguments (PGD's label names its steps); default: ``label``.
    """

    name: str
    label: str
    run: Callable
    returns: str = "success"
    label_of: Callable | None = None

    def label_for(self, options: Mapping | None = None) -> str:
        """The label of a run with ``options`` (the keyword arguments it was given)."""
        return self.label if self.label_of is None else self.label_of(dict(options or {}))


ATTACKS: dict[str, Attack] = {}


def register(name: str, label: str, run: Callable, returns: str = "success",
             label_of: Callable | None = None) -> Attack:
    """Register ``run`` under ``name`` (see `Attack`); returns the entry."""
    if returns not in ("success", "distance"):
        raise ValueError(f"`returns` must be 'success' or 'distance'; got {returns!r}.")
    entry = Attack(name.lower(), label, run, returns, label_of)
    ATTACKS[entry.name] = entry
    return entry


def get(name: str) -> Attack:
    """The registered attack called ``name`` (case-insensitive)."""
    key = str(name).strip().lower()
    if key not in ATTACKS:
        raise ValueError(f"`attack` must be one of {tuple(ATTACKS)}; got {name!r}.")
    return ATTACKS[key]


class Labels(Mapping):
    """``{name: label}`` of the registered attacks (live), plus ``extra`` names."""

    def __init__(self, extra: Mapping[str, str] = ()):
        self.extra = dict(extra)

    def _all(self) -> dict:
        return {**{a.name: a.label for a in ATTACKS.values()}, **self.extra}

    def __getitem__(self, key: str) -> str:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


__all__ = ["ATTACKS", "Attack", "Labels", "get", "register"]
