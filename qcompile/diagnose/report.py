"""One self-contained HTML page per run: what was compiled, what it costs, and where the error comes from.

Everything is inline (styles, the graph's SVG, matplotlib plots as PNG data
URIs), so the file can be mailed or attached to a ticket. Sections that have
nothing to show for a pipeline (no ``aciq``, no ``bitalloc``, no sensitivity
run) say so instead of disappearing. A short script makes the tables
sortable by clicking a column header.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qcompile.diagnose.layers import LayerError
from qcompile.diagnose.metrics import fmt_db
from qcompile.diagnose.sensitivity import Sensitivity, SkipSuggestion
from qcompile.diagnose.trace import TraceRow
from qcompile.errors import QCompileError
from qcompile.fileio import atomic_write_text
from qcompile.interpreter import Interpreter
from qcompile.ir.draw import to_svg
from qcompile.ir.graph import Graph
from qcompile.quant.aciq import laplace_ratio, mse_laplace


@dataclass
class ReportData:
    """What a run measured; every field is optional except the graphs."""

    title: str
    pipeline: str
    final: Graph
    float_graph: Graph
    calibrated: Graph | None = None
    inputs: tuple = ()
    summary: dict[str, str] = field(default_factory=dict)
    comparison: list = field(default_factory=list)  # qcompile.compare.Row
    timings: list[tuple[str, float]] = field(default_factory=list)
    trace: list[TraceRow] = field(default_factory=list)
    layers: list[LayerError] = field(default_factory=list)
    sensitivity: list[Sensitivity] = field(default_factory=list)
    suggestion: SkipSuggestion | None = None
    verification: list[tuple[str, float, float | None]] = field(default_factory=list)  # (label, SQNR, agreement)


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _table(header: list[str], rows: list[list], sortable: bool = True) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    cls = ' class="sortable"' if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _layer_bars(layers: list[LayerError]) -> str:
    import matplotlib.pyplot as plt

    shown = sorted(layers, key=lambda r: r.sqnr_db)[:40]
    values = [min(r.sqnr_db, 80.0) for r in shown]
    figure, axis = plt.subplots(figsize=(8, max(2.5, 0.22 * len(shown))))
    colours = ["#c0392b" if v < 10 else "#e67e22" if v < 20 else "#27ae60" for v in values]
    axis.barh(range(len(shown)), values, color=colours)
    axis.set_yticks(range(len(shown)), [r.name for r in shown], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("SQNR against float (dB), worst first")
    return _img(_png(figure), "per-layer SQNR")


def _float_values(data: ReportData, names: list[str]) -> dict[str, torch.Tensor]:
    graph = data.calibrated or data.float_graph
    wanted, values = set(names), {}

    def keep(node, value):
        if node.name in wanted and isinstance(value, torch.Tensor) and value.is_floating_point():
            values[node.name] = value.detach().flatten()

    if data.inputs:
        Interpreter(graph).run(*data.inputs, hook=keep)
    return values


def _range_of(node) -> tuple[float, float] | None:
    """The range the value is quantized to: an analytic clip, else the grid of its qparams, else what was seen."""
    q = node.quant
    if q.clip is not None and torch.as_tensor(q.clip[0]).numel() == 1:
        return float(q.clip[0]), float(q.clip[1])
    if q.qparams is not None and q.qparams.scale.numel() == 1:
        scale, zero = float(q.qparams.scale), int(q.qparams.zero_point)
        return (q.qparams.quant_min - zero) * scale, (q.qparams.quant_max - zero) * scale
    if q.stats is not None and q.stats.lo.numel() == 1:
        return float(q.stats.lo), float(q.stats.hi)
    return None


def _histograms(data: ReportData) -> str:
    import matplotlib.pyplot as plt

    names = [r.name for r in data.layers[:6]]
    values = _float_values(data, names)
    names = [n for n in names if n in values]
    if not names:
        return "<p>No activations to show (run with diagnostic data).</p>"
    figure, axes = plt.subplots(len(names), 1, figsize=(8, 2.1 * len(names)))
    axes = [axes] if len(names) == 1 else list(axes)
    for axis, name in zip(axes, names, strict=True):
        v = values[name].float()
        axis.hist(v.numpy(), bins=120, color="#5d6d7e", log=True)
        grid = _range_of(data.final.node(name))
        if grid is not None:
            for x in grid:
                axis.axvline(x, color="#c0392b", linestyle="--")
        axis.axvline(float(v.min()), color="#2980b9", linestyle=":")
        axis.axvline(float(v.max()), color="#2980b9", linestyle=":")
        axis.set_title(f"{name}: float values; red dashes: quantization range, blue dots: observed min/max",
                       fontsize=8)
    figure.tight_layout()
    return _img(_png(figure), "activation histograms")


def _aciq_curves(data: ReportData) -> str:
    import matplotlib.pyplot as plt

    clipped = [n for n in data.final.nodes() if n.quant.clip is not None and n.quant.stats is not None
               and n.quant.stats.moments is not None and torch.as_tensor(n.quant.clip[0]).numel() == 1][:6]
    if not clipped:
        return "<p>This pipeline has no <code>aciq</code> pass (per-tensor clips): nothing to show.</p>"
    figure, axes = plt.subplots(len(clipped), 1, figsize=(8, 2.1 * len(clipped)))
    axes = [axes] if len(clipped) == 1 else list(axes)
    for axis, node in zip(axes, clipped, strict=True):
        b = float(node.quant.stats.moments.mad)
        bits = node.quant.bits or 8
        source = data.calibrated.node(node.name) if data.calibrated is not None else node  # before convert
        one_sided = source.act in ("relu", "relu6")
        m = bits + 1 if one_sided else bits
        lo, hi = (float(x) for x in node.quant.clip)
        chosen = hi - max(float(node.quant.stats.moments.mean), 0.0) if one_sided else (hi - lo) / 2
        optimum = b * laplace_ratio(bits, one_sided)
        alphas = [b * (0.25 + 1.5 * laplace_ratio(bits, one_sided) * i / 200) for i in range(201)]
        axis.plot(alphas, [mse_laplace(a, b, m) for a in alphas], color="#2c3e50")
        axis.axvline(optimum, color="#27ae60", linestyle=":")
        axis.axvline(chosen, color="#c0392b", linestyle="--")
        axis.set_yscale("log")
        capped = " (capped at the observed range)" if chosen < optimum * 0.999 else ""
        axis.set_title(f"{node.name}: expected MSE (Laplace, b={b:.3g}, {bits} bits{', one-sided' if one_sided else ''})"
                       f"; green: optimum {optimum:.3g}; red: clip used {chosen:.3g}{capped}", fontsize=8)
    figure.tight_layout()
    return _img(_png(figure), "ACIQ expected-MSE curves")


def _bit_allocation(data: ReportData) -> str:
    import matplotlib.pyplot as plt

    allocated = [n for n in data.final.nodes() if n.quant.weight_bits is not None
                 and len(torch.unique(n.quant.weight_bits)) > 1][:6]
    if not allocated:
        return "<p>No per-channel bit allocation in this pipeline (<code>bitalloc</code>): nothing to show.</p>"
    figure, axes = plt.subplots(len(allocated), 1, figsize=(8, 1.8 * len(allocated)))
    axes = [axes] if len(allocated) == 1 else list(axes)
    for axis, node in zip(axes, allocated, strict=True):
        bits = node.quant.weight_bits.float()
        axis.bar(range(len(bits)), bits.numpy(), color="#8e44ad", width=1.0)
        axis.set_ylabel("bits")
        axis.set_title(f"{node.name}: weight bits per output channel (mean {float(bits.mean()):.2f})", fontsize=8)
    figure.tight_layout()
    return _img(_png(figure), "bit allocation per channel")


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f3f3f3; } table.sortable th { cursor: pointer; }
.graph { max-height: 700px; overflow: auto; border: 1px solid #ddd; }
code { background: #f6f6f6; padding: 0 3px; }
"""

