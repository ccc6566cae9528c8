"""The run directory of `keras-dyart train`: which files it holds, the checks on `--out`,
`--overwrite` and `--resume`, and reading a run's config.json (also for `evaluate` and
`dynamics`)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from typing import Any, Mapping

#: Files a run directory holds: written by `train` (and by `evaluate` and `dynamics` on
#: the run); `--overwrite` removes them before the new run starts.
RUN_FILES = ("config.json", "burn_in.keras", "model.keras", "averaged.keras", "best.keras",
             "history.csv", "history_burn_in.csv", "history_method.csv", "metrics.json")
RUN_FOLDERS = ("backup", "dynamics")
RUN_PATTERNS = ("eval_*.json", "eval_*.csv", "margins.*", "best.keras.*", ".tmp-*")

#: Resume keys newer than some config.json files, with the value an older run had.
_ADDED = {"holdout": 0}

#: Settings a resumed run must share with the run it continues.
RESUME_KEYS = ("method", "backend", "seed", "dataset", "model", "epochs", "burn_in",
               "batch_size", "limit", "holdout", "init", "preset")


def default_out(method: str, backend: str) -> str:
    """A new run directory in ``runs/``, named by method, backend and time."""
    return os.path.join("runs", f"{method}-{backend}-{time.strftime('%Y%m%d-%H%M%S')}")


def finished(out: str) -> bool:
    """Whether ``out`` holds a finished run (metrics.json or model.keras)."""
    return any(os.path.exists(os.path.join(out, n)) for n in ("metrics.json", "model.keras"))


def check_out(out: str, resume: bool, overwrite: bool) -> None:
    """Refuse an --out that is a file, a finished run (without --overwrite) or an
    interrupted one (without --resume or --overwrite).

    Raises:
        ValueError: naming `--out` and what to pass instead.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"`--out` {out!r} is a file; give a directory.")
    if resume or overwrite or not os.path.isdir(out):
        return
    if finished(out):
        raise ValueError(f"`--out` {out!r} holds a finished run (metrics.json or "
                         "model.keras); pass --overwrite to replace it or choose another "
                         "directory.")
    if os.path.exists(os.path.join(out, "backup")):
        raise ValueError(f"`--out` {out!r} holds an interrupted run (backup/); pass "
                         "--resume to continue it, --overwrite to replace it, or choose "
                         "another directory.")


def check_resume(out: str, config: Mapping[str, Any]) -> None:
    """Refuse to resume ``out`` with ``config`` unless it holds an unfinished run with the
    same `RESUME_KEYS`.

    Raises:
        ValueError: no config.json, a differing setting, or a complete run.
    """
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"`--resume`: {out!r} holds no config.json; nothing to resume.")
    with open(path) as f:
        previous = json.load(f)
    # settings added after a run was written take their default ("holdout": none)
    changed = [k for k in RESUME_KEYS
               if previous.get(k, _ADDED.get(k)) != config.get(k, _ADDED.get(k))]
    if changed:
        raise ValueError(
            "`--resume` needs the options of the interrupted run; these differ: "
            + ", ".join(f"{k} (run: {previous.get(k)!r}, now: {config.get(k)!r})"
                        for k in changed))
    if os.path.exists(os.path.join(out, "metrics.json")):
        raise ValueError(f"`--resume`: the run in {out!r} is complete (metrics.json "
                         "exists).")


def clear_run(out: str) -> None:
    """Remove the files of an earlier run from ``out`` (`RUN_FILES`, `RUN_FOLDERS`,
    `RUN_PATTERNS`); other files stay."""
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.remove(path)
    for name in RUN_FOLDERS:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    for pattern in RUN_PATTERNS:
        for path in glob.glob(os.path.join(out, pattern)):
            if os.path.isfile(path):
                os.remove(path)


def read_config(path: str, arg: str) -> dict:
    """A run's config.json as a dict; ``{}`` when ``path`` does not exist.

    Args:
        path: the config.json file.
        arg: the command-line argument the run came from, for the error (``TARGET``).

    Raises:
        ValueError: the file cannot be read or is not a JSON object.
    """
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"`{arg}`: cannot read {path}: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"`{arg}`: {path} is not a run's config.json (not a JSON object).")
    return config
