"""What one run of ``qcompile`` (compile or inspect) was asked to do, settled once from its arguments.

:meth:`RunOptions.settle` is the only place that turns the parsed arguments
into decisions, before any model is loaded or data read:

* the pipeline, parsed once: ``--passes`` (or the recommended one),
  ``--backend`` applied, ``backend=auto`` settled by the outputs asked for
  (``--deploy export`` needs qcompile's kernels, QOperator ONNX torch's
  modules); every later step reads this :class:`~qcompile.pipeline.Pipeline`
  (after an accuracy search, the one it chose), never its text;
* the combinations of flags that cannot work, refused (``--check`` without
  ``--export onnx`` or data, ``--print-after`` a pass the pipeline lacks,
  an ONNX form or deployment the backend cannot give);
* the quantization config (preset, config file, skip list);
* one data opener (:class:`qcompile.data.sources.OpenedData`) through
  which calibration, the verdict, the checks and the diagnostics read
  their data, so each data set is opened once.

The flags themselves stay readable as ``options.args``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from functools import cached_property

from qcompile.backends.choice import AUTO
from qcompile.backends.grids import backend_of
from qcompile.cli.defaults import RECOMMENDED_PIPELINE, recommended_passes
from qcompile.data.sources import DataSource, OpenedData
from qcompile.errors import QCompileError
from qcompile.pipeline import ON_KERNELS, STATICALLY_CONVERTED, Pipeline, load_plugin, parse_pipeline
from qcompile.quant.config import QuantConfig, load_quant_config


@dataclass
class RunOptions:
    """A run's arguments and what was settled from them (see the module docstring).

    Attributes:
        args: The parsed flags.
        command: ``compile`` or ``inspect``.
        pipeline: The pipeline to run (None: ``inspect`` without ``--passes`` only lowers).
        quant_config: Preset, per-layer config file and skip list, loaded.
        open_data: Opens data sets, each once (called like :func:`qcompile.data.open_data`).
    """

    args: argparse.Namespace
    command: str
    pipeline: Pipeline | None
    quant_config: QuantConfig
    open_data: OpenedData

    @classmethod
    def settle(cls, args: argparse.Namespace, command: str) -> RunOptions:
        """Parse, check and load everything the arguments decide; raise :class:`QCompileError` on a mistake."""
        for plugin in args.plugin:
            load_plugin(plugin)
        compiling = command == "compile"
        passes = args.passes if args.passes is not None else (recommended_passes(args) if compiling else "")
        if compiling and not passes.strip():
            raise QCompileError("--passes is empty", hint="name the passes, e.g. --passes ptq (--passes fuse for a "
                                f"float model), or leave --passes out for the recommended {RECOMMENDED_PIPELINE}")
        pipeline = parse_pipeline(passes) if passes else None
        if getattr(args, "backend", None):
            pipeline = with_backend(pipeline, args.backend)
        if compiling:
            pipeline = _settled_for_outputs(args, pipeline)
        if pipeline is not None:
            _check_print_after(args, pipeline)
        elif args.print_after:
            raise QCompileError("--print-after needs --passes")
        config = load_quant_config(args.qconfig, preset=args.preset, skip=args.skip)
        return cls(args, command, pipeline, config, OpenedData())

    def calibration_data(self) -> DataSource | None:
        """``--calib`` (its first ``--calib-samples``), or None."""
        a = self.args
        if a.calib is None:
            return None
        return self.open_data(a.calib, preprocess=a.preprocess, limit=a.calib_samples, batch_size=a.batch_size)

    def check_data(self, samples: int | None = None) -> DataSource:
        """What ``--check``, ``--modes`` and the diagnostics score on: ``--check-data``, else ``--calib``; at
        most ``samples`` (default ``--check-samples``)."""
        a = self.args
        return self.open_data(a.check_data or a.calib, preprocess=a.preprocess,
                              limit=samples or a.check_samples, batch_size=a.batch_size)

    @cached_property
    def verdict_data(self):
        """The held-out data the verdict and an accuracy search score on (:func:`qcompile.verdict.verdict_data`),
        read once."""
        from qcompile.verdict import verdict_data

        a = self.args
        return verdict_data(check_data=a.check_data, calib=a.calib, calib_samples=a.calib_samples,
                            samples=a.check_samples, preprocess=a.preprocess, batch_size=a.batch_size,
                            opener=self.open_data)


def with_backend(pipeline: Pipeline | None, backend: str) -> Pipeline:
    """``pipeline`` with ``--backend`` given to its convert (or lower) pass."""
    def chooses(p) -> bool:  # convert, or lower: a pass with a backend option
        return (STATICALLY_CONVERTED in p.provides or ON_KERNELS in p.provides) and any(
            f.name == "backend" for f in p.options())

    if pipeline is None or not any(chooses(p) for p in pipeline.passes):
        raise QCompileError("--backend chooses the kernels of the convert (or lower) pass, and the pipeline has "
                            "none", hint="e.g. --passes ptq --backend gemmlowp")
    if backend == AUTO and any(chooses(p) and STATICALLY_CONVERTED not in p.provides for p in pipeline.passes):
        raise QCompileError("--backend auto is for convert; lower puts the integer stage on a named backend",
                            hint="--backend gemmlowp")
    return _backend_given(pipeline, backend, chooses)


def _auto_pinned(pipeline: Pipeline, backend: str) -> Pipeline:
    """``pipeline`` with each ``convert{backend=auto}`` made ``backend``."""
    return _backend_given(pipeline, backend, lambda p: getattr(p, "backend", None) == AUTO)


def _backend_given(pipeline: Pipeline, backend: str, chooses) -> Pipeline:
    """``pipeline`` with ``backend`` set on the passes ``chooses`` picks."""
    passes = tuple(dataclasses.replace(p, backend=backend) if chooses(p) else p for p in pipeline.passes)
    return Pipeline(passes, pipeline.inserted)


def _settled_for_outputs(args: argparse.Namespace, pipeline: Pipeline | None) -> Pipeline | None:
    """The pipeline with ``backend=auto`` settled where an output needs one backend, and the outputs that no
    backend of it can give refused."""
    if pipeline is not None:
        if "export" in args.deploy:  # torch.export takes qcompile's kernels, not torch's packed weights
            pipeline = _auto_pinned(pipeline, "gemmlowp")
        if "onnx" in args.export and args.onnx_form == "qoperator":  # written from torch's quantized modules
            pipeline = _auto_pinned(pipeline, "native")
    if "onnx" in args.export:
        from qcompile.onnx.export import check_exportable as check_onnx_form

        check_onnx_form(backend_of(pipeline.passes) if pipeline is not None else None, args.onnx_form)
    if args.check:
        if "onnx" not in args.export:
            raise QCompileError("--check compares the ONNX export with the emitted model", hint="add --export onnx")
        if (args.check_data or args.calib) is None:
            raise QCompileError("--check needs data", hint="pass --check-data DATA (or --calib DATA)")
    if "export" in args.deploy and pipeline is not None:
        from qcompile.deploy import check_exportable

        check_exportable(pipeline)
    return pipeline


def _check_print_after(args: argparse.Namespace, pipeline: Pipeline) -> None:
    names = {p.name for p in pipeline}
    for name in args.print_after:
        if name != "all" and name not in names:
            raise QCompileError(f"--print-after {name}: no such pass in the pipeline '{pipeline}'",
                                hint="name a pass of the pipeline, or 'all'")
