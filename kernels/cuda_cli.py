"""``python -m qcompile.kernels.cuda_cli``: the CUDA kernels' op coverage, and their build.

    --coverage   every torch.ops.qcompile op and whether it has a CUDA kernel; the last line reads
                 "cuda coverage: N/M ops" (exit status 1 unless every op has one)
    --build      build the kernels with nvcc (cached) and print the library's path
"""

from __future__ import annotations

import sys

from qcompile.kernels.cuda import CudaUnavailable, build, coverage


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m qcompile.kernels.cuda_cli",
                                     description="qcompile's CUDA kernels: op coverage and the build")
    parser.add_argument("--coverage", action="store_true", help="list the ops and whether each has a CUDA kernel")
    parser.add_argument("--build", action="store_true", help="build the kernels (nvcc) and print the library")
    args = parser.parse_args(argv)
    if args.build:
        try:
            print(build(verbose=True))
        except CudaUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    if args.coverage or not args.build:
        table = coverage()
        for name, covered in table.items():
            print(f"  {name:18} {'cuda' if covered else 'MISSING'}")
        print(f"cuda coverage: {sum(table.values())}/{len(table)} ops")
        return 0 if all(table.values()) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
