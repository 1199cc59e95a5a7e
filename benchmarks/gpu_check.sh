#!/usr/bin/env bash
# The GPU check in one call (benchmarks/gpu_check.py): the book's recipe timed beside transformers and TRL,
# Exercise 7.3's size, the 110 test responses and peak memory per size, side by side with book mode, as JSON and
# Markdown in $OUT.
#
#   benchmarks/gpu_check.sh --prepare   here: download into .whl/ the wheels the GPU machine lacks
#                                       (benchmarks/gpu_wheels.txt; Python 3.12, manylinux x86-64)
#   benchmarks/gpu_check.sh             on the GPU machine: install .whl/ into /tmp/site, then measure
#   benchmarks/gpu_check.sh --dry-run   anywhere: the same steps on a tiny model on the CPU
#
# The device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600): the steps' own
# limits add up to 570 s (about 7 min expected, gpu_check.py says from what), the wheels' install to ~20 s.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  python="${PYTHON:-.venv/bin/python}"
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  # one version of each, no dependencies pulled in: the list names every package the machine lacks
  grep -vE '^\s*(#|$)' benchmarks/gpu_wheels.txt | while read -r spec; do
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$spec" 2>/dev/null ||
      "$python" -m pip wheel --quiet --no-deps -w .whl "$spec"  # a pure-Python package published as source only
  done
  du -sh .whl
  exit 0
fi

if [ "${1:-}" != "--dry-run" ] && compgen -G ".whl/*.whl" >/dev/null; then  # the wheels are for the GPU machine's Python
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ "${1:-}" = "--dry-run" ] && PY=.venv/bin/python
exec "$PY" benchmarks/gpu_check.py "$@"
