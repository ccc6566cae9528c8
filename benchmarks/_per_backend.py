"""Run a benchmark's child program once per backend, each in its own process (Keras picks
its backend at import), and collect the JSON line each child prints last; write the table."""

import json
import os
import subprocess
import sys
import time


def run_per_backend(child, cfg, backends, extra_env=None, echo=False):
    """Results of ``python -c child json(cfg)`` under each ``KERAS_BACKEND`` in
    ``backends``; a backend whose child fails is reported on stderr and left out."""
    results = []
    for backend in backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        env.update(extra_env or {})
        t0 = time.time()
        res = subprocess.run([sys.executable, "-c", child, json.dumps(cfg)], env=env,
                             capture_output=True, text=True)
        lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
        if res.returncode or not lines:
            print(f"{backend}: failed\n{res.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(lines[-1]))
        detail = f"\n{lines[-1]}" if echo else ""
        print(f"{backend}: done in {time.time() - t0:.0f} s{detail}", file=sys.stderr)
    return results


def write_table(text, path):
    """Print a benchmark's Markdown and write it to ``path`` (folders created)."""
    print(text)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
