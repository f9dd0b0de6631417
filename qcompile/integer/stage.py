"""The neutral integer stage: every quantization decision as plain integer tensors, for any backend.

``integerize`` (and ``convert``, before it lowers) rewrites the quantized
region, whose grids :func:`qcompile.passes.convert.decide_grids` chose,
into modules of :mod:`qcompile.integer.reference`, which the interpreter
runs with exact integer semantics. No torch quantized tensor or module is
involved; the stage says, for every value and weight:

* its grid: ``quant.qparams`` (scale, zero point, container range) on each
  value, ``quant.weight_qparams`` (per output channel) on each weight;
* conv / linear: int8 weight codes (:mod:`qcompile.quant.integer_weights`),
  ``bias_q = round(bias / (s_in * s_w))`` in int32, and per output channel
  the multiplier ``s_in * s_w / s_out`` as gemmlowp's ``(m0, exponent)``
  (spec section 7); a fused ReLU is the clamp at the output zero point;
* add: TFLite's scheme (both inputs onto a grid 2^20 times finer, add,
  requantize), its three multipliers as ``(m0, exponent)`` pairs; mul: the
  product of the centred codes, requantized by ``s_a s_b / s_out``;
* sigmoid, hard sigmoid, tanh, hardswish, leaky ReLU: a table of 256 output
  codes, one per input code (the function at the value the code stands for,
  quantized onto the output grid);
* a cat whose inputs are on its grid (:mod:`qcompile.quant.cat_grids`)
  concatenates the codes; any other cat requantizes each input onto its
  grid first (QCat); ``x.mean((2, 3))`` is the global average pool (QMean); window averages
  sum the centred codes and divide, rounding half away from zero (QAvgPool2d);
* ReLU / ReLU6 / hardtanh / the sub-8-bit clamps (:mod:`qcompile.quant.clamps`):
  clamps of the codes, folded into the output stage of the conv / linear /
  add that makes their input when nothing else reads it (a clamp of a clamp
  is one clamp); global average pooling: an integer mean; a pad with zeros
  pads the codes with the zero point; pooling and reshaping ops run on the
  uint8 codes as they are.

Every value between quantize and dequantize is a uint8 tensor (``u8`` in the
printed graph). The ops are those qcompile's kernels compute; others are
refused by name. Before and after (the digit CNN)::

    %conv_layers_0 = conv2d(%quantize_x, $conv_layers.0.{weight,bias}) : f32[1,32,28,28] {act='relu', ...}  # mode=static ...

    %conv_layers_0 = conv2d(%quantize_x, $conv_layers.0.{weight,bias_q,multiplier,exponent}) : u8[1,32,28,28] {input_zero_point=33, ..., target='qcompile.integer.reference.QConv2d'}  # mode=static ...

A backend lowers from this stage (``lower``), never from another backend:
``gemmlowp`` swaps each module for its kernel, with the same tensors.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from qcompile.backends.channels_last import view_as_reshape
from qcompile.errors import QCompileError
from qcompile.integer import REFERENCE_MODULES
from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, Ref
from qcompile.ir.quant_types import QParams
from qcompile.ir.types import TensorType
from qcompile.kernels.cpu import add_multipliers
from qcompile.kernels.fixed_point import dequantize, quantize, quantize_multiplier, quantize_multipliers
from qcompile.quant.clamps import clamp_to_bits, split_relu6
from qcompile.quant.integer_weights import integer_weight
from qcompile.quant.op_table import SPLITS, zero_pad_widths
from qcompile.quant.qparams import quantize_bias

MODULES = REFERENCE_MODULES
# ops that only move or select uint8 codes: they run on them unchanged
_AS_IS = {"max_pool1d", "flatten", "reshape", "permute", "transpose", "contiguous",
          "squeeze", "unsqueeze", "dropout", "identity", "getitem", "stochastic_depth"} | SPLITS


def _on_grid(node: Node) -> bool:
    """A value inside the quantized region, on a grid ``convert`` chose."""
    return (isinstance(node.type, TensorType) and node.quant.mode == "static" and node.quant.qparams is not None
            and node.kind not in (NodeKind.INPUT, NodeKind.OUTPUT, NodeKind.PARAM))


def _input_qparams(graph: Graph, node: Node, index: int = 0) -> QParams:
    return graph.inputs(node)[index].quant.qparams


def _code(value: float, q: QParams) -> int:
    return max(0, min(255, round(value / float(q.scale)) + int(q.zero_point)))


def _relu(node: Node) -> bool:
    """Whether the node's fused activation is a ReLU (a ReLU6 became a clamp after it: quant.clamps)."""
    act = node.act
    if act not in (None, "relu", "relu6"):
        raise QCompileError(f"%{node.name}: integer kernels fuse ReLU and ReLU6 only, not {act}",
                            hint="use backend=native")
    return act == "relu"


