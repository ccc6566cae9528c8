"""A `keras-dyart train` process killed with SIGKILL in the middle of an epoch, then resumed
with `--resume`, ends with the same model and metrics as an uninterrupted run."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_dyart  # noqa: F401  (registers the method models for loading)

ARGS = ["train", "--method", "dyart", "--limit", "384", "--batch-size", "32", "--burn-in",
        "1", "--epochs", "3", "--n-iter", "3", "--eval-n", "64", "--pgd-steps", "5",
        "--eps", "0.1", "--eps", "0.3", "--ema-tau", "0.9", "--verbose", "0"]
COMMAND = [sys.executable, "-m", "keras_dyart_apps.main"]


def run(out, *extra, timeout=600):
    return subprocess.run([*COMMAND, *ARGS, "--out", out, *extra], capture_output=True,
                          text=True, timeout=timeout, env=os.environ.copy())


def history_rows(out):
    path = os.path.join(out, "history_method.csv")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return max(len(f.read().strip().splitlines()) - 1, 0)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    reference = str(tmp_path / "reference")
    done = run(reference)
    assert done.returncode == 0, done.stderr[-3000:]

    out = str(tmp_path / "killed")
    proc = subprocess.Popen([*COMMAND, *ARGS, "--out", out], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 600
        # The method's first epoch is complete (its row is written, its backup follows
        # within milliseconds): wait a little so that the kill lands inside epoch 2.
        while history_rows(out) < 1:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the run did not finish an epoch in time"
            time.sleep(0.02)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, "metrics.json")), \
        "the run finished before the kill: the test did not interrupt it"
    assert history_rows(out) < 3
    assert os.path.isdir(os.path.join(out, "backup"))

    # The interrupted run's history as an older version wrote it (no epoch_seconds): the
    # resumed rows must keep its columns, not shift them.
    path = os.path.join(out, "history_method.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["epoch_seconds"]) > 0 for r in rows)
    with open(path, "w", newline="") as f:
        names = [k for k in rows[0] if k not in ("epoch_seconds", "val_epoch_seconds")]
        writer = csv.DictWriter(f, names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    refused = run(out)                                  # would overwrite the backup
    assert refused.returncode != 0 and "--resume" in refused.stderr + refused.stdout
    resumed = run(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not os.path.exists(os.path.join(out, "backup"))

    ours = json.load(open(os.path.join(out, "metrics.json")))
    theirs = json.load(open(os.path.join(reference, "metrics.json")))
    ours.pop("train_seconds"), theirs.pop("train_seconds")
    assert ours == theirs
    for name in ("model.keras", "averaged.keras"):
        a = keras.saving.load_model(os.path.join(out, name), compile=False).get_weights()
        b = keras.saving.load_model(os.path.join(reference, name), compile=False).get_weights()
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    with open(os.path.join(out, "history.csv")) as f:
        epochs = [row.split(",")[0] for row in f.read().strip().splitlines()[1:]]
    assert epochs == ["1", "2", "3", "4"]
    with open(os.path.join(out, "history.csv")) as f:
        ours = list(csv.DictReader(f))
    with open(os.path.join(reference, "history.csv")) as f:
        theirs = list(csv.DictReader(f))
    assert "epoch_seconds" not in ours[0]
    for a, b in zip(ours, theirs):          # every value under its own column
        for key in ("loss", "accuracy", "ce_loss", "robust_loss"):
            if b[key] == "":                # the burn-in row has no method terms
                assert a[key] == "", key
                continue
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), key
