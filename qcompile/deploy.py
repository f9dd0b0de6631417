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

TORCHSCRIPT_FILE = "model.torchscript.pt"
EXPORT_FILE = "model.pt2"


def save_torchscript(out_dir: str | Path, example_inputs: tuple) -> tuple[Path, float]:
    """Script the model in ``out_dir``, save it, reload it and compare outputs.

    Returns the file written and the max abs difference after reloading.
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
    reloaded = torch.jit.load(str(path))
    with torch.no_grad():
        a, b = model(*example_inputs), reloaded(*example_inputs)
    a = a[0] if isinstance(a, (tuple, list)) else a
    b = b[0] if isinstance(b, (tuple, list)) else b
    return path, float((a.float() - b.float()).abs().max())


def check_exportable(pipeline) -> None:
    """Refuse, before anything runs or is written, a pipeline whose model torch.export cannot take."""
    from qcompile.errors import QCompileError

    packed = [p.name for p in pipeline.passes
              if (p.name == "convert" and p.backend == "native") or p.name == "dynamic"]
    if packed:
        raise QCompileError(f"torch.export cannot export the packed int8 weights that '{packed[0]}' puts on "
                            "torch's quantized modules (torch 2.14)",
                            hint="convert with --backend gemmlowp (plain int8 tensors and qcompile's own ops), "
                            "or deploy with --deploy torchscript")


def save_export(out_dir: str | Path, example_inputs: tuple) -> tuple[Path, float]:
    """``torch.export`` the model in ``out_dir``, save the archive, reload it and compare outputs."""
    import qcompile.kernels  # noqa: F401  (the archive may call torch.ops.qcompile.*)

    out = Path(out_dir)
    model = load_model(out)
    program = torch.export.export(model, tuple(example_inputs))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path = atomic_write_bytes(out / EXPORT_FILE, buffer.getvalue())
    reloaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        a, b = model(*example_inputs), reloaded(*example_inputs)
    a = a[0] if isinstance(a, (tuple, list)) else a
    b = b[0] if isinstance(b, (tuple, list)) else b
    return path, float((a.float() - b.float()).abs().max())
