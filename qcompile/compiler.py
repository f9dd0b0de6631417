"""The main job as a Python API: load, lower, run the passes, emit, check.

::

    from qcompile import compile_model
    result = compile_model("zoo:mobilenet_v2", passes="fuse", out_dir="out/")
    print(result.check)            # emitted module vs. the graph it came from
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from qcompile.codegen import load_model as load_emitted
from qcompile.codegen import write_model
from qcompile.data import DataSource, open_data
from qcompile.errors import QCompileError, TargetMissed
from qcompile.frontend.dynamic_axes import AxesSpec
from qcompile.frontend.loaders import LoadedModel, load_model
from qcompile.frontend.lower import lower
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.output_check import CheckInputs, check_inputs, verify_outputs
from qcompile.pipeline import Instrument, PassContext, PassRecord, Pipeline, parse_pipeline
from qcompile.pipeline.manager import PassManager
from qcompile.target_search import Target, Trial, chosen, search

DEFAULT_PIPELINE = "fuse"


_INTEGER_TYPES = {"int64": torch.int64, "i64": torch.int64, "int32": torch.int32, "i32": torch.int32}


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``, with a clear error otherwise (a ``:int64`` suffix is dropped)."""
    dims = text.split(":", 1)[0]
    try:
        shape = tuple(int(part) for part in dims.replace("x", ",").split(","))
    except ValueError:
        raise QCompileError(f"input shape {text!r} is not a list of integers",
                            hint="write it like 1,3,224,224 (token ids: 1,128:int64)") from None
    if not shape or any(d <= 0 for d in shape):
        raise QCompileError(f"input shape {text!r} has a non-positive dimension")
    return shape


def example_tensor(text: str) -> torch.Tensor:
    """An example input from ``--input-shape`` text: random floats, or zeros for ``SHAPE:int64`` (token ids)."""
    shape = parse_shape(text)
    kind = text.split(":", 1)[1] if ":" in text else "float32"
    if kind in ("float32", "f32"):
        return torch.randn(shape)
    if kind not in _INTEGER_TYPES:
        raise QCompileError(f"input shape {text!r}: unknown element type {kind!r}",
                            hint="float32 (the default), int64 or int32, e.g. 1,128:int64")
    return torch.zeros(shape, dtype=_INTEGER_TYPES[kind])  # index 0 exists in every embedding table


def example_inputs_for(loaded: LoadedModel, shapes: Sequence[str] = ()) -> tuple:
    """Example inputs from ``--input-shape`` values, else from the model file or zoo entry."""
    if shapes:
        return tuple(example_tensor(s) for s in shapes)
    if loaded.example_inputs is not None:
        return loaded.example_inputs
    raise QCompileError(
        f"the input shape of {loaded.source} is not known",
        hint="pass --input-shape, e.g. --input-shape 1,3,224,224 (once per model input)",
    )


@dataclass
class CompileResult:
    """What :func:`compile_model` produced.

    Attributes:
        graph: The graph after the last pass.
        records: What each pass reported.
        out_dir: Where the model was written (None if not written).
        check: Max abs difference between the emitted module and the graph's
            interpreter on ``check_inputs`` (None if not written); a difference
            beyond tolerance, NaN or a constant output raised instead
            (:mod:`qcompile.output_check`).
        check_inputs: The real inputs the checks ran on (None if not written).
        float_module: The model as loaded, before lowering (the float reference of the verdict).
        trials: With an accuracy target, every pipeline tried, in order
            (:class:`qcompile.target_search.Trial`); the last one that met the
            target, or the closest, is the graph.
        pipeline: The pipeline that made the graph (the one given, or the one
            an accuracy search chose; its skip list is in the config it ran with).
    """

    graph: Graph
    records: list[PassRecord]
    out_dir: Path | None = None
    check: float | None = None
    notes: list[str] = field(default_factory=list)
    example_inputs: tuple = ()
    check_inputs: CheckInputs | None = None
    float_module: nn.Module | None = None
    trials: list[Trial] = field(default_factory=list)
    pipeline: Pipeline | None = None