def _weighted(graph: Graph, node: Node) -> dict[str, str]:
    """Plain-tensor params of a conv / linear and the common constructor arguments."""
    weight = integer_weight(graph.params[node.params["weight"]], node.quant)
    if not weight.symmetric or weight.codes.dtype != torch.int8:
        raise QCompileError(f"%{node.name}: integer kernels take symmetric int8 weights (zero point 0)",
                            hint="use a preset with symmetric weights (all built-in ones are), or backend=native")
    q_in, q_out = _input_qparams(graph, node), node.quant.qparams
    if q_in.dtype != "uint8" or q_out.dtype != "uint8":
        raise QCompileError(f"%{node.name}: integer kernels take uint8 activations", hint="use backend=native")
    accumulator_scale = float(q_in.scale) * weight.scales
    bias = graph.params[node.params["bias"]] if "bias" in node.params else torch.zeros(len(weight.scales))
    m0, exponent = quantize_multipliers(accumulator_scale / float(q_out.scale))
    base = node.source.module_path or node.name
    graph.params[node.params["weight"]] = weight.codes
    node.params = {
        "weight": node.params["weight"],
        "bias": graph.add_param(f"{base}.bias_q", quantize_bias(bias, accumulator_scale)),
        "multiplier": graph.add_param(f"{base}.multiplier", m0),
        "exponent": graph.add_param(f"{base}.exponent", exponent),
    }
    zero = int(q_out.zero_point)
    clamp_min = zero if _relu(node) else 0
    node.act = None  # a ReLU is the clamp at the zero point; a ReLU6 the clamp split_relu6 put after the node
    return {"input_zero_point": int(q_in.zero_point), "output_zero_point": zero, "clamp_min": clamp_min,
            "clamp_max": 255}


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _conv(graph: Graph, node: Node) -> None:
    attrs = node.attrs
    if attrs.get("padding_mode", "zeros") != "zeros" or isinstance(attrs.get("padding"), str):
        raise QCompileError(f"%{node.name}: the integer convolution pads with zeros, by explicit amounts",
                            hint="use backend=native")
    common = _weighted(graph, node)
    node.target = f"{MODULES}.QConv2d"
    node.attrs = {"in_channels": attrs["in_channels"], "out_channels": attrs["out_channels"],
                  "kernel_size": _pair(attrs["kernel_size"]), "stride": _pair(attrs.get("stride", 1)),
                  "padding": _pair(attrs.get("padding", 0)), "dilation": _pair(attrs.get("dilation", 1)),
                  "groups": attrs.get("groups", 1)} | common


def _linear(graph: Graph, node: Node) -> None:
    attrs = node.attrs
    common = _weighted(graph, node)
    node.target = f"{MODULES}.QLinear"
    node.attrs = {"in_features": attrs["in_features"], "out_features": attrs["out_features"]} | common


def _as_module(graph: Graph, node: Node, target: str, attrs: dict, inputs: list[Node]) -> None:
    node.kind, node.target, node.params, node.attrs = NodeKind.MODULE, f"{MODULES}.{target}", {}, attrs
    graph.set_inputs(node, inputs, args=tuple(Ref(i) for i in range(len(inputs))), kwargs={})


