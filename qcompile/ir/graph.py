"""The IR graph: nodes, the edges between them, and the tensors they use.

The graph keeps a private ``networkx.MultiDiGraph`` for connectivity. Each edge
runs from a producer to a consumer and is keyed by the consumer's input port,
so ``x + x`` is two edges from ``x`` into ports 0 and 1 of the add. Pass
authors use the methods here, never networkx directly.

Iteration order is topological with ties broken by insertion order, and names
are unique and stable, so printing the same graph twice gives the same text.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import networkx as nx
import torch

from qcompile.errors import VerifyError
from qcompile.ir.node import Node, NodeKind, QuantAnnotation, Ref, SourceInfo
from qcompile.ir.types import NoneType, ValueType

_NOT_IDENTIFIER = re.compile(r"[^0-9a-zA-Z_]")


def sanitize_name(raw: str) -> str:
    """A Python identifier derived from ``raw`` (dots and dashes become ``_``)."""
    name = _NOT_IDENTIFIER.sub("_", raw).strip("_") or "v"
    if name[0].isdigit():
        name = "v" + name
    if keyword.iskeyword(name):
        name += "_"
    return name


class Graph:
    """A dataflow graph of :class:`Node` objects plus the tensors they use.

    Attributes:
        name: The model's name (class name of the lowered module).
        params: Parameter name -> tensor. Passes that change a tensor store a
            new tensor under the name instead of writing in place.
        facts: Pipeline facts established so far (``lowered``, ``fused``...).
        attrs: Graph-wide settings passes record (``engine`` for quantized
            kernels; ``fixed_batch``, the one batch size an exported model
            accepts, set by lowering).
    """

    def __init__(self, name: str = "Model"):
        self.name = name
        self.params: dict[str, torch.Tensor] = {}
        self.facts: set[str] = set()
        self.attrs: dict[str, Any] = {}
        self._nx = nx.MultiDiGraph()
        self._nodes: dict[str, Node] = {}
        self._next_order = 0
        self._order_cache: list[Node] | None = None
        self._rank_cache: dict[str, int] | None = None

    # ------------------------------------------------------------------ build

    def add_node(
        self,
        op: str,
        kind: NodeKind,
        inputs: Sequence[Node] = (),
        *,
        name: str | None = None,
        target: str = "",
        args: tuple | None = None,
        kwargs: dict[str, Any] | None = None,
        attrs: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        type: ValueType | None = None,
        source: SourceInfo | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node fed by ``inputs`` (port ``i`` <- ``inputs[i]``).

        Args:
            op: Canonical op name.
            kind: Where the computation is defined.
            inputs: Producer nodes, one per input port.
            name: Preferred name; made unique (``add`` -> ``add_1``).
            target: See :class:`Node`.
            args: Positional arguments with ``Ref(i)`` for input ports. Defaults
                to ``(Ref(0), ..., Ref(n-1))``.
            kwargs: Keyword arguments with ``Ref`` placeholders.
            attrs: Module constructor arguments and op attributes.
            params: State-dict key -> graph parameter name.
            type: Output type, if known.
            source: Origin in the user's model.
            after: Place the node right after this one in the printed order
                (it still sorts after all of its inputs).
        """
        node = Node(
            name=self._unique_name(name or op),
            op=op,
            kind=kind,
            target=target,
            args=tuple(Ref(i) for i in range(len(inputs))) if args is None else tuple(args),
            kwargs=dict(kwargs or {}),
            attrs=dict(attrs or {}),
            params=dict(params or {}),
            type=type if type is not None else NoneType(),
            source=source or SourceInfo(),
        )
        if after is not None:
            node._order = after._order + (self._bump(),)
        else:
            node._order = (self._bump(),)
        self._nodes[node.name] = node
        self._nx.add_node(node.name)
        for port, producer in enumerate(inputs):
            self._check_member(producer)
            self._nx.add_edge(producer.name, node.name, key=port)
        self._order_cache = self._rank_cache = None
        return node

    def add_param(self, name: str, tensor: torch.Tensor) -> str:
        """Store ``tensor`` under ``name`` (made unique) and return the name used."""
        unique = name
        i = 1
        while unique in self.params:
            unique = f"{name}_{i}"
            i += 1
        self.params[unique] = tensor
        return unique

    # ---------------------------------------------------------------- queries

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes())

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        return isinstance(node, Node) and self._nodes.get(node.name) is node

    def nodes(self) -> list[Node]:
        """All nodes, topologically sorted, ties broken by insertion order."""
        if self._order_cache is None:
            try:
                names = nx.lexicographical_topological_sort(
                    self._nx, key=lambda n: self._nodes[n]._order
                )
                self._order_cache = [self._nodes[n] for n in names]
            except nx.NetworkXUnfeasible as exc:
                cycle = nx.find_cycle(self._nx)
                path = " -> ".join(f"%{u}" for u, _, _ in cycle)
                raise VerifyError(f"the graph has a cycle: {path}") from exc
        return list(self._order_cache)

    def node(self, name: str) -> Node:
        """The node called ``name`` (without the ``%``)."""
        try:
            return self._nodes[name]
        except KeyError:
            raise KeyError(f"no node named %{name}") from None

    def inputs(self, node: Node) -> list[Node]:
        """Producers of ``node``'s input ports, in port order."""
        self._check_member(node)
        by_port = {key: src for src, _, key in self._nx.in_edges(node.name, keys=True)}
        return [self._nodes[by_port[p]] for p in sorted(by_port)]

    def input_ports(self, node: Node) -> list[int]:
        """The input port numbers of ``node`` that have an edge, sorted."""
        self._check_member(node)
        return sorted(key for _, _, key in self._nx.in_edges(node.name, keys=True))

    def uses(self, node: Node) -> list[tuple[Node, int]]:
        """(consumer, input port) pairs reading ``node``, in graph order."""
        self._check_member(node)
        found = [(self._nodes[dst], key) for _, dst, key in self._nx.out_edges(node.name, keys=True)]
        rank = self._ranks()
        return sorted(found, key=lambda use: (rank[use[0].name], use[1]))

    def users(self, node: Node) -> list[Node]:
        """Distinct consumers of ``node``, in graph order."""
        seen: dict[str, Node] = {}
        for user, _ in self.uses(node):
            seen.setdefault(user.name, user)
        return list(seen.values())

    def find(self, op: str | None = None, kind: NodeKind | None = None) -> list[Node]:
        """Nodes with the given op and/or kind, in graph order."""
        return [
            n
            for n in self.nodes()
            if (op is None or n.op == op) and (kind is None or n.kind == kind)
        ]

    @property
    def input_nodes(self) -> list[Node]:
        return self.find(kind=NodeKind.INPUT)

    @property
    def output_node(self) -> Node:
        outputs = self.find(kind=NodeKind.OUTPUT)
        if len(outputs) != 1:
            raise VerifyError(f"a graph has exactly one output node, found {len(outputs)}")
        return outputs[0]

    def param(self, node: Node, key: str) -> torch.Tensor | None:
        """Tensor bound to ``node``'s state-dict ``key`` (``None`` if unbound)."""
        name = node.params.get(key)
        return None if name is None else self.params[name]

    # --------------------------------------------------------------- mutation

    def set_input(self, node: Node, port: int, producer: Node) -> None:
        """Feed ``node``'s input ``port`` from ``producer`` instead."""
        self._check_member(node)
        self._check_member(producer)
        for src, _, key in list(self._nx.in_edges(node.name, keys=True)):
            if key == port:
                self._nx.remove_edge(src, node.name, key=key)
                break
        else:
            raise IndexError(f"%{node.name} has no input port {port}")
        self._nx.add_edge(producer.name, node.name, key=port)
        self._order_cache = self._rank_cache = None

    def set_inputs(self, node: Node, inputs: Sequence[Node], args: tuple | None = None,
                   kwargs: dict[str, Any] | None = None) -> None:
        """Replace all of ``node``'s inputs (and optionally its args/kwargs)."""
        self._check_member(node)
        for src, _, key in list(self._nx.in_edges(node.name, keys=True)):
            self._nx.remove_edge(src, node.name, key=key)
        for port, producer in enumerate(inputs):
            self._check_member(producer)
            self._nx.add_edge(producer.name, node.name, key=port)
        if args is not None:
            node.args = tuple(args)
        if kwargs is not None:
            node.kwargs = dict(kwargs)
        self._order_cache = self._rank_cache = None

    def replace_all_uses(self, old: Node, new: Node) -> int:
        """Make every consumer of ``old`` read ``new``; return how many ports moved."""
        uses = self.uses(old)
        for user, port in uses:
            if user is new:
                continue
            self.set_input(user, port, new)
        return len(uses)

    def erase(self, node: Node) -> None:
        """Remove ``node``, which must have no consumers left."""
        self._check_member(node)
        users = self.users(node)
        if users:
            names = ", ".join(f"%{u.name}" for u in users)
            raise VerifyError(f"cannot erase %{node.name}: still used by {names}")
        self._nx.remove_node(node.name)
        del self._nodes[node.name]
        self._order_cache = self._rank_cache = None

    def rename(self, node: Node, name: str) -> str:
        """Give ``node`` a new (made unique) name; return the name used."""
        self._check_member(node)
        if sanitize_name(name) == node.name:
            return node.name
        new = self._unique_name(name)
        nx.relabel_nodes(self._nx, {node.name: new}, copy=False)
        del self._nodes[node.name]
        node.name = new
        self._nodes[new] = node
        self._order_cache = self._rank_cache = None
        return new

    def remove_unused_params(self) -> list[str]:
        """Drop parameters no node refers to; return their names."""
        used = {p for n in self._nodes.values() for p in n.params.values()}
        used |= {n.target for n in self._nodes.values() if n.kind == NodeKind.PARAM}
        unused = sorted(set(self.params) - used)
        for name in unused:
            del self.params[name]
        return unused

    def renumber(self) -> None:
        """Reset ordering keys to the current order (keeps keys short)."""
        for i, node in enumerate(self.nodes()):
            node._order = (i,)
        self._next_order = len(self._nodes)

    def copy(self) -> Graph:
        """An independent copy: new nodes and dicts; tensors are shared, not cloned."""
        other = Graph(self.name)
        other.params = dict(self.params)
        other.facts = set(self.facts)
        other.attrs = dict(self.attrs)
        other._nx = self._nx.copy()
        for name, node in self._nodes.items():
            other._nodes[name] = replace(
                node,
                kwargs=dict(node.kwargs),
                attrs=dict(node.attrs),
                params=dict(node.params),
                quant=QuantAnnotation(**vars(node.quant)),
                meta=dict(node.meta),
            )
        other._next_order = self._next_order
        return other

    # --------------------------------------------------------------- internal

    def _ranks(self) -> dict[str, int]:
        """Position of each node in :meth:`nodes`, cached alongside the order."""
        if self._order_cache is None or self._rank_cache is None:
            self._rank_cache = {n.name: i for i, n in enumerate(self.nodes())}
        return self._rank_cache

    def _bump(self) -> int:
        self._next_order += 1
        return self._next_order

    def _unique_name(self, raw: str) -> str:
        base = sanitize_name(raw)
        name, i = base, 1
        while name in self._nodes:
            name = f"{base}_{i}"
            i += 1
        return name

    def _check_member(self, node: Node) -> None:
        if self._nodes.get(node.name) is not node:
            raise VerifyError(f"%{node.name} does not belong to this graph")
