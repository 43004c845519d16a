#!/usr/bin/env bash
# Runs the test-suite once per Keras backend, each in its own process, and
# fails if any backend fails. Extra arguments go to pytest. On Keras's
# OpenVINO backend (inference only) only the tests marked `openvino` run
# (tests/conftest.py); a selection without any is not a failure there.
#   bash tools/run_tests.sh                 # jax, tensorflow, torch, openvino
#   BACKENDS="jax" bash tools/run_tests.sh -x tests/test_parity.py
#   JOBS=1 bash tools/run_tests.sh          # one backend at a time
# Backends run JOBS at a time (default 2; the longest, jax, starts first);
# each backend's output is printed whole when it ends.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if [ -x .venv/bin/python ] && [ -z "${VIRTUAL_ENV:-}" ]; then PYTHON=.venv/bin/python; fi
BACKENDS=${BACKENDS:-"jax tensorflow torch openvino"}
JOBS=${JOBS:-2}
reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT

run_backend() {
  local backend=$1
  local start
  start=$(date +%s)
  KERAS_BACKEND=$backend "$PYTHON" -m pytest -p no:cacheprovider --durations=15 \
    --junitxml="$reports/$backend.xml" "${@:2}" >"$reports/$backend.log" 2>&1
  local rc=$?
  # pytest's 5: no test collected (a selection with no `openvino` test).
  if [ "$backend" = openvino ] && [ "$rc" = 5 ]; then rc=0; fi
  echo "$rc" >"$reports/$backend.rc"
  echo "=== KERAS_BACKEND=$backend finished in $(( $(date +%s) - start ))s" >>"$reports/$backend.log"
}

for backend in $BACKENDS; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
  echo "=== KERAS_BACKEND=$backend started"
  run_backend "$backend" "$@" &
done
wait

status=0
for backend in $BACKENDS; do
  echo "=== KERAS_BACKEND=$backend"
  cat "$reports/$backend.log"
  if [ "$(cat "$reports/$backend.rc" 2>/dev/null)" != "0" ]; then
    echo "=== KERAS_BACKEND=$backend FAILED"
    status=1
  fi
done
"$PYTHON" tools/summarize_junit.py "$reports"/*.xml || status=1
exit $status
