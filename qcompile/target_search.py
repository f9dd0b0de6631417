"""The cheapest pipeline that meets an accuracy target, found by real runs on held-out data.

``qcompile MODEL --calib DATA --target-agreement 0.85 -o OUT`` tries the
user's pipeline first, then each rung of :data:`LADDER`, cheapest first,
until one meets the target: every candidate is compiled from the same
lowered graph and scored against the float model on the verdict's held-out
samples (top-1 agreement, output SQNR). The rungs keep the user's weight
bit width. The rungs and their order come from
what was measured on MobileNetV2 (docs/benchmarks/default-accuracy.md,
table 7, and the gptq rows): equalization costs under a second, bias
correction and second-order rounding seconds, learned rounding minutes. Every rung converts with ``backend=auto``
(qcompile's kernels and their full 8-bit grids wherever they cover the
model). A rung that the user's pipeline already covers is not tried again.

Each trial is reported as it ends; the chosen graph is the one that is
written. Pipelines that calibrate alike (the same passes before it, the
same backend grids) share one calibration. When no rung meets the target and
the weights have fewer than 8 bits, the layers sensitivity ranks worst get
8-bit weights (``convert{eight-bit=...}``: per-layer bit widths), more of
them until one choice meets it. The last resort keeps layers float: on the
closest pipeline that compiles in seconds (learned rounding is left out),
:class:`qcompile.diagnose.sensitivity.SensitivityAnalysis` ranks the layers
and suggests skip lists for rising SQNR goals, each checked with a real
run; a list keeps at most a quarter of the layers float (more is hardly a
quantized model). When that fails too, :class:`qcompile.errors.TargetMissed` names the
closest trial (exit status 4, nothing written unless ``--write-best``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field

import torch

from qcompile.backends.grids import backend_of
from qcompile.diagnose.metrics import agreement, first_tensor, sqnr_db
from qcompile.errors import QCompileError
from qcompile.interpreter import Interpreter
from qcompile.ir.graph import Graph
from qcompile.pipeline import CALIBRATED, PassContext, PassManager, Pipeline, first_providing, parse_pipeline

# (what the rung adds, its pipeline), cheapest first
LADDER: tuple[tuple[str, str], ...] = (
    ("cross-layer equalization", "fuse,equalize,calibrate,convert"),
    ("bias correction", "fuse,equalize,calibrate,bias-correct,convert"),
    ("second-order rounding (seconds)", "fuse,equalize,calibrate,gptq,convert"),
    ("learned rounding (minutes)", "fuse,equalize,calibrate,adaround,convert"),
)


@dataclass(frozen=True)
class Target:
    """What counts as close enough to float: top-1 agreement, output SQNR, or both."""

    agreement: float | None = None
    sqnr_db: float | None = None

    def met_by(self, trial: Trial) -> bool:
        return ((self.agreement is None or trial.agreement >= self.agreement)
                and (self.sqnr_db is None or trial.sqnr_db >= self.sqnr_db))

    def describe(self) -> str:
        parts = ([f"top-1 agreement >= {self.agreement:g}"] if self.agreement is not None else []) + (
            [f"output SQNR >= {self.sqnr_db:g} dB"] if self.sqnr_db is not None else [])
        return " and ".join(parts)

    def shortfall(self, trial: Trial) -> float:
        """How far ``trial`` is from the target (0 when met): what ranks the candidates that miss."""
        gaps = []
        if self.agreement is not None:
            gaps.append(max(0.0, self.agreement - trial.agreement) * 100)  # a point of agreement ~ a dB
        if self.sqnr_db is not None:
            gaps.append(max(0.0, self.sqnr_db - trial.sqnr_db))
        return sum(gaps)


@dataclass
class Trial:
    label: str
    pipeline: str
    agreement: float
    sqnr_db: float
    seconds: float
    met: bool = False
    skip: list[str] = field(default_factory=list)  # layers kept float on top of the pipeline
    passes: Pipeline | None = field(default=None, compare=False, repr=False)  # ``pipeline``, parsed

    def describe(self) -> str:
        skips = "".join(f" --skip {name}" for name in self.skip)
        return (f"{self.label}: agreement {self.agreement:.3f}, {self.sqnr_db:.1f} dB "
                f"({self.seconds:.1f} s; {self.pipeline}{skips})")


def candidates(pipeline: Pipeline) -> list[tuple[str, Pipeline]]:
    """The user's pipeline, then every rung whose pipeline it is not. The rungs keep the user's weight bit
    width (``convert{weight-bits}``, and the layers it keeps at 8 bits): a 4-bit model stays a 4-bit model."""
    chosen = [("your pipeline", pipeline)]
    users = _convert_of(pipeline)
    for label, text in LADDER:
        rung = parse_pipeline(text)
        if users is not None and users.weight_bits < 8:
            rung = _with_convert(rung, lambda c: dataclasses.replace(c, weight_bits=users.weight_bits,
                                                                     eight_bit=users.eight_bit))
        if all(str(rung) != str(p) for _, p in chosen):
            chosen.append((label, rung))
    return chosen


def _convert_of(pipeline: Pipeline):
    from qcompile.passes.convert import Convert

    return next((p for p in pipeline.passes if isinstance(p, Convert)), None)


def _with_convert(pipeline: Pipeline, change: Callable) -> Pipeline:
    """``pipeline`` with its ``convert`` pass replaced by ``change(convert)``."""
    from qcompile.passes.convert import Convert

    return Pipeline(tuple(change(p) if isinstance(p, Convert) else p for p in pipeline.passes))


def search(graph: Graph, pipeline: Pipeline, ctx: PassContext, target: Target, inputs: list[tuple],
           log: Callable[[str], None]) -> tuple[Graph, list, list[Trial]]:
    """Run the candidates on copies of ``graph`` (lowered, float) until one meets ``target``.

    Returns the chosen graph (the one that met the target, else the best),
    its pass records, and every trial in order; :attr:`Trial.met` says
    whether the target was met.
    """
    reference = _outputs(graph, inputs)
    trials: list[Trial] = []
    best: tuple[Graph, list, Trial] | None = None
    calibrated: dict = {}
    for label, candidate in candidates(pipeline):
        started = time.perf_counter()
        trial_graph, records = compiled(graph, candidate, ctx, calibrated)
        outputs = _outputs(trial_graph, inputs)
        agree = agreement(outputs, reference)
        if agree is None and target.agreement is not None:
            raise QCompileError("--target-agreement needs a model whose output holds class scores; this one's "
                                f"has shape {list(outputs.shape)}", hint="aim at --target-sqnr DB instead")
        trial = _scored(Trial(label, str(candidate), _agreement(outputs, reference),
                              _finite(sqnr_db(outputs, reference)), time.perf_counter() - started, passes=candidate),
                        target, trials, log)
        if best is None or target.shortfall(trial) < target.shortfall(best[2]):
            best = (trial_graph, records, trial)
        if trial.met:
            return trial_graph, records, trials
    assert best is not None
    analyses: dict[str, tuple] = {}  # sensitivity, once per pipeline
    raised = _raise_bit_widths(graph, trials, ctx, target, inputs, reference, log, calibrated, analyses)
    if raised is not None and target.shortfall(raised[2]) < target.shortfall(best[2]):
        best = raised
        if raised[2].met:
            return best[0], best[1], trials
    kept = _keep_layers_float(graph, trials, ctx, target, inputs, reference, log, analyses)
    if kept is not None and target.shortfall(kept[2]) < target.shortfall(best[2]):
        best = kept
    return best[0], best[1], trials


def compiled(graph: Graph, pipeline: Pipeline, ctx: PassContext, calibrated: dict) -> tuple[Graph, list]:
    """``pipeline`` run on a copy of ``graph``, and its pass records.

    The passes up to calibration run once for all the pipelines that share
    them, the backend whose grids ``observe`` picks and the statistics the
    later passes need; ``calibrated`` keeps those graphs, and each pipeline
    goes on from its own deep copy.
    """
    passes = pipeline.passes
    calibrate = first_providing(passes, CALIBRATED)
    if calibrate is None:
        copy = graph.copy()
        return copy, PassManager(pipeline).run(copy, ctx)
    split = passes.index(calibrate) + 1
    # what the passes up to calibration look ahead at: the backend (observe's grids) and the statistics that
    # later passes need (calibrate collects moments only for aciq and bit allocation)
    needs = frozenset(s for p in passes[split:] for s in p.needs_statistics)
    key = (str(Pipeline(passes[:split])), backend_of(passes), needs)
    if key not in calibrated:
        prefix = graph.copy()
        calibrated[key] = (prefix, PassManager(pipeline).run(prefix, ctx, until=split))
    prefix, prefix_records = calibrated[key]
    copy = prefix.copy()
    copy.params = {name: t.clone() if isinstance(t, torch.Tensor) else t for name, t in copy.params.items()}
    for node in copy.nodes():  # later passes may change statistics in place (aciq's weight clips)
        node.quant = deepcopy(node.quant)
    return copy, prefix_records + PassManager(Pipeline(passes[split:])).run(copy, ctx)


def _sensitivity(graph: Graph, base: Trial, ctx: PassContext, inputs: list[tuple], reference: torch.Tensor,
                 analyses: dict[str, tuple]):
    """The sensitivity analysis of ``base``'s pipeline (calibrated on a copy of ``graph``) and its rows, or
    None for a pipeline without calibration; ``analyses`` keeps them by pipeline."""
    if base.pipeline not in analyses:
        analyses[base.pipeline] = _analysed(graph, base.passes.passes, ctx, inputs, reference)
    return analyses[base.pipeline]


def _analysed(graph: Graph, passes: tuple, ctx: PassContext, inputs: list[tuple], reference: torch.Tensor):
    from qcompile.diagnose.sensitivity import SensitivityAnalysis

    calibrate = first_providing(passes, CALIBRATED)
    if calibrate is None:
        return None
    split = passes.index(calibrate) + 1
    calibrated = graph.copy()
    PassManager(Pipeline(passes)).run(calibrated, ctx, until=split)
    batch = tuple(torch.cat(parts) for parts in zip(*inputs, strict=True))
    analysis = SensitivityAnalysis(calibrated, passes[split:], ctx, batch, reference)
    return analysis, analysis.run()


def _raise_bit_widths(graph: Graph, trials: list[Trial], ctx: PassContext, target: Target, inputs: list[tuple],
                      reference: torch.Tensor, log: Callable[[str], None], calibrated: dict,
                      analyses: dict[str, tuple]) -> tuple[Graph, list, Trial] | None:
    """Per-layer bit widths, before any layer is kept float: on the closest pipeline so far with weights below
    8 bits, the layers sensitivity ranks worst get 8-bit weights (``convert{eight-bit=...}``), 1, 2, 4, ... of
    them (at most half of the layers with weights), each choice checked with a real run, until one meets.
    The ranking comes from the closest quick pipeline (no learned rounding: its analysis takes seconds)."""
    tried = [t for t in trials if t.passes is not None and not t.skip]
    base = min(tried, key=target.shortfall) if tried else None
    convert = _convert_of(base.passes) if base is not None else None
    if convert is None or convert.weight_bits == 8:
        return None
    quick = [t for t in tried if "adaround" not in t.pipeline]
    found = _sensitivity(graph, min(quick, key=target.shortfall), ctx, inputs, reference, analyses) if quick else None
    if found is None:
        return None
    analysis, rows = found
    weighted = {n.name for n in analysis.prepared.nodes() if n.quant.weight_stats is not None}
    ranked = [r.name for r in sorted(rows, key=lambda r: -r.without_db)
              if r.name in weighted and r.name not in convert.eight_bit]
    closest = None
    count = 1
    while count <= max(1, len(weighted) // 2) and ranked:
        wide = tuple(convert.eight_bit) + tuple(ranked[:count])
        pipeline = _with_convert(base.passes, lambda c, wide=wide: dataclasses.replace(c, eight_bit=wide))
        started = time.perf_counter()
        trial_graph, records = compiled(graph, pipeline, ctx, calibrated)
        outputs = _outputs(trial_graph, inputs)
        trial = _scored(Trial(f"{base.label}, {min(count, len(ranked))} layers at 8-bit weights", str(pipeline),
                              _agreement(outputs, reference), _finite(sqnr_db(outputs, reference)),
                              time.perf_counter() - started, passes=pipeline),
                        target, trials, log)
        if closest is None or target.shortfall(trial) < target.shortfall(closest[2]):
            closest = (trial_graph, records, trial)
        if trial.met or count >= len(ranked):
            break
        count *= 2
    return closest


def _keep_layers_float(graph: Graph, trials: list[Trial], ctx: PassContext, target: Target, inputs: list[tuple],
                       reference: torch.Tensor, log: Callable[[str], None],
                       analyses: dict[str, tuple]) -> tuple[Graph, list, Trial] | None:
    """The last resort: the closest pipeline that compiles in seconds, with the layers sensitivity ranks worst
    kept float, more of them until the target is met (each skip list checked with a real run; at most a
    quarter of the layers)."""
    quick = [t for t in trials if "adaround" not in t.pipeline]
    if not quick:
        return None
    base = min(quick, key=target.shortfall)
    found = _sensitivity(graph, base, ctx, inputs, reference, analyses)
    if found is None:
        return None
    analysis, rows = found
    passes = base.passes.passes
    config, tried, closest = ctx.quant_config, set(), None
    goals = [target.sqnr_db] if target.sqnr_db is not None else []
    goals += [base.sqnr_db + step for step in (3.0, 6.0, 10.0, 20.0)]
    try:
        for goal in sorted(set(goals)):
            skip = analysis.suggest_skips(rows, goal, max_layers=max(1, len(analysis.names) // 4)).skip
            if not skip or tuple(skip) in tried:
                continue
            tried.add(tuple(skip))
            started = time.perf_counter()
            ctx.quant_config = dataclasses.replace(config, skip=[*config.skip, *skip])
            trial_graph = graph.copy()
            records = PassManager(Pipeline(passes)).run(trial_graph, ctx)
            outputs = _outputs(trial_graph, inputs)
            trial = _scored(Trial(f"{base.label}, {len(skip)} layers kept float", base.pipeline,
                                  _agreement(outputs, reference), _finite(sqnr_db(outputs, reference)),
                                  time.perf_counter() - started, skip=list(skip), passes=Pipeline(passes)),
                            target, trials, log)
            if closest is None or target.shortfall(trial) < target.shortfall(closest[2]):
                closest = (trial_graph, records, trial)
            if trial.met:
                break
    finally:
        ctx.quant_config = config
    return closest


def chosen(trials: list[Trial], target: Target) -> Trial:
    """The trial a search settles on: the last, if it met the target; else the closest (the first of equals)."""
    return trials[-1] if trials[-1].met else min(trials, key=target.shortfall)


def _scored(trial: Trial, target: Target, trials: list[Trial], log: Callable[[str], None]) -> Trial:
    """``trial`` judged against ``target``, recorded and reported."""
    trial.met = target.met_by(trial)
    trials.append(trial)
    log(f"qcompile: target: {'meets' if trial.met else 'misses'} {target.describe()}: {trial.describe()}")
    return trial


def _outputs(graph: Graph, inputs: list[tuple]) -> torch.Tensor:
    interpreter = Interpreter(graph)
    with torch.no_grad():
        return torch.cat([first_tensor(interpreter.run(*batch)).float() for batch in inputs])


def _agreement(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    agree = agreement(outputs, reference)
    return agree if agree is not None else math.nan


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 1e9  # identical outputs: as good as it gets
