"""A user pass you can copy: remove ops that do nothing at inference time.

Load it with ``--plugin``; it then shows in ``qcompile passes`` and runs like
any built-in pass::

    qcompile passes --plugin examples/custom_pass.py
    qcompile inspect zoo:mobilenet_v2 --plugin examples/custom_pass.py \
        --passes fuse,strip-identities --print-after strip-identities
    qcompile zoo:mobilenet_v2 --plugin examples/custom_pass.py \
        --passes fuse,strip-identities --dump-dir dump/ -o out/

A pass is a frozen dataclass: its fields are its options
(``strip-identities{dropout=false}``), ``requires``/``provides`` name the facts
it needs and establishes, and ``run`` rewrites the graph in place through the
Graph API, then says whether it changed anything. The manager checks that
claim, verifies the graph afterwards, and the instruments (``--print-after``,
``--dump-dir``, ``--timing``) work on it with no extra code.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompile.ir import Graph, NodeKind
from qcompile.pipeline import Pass, PassContext, PassResult, register_pass

# Ops that return their input unchanged in eval mode.
_DROPOUTS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout"}


@register_pass
@dataclass(frozen=True)
class StripIdentities(Pass):
    """Remove Identity modules (and Dropout, which is the identity at inference).

    Options:
        dropout: Also remove Dropout layers.
    """

    name = "strip-identities"
    requires = ("lowered",)
    provides = ("identities-stripped",)

    dropout: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        removable = {"identity"} | (_DROPOUTS if self.dropout else set())
        removed = 0
        for node in graph.nodes():
            if node.op not in removable or node.kind != NodeKind.MODULE:
                continue
            if len(graph.inputs(node)) != 1:
                ctx.explain(f"%{node.name} has {len(graph.inputs(node))} inputs; kept")
                continue
            graph.replace_all_uses(node, graph.inputs(node)[0])
            graph.erase(node)
            removed += 1
        return PassResult(modified=removed > 0, stats={"removed": removed})
