"""Running a pipeline: instruments, verification and the honesty check.

After every pass the manager verifies the graph, checks that the pass's
``modified`` flag tells the truth (a pass that says it changed nothing but
did is a bug that would silently skip later work), and updates the graph's
facts.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from qcompile.errors import PassError, QCompileError
from qcompile.ir.graph import Graph
from qcompile.ir.printer import print_graph
from qcompile.ir.verify import verify
from qcompile.pipeline.instruments import Instrument
from qcompile.pipeline.parser import Pipeline, parse_pipeline
from qcompile.pipeline.pass_base import Pass, PassContext, PassResult


@dataclass(frozen=True)
class PassRecord:
    """One pass's run: the pass and what it reported."""

    pass_: Pass
    result: PassResult


def fingerprint(graph: Graph) -> tuple:
    """Everything a pass can change: the printed graph and each tensor's identity and version."""
    tensors = tuple(
        (name, id(t), t._version) for name, t in sorted(graph.params.items())
    )
    return print_graph(graph), tensors


def _first_difference(before: str, after: str) -> str:
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    lines = [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    return "\n".join("    " + line for line in lines[:6]) or "    (parameter tensors changed)"


class PassManager:
    """Runs a :class:`Pipeline` over a graph.

    Args:
        pipeline: A parsed pipeline, or a pipeline string.
        instruments: Hooks called around each pass.
        verify_each: Verify the graph after every pass (on by default).
    """

    def __init__(
        self,
        pipeline: Pipeline | str,
        instruments: Sequence[Instrument] = (),
        verify_each: bool = True,
    ):
        self.pipeline = parse_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
        self.instruments = list(instruments)
        self.verify_each = verify_each

    def run(self, graph: Graph, ctx: PassContext | None = None, until: int | None = None) -> list[PassRecord]:
        """Run every pass in order on ``graph`` (in place); return what each reported.

        With ``until``, only the first ``until`` passes run; the others still
        count as the ones that follow (``ctx.remaining_passes``), for passes that
        prepare for a later one (``observe`` picks the grids of the backend that
        ``convert`` will use, ``bias-correct`` needs a quantizing pass after it).
        """
        ctx = ctx or PassContext()
        for inst in self.instruments:
            inst.before_pipeline(graph, ctx)
        records = []
        for index, p in enumerate(self.pipeline.passes[:until], start=1):
            ctx.remaining_passes = self.pipeline.passes[index:]
            records.append(self._run_one(index, p, graph, ctx))
        for inst in self.instruments:
            inst.after_pipeline(graph, ctx)
        return records

    def _run_one(self, index: int, p: Pass, graph: Graph, ctx: PassContext) -> PassRecord:
        missing = set(p.requires) - graph.facts
        if missing:
            raise PassError(
                f"pass '{p.name}' requires {sorted(missing)}, which the graph does not have "
                f"(it has {sorted(graph.facts)})",
                hint="parse the pipeline against the graph's facts: parse_pipeline(text, graph.facts)",
            )
        for inst in self.instruments:
            inst.before_pass(index, p, graph, ctx)
        before = fingerprint(graph)
        ctx.current_pass = p.name
        try:
            with ctx.world.together(f"pass '{p.name}'"):
                result = p.run(graph, ctx)
            if not isinstance(result, PassResult):
                raise PassError(
                    f"pass '{p.name}' returned {type(result).__name__}, not a PassResult"
                )
            graph.renumber()
            graph.remove_unused_params()
            if self.verify_each:
                verify(graph)
            after = fingerprint(graph)
            if not result.modified and after != before:
                raise PassError(
                    f"pass '{p.name}' reported modified=False but changed the graph:\n"
                    + _first_difference(before[0], after[0]),
                    hint="return PassResult(modified=True) whenever the pass changes anything",
                )
        except Exception as exc:
            for inst in self.instruments:
                inst.on_error(index, p, graph, exc, ctx)
            if isinstance(exc, QCompileError):
                raise
            raise PassError(f"pass '{p.name}' failed: {type(exc).__name__}: {exc}") from exc
        finally:
            ctx.current_pass = ""
        graph.facts.difference_update(p.invalidates)
        graph.facts.update(p.provides)
        for inst in self.instruments:
            inst.after_pass(index, p, graph, result, ctx)
        return PassRecord(p, result)


def run_pipeline(
    graph: Graph,
    pipeline: Pipeline | str,
    ctx: PassContext | None = None,
    instruments: Sequence[Instrument] = (),
) -> list[PassRecord]:
    """Parse (against the graph's facts) and run ``pipeline`` on ``graph`` in place."""
    if isinstance(pipeline, str):
        pipeline = parse_pipeline(pipeline, graph.facts)
    return PassManager(pipeline, instruments).run(graph, ctx)
