"""Padding a convolution's input channels to a multiple of 4, where onnxruntime runs it faster.

onnxruntime's CPU provider has two int8 convolution paths: an indirect
convolution (MLAS ``ConvSym``, channels-last, weights packed per tap) and
im2col + GEMM. The first takes only layers whose input channels are a
multiple of 4 on x86 (its ``KernelInputChannelAlignment``), so a network's
first convolution, over 3 colour channels (or 1 grey one), always gets the
second. Whether that is the slower path depends on the layer and the CPU: on
an AVX2 machine, MobileNetV2's 3x3 stem ran 542 -> 352 us with a fourth
channel of zeros, and ResNet-18's 7x7 stem became slower (a third more
multiply-adds for the same path's gain).

So the export measures. For each dense convolution whose input channels are
not a multiple of 4, it times the layer alone in onnxruntime both ways
(plain, and ``Pad`` to the next multiple of 4 with the input's zero point,
weights padded with zeros), on this machine, and keeps the padding only
where it is clearly faster. The padded channel holds the zero point, which
dequantizes to exactly 0, and meets weights of 0: the outputs are
bit-identical (tested). Each decision, with both times, is recorded in the
model's metadata (``qcompile.channel_pad``).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompile.errors import QCompileError

Mode = Literal["auto", "always", "never"]
ALIGNMENT = 4  # MLAS ConvSym's input-channel alignment on x86 (AVX2, AVX-VNNI, AVX-512)
GAIN = 0.95  # "auto" pads only where the padded layer takes under 95% of the plain one's time
METADATA_KEY = "qcompile.channel_pad"


@dataclass(frozen=True)
class ChannelPad:
    """One convolution the export looked at: its weight, channels, times (ms; None unless measured), choice."""

    layer: str
    channels: int
    padded_channels: int
    plain_ms: float | None
    padded_ms: float | None
    padded: bool

    def describe(self) -> str:
        change = f"{self.channels} -> {self.padded_channels}" if self.padded else f"{self.channels} kept"
        if self.plain_ms is None:
            return f"{self.layer}: input channels {change}"
        return (f"{self.layer}: input channels {change} (onnxruntime, this machine: plain {self.plain_ms:.3f} ms, "
                f"padded {self.padded_ms:.3f} ms)")


@dataclass
class _Candidate:
    conv: onnx.NodeProto
    codes: str  # the uint8 codes the convolution reads (before any DequantizeLinear)
    x_scale: str
    x_zero: str
    weight: str  # the int8 weight initializer [M, C, KH, KW]
    w_scale: str
    w_zero: str
    shape: list[int]  # the codes' [C, H, W]


def pad_conv_channels(model: onnx.ModelProto, mode: Mode = "auto", threads: int = 1) -> list[ChannelPad]:
    """Pad the input channels of ``model``'s narrow int8 convolutions (in place) as ``mode`` says:
    ``auto`` where onnxruntime measures the padded layer faster, ``always``, or ``never``. QDQ and
    QOperator forms. Returns a record of every convolution considered."""
    if mode not in ("auto", "always", "never"):
        raise QCompileError(f"unknown channel padding mode {mode!r}", hint="auto, always or never")
    if mode == "never":
        return []
    candidates = _candidates(model)
    records = []
    for c in candidates:
        weight = numpy_helper.to_array(_initializer(model, c.weight))
        channels = weight.shape[1]
        padded_channels = -(-channels // ALIGNMENT) * ALIGNMENT
        plain_ms = padded_ms = None
        if mode == "auto":
            plain_ms, padded_ms = _time_both(model, c, weight, padded_channels, threads)
            chosen = padded_ms < GAIN * plain_ms
        else:
            chosen = True
        if chosen:
            _pad(model, c, weight, padded_channels)
        records.append(ChannelPad(c.weight.split("_weight")[0].split("_w__")[0], channels, padded_channels,
                                  plain_ms, padded_ms, chosen))
    if records:
        entry = onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps([asdict(r) for r in records]))
        model.metadata_props.append(entry)
    return records


def recorded(model: onnx.ModelProto) -> list[ChannelPad]:
    """The decisions :func:`pad_conv_channels` recorded in ``model``'s metadata."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return [ChannelPad(**r) for r in json.loads(entry.value)]
    return []


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto | None:
    return next((i for i in model.graph.initializer if i.name == name), None)


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _candidates(model: onnx.ModelProto) -> list[_Candidate]:
    """Dense 2-D int8 convolutions over uint8 codes of known [C, H, W], C not a multiple of 4."""
    producers = {o: n for n in model.graph.node for o in n.output}
    shapes = _shapes(model)
    found = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type not in ("Conv", "QLinearConv") or attrs.get("group", 1) != 1:
            continue
        if node.op_type == "QLinearConv":
            codes, x_scale, x_zero, weight, w_scale, w_zero = node.input[:6]
        else:  # QDQ: Conv(DequantizeLinear(codes), DequantizeLinear(int8 weight))
            x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
            if x_dq is None or w_dq is None or x_dq.op_type != w_dq.op_type or x_dq.op_type != "DequantizeLinear":
                continue
            codes, x_scale, x_zero = (list(x_dq.input) + [""])[:3]
            weight, w_scale, w_zero = (list(w_dq.input) + [""])[:3]
        w, zero = _initializer(model, weight), _initializer(model, x_zero)
        shape = shapes.get(codes, [])
        if (w is None or w.data_type != TensorProto.INT8 or len(w.dims) != 4 or w.dims[1] % ALIGNMENT == 0
                or zero is None or zero.data_type != TensorProto.UINT8 or len(shape) != 4
                or any(d is None for d in shape[1:])
                or any(_initializer(model, name) is None for name in (x_scale, w_scale, w_zero))):
            continue  # the timing model and the padding need every grid as a constant
        found.append(_Candidate(node, codes, x_scale, x_zero, weight, w_scale, w_zero, shape[1:]))
    return found


