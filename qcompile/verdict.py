"""The verdict after a compile: is the written model any good, and what to try when it is not.

After ``qcompile MODEL -o OUT`` has written and checked the model, the
verdict measures, briefly, what a user wants to know first:

* **size**: the float model's weights as ``torch.save`` writes them against
  ``OUT/weights.pt`` on disk;
* **closeness**: top-1 agreement with the float model (for class scores) and
  output SQNR (the worst output), and top-1 accuracy of both when the data
  has labels, on data that calibration did not see where there is any (see
  :func:`verdict_data`), saying which data and how many samples;
* **speed**: the emitted module against the float model at batch 1 on this
  machine, timed in adjacent pairs (:mod:`qcompile.timing`), with the
  kernels that ran (backend, engine, ISA) and the thread count;
* **float layers**: the layers outside the quantized region, with the reason
  ``stubs`` recorded (:attr:`QuantAnnotation.float_reason`);
* **advice**: one line where a number is poor, naming the flag or pipeline
  to try.

It is printed on stderr, written as ``OUT/verdict.json`` and, with
``--json``, printed as JSON on stdout.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qcompile.backends.choice import CHOSEN
from qcompile.compare import flat_outputs, state_size_bytes
from qcompile.diagnose.metrics import agreement, class_dim, sqnr_db, top_k_accuracy
from qcompile.errors import QCompileError
from qcompile.ir.graph import Graph
from qcompile.pipeline import CONVERTED
from qcompile.timing import paired_times

# below these, the advice line suggests what to try
GOOD_AGREEMENT = 0.9
GOOD_SQNR_DB = 20.0
SLOW = 0.9  # quantized over float speed below which the advice speaks of it
TIMED_PAIRS = 12


@dataclass(frozen=True)
class VerdictData:
    """The samples the verdict scores on, and how they relate to calibration (said in the verdict)."""

    batches: list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]
    description: str
    held_out: bool

    @property
    def samples(self) -> int:
        return sum(len(inputs[0]) for inputs, _ in self.batches)


@dataclass
class Verdict:
    """What the verdict measured (``None`` where a measure does not apply)."""

    float_bytes: int
    quantized_bytes: int
    data: str
    samples: int
    held_out: bool
    agreement: float | None
    sqnr_db: float | None
    float_top1: float | None
    quantized_top1: float | None
    float_ms: float
    quantized_ms: float
    kernels: str
    threads: int
    float_layers: list[dict[str, str]] = field(default_factory=list)
    advice: str | None = None
    seconds: float = 0.0

    @property
    def speedup(self) -> float:
        return self.float_ms / self.quantized_ms

    def to_json(self) -> str:
        record = asdict(self) | {"speedup": self.speedup}
        if record["sqnr_db"] is not None and math.isinf(record["sqnr_db"]):
            record["sqnr_db"] = "inf"
        return json.dumps(record, indent=2)

    def lines(self) -> list[str]:
        """The verdict as the lines the command prints."""
        ratio = self.float_bytes / self.quantized_bytes if self.quantized_bytes else math.inf
        out = [f"size: {_mb(self.float_bytes)} float -> {_mb(self.quantized_bytes)} ({ratio:.1f}x smaller)"]
        close = []
        if self.agreement is not None:
            close.append(f"top-1 agreement {self.agreement:.3f}")
        if self.sqnr_db is not None:
            close.append("output identical" if math.isinf(self.sqnr_db) else f"output SQNR {self.sqnr_db:.1f} dB")
        if self.quantized_top1 is not None:
            close.append(f"top-1 accuracy {self.quantized_top1:.3f} (float {self.float_top1:.3f})")
        seen = "" if self.held_out else " (calibration saw them)"
        out.append(f"vs float: {', '.join(close)} on {self.data}{seen}")
        out.append(f"latency at batch 1: {self.quantized_ms:.2f} ms vs {self.float_ms:.2f} ms float "
                   f"({self.speedup:.2f}x) on {self.kernels}, {self.threads} thread{'s' if self.threads > 1 else ''}")
        if self.float_layers:
            reasons: dict[str, list[str]] = {}
            for layer in self.float_layers:
                reasons.setdefault(layer["reason"], []).append(f"{layer['name']} ({layer['op']})")
            listing = "; ".join(f"{', '.join(_first(names))}: {reason}" for reason, names in reasons.items())
            out.append(f"left in float: {len(self.float_layers)} layers: {listing}")
        if self.advice:
            out.append(f"advice: {self.advice}")
        return out


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def _first(names: list[str], shown: int = 4) -> list[str]:
    return names if len(names) <= shown else names[:shown] + [f"and {len(names) - shown} more"]


def float_layers(graph: Graph) -> list[dict[str, str]]:
    """The compute layers that ``stubs`` left out of the quantized region, with its reason for each."""
    if not _quantized(graph):
        return []  # a float pipeline: everything is float by choice
    return [{"name": node.name, "op": node.op, "reason": node.quant.float_reason} for node in graph.nodes()
            if node.quant.float_reason is not None and node.op not in _PLUMBING]


def _quantized(graph: Graph) -> bool:
    """Whether any part of the graph was quantized (statically, dynamically or for training)."""
    return any(node.quant.mode is not None for node in graph.nodes())


# ops that carry values around rather than compute them: not worth a line of their own
_PLUMBING = {"getitem", "getattr", "size", "flatten", "view", "reshape", "permute", "transpose", "contiguous",
             "squeeze", "unsqueeze", "dropout", "identity", "chunk", "split", "expand", "to", "type_as"}


def kernels_of(graph: Graph) -> str:
    """The kernels the emitted module runs on, named for the verdict (backend, engine, ISA)."""
    capability = torch.backends.cpu.get_cpu_capability()
    backend = graph.attrs.get("backend")
    if backend == "gemmlowp":
        from qcompile.kernels.host_conv import byte_isa

        return f"qcompile's gemmlowp kernels ({byte_isa()} byte form)"
    if backend == "reference":
        return "the integer stage's reference modules (exact int64 arithmetic, not for speed)"
    if backend == "native":
        return f"torch's {graph.attrs.get('engine', 'x86')} int8 engine ({capability})"
    if CONVERTED in graph.facts:
        return f"torch's dynamic int8 kernels ({capability})"
    return f"torch float kernels ({capability})"


def verdict_data(*, check_data: str | None, calib: str | None, calib_samples: int | None, samples: int,
                 preprocess: str | None, batch_size: int, opener=None) -> VerdictData | None:
    """The data the verdict scores on, preferring data that calibration did not see.

    In order: ``--check-data``; the held-out twin of a built-in calibration
    set (``builtin:photos`` -> ``builtin:photo-crops``, ``fashion-train`` ->
    ``fashion-test``); the samples of ``--calib`` after the first
    ``--calib-samples``; else the calibration samples themselves (said so).
    At most ``samples`` of them, evenly spaced over the set. ``None`` without
    any data. ``opener`` opens the data (default :func:`qcompile.data.open_data`; the command line's opens
    each set once).
    """
    from qcompile.data import open_data
    from qcompile.data.builtin import HELD_OUT

    opener = opener or open_data
    if check_data is not None:
        return _read(opener(check_data, preprocess=preprocess, batch_size=batch_size).spread(samples),
                     f"of {check_data}", held_out=True)
    if calib is None:
        return None
    twin = HELD_OUT.get(calib.removeprefix("builtin:")) if calib.startswith("builtin:") else None
    if twin is not None:
        return _read(opener(f"builtin:{twin}", preprocess=preprocess, batch_size=batch_size).spread(samples),
                     f"of builtin:{twin}, held out from {calib}", held_out=True)
    if calib_samples is not None:
        try:
            rest = opener(calib, preprocess=preprocess, batch_size=batch_size, skip=calib_samples)
        except QCompileError:
            rest = None  # nothing after the calibration samples
        if rest is not None:
            return _read(rest.spread(samples), f"of {calib} after the {calib_samples} calibrated on", held_out=True)
    source = opener(calib, preprocess=preprocess, limit=calib_samples, batch_size=batch_size).spread(samples)
    return _read(source, f"of {calib} (for held-out ones: --check-data DATA, or --calib-samples below the data's "
                 "size)", held_out=False, kind="calibration samples")


def _read(source, where: str, held_out: bool, kind: str = "samples") -> VerdictData:
    """The source's batches, described as ``N samples of ...``."""
    if source.labels is not None:
        batches = [((x,), y) for x, y in source.labelled()]
    else:
        batches = [(tuple(b) if isinstance(b, (tuple, list)) else (b,), None) for b in source]
    data = VerdictData(batches, "", held_out)
    return replace(data, description=f"{data.samples} {kind} {where}")


