"""The reference interpreter: executes a graph at any stage of the pipeline.

Calibration, bias correction, error tracing and the tests all run graphs
through this one class, so "what the graph computes" has one definition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph
from qcompile.ir.modules import FUSED_ACTIVATIONS, build_module
from qcompile.ir.node import Node, NodeKind, map_refs
from qcompile.ir.printer import excerpt
from qcompile.ir.targets import resolve_target

NodeHook = Callable[[Node, Any], None]
NodeEdit = Callable[[Node, Any], Any]


class InterpreterError(QCompileError):
    """A node failed while the graph was being executed."""


class Interpreter:
    """Runs a :class:`Graph` on concrete inputs.

    Modules are rebuilt from the graph once per interpreter; build a new
    interpreter after a pass changes the graph.

    Args:
        graph: The graph to execute.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        if "engine" in graph.attrs:
            torch.backends.quantized.engine = graph.attrs["engine"]
        self._nodes = graph.nodes()
        self._inputs = {n.name: graph.inputs(n) for n in self._nodes}
        self._modules: dict[str, nn.Module] = {}
        self._pre_activation_hook: NodeHook | None = None
        self._edit: NodeEdit | None = None
        # Free each value after its last reader, so memory stays at the
        # model's live set rather than every activation at once.
        last_use: dict[str, int] = {}
        for i, node in enumerate(self._nodes):
            for producer in self._inputs[node.name]:
                last_use[producer.name] = i
        self._dead_after: dict[int, list[str]] = {}
        for name, i in last_use.items():
            self._dead_after.setdefault(i, []).append(name)

    def module(self, node: Node) -> nn.Module:
        """The ``nn.Module`` a MODULE node runs (built on first use)."""
        if node.name not in self._modules:
            state = {key: self.graph.params[p] for key, p in node.params.items()}
            self._modules[node.name] = build_module(
                node.target, node.attrs, state, path=node.source.module_path
            )
        return self._modules[node.name]

    @torch.no_grad()
    def run(self, *inputs: Any, hook: NodeHook | None = None, pre_activation_hook: NodeHook | None = None,
            edit: NodeEdit | None = None) -> Any:
        """Execute the graph on ``inputs`` and return its output.

        Args:
            *inputs: One value per INPUT node, in graph order.
            hook: Called as ``hook(node, value)`` after every node.
            pre_activation_hook: Called as ``hook(node, value)`` with the value
                before a fused activation, for nodes that have one.
            edit: Called as ``edit(node, value)`` for every node with the value
                before its fused activation (if any); what it returns replaces
                the value (``None`` keeps it). Bias correction uses this to
                correct a layer while later layers are still to run.
        """
        result: Any = None
        for node, value in self.steps(*inputs, pre_activation_hook=pre_activation_hook, edit=edit):
            if node.kind == NodeKind.OUTPUT:
                result = value
            if hook is not None:
                hook(node, value)
        return result

    @torch.no_grad()
    def steps(self, *inputs: Any, pre_activation_hook: NodeHook | None = None,
              edit: NodeEdit | None = None) -> Iterator[tuple[Node, Any]]:
        """Execute the graph node by node, yielding ``(node, value)`` after each (see :meth:`run`).

        Two graphs can run in step this way, e.g. a float graph and its
        quantized twin, each node seeing the other's value of the same name.
        """
        self._pre_activation_hook = pre_activation_hook
        self._edit = edit
        input_nodes = [n for n in self._nodes if n.kind == NodeKind.INPUT]
        if len(inputs) != len(input_nodes):
            names = ", ".join(f"%{n.name}" for n in input_nodes)
            raise InterpreterError(
                f"the graph takes {len(input_nodes)} inputs ({names}), got {len(inputs)}"
            )
        feeds = {n.name: v for n, v in zip(input_nodes, inputs, strict=True)}
        env: dict[str, Any] = {}
        for i, node in enumerate(self._nodes):
            if node.kind == NodeKind.INPUT:
                value = feeds[node.name]
            else:
                args_in = [env[p.name] for p in self._inputs[node.name]]
                try:
                    value = self._execute(node, args_in)
                except QCompileError:
                    raise
                except Exception as exc:
                    raise InterpreterError(
                        f"%{node.name} ({node.op}) failed: {type(exc).__name__}: {exc}\n"
                        f"{excerpt(self.graph, node)}",
                        hint="check the input shapes and dtypes against the graph's inputs",
                    ) from exc
            yield node, value
            env[node.name] = value
            for name in self._dead_after.get(i, ()):
                env.pop(name, None)

    def compute(self, node: Node, inputs: list[Any], weight: torch.Tensor | None = None) -> Any:
        """One node's value (its fused activation included) from its input ports' values, outside a run and
        with gradients where the caller enables them; with ``weight``, a MODULE node runs with that weight in
        place of its own."""
        if weight is not None and node.kind == NodeKind.MODULE:
            def fetch(ref):
                return inputs[ref.index]

            module = self.module(node)
            value = functional_call(module, {"weight": weight}, map_refs(node.args, fetch),
                                               map_refs(node.kwargs, fetch), strict=False)
        else:
            value = self._compute(node, inputs)
        return resolve_target(FUSED_ACTIVATIONS[node.act])(value) if node.act else value

    def _execute(self, node: Node, inputs: list[Any]) -> Any:
        value = self._compute(node, inputs)
        if self._edit is not None:
            edited = self._edit(node, value)
            value = value if edited is None else edited
        act = node.act
        if not act:
            return value
        if self._pre_activation_hook is not None:
            self._pre_activation_hook(node, value)
        return resolve_target(FUSED_ACTIVATIONS[act])(value)

    def _compute(self, node: Node, inputs: list[Any]) -> Any:
        def fetch(ref):
            return inputs[ref.index]

        args = map_refs(node.args, fetch)
        kwargs = map_refs(node.kwargs, fetch)
        if node.kind == NodeKind.PARAM:
            return self.graph.params[node.target]
        if node.kind == NodeKind.OUTPUT:
            return args[0]
        if node.kind == NodeKind.MODULE:
            return self.module(node)(*args, **kwargs)
        if node.kind == NodeKind.FUNCTION:
            return resolve_target(node.target)(*args, **kwargs)
        if node.kind == NodeKind.METHOD:
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        raise InterpreterError(f"%{node.name}: cannot execute a node of kind {node.kind.value}")
