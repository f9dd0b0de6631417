"""Instruments: hooks around passes for printing, dumping and timing.

Instruments only observe; switching one on never changes what the pipeline
computes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from qcompile.fileio import atomic_write_text
from qcompile.ir.draw import to_dot, to_svg
from qcompile.ir.graph import Graph
from qcompile.ir.printer import print_graph

if TYPE_CHECKING:
    from qcompile.pipeline.pass_base import Pass, PassContext, PassResult


class Instrument:
    """Base class: override the hooks you need. ``index`` counts passes from 1."""

    def before_pipeline(self, graph: Graph, ctx: PassContext) -> None:
        pass

    def before_pass(self, index: int, p: Pass, graph: Graph, ctx: PassContext) -> None:
        pass

    def after_pass(self, index: int, p: Pass, graph: Graph, result: PassResult, ctx: PassContext) -> None:
        pass

    def on_error(self, index: int, p: Pass, graph: Graph, error: Exception, ctx: PassContext) -> None:
        pass

    def after_pipeline(self, graph: Graph, ctx: PassContext) -> None:
        pass


class PrintAfter(Instrument):
    """Print the graph after the named passes (all when ``names`` is None).

    Args:
        names: Pass names to print after, or None for every pass.
        only_changed: Skip passes that reported ``modified=False``.
        stream: Where to print (stdout by default).
    """

    def __init__(self, names: set[str] | None = None, only_changed: bool = True,
                 stream: TextIO | None = None):
        self.names = names
        self.only_changed = only_changed
        self.stream = stream

    def after_pass(self, index, p, graph, result, ctx):
        if self.names is not None and p.name not in self.names:
            return
        out = self.stream or sys.stdout
        if self.only_changed and not result.modified:
            print(f"// after {p.name}: unchanged", file=out)
            return
        print(f"// after {p.name}", file=out)
        out.write(print_graph(graph))


class DumpDir(Instrument):
    """Write the graph before the first pass and after each pass into a directory.

    Files are numbered: ``00_input.qir``, ``01_fuse.qir``, ... with the same
    stem for each requested format (``qir``, ``dot``, ``svg``).
    """

    _RENDER = {"qir": print_graph, "dot": to_dot, "svg": to_svg}

    def __init__(self, directory: str | Path, formats: tuple[str, ...] = ("qir", "dot")):
        unknown = set(formats) - set(self._RENDER)
        if unknown:
            raise ValueError(f"unknown dump formats {sorted(unknown)}; use qir, dot, svg")
        self.directory = Path(directory)
        self.formats = formats
        self.written: list[Path] = []

    def _dump(self, stem: str, graph: Graph) -> None:
        for fmt in self.formats:
            path = self.directory / f"{stem}.{fmt}"
            atomic_write_text(path, self._RENDER[fmt](graph))
            self.written.append(path)

    def before_pipeline(self, graph, ctx):
        self._dump("00_input", graph)

    def after_pass(self, index, p, graph, result, ctx):
        self._dump(f"{index:02d}_{p.name}", graph)


class Timing(Instrument):
    """Measure each pass's wall time; ``table()`` formats the results."""

    def __init__(self):
        self.seconds: list[tuple[str, float, bool]] = []  # (pass, seconds, modified)
        self._start = 0.0

    def before_pass(self, index, p, graph, ctx):
        self._start = time.perf_counter()

    def after_pass(self, index, p, graph, result, ctx):
        self.seconds.append((p.name, time.perf_counter() - self._start, result.modified))

    def table(self) -> str:
        width = max([len(name) for name, _, _ in self.seconds] + [4])
        lines = [f"{'pass':<{width}}  seconds  changed"]
        for name, secs, modified in self.seconds:
            lines.append(f"{name:<{width}}  {secs:7.3f}  {'yes' if modified else 'no'}")
        total = sum(s for _, s, _ in self.seconds)
        lines.append(f"{'total':<{width}}  {total:7.3f}")
        return "\n".join(lines)