def _outputs(module: nn.Module, batches: Iterable[tuple[tuple, torch.Tensor | None]]) -> list[torch.Tensor]:
    with torch.no_grad():
        per_batch = [flat_outputs(module(*inputs)) for inputs, _ in batches]
    return [torch.cat(parts) for parts in zip(*per_batch, strict=True)]


def _latency_ms(float_module: nn.Module, quantized: nn.Module, inputs: tuple,
                progress: Callable[[str, int, int | None], None] | None) -> tuple[float, float]:
    """Median milliseconds of each at batch 1, timed in adjacent pairs (the order turning each pair)."""
    one = tuple(t[:1] if isinstance(t, torch.Tensor) else t for t in inputs)
    with torch.no_grad():
        for module in (float_module, quantized):
            module(*one)  # warm-up: first-call decisions and packing
        a_times, b_times = [], []
        for done in range(2, TIMED_PAIRS + 1, 2):  # two pairs at a time: one in each order
            a, b = paired_times(lambda: float_module(*one), lambda: quantized(*one), pairs=2, settle_ms=0.0)
            a_times.extend(a)
            b_times.extend(b)
            if progress is not None:
                progress("verdict: timing", done, TIMED_PAIRS)
    return float(np.median(a_times)) * 1000, float(np.median(b_times)) * 1000


