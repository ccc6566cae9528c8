#!/usr/bin/env bash
# The prepared device check: correctness checks and DyART step times on the torch and JAX
# backends, Markdown tables in $OUT (a new temporary folder when unset).
#
#   benchmarks/device/run.sh [--cpu] [--backends "torch jax"] [--budget SECONDS] [--no-install]
#
# GPU mode (default), on the device machine (CUDA PyTorch and JAX, no Keras, no network):
# installs the wheels carried in .device-wheels/ (`benchmarks/device/fetch_wheels.sh`
# fetches them here) into a private folder, then runs benchmarks/device/device_check.py
# --mode gpu once per backend.  The whole run is sized for 8 minutes (--budget, seconds, for
# all backends together): each backend gets an equal share, no timing row starts after 3/4
# of it, and a backend still running at the end of its share is stopped (the rows it
# finished stay written).
# Call it from the device tool with carry [".device-wheels"], e.g.
#   PYTHONUNBUFFERED=1 bash benchmarks/device/run.sh 2>&1 | tee $OUT/log.txt
#
# --no-install: GPU sizes without installing wheels (Keras already importable: a rerun, or
# a dry run of the time limits elsewhere).
# --cpu: tiny sizes on this machine's CPU, with the project's .venv (no wheels installed);
# `make test` runs it through tests/test_device_script.py so that it cannot rot.
#
# Output: $OUT/checks_<backend>.md, $OUT/timings_<backend>.md and $OUT/report.md (all of
# them, in order).  Exit status: 0 when every check and timing row passed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 2

MODE=gpu
INSTALL=1
BACKENDS="torch jax"
BUDGET=480
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu; BUDGET=400 ;;
    --backends) BACKENDS="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

START=$(date +%s)
OUT="${OUT:-$(mktemp -d -t keras-dyart-device.XXXXXX)}"
mkdir -p "$OUT"
progress() { echo "[run.sh $(( $(date +%s) - START ))s] $*"; }
progress "mode $MODE, backends: $BACKENDS, budget ${BUDGET}s, tables in $OUT"

if [ "$MODE" = cpu ]; then
  PY="${PYTHON:-$ROOT/.venv/bin/python}"
  [ -x "$PY" ] || PY=python3
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
elif [ "$INSTALL" = 0 ]; then
  PY="${PYTHON:-python3}"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  PY="${PYTHON:-python3}"
  WHEELS="$ROOT/.device-wheels"
  SITE="${DEVICE_SITE:-/tmp/keras-dyart-site}"
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "run.sh: no wheels in $WHEELS: run benchmarks/device/fetch_wheels.sh here and carry" \
         ".device-wheels" >&2
    exit 2
  fi
  progress "installing $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl || { echo "run.sh: wheel install failed" >&2; exit 2; }
  # The project from the working tree; the machine's own torch, jax, numpy... stay in use.
  export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader | sed 's/^/[run.sh] gpu: /'
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# JAX: allocate on demand, so PyTorch rows before it and its peak-memory figure are honest.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

n=$(echo $BACKENDS | wc -w)
used=$(( $(date +%s) - START ))
SHARE=$(( (BUDGET - used - 10) / n ))
status=0
for b in $BACKENDS; do
  progress "backend $b: start (share ${SHARE}s)"
  # The child starts no timing row after 3/4 of its share; `timeout` stops it for good at
  # the end of the share (the rows it finished are already written).
  KERAS_BACKEND=$b timeout -k 5 "$SHARE" "$PY" \
    "$ROOT/benchmarks/device/device_check.py" --mode "$MODE" --out "$OUT" \
    --budget $(( SHARE * 3 / 4 ))
  rc=$?
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && progress "backend $b: stopped at its time limit"
  progress "backend $b: exit $rc"
  [ $rc -ne 0 ] && status=1
done

{
  echo "# keras-dyart device check ($MODE mode), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  for kind in checks timings; do
    for b in $BACKENDS; do
      f="$OUT/${kind}_$b.md"
      if [ -f "$f" ]; then cat "$f"; else echo "(no ${kind} table for $b: it did not start)"; fi
      echo
    done
  done
} > "$OUT/report.md"
progress "done, exit $status; report: $OUT/report.md"
cat "$OUT/report.md"
exit $status
