"""The prepared GPU check, `benchmarks/device/run.sh`, in its CPU mode, so that it cannot rot.

Only the current backend runs (the suite already runs once per backend).  The device machine
has no TensorFlow, so the script has no TensorFlow path: under ``KERAS_BACKEND=tensorflow``
the test is skipped (the torch and JAX runs of the suite cover the script).
"""

import os
import re
import shutil
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "device", "run.sh")
BACKEND = keras.backend.backend()
CHECKS = ("device", "closed-form margin", "dyart fit", "autoattack", "save/load")


@pytest.mark.slow
@pytest.mark.skipif(BACKEND not in ("torch", "jax"),
                    reason="the device script runs the torch and JAX backends only")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_device_script_cpu_mode_writes_its_tables(tmp_path):
    out = str(tmp_path / "out")
    env = dict(os.environ, OUT=out, PYTHON=sys.executable)
    result = subprocess.run(["bash", SCRIPT, "--cpu", "--backends", BACKEND], env=env,
                            capture_output=True, text=True, timeout=600)
    log = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, log
    assert f"backend {BACKEND}: exit 0" in result.stdout, log      # progress lines

    checks = open(os.path.join(out, f"checks_{BACKEND}.md")).read()
    for name in CHECKS:
        assert re.search(rf"^\| {BACKEND} \| {re.escape(name)} \| pass \|", checks, re.M), \
            (name, checks)

    timings = open(os.path.join(out, f"timings_{BACKEND}.md")).read()
    for precision in ("float32", "mixed_bfloat16"):
        row = re.search(rf"^\| {BACKEND} \| small CNN \(28×28×1\) \| 8 \| {precision} \|"
                        r"(.*)\|$", timings, re.M)
        assert row, (precision, timings)
        cells = [c.strip() for c in row.group(1).split("|")]
        clean, grad, dyart, floor, ratio, images = map(float, cells[:6])
        assert 0 < grad and 0 < clean and 0 < dyart
        assert floor == pytest.approx(2 * grad + 2 * clean, rel=1e-2, abs=5e-4)  # n_iter 2
        assert ratio == pytest.approx(dyart / floor, rel=2e-2, abs=1e-2)
        assert images > 0

    report = open(os.path.join(out, "report.md")).read()
    assert checks.strip() in report and timings.strip() in report