def judge(graph: Graph, float_module: nn.Module, out_dir: Path, data: VerdictData | None, examples: tuple,
          *, pipeline_text: str = "", progress: Callable[[str, int, int | None], None] | None = None) -> Verdict:
    """Measure the model written to ``out_dir`` against ``float_module`` (see the module docstring)."""
    from qcompile.codegen import load_model as load_emitted

    started = time.perf_counter()
    quantized = load_emitted(out_dir).eval()  # the float model is in eval mode as loaded
    agree = sqnr = float_top1 = quantized_top1 = None
    if data is not None and data.batches:
        reference, outputs = _outputs(float_module, data.batches), _outputs(quantized, data.batches)
        labels = [y for _, y in data.batches]
        y = torch.cat(labels) if all(label is not None for label in labels) else None
        try:
            dim = class_dim(reference[0], y)
        except QCompileError:
            dim, y = class_dim(reference[0]), None  # labels that fit no axis: agreement only
        if dim is not None:
            agree = agreement(outputs[0], reference[0], dim)
            if y is not None:
                float_top1, quantized_top1 = (top_k_accuracy(o, y, 1, dim) for o in (reference[0], outputs[0]))
        sqnr = min(sqnr_db(o, r) for o, r in zip(outputs, reference, strict=True))
        timing_inputs = data.batches[0][0]
    else:
        timing_inputs = examples
    float_ms, quantized_ms = _latency_ms(float_module, quantized, timing_inputs, progress)
    verdict = Verdict(
        float_bytes=state_size_bytes(float_module), quantized_bytes=(out_dir / "weights.pt").stat().st_size,
        data=data.description if data is not None else "no data (pass --calib or --check-data)",
        samples=data.samples if data is not None else 0, held_out=bool(data and data.held_out),
        agreement=agree, sqnr_db=sqnr, float_top1=float_top1, quantized_top1=quantized_top1,
        float_ms=float_ms, quantized_ms=quantized_ms, kernels=kernels_of(graph), threads=torch.get_num_threads(),
        float_layers=float_layers(graph))
    verdict.advice = advise(verdict, graph, pipeline_text)
    verdict.seconds = time.perf_counter() - started
    return verdict


def _closer(graph: Graph, pipeline_text: str) -> str | None:
    """The next step up the accuracy ladder measured on MobileNetV2 (docs/benchmarks/default-accuracy.md):
    qcompile's kernels on full 8-bit grids where torch's 7-bit ones ran, then, in seconds, bias correction
    (analytic clipping on torch's kernels), or learned rounding (``ptq-accurate``, the most accurate, minutes
    on a small CPU)."""
    learned = "adaround" in pipeline_text
    tuned = "aciq" in pipeline_text or "bias-correct" in pipeline_text
    if graph.attrs.get("backend") == "native" and graph.attrs.get(CHOSEN) is None:  # the user's choice
        return ("try the default backend, qcompile's own kernels, which take full 8-bit activation grids where "
                "torch's x86 kernels take 7-bit ones (leave out --backend native), or --passes ptq-accurate "
                "(learned rounding; minutes of compiling)")
    if learned:
        return None  # the most accurate method qcompile has: what is left is keeping layers float
    quick = ("analytic clipping: --passes fuse,equalize,calibrate,aciq,convert" if graph.attrs.get("backend") == "native"
             else "bias correction: --passes fuse,equalize,calibrate,bias-correct,convert")
    return "try --passes ptq-accurate (learned rounding; minutes of compiling)" + (
        "" if tuned else f", or, in seconds, {quick}")


def advise(verdict: Verdict, graph: Graph, pipeline_text: str) -> str | None:
    """One line on what to try, where a number is poor; ``None`` where none is."""
    quantized = _quantized(graph)
    poor = ((verdict.agreement is not None and verdict.agreement < GOOD_AGREEMENT)
            or (verdict.sqnr_db is not None and verdict.sqnr_db < GOOD_SQNR_DB))
    if quantized and poor:
        target = max(GOOD_SQNR_DB, math.ceil(verdict.sqnr_db or 0) + 6)
        sensitivity = f"--sensitivity {target:.0f} lists the layers to keep float for {target:.0f} dB"
        closer = _closer(graph, pipeline_text)
        if closer is None:
            return f"closeness is poor after learned rounding, qcompile's most accurate method: {sensitivity} (then --skip them)"
        return f"closeness is poor: {closer}; {sensitivity}"
    if quantized and verdict.speedup < SLOW:
        if graph.attrs.get("backend") == "reference":
            return ("the integer stage's reference modules are for checking, not for speed: add "
                    "lower{backend=gemmlowp} to the pipeline for qcompile's kernels (the same integers)")
        if graph.attrs.get("backend") == "gemmlowp":
            return ("the quantized model is slower than float here: --backend native runs torch's int8 engine, "
                    "faster on this CPU (the same integer weights)")
        if verdict.float_layers:
            return ("the quantized model is slower than float here: each float layer costs a dequantize and a "
                    "quantize; see 'left in float'")
        return ("the quantized model is slower than float at batch 1 here: its layers are small enough that "
                "per-call costs dominate; measure at the batch size you deploy with qcompile compare")
    return None
