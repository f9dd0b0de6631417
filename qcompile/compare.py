"""Comparing a float model with its quantized variants: size, accuracy, latency.

Accuracy is top-1 / top-5 against labels when the data has them, and always
agreement with the float model (share of equal top-1 predictions, output
SQNR). For a model with several outputs, top-1, top-5 and agreement read the
first output (the class scores, by convention), and SQNR is measured on
every output: the table shows the worst, the JSON file each. The class axis
is axis 1 of ``[N, C]`` scores, follows the labels' shape otherwise (a
tagger's ``[N, T, C]`` scores against ``[N, T]`` labels: the last), or is
given (``class_dim``); without any of these, agreement is left out and SQNR
alone compares. Latency is the median of repeated runs of one batch after warm-up,
with a fixed number of threads.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from qcompile.diagnose.metrics import agreement as agreement_of
from qcompile.diagnose.metrics import class_dim, sqnr_db, top_k_accuracy
from qcompile.errors import QCompileError
from qcompile.fileio import atomic_write_text


@dataclass
class Row:
    name: str
    size_mb: float
    top1: float | None
    top5: float | None
    agreement: float | None
    sqnr_db: float | None
    latency_ms: float
    speedup: float | None = None
    output_sqnr_db: list[float] | None = None  # one per output, in the model's order


def flat_outputs(out) -> list[torch.Tensor]:
    """A model's output as a flat list of float tensors: a tensor, or tuples, lists and dicts of them."""
    if isinstance(out, torch.Tensor):
        return [out.float()]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in flat_outputs(item)]
    return []  # None and other non-tensor outputs carry nothing to compare


def state_size_bytes(module: nn.Module) -> int:
    """Bytes of the module's state dict as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def median_latency_ms(module, batch: torch.Tensor | tuple, repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``module(batch)`` (``module(*batch)`` for a tuple, one tensor per input)."""
    inputs = batch if isinstance(batch, tuple) else (batch,)
    with torch.no_grad():
        for _ in range(warmup):
            module(*inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(*inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def compare(models: list[tuple[str, nn.Module, int]], data, *, threads: int = 1, repeats: int = 20,
            latency_batch: int = 1, class_dim: int | None = None) -> list[Row]:
    """One row per (name, model, size in bytes); the first model is the float reference.

    A model is a module or anything called like one with a batch, such as
    :class:`qcompile.onnx.runtime.session.OnnxModel` (an export run by onnxruntime,
    which takes its thread count when it is made). A model with several
    inputs gets one tensor per input from each batch; for one with several
    outputs, accuracy and agreement are the first output's, and SQNR is the
    lowest over all outputs (each in ``Row.output_sqnr_db``). ``class_dim``
    names the axis of class scores (see :func:`qcompile.diagnose.metrics.class_dim`).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _rows(models, data, repeats, latency_batch, class_dim)
    finally:
        torch.set_num_threads(previous)  # the caller's setting, as it was


def _rows(models: list[tuple[str, nn.Module, int]], data, repeats: int, latency_batch: int,
          requested_dim: int | None) -> list[Row]:
    if data.labels is not None:
        batches = [((x,), y) for x, y in data.labelled()]
        y = torch.cat([labels for _, labels in batches])
    else:
        batches, y = [(tuple(b), None) for b in data], None
    reference = None
    rows = []
    for index, (name, module, size) in enumerate(models):
        module.eval()
        with torch.no_grad():
            per_batch = [flat_outputs(module(*x)) for x, _ in batches]
        outputs = [torch.cat(parts) for parts in zip(*per_batch, strict=True)]
        if reference is not None and len(outputs) != len(reference):
            raise QCompileError(f"{name} gives {len(outputs)} outputs, the float model {len(reference)}",
                                hint="compare variants of the same model")
        out = outputs[0]
        dim = class_dim(out, y, requested_dim)
        top1 = top5 = None
        if y is not None:
            top1, top5 = (top_k_accuracy(out, y, k, dim) for k in (1, 5))
        agreement = each = None
        if index == 0:
            reference = outputs
        else:
            agreement = None if dim is None else agreement_of(out, reference[0], dim)
            each = [sqnr_db(o, r) for r, o in zip(reference, outputs, strict=True)]
        latency = median_latency_ms(module, tuple(t[:latency_batch] for t in batches[0][0]), repeats)
        rows.append(Row(name, size / 1e6, top1, top5, agreement, None if each is None else min(each), latency,
                        output_sqnr_db=each))
    for row in rows[1:]:
        row.speedup = rows[0].latency_ms / row.latency_ms
    return rows


def format_table(rows: list[Row]) -> str:
    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    several = any(r.output_sqnr_db and len(r.output_sqnr_db) > 1 for r in rows)
    sqnr_title = "SQNR dB (worst output)" if several else "SQNR dB"
    lines = [f"| model | size MB | top-1 | top-5 | agreement | {sqnr_title} | latency ms | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.size_mb:.2f} | {cell(r.top1, '.4f')} | {cell(r.top5, '.4f')} | "
                     f"{cell(r.agreement, '.4f')} | {cell(r.sqnr_db, '.1f')} | {r.latency_ms:.2f} | "
                     f"{cell(r.speedup, '.2f')} |")
    if any(r.agreement is None and r.sqnr_db is not None for r in rows):
        lines.append("")
        lines.append("agreement -: the first output is not known to hold class scores (only [N, C] outputs are, "
                     "or labels show the axis); give its class axis with --class-dim (class_dim=) to compare "
                     "top-1 predictions")
    if several:
        lines.append("")
        lines.extend(f"{r.name}: SQNR dB per output " + ", ".join(f"{v:.1f}" for v in r.output_sqnr_db)
                     for r in rows if r.output_sqnr_db)
    return "\n".join(lines)


def write_json(rows: list[Row], path: str | Path, **context) -> None:
    atomic_write_text(path, json.dumps({"context": context, "rows": [asdict(r) for r in rows]}, indent=1))