def _padded_weight(weight: np.ndarray, channels: int) -> np.ndarray:
    extra = np.zeros((weight.shape[0], channels - weight.shape[1], *weight.shape[2:]), weight.dtype)
    return np.concatenate([weight, extra], axis=1)


def _pad(model: onnx.ModelProto, c: _Candidate, weight: np.ndarray, channels: int) -> None:
    """Pad(codes) -> the convolution, weights widened with zeros; other readers of the codes unchanged."""
    graph = model.graph
    stem = f"{c.weight}_pad{channels}"
    graph.initializer.extend([numpy_helper.from_array(_padded_weight(weight, channels), f"{stem}_w"),
                              numpy_helper.from_array(np.array([0, 0, 0, 0, 0, channels - weight.shape[1], 0, 0],
                                                               np.int64), f"{stem}_pads")])
    pad = helper.make_node("Pad", [c.codes, f"{stem}_pads", c.x_zero], [f"{stem}_codes"], mode="constant")
    new_nodes = [pad]
    if c.conv.op_type == "QLinearConv":
        c.conv.input[0], c.conv.input[3] = f"{stem}_codes", f"{stem}_w"
    else:
        x_dq = helper.make_node("DequantizeLinear", [f"{stem}_codes", c.x_scale, c.x_zero], [f"{stem}_x"])
        w_dq = next(n for n in graph.node if n.output[0] == c.conv.input[1])
        new_w_dq = helper.make_node("DequantizeLinear", [f"{stem}_w", *w_dq.input[1:]], [f"{stem}_wf"],
                                    axis=next((helper.get_attribute_value(a) for a in w_dq.attribute
                                               if a.name == "axis"), 1))
        new_nodes += [x_dq, new_w_dq]
        c.conv.input[0], c.conv.input[1] = f"{stem}_x", f"{stem}_wf"
    at = list(graph.node).index(c.conv)
    for offset, node in enumerate(new_nodes):
        graph.node.insert(at + offset, node)


def _layer_model(model: onnx.ModelProto, c: _Candidate, weight: np.ndarray, channels: int) -> onnx.ModelProto:
    """The layer alone, as onnxruntime will run it: uint8 codes [1, C, H, W] -> (Pad) -> QLinearConv."""
    inits = [_initializer(model, name) for name in (c.x_scale, c.x_zero, c.w_scale, c.w_zero)]
    w = _padded_weight(weight, channels) if channels != weight.shape[1] else weight
    inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1.0, np.float32), "y_scale"),
              numpy_helper.from_array(np.array(0, np.uint8), "y_zero")]
    nodes, x = [], "codes"
    if channels != weight.shape[1]:
        inits.append(numpy_helper.from_array(np.array([0, 0, 0, 0, 0, channels - weight.shape[1], 0, 0], np.int64),
                                             "pads"))
        nodes.append(helper.make_node("Pad", ["codes", "pads", c.x_zero], ["padded"], mode="constant"))
        x = "padded"
    attrs = {a.name: helper.get_attribute_value(a) for a in c.conv.attribute}
    nodes.append(helper.make_node("QLinearConv", [x, c.x_scale, c.x_zero, "w", c.w_scale, c.w_zero, "y_scale",
                                                  "y_zero"], ["y"], **attrs))
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("codes", TensorProto.UINT8,
                                                                            [1, *c.shape])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _time_both(model: onnx.ModelProto, c: _Candidate, weight: np.ndarray, channels: int,
               threads: int) -> tuple[float, float]:
    """Median ms of the plain and the padded layer, interleaved so that both see the same machine."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(_layer_model(model, c, weight, k).SerializeToString(), options,
                                     providers=["CPUExecutionProvider"]) for k in (weight.shape[1], channels)]
    codes = np.random.default_rng(0).integers(0, 256, (1, *c.shape), dtype=np.uint8)
    feed = {"codes": codes}
    for session in sessions:  # warm-up, and a first measure of how many runs fit in the budget
        start = time.perf_counter()
        for _ in range(3):
            session.run(None, feed)
    each = (time.perf_counter() - start) / 3
    runs = int(min(50, max(5, 0.15 / max(each, 1e-6))))  # about 0.3 s per layer in all
    times: list[list[float]] = [[], []]
    for r in range(runs):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            sessions[i].run(None, feed)
            times[i].append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1000, statistics.median(times[1]) * 1000
