"""The shape of ``qcompile/onnx``: a builder and a registry at the bottom, no import cycle, onnxruntime apart."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

import qcompile.onnx
from qcompile.onnx.registry import emits, registered_ops

ONNX = Path(qcompile.onnx.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ONNX.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> nx.DiGraph:
    """Every import between modules of qcompile.onnx, module-level or inside a function (not for typing only)."""
    graph = nx.DiGraph()
    modules = {_module_name(p) for p in ONNX.rglob("*.py")}
    for path in ONNX.rglob("*.py"):
        source = _module_name(path)
        graph.add_node(source)
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                # "from qcompile.onnx import tensor_ops" imports submodules; "from .modules import CONVS" one module
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = submodules or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != source:
                    graph.add_edge(source, target)
    return graph


def test_no_import_cycle_inside_qcompile_onnx():
    graph = _imports()
    assert graph.number_of_edges() > 30  # the walk found the imports
    assert list(nx.simple_cycles(graph)) == []


@pytest.mark.parametrize("bottom", ["qcompile.onnx.builder", "qcompile.onnx.registry"])
def test_builder_and_registry_import_no_other_part_of_the_export(bottom):
    assert list(_imports().successors(bottom)) == []


def test_onnxruntime_is_used_by_the_runtime_folder_only():
    users = sorted(_module_name(p) for p in ONNX.rglob("*.py") if "import onnxruntime" in p.read_text())
    assert users and all(u.startswith("qcompile.onnx.runtime.") for u in users), users


def test_emitters_are_registered_by_op_name_once():
    import qcompile.onnx.function_ops  # noqa: F401  (registers the emitters)

    ops = registered_ops()
    assert {"flatten", "getitem", "view", "add", "relu", "max_pool2d", "layer_norm", "clamp"} <= set(ops)
    with pytest.raises(ValueError, match="two ONNX emitters for 'flatten'"):
        emits("flatten")(lambda b, node, args, kw: None)
