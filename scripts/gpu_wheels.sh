#!/usr/bin/env bash
# The wheels scripts/gpu_check.py installs on a GPU machine that has JAX, NumPy, h5py,
# scikit-learn, rich, click and grpcio but no TensorFlow and no package index: studyctl
# itself (without its dependencies) and the pure-Python or small pieces that machine lacks,
# for its Python 3.12 on x86-64 Linux. Usage: bash scripts/gpu_wheels.sh [DIR] (default
# gpu-wheels/, about 20 MB; a run of the device tool carries at most 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-wheels}"
pyver="${PYVER:-3.12}"  # the GPU machine's Python
rm -rf "$out"
mkdir -p "$out"
py=.venv/bin/python
[ -x "$py" ] || py=python3
"$py" -m pip wheel --quiet --no-deps -w "$out" .
"$py" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version "$pyver" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --implementation cp -d "$out" \
  keras namex optree optuna alembic mako colorlog sqlalchemy greenlet \
  optuna-dashboard bottle typer annotated-doc pydantic pydantic-core annotated-types \
  typing-inspection
du -sh "$out"
ls "$out"
