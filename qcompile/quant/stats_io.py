"""Calibration statistics on disk: collect once, reuse in later runs without data.

The file maps node names to the statistics ``calibrate`` collected (ranges,
and the moments ACIQ / bit allocation use). ``load-stats`` puts them back on
a graph whose nodes are named the same (the same model, lowered and fused
the same way), so a later run can try other clipping or bit settings
without the data. The file also holds the range of every observed weight:
statistics of a graph whose weights were different (``equalize`` rescaled
them on one run and not on the other) are refused, not applied.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from qcompile.errors import QCompileError
from qcompile.fileio import atomic_torch_save
from qcompile.ir.graph import Graph
from qcompile.ir.quant_types import Moments, TensorStats

FORMAT = "qcompile-statistics-1"


def save_statistics(graph: Graph, path: str | Path) -> Path:
    """Write every node's activation statistics to ``path`` (atomically)."""
    entries = {n.name: asdict(n.quant.stats) for n in graph.nodes() if n.quant.stats is not None}
    if not entries:
        raise QCompileError("the graph has no statistics to save", hint="run calibrate first")
    weights = {n.name: (n.quant.weight_stats.min, n.quant.weight_stats.max) for n in graph.nodes()
               if n.quant.weight_stats is not None}
    return atomic_torch_save(path, {"format": FORMAT, "model": graph.name, "nodes": entries, "weights": weights})


def _check_weights(graph: Graph, saved: dict, path: str | Path) -> None:
    """Refuse statistics whose weights (their range per channel) are not the graph's."""
    changed = [n.name for n in graph.nodes() if n.quant.weight_stats is not None and n.name in saved
               and not all(torch.allclose(now, then, rtol=1e-5, atol=1e-8)
                           for now, then in zip((n.quant.weight_stats.min, n.quant.weight_stats.max),
                                                saved[n.name], strict=True))]
    if changed:
        raise QCompileError(
            f"{path} holds statistics of different weights: {len(changed)} layers differ, e.g. %{changed[0]}",
            hint="run the same float passes before load-stats as before calibrate when the file was saved "
                 "(e.g. fuse,equalize,load-stats,... after fuse,equalize,calibrate)")


def load_statistics(graph: Graph, path: str | Path) -> int:
    """Attach saved statistics to every observed node of ``graph``; return how many.

    The graph's weight statistics must be there already (``observe_weights``):
    they are checked against the file's.
    """
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise QCompileError(f"statistics file {path} does not exist") from None
    except Exception as exc:
        raise QCompileError(f"cannot read statistics file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise QCompileError(f"{path} is not a qcompile statistics file", hint="write one with --save-stats")
    saved = content["nodes"]
    if "weights" in content:  # files written before it have no weight ranges
        _check_weights(graph, content["weights"], path)
    observed = [n for n in graph.nodes() if n.quant.observer is not None]
    missing = [n.name for n in observed if n.name not in saved]
    if missing:
        raise QCompileError(
            f"{path} (from model {content['model']}) has no statistics for {len(missing)} observed nodes, "
            f"e.g. %{missing[0]}",
            hint="save statistics from the same model and the same passes before calibrate")
    for node in observed:
        entry = dict(saved[node.name])
        extra = entry.pop("extra", None)  # the flat moments of files written before they were typed
        moments = entry.pop("moments", None)
        plain = moments if moments is not None else (extra or None)
        node.quant.stats = TensorStats(**entry, moments=Moments.from_plain(plain) if plain else None)
    return len(observed)