def compile_model(
    model: str | nn.Module,
    *,
    passes: str | Pipeline = DEFAULT_PIPELINE,
    out_dir: str | Path | None = None,
    example_inputs: tuple | None = None,
    input_shapes: Sequence[str] = (),
    weights: str | None = None,
    trust_pickle: bool = False,
    ctx: PassContext | None = None,
    instruments: Sequence[Instrument] = (),
    calib: str | DataSource | None = None,
    calib_samples: int | None = None,
    batch_size: int = 32,
    preprocess: str | None = None,
    frontend: str = "fx",
    dynamic_axes: AxesSpec = (),
    before_write: Callable[[Graph], None] | None = None,
    target: Target | None = None,
    target_inputs: list[tuple] | None = None,
    write_best: bool = False,
) -> CompileResult:
    """Load ``model``, lower it, run ``passes`` and (with ``out_dir``) emit and check it.

    ``passes`` is a pipeline string, parsed and order-checked before the model
    is even loaded, or a pipeline already parsed (the CLI's); the calibration
    data is opened before the model is lowered, so a typo costs nothing.
    """
    pipeline = passes if isinstance(passes, Pipeline) else parse_pipeline(passes)
    ctx = ctx or PassContext()
    if calib is not None:
        ctx.calib_data = (calib if isinstance(calib, DataSource)  # opened already (the command line's)
                          else open_data(calib, preprocess=preprocess, limit=calib_samples, batch_size=batch_size))
    if isinstance(model, nn.Module):
        loaded = LoadedModel(model, type(model).__name__, "module", example_inputs)
    else:
        loaded = load_model(model, weights=weights, trust_pickle=trust_pickle,
                            example_inputs=tuple(example_tensor(s) for s in input_shapes) or None)
    shape_unknown = example_inputs is None and not input_shapes and loaded.example_inputs is None
    # read once: it shows the input shape, and the post-write check runs on it
    wanted = ctx.calib_data is not None and (shape_unknown or out_dir is not None)
    first = next(iter(ctx.calib_data), None) if wanted else None
    if shape_unknown and first is not None:
        example_inputs = tuple(t[:1] for t in first)  # the data shows the input shape
    inputs = example_inputs if example_inputs is not None else example_inputs_for(loaded, input_shapes)
    notes = list(loaded.notes)
    graph = lower(loaded.module, inputs, notes, frontend, dynamic_axes)
    checked = check_inputs(first, tuple(inputs)) if out_dir is not None else None
    if checked is not None and first is not None:
        from qcompile.passes.calibrate import check_batch

        check_batch(graph, checked.tensors, 0)  # the data's own mistakes, said as calibrate would say them
    with torch.no_grad():
        float_outputs = Interpreter(graph).run(*checked.tensors) if checked is not None else None
    if target is None:
        records = PassManager(pipeline, instruments).run(graph, ctx)
    else:
        graph, records, trials = search(graph, pipeline, ctx, target, target_inputs, ctx.log)
        if not trials[-1].met:
            best = chosen(trials, target)
            missed = TargetMissed(f"no pipeline tried meets {target.describe()}; the closest was {best.describe()}",
                                  hint="lower the target, give more calibration data, or keep layers float "
                                       "(--sensitivity DB lists them)"
                                       + ("" if write_best else "; --write-best writes the closest anyway"))
            if not write_best or out_dir is None:
                raise missed
            ctx.log(f"qcompile: target: writing the closest anyway (--write-best): {best.pipeline}")
            notes.append(str(missed).splitlines()[0])
    result = CompileResult(graph, records, notes=notes, example_inputs=tuple(inputs), check_inputs=checked,
                           float_module=loaded.module, trials=trials if target is not None else [],
                           pipeline=pipeline if target is None else chosen(trials, target).passes)
    if out_dir is not None:
        if before_write is not None:
            before_write(graph)  # e.g. refuse an export that would fail, before any file exists
        write_model(graph, out_dir)
        emitted = load_emitted(out_dir)
        with torch.no_grad():
            result.check = verify_outputs(emitted(*checked.tensors), Interpreter(graph).run(*checked.tensors),
                                          what="the emitted module", against="the graph's interpreter",
                                          source=checked.source, float_reference=float_outputs)
        result.out_dir = Path(out_dir)
    return result
