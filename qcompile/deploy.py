"""Deployable artefacts of an emitted model.

TorchScript works for float and ``native`` int8 models alike. A
``torch.export`` archive does not: torch 2.14 cannot export the packed weights
of its quantized modules (``Conv2dPackedParamsBase ... '__obj_flatten__'``),
so qcompile does not offer it for the native backend.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from qcompile.codegen import load_model
from qcompile.fileio import atomic_write_bytes

TORCHSCRIPT_FILE = "model.torchscript.pt"


def save_torchscript(out_dir: str | Path, example_inputs: tuple) -> tuple[Path, float]:
    """Script the model in ``out_dir``, save it, reload it and compare outputs.

    Returns the file written and the max abs difference after reloading.
    """
    out = Path(out_dir)
    model = load_model(out)
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    path = atomic_write_bytes(out / TORCHSCRIPT_FILE, buffer.getvalue())
    reloaded = torch.jit.load(str(path))
    with torch.no_grad():
        a, b = model(*example_inputs), reloaded(*example_inputs)
    a = a[0] if isinstance(a, (tuple, list)) else a
    b = b[0] if isinstance(b, (tuple, list)) else b
    return path, float((a.float() - b.float()).abs().max())