def _add(graph: Graph, node: Node) -> None:
    inputs = graph.inputs(node)
    q_a, q_b, q_out = inputs[0].quant.qparams, inputs[1].quant.qparams, node.quant.qparams
    reals = add_multipliers(float(q_a.scale), float(q_b.scale), float(q_out.scale))
    (a_m0, a_e), (b_m0, b_e), (o_m0, o_e) = (quantize_multiplier(r) for r in reals)
    zero = int(q_out.zero_point)
    clamp_min = zero if _relu(node) else 0
    node.act = None
    _as_module(graph, node, "QAdd", {
        "a_zero_point": int(q_a.zero_point), "a_multiplier": a_m0, "a_exponent": a_e,
        "b_zero_point": int(q_b.zero_point), "b_multiplier": b_m0, "b_exponent": b_e,
        "output_multiplier": o_m0, "output_exponent": o_e, "output_zero_point": zero,
        "clamp_min": clamp_min, "clamp_max": 255}, inputs)


def _mul(graph: Graph, node: Node) -> None:
    inputs = graph.inputs(node)
    q_a, q_b, q_out = inputs[0].quant.qparams, inputs[1].quant.qparams, node.quant.qparams
    m0, exponent = quantize_multiplier(float(q_a.scale) * float(q_b.scale) / float(q_out.scale))
    zero = int(q_out.zero_point)
    clamp_min = zero if _relu(node) else 0
    node.act = None
    _as_module(graph, node, "QMul", {
        "a_zero_point": int(q_a.zero_point), "b_zero_point": int(q_b.zero_point), "output_multiplier": m0,
        "output_exponent": exponent, "output_zero_point": zero, "clamp_min": clamp_min, "clamp_max": 255}, inputs)


def _cat(graph: Graph, node: Node) -> None:
    """A cat whose inputs are on other grids than its own: each requantized onto it (QCat)."""
    inputs, q_out = graph.inputs(node), node.quant.qparams
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    pairs = [quantize_multiplier(float(i.quant.qparams.scale) / float(q_out.scale)) for i in inputs]
    _as_module(graph, node, "QCat", {
        "dim": dim, "zero_points": tuple(int(i.quant.qparams.zero_point) for i in inputs),
        "multipliers": tuple(m0 for m0, _ in pairs), "exponents": tuple(e for _, e in pairs),
        "output_zero_point": int(q_out.zero_point)}, inputs)
    graph.set_inputs(node, inputs, args=([Ref(i) for i in range(len(inputs))],), kwargs={})  # one list, as torch.cat


def _mean(graph: Graph, node: Node) -> bool:
    """``x.mean((2, 3))`` (or ``(-2, -1)``) of a 4-d tensor as the integer global average pool; False otherwise."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    rank = len(graph.inputs(node)[0].type.shape)
    if rank != 4 or not isinstance(dims, (list, tuple)) or sorted(d % rank for d in dims) != [2, 3]:
        return False
    _as_module(graph, node, "QMean", {"keepdim": bool(keepdim)}, graph.inputs(node)[:1])
    return True


def _negative_slope(node: Node) -> float:
    if node.kind == NodeKind.MODULE:
        return node.attrs.get("negative_slope", 0.01)
    return node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)


# elementwise functions of one value that run on the codes as a table (QLookup)
_LOOKUPS = {
    "sigmoid": lambda node: torch.sigmoid, "hardsigmoid": lambda node: F.hardsigmoid, "tanh": lambda node: torch.tanh,
    "hardswish": lambda node: F.hardswish,
    "leaky_relu": lambda node: lambda x: F.leaky_relu(x, _negative_slope(node)),
}


def _lookup(graph: Graph, node: Node) -> None:
    """The op as the table of its output codes over the 256 input codes: each entry is the float function at
    the value the code stands for, quantized onto the output grid as the stage's Quantize does."""
    q_in, q_out = _input_qparams(graph, node), node.quant.qparams
    values = dequantize(torch.arange(256), q_in.scale, q_in.zero_point)
    codes = quantize(_LOOKUPS[node.op](node)(values), q_out.scale, q_out.zero_point, 0, 255).to(torch.uint8)
    _as_module(graph, node, "QLookup", {}, graph.inputs(node)[:1])
    node.params = {"table": graph.add_param(f"{node.source.module_path or node.name}.table", codes)}


