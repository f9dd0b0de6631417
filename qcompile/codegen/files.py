"""Writing an emitted model to a directory and loading it back."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

from torch import nn

from qcompile.backends.torch_ao.warnings import torch_deprecations_silenced
from qcompile.codegen.python_source import EmittedModel, emit_python
from qcompile.fileio import atomic_torch_save, atomic_write_text
from qcompile.ir.graph import Graph
from qcompile.ir.printer import print_graph
from qcompile.provenance import sign

MODEL_FILE = "model.py"
WEIGHTS_FILE = "weights.pt"
GRAPH_FILE = "graph.qir"


def write_model(graph: Graph, out_dir: str | Path) -> EmittedModel:
    """Emit ``graph`` into ``out_dir``: ``model.py``, ``weights.pt`` and ``graph.qir``.

    Each file is written to a temporary name and renamed, so an interrupted
    run never leaves a half-written file behind. The weights go first: a
    ``model.py`` never refers to weights that are not there. ``model.py`` is
    signed last (:mod:`qcompile.provenance`).
    """
    out = Path(out_dir)
    emitted = emit_python(graph)
    atomic_torch_save(out / WEIGHTS_FILE, emitted.state_dict)
    atomic_write_text(out / GRAPH_FILE, print_graph(graph))
    atomic_write_text(out / MODEL_FILE, emitted.source)
    sign(out)  # qcompile compare runs model.py only from directories this user's qcompile wrote
    return emitted


def load_model(out_dir: str | Path) -> nn.Module:
    """Import ``model.py`` from ``out_dir`` and return ``load(weights.pt)`` (without torch's deprecation
    warnings about its quantized tensors: :mod:`qcompile.backends.torch_ao.warnings`)."""
    out = Path(out_dir)
    name = f"qcompile_emitted_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, out / MODEL_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # lets torch.jit / pickle find the class
    spec.loader.exec_module(module)
    with torch_deprecations_silenced():
        return module.load(out / WEIGHTS_FILE)
