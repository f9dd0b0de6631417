"""Deployable artefacts of an emitted model.

TorchScript works for every backend. A ``torch.export`` archive works for
float models and the ``gemmlowp`` backend, whose state is plain tensors and
whose ops (``torch.ops.qcompile.*``) have fake kernels; torch 2.14 cannot
export the packed weights of its own quantized modules
(``Conv2dPackedParamsBase ... '__obj_flatten__'``), so qcompile refuses it for
the ``native`` backend and says what to use instead. Loading an archive with
qcompile ops needs ``import qcompile.kernels`` first.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from qcompile.codegen import load_model
from qcompile.fileio import atomic_write_bytes
from qcompile.output_check import CheckInputs, verify_outputs

TORCHSCRIPT_FILE = "model.torchscript.pt"
EXPORT_FILE = "model.pt2"


def save_torchscript(out_dir: str | Path, example_inputs: tuple,
                     check: CheckInputs | None = None) -> tuple[Path, float]:
    """Script the model in ``out_dir``, save it, reload it and compare outputs.

    Returns the file written and the max abs difference after reloading, on ``check`` (the compile's
    check inputs; else ``example_inputs``); NaN, a constant output or a mismatch raises
    :class:`~qcompile.output_check.OutputCheckFailed`.
    """
    from qcompile.errors import QCompileError

    out = Path(out_dir)
    model = load_model(out)
    try:
        scripted = torch.jit.script(model)
    except Exception as exc:  # noqa: BLE001 - TorchScript's compiler raises many kinds
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        marked = [lines[i - 1] for i, line in enumerate(lines) if "<--- HERE" in line and i > 0]
        at = f" at `{marked[-1]}`" if marked else ""
        raise QCompileError(
            f"TorchScript cannot compile {out / 'model.py'} (written; no TorchScript file was): "
            f"{lines[0] if lines else type(exc).__name__}{at}",
            hint="deploy the emitted model.py itself, or --deploy export with --backend gemmlowp",
        ) from None
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    path = atomic_write_bytes(out / TORCHSCRIPT_FILE, buffer.getvalue())
    return path, _reloaded_agrees(model, torch.jit.load(str(path)), check or _examples(example_inputs),
                                  "the TorchScript file")


def check_exportable(pipeline) -> None:
    """Refuse, before anything runs or is written, a pipeline whose model torch.export cannot take."""
    from qcompile.errors import QCompileError
    from qcompile.pipeline import CONVERTED

    # what puts packed weights on torch's quantized modules: dynamic, and convert on the native backend
    packed = [p.name for p in pipeline.passes
              if CONVERTED in p.provides and getattr(p, "backend", "native") == "native"]
    if packed:
        raise QCompileError(f"torch.export cannot export the packed int8 weights that '{packed[0]}' puts on "
                            "torch's quantized modules (torch 2.14)",
                            hint="convert with --backend gemmlowp (plain int8 tensors and qcompile's own ops), "
                            "or deploy with --deploy torchscript")


def save_export(out_dir: str | Path, example_inputs: tuple,
                check: CheckInputs | None = None) -> tuple[Path, float]:
    """``torch.export`` the model in ``out_dir``, save the archive, reload it and compare outputs."""
    import qcompile.kernels  # noqa: F401  (the archive may call torch.ops.qcompile.*)

    out = Path(out_dir)
    model = load_model(out)
    program = torch.export.export(model, tuple(example_inputs))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path = atomic_write_bytes(out / EXPORT_FILE, buffer.getvalue())
    reloaded = torch.export.load(str(path)).module()
    if check is not None:  # the archive's batch is the example's
        batch = len(example_inputs[0])
        check = CheckInputs(tuple(t[:batch] for t in check.tensors), check.source)
    return path, _reloaded_agrees(model, reloaded, check or _examples(example_inputs), "the torch.export archive")


def _examples(example_inputs: tuple) -> CheckInputs:
    return CheckInputs(tuple(example_inputs), "the example inputs")


def _reloaded_agrees(model, reloaded, checked: CheckInputs, what: str) -> float:
    """Hold the reloaded artefact to the emitted module on the check inputs (raises if it is unusable)."""
    with torch.no_grad():
        return verify_outputs(reloaded(*checked.tensors), model(*checked.tensors), what=f"{what}, reloaded,",
                              against="the emitted module", source=checked.source)