_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var key = function (row) { var t = row.cells[column].textContent; var n = parseFloat(t);
                               return isNaN(n) ? t : n; };
    var up = th.dataset.order !== 'up';
    rows.sort(function (a, b) { var x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (up ? 1 : -1); });
    th.dataset.order = up ? 'up' : 'down';
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def render(data: ReportData) -> str:
    """The report as one HTML string."""
    try:
        import matplotlib
    except ImportError:
        raise QCompileError("--report draws its plots with matplotlib, which is not installed",
                            hint="pip install 'qcompile[report]'") from None

    matplotlib.use("Agg")
    parts = [f"<h1>qcompile report: {html.escape(data.title)}</h1>",
             "<h2>Model</h2>", _table(["", ""], [[k, v] for k, v in data.summary.items()], sortable=False)]
    parts.append("<h2>Comparison</h2>")
    if data.comparison:
        parts.append(_table(["model", "size MB", "top-1", "agreement", "SQNR dB", "latency ms"], [
            [r.name, f"{r.size_mb:.2f}", "-" if r.top1 is None else f"{r.top1:.4f}",
             "-" if r.agreement is None else f"{r.agreement:.4f}",
             "-" if r.sqnr_db is None else fmt_db(r.sqnr_db), f"{r.latency_ms:.2f}"] for r in data.comparison]))
    else:
        parts.append("<p>No comparison was run.</p>")
    parts.append(f"<h2>Pipeline</h2><p><code>{html.escape(data.pipeline)}</code></p>")
    if data.trace:
        parts.append(_table(["after pass", "output SQNR dB", "top-1 agreement", "seconds"], [
            [r.after, fmt_db(r.sqnr_db), "-" if r.agreement is None else f"{r.agreement:.4f}", f"{r.seconds:.2f}"]
            for r in data.trace]))
    elif data.timings:
        parts.append(_table(["pass", "seconds"], [[n, f"{s:.2f}"] for n, s in data.timings]))
    parts.append(f"<h2>Graph ({len(data.final)} nodes)</h2><div class='graph'>{to_svg(data.final)}</div>")
    parts.append("<h2>Per-layer error</h2>")
    if data.layers:
        parts.append("<p>Each quantized value against its float twin on the same inputs: the error of every "
                     "layer before it is included, so late layers look worst. The sensitivity section separates "
                     "each layer's own share.</p>")
        parts.append(_layer_bars(data.layers))
        parts.append(_table(["layer", "op", "compared node", "SQNR dB"],
                            [[r.name, r.op, r.compared, fmt_db(r.sqnr_db)] for r in data.layers[:25]]))
    else:
        parts.append("<p>No quantized values to compare.</p>")
    parts.append("<h2>Activation histograms and quantization ranges (worst layers)</h2>" + _histograms(data))
    parts.append("<h2>ACIQ expected-MSE curves</h2>" + _aciq_curves(data))
    parts.append("<h2>Bit allocation</h2>" + _bit_allocation(data))
    parts.append("<h2>Sensitivity</h2>")
    if data.sensitivity:
        parts.append("<p><i>alone</i>: output SQNR with only this layer quantized; <i>without</i>: with every "
                     "layer but this one quantized (float emulation of the quantizing pass).</p>")
        rows = sorted(data.sensitivity, key=lambda r: -r.without_db)
        parts.append(_table(["layer", "op", "alone dB", "without dB"],
                            [[r.name, r.op, fmt_db(r.alone_db), fmt_db(r.without_db)] for r in rows]))
    else:
        parts.append("<p>No sensitivity analysis in this run (<code>--sensitivity DB</code>).</p>")
    if data.suggestion is not None:
        s = data.suggestion
        verdict = "meets" if s.met else "does not reach"
        parts.append(f"<p>Suggested skip list ({len(s.skip)} layers) {verdict} the target of {s.target_db:.1f} dB "
                     f"in emulation: {fmt_db(s.baseline_db)} dB &rarr; {fmt_db(s.achieved_db)} dB.</p>")
        parts.append("<p><code>" + html.escape(" ".join(f"--skip {n}" for n in s.skip)) + "</code></p>")
    if data.verification:
        parts.append("<p>Checked with real runs of the pipeline:</p>")
        parts.append(_table(["run", "output SQNR dB", "top-1 agreement"], [
            [label, fmt_db(sq), "-" if ag is None else f"{ag:.4f}"] for label, sq, ag in data.verification]))
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>qcompile report: "
            f"{html.escape(data.title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n"
            f"<script>{_SCRIPT}</script>\n</body></html>\n")


def write_report(data: ReportData, path: str | Path) -> Path:
    return atomic_write_text(path, render(data))


def model_summary(graph: Graph, source: str, weights_file: Path | None) -> dict[str, str]:
    params = sum(t.numel() for t in graph.params.values() if isinstance(t, torch.Tensor))
    out = {"model": source, "graph": graph.name, "nodes": str(len(graph)), "parameters": f"{params:,}"}
    if weights_file is not None and weights_file.exists():
        out["emitted weights"] = f"{weights_file.stat().st_size / 1e6:.2f} MB"
    for key in ("backend", "engine"):
        if key in graph.attrs:
            out[key] = str(graph.attrs[key])
    return out