def _clamp(graph: Graph, node: Node, lo: float | None, hi: float | None) -> None:
    q = node.quant.qparams
    attrs = {"clamp_min": _code(lo, q) if lo is not None else 0, "clamp_max": _code(hi, q) if hi is not None else 255}
    _as_module(graph, node, "QClamp", attrs, graph.inputs(node)[:1])


def _hardtanh_bounds(node: Node) -> tuple[float, float]:
    if node.kind == NodeKind.MODULE:
        return node.attrs.get("min_val", -1.0), node.attrs.get("max_val", 1.0)
    args = list(node.args[1:]) + [None, None]
    lo = node.kwargs.get("min_val", args[0] if args[0] is not None else -1.0)
    hi = node.kwargs.get("max_val", args[1] if args[1] is not None else 1.0)
    return lo, hi


def _global_pool(graph: Graph, node: Node) -> None:
    size = node.attrs.get("output_size") if node.kind == NodeKind.MODULE else (
        node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size"))
    if _pair(size) != (1, 1):
        raise QCompileError(f"%{node.name}: integer global pooling pools to 1x1 only, not {size}",
                            hint="use backend=native")
    _as_module(graph, node, "QGlobalAvgPool", {}, graph.inputs(node)[:1])


_MAX_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _max_pool(graph: Graph, node: Node) -> None:
    if node.kind == NodeKind.MODULE:
        attrs = dict(node.attrs)
    else:  # F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
        given = dict(zip(_MAX_POOL_ARGS, node.args[1:], strict=False))
        attrs = given | {k: v for k, v in node.kwargs.items() if k != "input"}
    if attrs.pop("return_indices", False):
        raise QCompileError(f"%{node.name}: max pooling with indices is not an integer op",
                            hint="use backend=native")
    _as_module(graph, node, "QMaxPool2d", attrs, graph.inputs(node)[:1])


_AVG_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _avg_pool(graph: Graph, node: Node) -> bool:
    """A window average on the codes (QAvgPool2d); False for a divisor override, or ceil mode with padding."""
    if node.kind == NodeKind.MODULE:
        given = dict(node.attrs)
    else:
        given = dict(zip(_AVG_POOL_ARGS, node.args[1:], strict=False)) | {
            k: v for k, v in node.kwargs.items() if k != "input"}
    padding = given.get("padding", 0)
    if given.get("divisor_override") or (given.get("ceil_mode") and any(_pair(padding))):
        return False
    stride = given.get("stride") or given["kernel_size"]
    _as_module(graph, node, "QAvgPool2d", {
        "kernel_size": _pair(given["kernel_size"]), "stride": _pair(stride), "padding": _pair(padding),
        "ceil_mode": bool(given.get("ceil_mode", False)), "count_include_pad": bool(given.get("count_include_pad", True)),
        "zero_point": int(node.quant.qparams.zero_point)}, graph.inputs(node)[:1])
    return True


def _rewrite(graph: Graph, node: Node) -> bool:
    """Rewrite one node of the quantized region (or a dequantize); False if the kernels do not cover it."""
    if node.op == "quantize":
        q = node.quant.qparams
        if q.dtype != "uint8":
            return False
        _as_module(graph, node, "Quantize", {"scale": float(q.scale), "zero_point": int(q.zero_point)},
                   graph.inputs(node)[:1])
    elif node.op == "dequantize":
        q = _input_qparams(graph, node)
        _as_module(graph, node, "Dequantize", {"scale": float(q.scale), "zero_point": int(q.zero_point)},
                   graph.inputs(node)[:1])
    elif node.op == "conv2d" and node.kind == NodeKind.MODULE:
        _conv(graph, node)
    elif node.op == "linear" and node.kind == NodeKind.MODULE:
        _linear(graph, node)
    elif node.op == "add" and len(graph.inputs(node)) == 2:
        _add(graph, node)
    elif node.op == "mul" and len(graph.inputs(node)) == 2:
        _mul(graph, node)
    elif node.op in _LOOKUPS and len(graph.inputs(node)) == 1:
        _lookup(graph, node)
    elif node.op == "relu":
        _clamp(graph, node, 0.0, None)
    elif node.op == "relu6":
        _clamp(graph, node, 0.0, 6.0)
    elif node.op == "hardtanh" or (node.op.startswith("clamp") and node.op.endswith("b")):
        _clamp(graph, node, *_hardtanh_bounds(node))
    elif node.op == "adaptive_avg_pool2d":
        _global_pool(graph, node)
    elif node.op == "max_pool2d":
        _max_pool(graph, node)
    elif node.op == "avg_pool2d":
        return _avg_pool(graph, node)
    elif node.op == "view":
        view_as_reshape(node)
    elif node.op == "cat":  # copies codes where its inputs write its grid (qcompile.quant.cat_grids)
        if not all(node.quant.qparams.same_grid(i.quant.qparams) for i in graph.inputs(node)):
            _cat(graph, node)
    elif node.op == "mean":
        return _mean(graph, node)
    elif zero_pad_widths(node) is not None:
        _pad_with_zero_point(graph, node)
    elif node.op not in _AS_IS:
        return False
    return True


def _pad_with_zero_point(graph: Graph, node: Node) -> None:
    """A pad with 0.0 as ``F.pad`` of the uint8 codes with the zero point (the code of 0.0)."""
    widths, q = zero_pad_widths(node), node.quant.qparams
    node.kind, node.target, node.params, node.attrs = NodeKind.FUNCTION, "torch.nn.functional.pad", {}, {}
    graph.set_inputs(node, graph.inputs(node)[:1], args=(Ref(0), widths, "constant", int(q.zero_point)), kwargs={})


def to_integer_stage(graph: Graph) -> dict[str, int]:
    """Rewrite every node of the quantized region, whose grids ``decide_grids`` chose, into the integer stage."""
    for node in graph.nodes():
        if _on_grid(node) and node.op in ("conv2d", "linear"):
            split_relu6(graph, node)
        if _on_grid(node) and node.quant.bits is not None and node.quant.bits < 8 and node.quant.observer:
            clamp_to_bits(graph, node)
    unsupported: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for node in graph.nodes():
        if not (_on_grid(node) or node.op == "dequantize"):
            continue
        if not _rewrite(graph, node):
            unsupported.setdefault(node.op, []).append(node.name)
            continue
        counts[node.op] = counts.get(node.op, 0) + 1
        if _on_grid(node):
            node.type = replace(node.type, dtype="u8")
    if unsupported:
        listing = "; ".join(f"{op} (%{names[0]}{' and others' if len(names) > 1 else ''})"
                            for op, names in sorted(unsupported.items()))
        raise QCompileError(f"the integer stage (qcompile's kernels) does not cover these quantized ops: {listing}",
                            hint="use convert{backend=native}, or --skip those layers to keep them in float")
    folded = fold_clamps(graph)
    if folded:
        counts["clamps folded into their producer"] = folded
    return counts


_CLAMPED = {f"{MODULES}.{name}" for name in ("QConv2d", "QLinear", "QAdd", "QMul")}


def fold_clamps(graph: Graph) -> int:
    """Fold each QClamp into the output stage of the conv / linear / add before it; return how many.

    Only where the clamp is the producer's single reader and both are on
    the same grid, and the two ranges overlap: then clamping codes to
    [a, b] and then to [c, d] is clamping them to [max(a, c), min(b, d)].
    Besides one call less, this keeps the model free of torch's own
    parallel ops, whose waiting threads take the second core from the
    kernels' own on two-core machines.
    """
    folded = 0
    for node in graph.nodes():
        if node.target != f"{MODULES}.QClamp":
            continue
        producer = graph.inputs(node)[0]
        if producer.target not in _CLAMPED or len(graph.uses(producer)) != 1:
            continue
        q, q_in = node.quant.qparams, producer.quant.qparams
        if q is None or q_in is None or (float(q.scale), int(q.zero_point)) != (float(q_in.scale),
                                                                                int(q_in.zero_point)):
            continue
        lo = max(producer.attrs["clamp_min"], node.attrs["clamp_min"])
        hi = min(producer.attrs["clamp_max"], node.attrs["clamp_max"])
        if lo > hi:
            continue
        producer.attrs = producer.attrs | {"clamp_min": lo, "clamp_max": hi}
        producer.quant.absorbs = node.name  # the producer's value is now the clamp's
        graph.replace_all_uses(node, producer)
        graph.erase(node)
        folded += 1
    return folded
