"""Symbolic tracing with torch.fx, and clear errors when tracing fails.

The tracer keeps torch.nn modules as leaves (a ``Conv2d`` stays one call),
records which module each node was created in, and keeps the user's source
line of each node. When tracing fails, the error names the module being
traced, the user's source line and what to do next.
"""

from __future__ import annotations

import functools
import operator
import traceback
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from qcompile.errors import LoweringError

_TORCH_DIR = str(Path(torch.__file__).parent)
_OWN_DIR = str(Path(__file__).parent.parent)


@functools.cache
def graph_module_names() -> frozenset[str]:
    """Names a GraphModule gives its own attributes: a submodule or parameter called so cannot be one of its
    children (built once, on first use)."""
    return frozenset(dir(fx.GraphModule)) | frozenset(vars(fx.GraphModule(nn.Module(), fx.Graph())).keys())


def _internal(filename: str) -> bool:
    """Frames inside torch or qcompile, which say nothing about the user's model."""
    return filename.startswith(_TORCH_DIR) or filename.startswith(_OWN_DIR)


class ScopedTracer(fx.Tracer):
    """A tracer that records the module path each node is created under.

    torch.nn modules stay leaves (fx's default); user modules are traced
    through.
    """

    def __init__(self):
        super().__init__()
        self.record_stack_traces = True
        self.paths: list[str] = [""]
        self.failed_in: str | None = None  # innermost module active when tracing failed

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        self.paths.append(path)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = path
            raise
        finally:
            self.paths.pop()

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["module_path"] = target if kind == "call_module" else self.paths[-1]
        return node


def user_frame(tb) -> traceback.FrameSummary | None:
    """The innermost frame of ``tb`` outside torch itself (the user's code)."""
    frames = [f for f in traceback.extract_tb(tb) if not _internal(f.filename)]
    return frames[-1] if frames else None


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule, or raise a :class:`LoweringError` that says why."""
    tracer = ScopedTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        module = tracer.failed_in or "(the top-level module)"
        frame = user_frame(exc.__traceback__)
        where = f"{frame.filename}:{frame.lineno} in {frame.name}" if frame else "unknown line"
        code = f"\n    {frame.line}" if frame and frame.line else ""
        raise LoweringError(
            f"cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}\n"
            f"  in module '{module}' at {where}{code}",
            hint=(
                "export the model with torch.export.export(model, example_inputs) and "
                "torch.export.save(...), then pass the .pt2 archive instead; or rewrite "
                "that line so it does not branch on tensor values"
            ),
        ) from exc
    return _graph_module(tracer.root, graph, type(model).__name__)


def _graph_module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """``fx.GraphModule(root, graph)``, with children whose names the GraphModule uses itself renamed.

    A GraphModule keeps ``meta``, ``graph``, ``code`` (and more) for itself,
    so ``self.meta = nn.Linear(...)`` in the user's model would make torch.fx
    (and torch.export) fail with a TypeError. Such a child is renamed
    ``meta_`` (more underscores if that is taken); the nodes keep the
    module path they were traced under, so reports still name ``meta``.
    """
    heads = {node.target.split(".")[0] for node in graph.nodes if node.op in ("call_module", "get_attr")}
    taken = graph_module_names()
    clashes = heads & taken
    if not clashes:
        return fx.GraphModule(root, graph, name)
    renamed = {}
    for head in sorted(clashes):
        new = head + "_"
        while new in heads or new in taken or hasattr(root, new):
            new += "_"
        renamed[head] = new
    attributes = {}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            head, dot, rest = node.target.partition(".")
            target = renamed.get(head, head) + dot + rest
            attributes[target] = operator.attrgetter(node.target)(root)
            node.target = target
    return fx.GraphModule(attributes, graph, name)


def stack_location(node: fx.Node) -> tuple[str, str]:
    """(``file:line``, code) of the user's line that created ``node``, if recorded."""
    text = node.stack_trace or ""
    lines = text.strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if line.startswith('File "'):
            filename = line.split('"')[1]
            if _internal(filename):
                continue
            lineno = line.split("line ")[1].split(",")[0] if "line " in line else "?"
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if code.startswith('File "'):
                code = ""  # no source text (e.g. code typed at a prompt)
            short = "/".join(Path(filename).parts[-2:])
            return f"{short}:{lineno}", code
    return "", ""
