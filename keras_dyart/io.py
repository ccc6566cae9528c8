"""Run-directory files, written atomically (write to a temporary file, then rename)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras


def _atomic_write(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any, *, compact: bool = False) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (``compact=True``: no
    indentation or spaces, for large files)."""
    layout = {"separators": (",", ":")} if compact else {"indent": 2}
    _atomic_write(path, lambda f: json.dump(data, f, sort_keys=False, **layout))


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write a list of dicts as CSV (columns: the union of keys, first-seen order)."""
    columns = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)

    def write(f):
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)

    _atomic_write(path, write)


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Save a Keras model to ``path`` (.keras) atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
