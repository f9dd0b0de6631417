"""Codegen: graphs to readable eager-mode PyTorch source."""

from qcompile.codegen.files import load_model, write_model
from qcompile.codegen.python_source import EmittedModel, emit_python

__all__ = ["EmittedModel", "emit_python", "load_model", "write_model"]
