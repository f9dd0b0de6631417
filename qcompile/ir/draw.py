"""Pictures of a graph: Graphviz DOT text and a self-contained SVG.

The SVG is laid out here (layers by longest path from the inputs, nodes in
graph order within a layer), so drawing needs no Graphviz install. For large
models the DOT file rendered by Graphviz gives a tighter picture.
"""

from __future__ import annotations

from html import escape

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind

_FILL = {
    NodeKind.INPUT: "#d9ead3",
    NodeKind.OUTPUT: "#d9ead3",
    NodeKind.PARAM: "#eeeeee",
    NodeKind.MODULE: "#cfe2f3",
    NodeKind.FUNCTION: "#fff2cc",
    NodeKind.METHOD: "#fce5cd",
}


def _label_lines(node: Node) -> list[str]:
    lines = [f"%{node.name}", node.op + (f" +{node.act}" if node.act else "")]
    lines.append(str(node.type))
    if not node.quant.is_empty():
        lines.append(node.quant.describe())
    return lines


def to_dot(graph: Graph) -> str:
    """Graphviz DOT text for ``graph`` (render with ``dot -Tsvg``)."""
    out = [f'digraph "{graph.name}" {{', "  node [shape=box, style=filled, fontname=monospace];"]
    for node in graph.nodes():
        label = "\\n".join(line.replace('"', '\\"') for line in _label_lines(node))
        out.append(f'  "{node.name}" [label="{label}", fillcolor="{_FILL[node.kind]}"];')
    for node in graph.nodes():
        for port, producer in enumerate(graph.inputs(node)):
            out.append(f'  "{producer.name}" -> "{node.name}" [label="{port}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def to_svg(graph: Graph) -> str:
    """A standalone SVG drawing of ``graph``."""
    nodes = graph.nodes()
    layer: dict[str, int] = {}
    for node in nodes:
        preds = graph.inputs(node)
        layer[node.name] = 1 + max((layer[p.name] for p in preds), default=-1)
    rows: dict[int, list[Node]] = {}
    for node in nodes:
        rows.setdefault(layer[node.name], []).append(node)

    char_w, line_h, pad, gap_x, gap_y = 7.2, 14, 6, 24, 36
    box_w = {n.name: max(len(s) for s in _label_lines(n)) * char_w + 2 * pad for n in nodes}
    box_h = {n.name: len(_label_lines(n)) * line_h + 2 * pad for n in nodes}
    pos: dict[str, tuple[float, float]] = {}
    y = 10.0
    width = 0.0
    for depth in sorted(rows):
        x = 10.0
        for node in rows[depth]:
            pos[node.name] = (x, y)
            x += box_w[node.name] + gap_x
        width = max(width, x)
        y += max(box_h[n.name] for n in rows[depth]) + gap_y
    height = y

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'font-family="monospace" font-size="12">',
        f"<title>{escape(graph.name)}</title>",
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>',
    ]
    for node in nodes:
        x1, y1 = pos[node.name]
        for producer in graph.inputs(node):
            x0, y0 = pos[producer.name]
            parts.append(
                f'<line x1="{x0 + box_w[producer.name] / 2:.1f}" y1="{y0 + box_h[producer.name]:.1f}" '
                f'x2="{x1 + box_w[node.name] / 2:.1f}" y2="{y1:.1f}" stroke="#555" '
                'marker-end="url(#arrow)"/>'
            )
    for node in nodes:
        x, y = pos[node.name]
        parts.append(
            f'<g><rect x="{x:.1f}" y="{y:.1f}" width="{box_w[node.name]:.1f}" '
            f'height="{box_h[node.name]:.1f}" rx="4" fill="{_FILL[node.kind]}" stroke="#333"/>'
        )
        for i, text in enumerate(_label_lines(node)):
            parts.append(
                f'<text x="{x + pad:.1f}" y="{y + pad + (i + 0.8) * line_h:.1f}">{escape(text)}</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
