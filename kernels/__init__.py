"""GEMMLOWP-style integer kernels (imported as ``qcompile.kernels``).

* ``gemmlowp.h``: the fixed-point arithmetic, for host and device code;
* the CUDA kernels: ``qconv_kernels.cuh`` (convolutions and linear layers: an
  implicit GEMM on int8 tensor cores, ``sm80_ops.cuh``, and a direct kernel for
  depthwise ones), ``gemmlowp_kernels.cuh`` (element-wise ops and pooling),
  their launch shapes (``launchers.h``) and C entry points (``entry_points.h``),
  built by ``gemmlowp_launch.cu``; :mod:`.device_ops` drives them for torch
  tensors, :mod:`.cuda` registers them as the ops' CUDA kernels;
* :mod:`.emulation`: those kernels built for the CPU against an emulation of
  CUDA's blocks, threads, shared memory and tensor-core instructions, for tests;
* :mod:`.fixed_point` and :mod:`.cpu`: the CPU twin, bit-exact with the kernels;
  :mod:`.host` and :mod:`.host_conv` its compiled host kernels (``host_kernels.cpp``: the
  element-wise stages; ``host_layout.cpp``: pooling and layout copies; ``host_plan.cpp``: a run of kernel
  calls in one call, for :mod:`.plan` and :mod:`.segment`; ``host_conv.cpp``,
  ``host_vnni512.cpp``, ``host_depthwise.cpp``: integer GEMM
  (AVX2, AVX-VNNI, AVX-512 VNNI) and depthwise convolutions (AVX2, AVX-512), sharing ``conv_shape.h``,
  ``gather_bytes.h`` and the output stages ``stage8.h`` / ``stage16.h``; ``host_amx.cpp`` with
  ``amx_tiles.h``: the GEMM on AMX-INT8 tiles where the CPU has them);
* :mod:`.ops`: ``torch.ops.qcompile.*``, with fake kernels for export (shapes from :mod:`.geometry`);
* :mod:`.modules`: the modules the ``gemmlowp`` backend emits.

Importing the package registers the ops, with their CPU and CUDA kernels.
"""

from qcompile.kernels import cuda, ops  # noqa: F401

cuda.register()
