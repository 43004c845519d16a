#!/usr/bin/env bash
# Runs the test-suite once per Keras backend, each in its own process, and
# fails if any backend fails. Extra arguments go to pytest.
#   bash tools/run_tests.sh                 # tensorflow, jax and torch
#   BACKENDS="jax" bash tools/run_tests.sh -x tests/test_parity.py
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if [ -x .venv/bin/python ] && [ -z "${VIRTUAL_ENV:-}" ]; then PYTHON=.venv/bin/python; fi
BACKENDS=${BACKENDS:-"tensorflow jax torch"}
reports=$(mktemp -d)
status=0
for backend in $BACKENDS; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend "$PYTHON" -m pytest -p no:cacheprovider \
    --junitxml="$reports/$backend.xml" "$@" || status=1
done
"$PYTHON" tools/summarize_junit.py "$reports"/*.xml || status=1
rm -rf "$reports"
exit $status
