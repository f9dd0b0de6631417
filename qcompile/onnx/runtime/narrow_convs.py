"""Narrow int8 convolutions (a network's first) rewritten where onnxruntime runs them faster.

onnxruntime's CPU provider has two int8 convolution paths: an indirect
convolution (MLAS ``ConvSym``, channels-last, weights packed per tap) and
im2col + GEMM. The first takes only layers whose input channels are a
multiple of 4 on x86 (its ``KernelInputChannelAlignment``), so a network's
first convolution, over 3 colour channels (or 1 grey one), always gets the
second. Two rewrites put such a layer on the first path, with the same
outputs:

* ``pad``: a ``Pad`` of the codes to the next multiple of 4 channels, with
  the input's zero point (which dequantizes to exactly 0), and weights of 0
  for the new channels;
* ``space-to-depth`` (stride 2 only): a ``SpaceToDepth`` of the codes (each
  2 x 2 block of pixels becomes 4 x C channels) and a stride-1 convolution
  whose kernel holds the original taps at their place in the blocks, 0
  elsewhere; the padding moves onto the new convolution (the zero point
  again).

Which is fastest depends on the layer and the CPU. On some layers padding
wins, on others space-to-depth, and on others neither. So ``auto`` measures: it times the layer alone in onnxruntime, plain and
in each rewrite that applies, on this machine, at batch 1 and batch 8, and
keeps the form whose time relative to the plain layer's (the geometric mean
of the two batches) is lowest, if it is under 95%. The outputs are
bit-identical (tested). Each decision, with the times, is recorded in the
model's metadata (``qcompile.narrow_convs``).

The layer alone does not always predict the model.
``measure`` decides on the whole model instead, at the batch size and
threads it will be deployed with: the model plain and with each rewrite,
timed head to head (:mod:`qcompile.timing`), and a rewrite kept only if the
95% interval of its speed-up lies wholly above 1. A rewrite worth 1% needs
more pairs of runs to show than one worth 5%, so the timing goes on in
rounds of 60 pairs while the interval holds 1, up to 240. It takes seconds
to a few minutes, so it is not the default.
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
from qcompile.onnx.runtime.session import in_memory_session
from qcompile.timing import PairedRatio, head_to_head_resolved

Mode = Literal["auto", "measure", "pad", "space-to-depth", "plain"]
MODES = ("auto", "measure", "pad", "space-to-depth", "plain")
PAIRS = 60  # "measure" times the whole model plain and rewritten in rounds of this many adjacent pairs of runs
MAX_PAIRS = 240  # ... adding rounds while the speed-up's interval holds 1, up to this many pairs
ALIGNMENT = 4  # MLAS ConvSym's input-channel alignment on x86 (AVX2, AVX-VNNI, AVX-512)
GAIN = 0.95  # "auto" rewrites only where the rewritten layer takes under 95% of the plain one's time
BATCHES = (1, 8)  # "auto" times each form at these batch sizes
METADATA_KEY = "qcompile.narrow_convs"


@dataclass(frozen=True)
class NarrowConv:
    """One convolution the export looked at: its channels, the form chosen, the times (ms) if measured."""

    layer: str
    channels: int
    choice: str  # plain, pad or space-to-depth
    times_ms: dict[str, list[float]] | None = None  # form -> ms at each of BATCHES
    speedup: dict[str, list[float]] | None = None  # "measure": form -> whole model's [speed-up, low, high, pairs]
    batch: int | None = None  # "measure": the batch size it was timed at

    def relative(self, form: str) -> float:
        """The form's time over the plain layer's, the geometric mean over BATCHES."""
        ratios = [t / p for t, p in zip(self.times_ms[form], self.times_ms["plain"], strict=True)]
        return float(np.prod(ratios) ** (1 / len(ratios)))

    def describe(self) -> str:
        what = {"plain": "kept as it is", "pad": f"padded to {-(-self.channels // ALIGNMENT) * ALIGNMENT} channels",
                "space-to-depth": f"space-to-depth ({4 * self.channels} channels, stride 1)"}[self.choice]
        text = f"{self.layer} ({self.channels} input channels): {what}"
        if self.times_ms:
            batches = " / ".join(str(b) for b in BATCHES)
            text += f" (onnxruntime, this machine, ms at batch {batches}: " + "; ".join(
                f"{k} " + " / ".join(f"{t:.3f}" for t in v) for k, v in self.times_ms.items()) + ")"
        if self.speedup:
            text += f" (whole model in onnxruntime, this machine, batch {self.batch}, speed-up over plain: " + "; ".join(
                f"{k} {r:.3f}x [{lo:.3f}, {hi:.3f}] over {pairs:.0f} pairs of runs"
                for k, (r, lo, hi, pairs) in self.speedup.items()) + ")"
        return text


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
    w_dq: onnx.NodeProto | None  # QDQ form: the weight's DequantizeLinear

    def attrs(self) -> dict:
        a = {x.name: helper.get_attribute_value(x) for x in self.conv.attribute}
        return {"kernel_shape": list(a["kernel_shape"]), "strides": list(a.get("strides", [1, 1])), "pads": list(a.get("pads", [0] * 4)),
                "dilations": list(a.get("dilations", [1, 1])), "group": a.get("group", 1)}


@dataclass(frozen=True)
class _Rewrite:
    """A form of the layer: nodes before the convolution (codes in, new codes out), weights, attributes."""

    pre: list[tuple[str, dict, list[np.ndarray]]]  # (op, attributes, constant inputs after the codes)
    weight: np.ndarray
    attrs: dict


def relayout_narrow_convs(model: onnx.ModelProto, mode: Mode = "auto", threads: int = 1,
                          batch: int = 1) -> list[NarrowConv]:
    """Rewrite ``model``'s narrow int8 convolutions (in place) as ``mode`` says: ``auto`` (the fastest
    form of the layer alone, if clearly faster), ``measure`` (the form that makes the whole model
    measurably faster at ``batch`` and ``threads``), ``pad``, ``space-to-depth`` (where it applies; else
    plain) or ``plain``. QDQ and QOperator forms. Returns a record of every convolution considered."""
    if mode not in MODES:
        raise QCompileError(f"unknown narrow-convolution mode {mode!r}", hint=", ".join(MODES))
    if mode == "plain":
        return []
    if mode == "measure" and batch < 1:
        raise QCompileError(f"batch size {batch} to measure at", hint="give the batch size the model will run at (1 or more)")
    records = []
    for c in _candidates(model):
        weight = numpy_helper.to_array(_initializer(model, c.weight))
        forms = {"plain": _Rewrite([], weight, c.attrs()), "pad": _padded(c, weight)}
        s2d = _space_to_depth(c, weight)
        if s2d is not None:
            forms["space-to-depth"] = s2d
        layer, channels = c.weight.split("_weight")[0].split("_w__")[0], int(weight.shape[1])
        if mode == "auto":
            per_batch = [_time_forms(model, c, forms, threads, batch) for batch in BATCHES]
            record = NarrowConv(layer, channels, "plain", {k: [t[k] for t in per_batch] for k in forms})
            best = min(forms, key=record.relative)
            if record.relative(best) < GAIN:
                record = NarrowConv(layer, channels, best, record.times_ms)
        elif mode == "measure":
            speedup = {name: _whole_model_speedup(model, c, form, name, threads, batch)
                       for name, form in forms.items() if name != "plain"}
            best = max(speedup, key=lambda name: speedup[name].low)
            record = NarrowConv(layer, channels, best if speedup[best].low > 1 else "plain",
                                speedup={k: [r.ratio, r.low, r.high, r.pairs] for k, r in speedup.items()}, batch=batch)
        else:
            record = NarrowConv(layer, channels, mode if mode in forms else "plain")
        if record.choice != "plain":
            _apply(model, c, forms[record.choice], record.choice)
        records.append(record)
    if records:
        entry = onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps([asdict(r) for r in records]))
        model.metadata_props.append(entry)
    return records


def recorded(model: onnx.ModelProto) -> list[NarrowConv]:
    """The decisions :func:`relayout_narrow_convs` recorded in ``model``'s metadata."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return [NarrowConv(**r) for r in json.loads(entry.value)]
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
        if node.op_type not in ("Conv", "QLinearConv") or attrs.get("group", 1) != 1 or "auto_pad" in attrs:
            continue
        if node.op_type == "QLinearConv":
            codes, x_scale, x_zero, weight, w_scale, w_zero = node.input[:6]
            w_dq = None
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
            continue  # the timing model and the rewrites need every grid as a constant
        found.append(_Candidate(node, codes, x_scale, x_zero, weight, w_scale, w_zero, shape[1:], w_dq))
    return found


def _padded(c: _Candidate, weight: np.ndarray) -> _Rewrite:
    channels = -(-weight.shape[1] // ALIGNMENT) * ALIGNMENT
    extra = np.zeros((weight.shape[0], channels - weight.shape[1], *weight.shape[2:]), weight.dtype)
    pads = np.array([0, 0, 0, 0, 0, channels - weight.shape[1], 0, 0], np.int64)
    return _Rewrite([("Pad", {"mode": "constant"}, [pads])], np.concatenate([weight, extra], axis=1), c.attrs())


def _space_to_depth(c: _Candidate, weight: np.ndarray) -> _Rewrite | None:
    """A stride-2 convolution as a stride-1 one over 2 x 2 blocks (SpaceToDepth), or None where it does not apply.

    Per spatial axis, with input size n, kernel k, padding (b, e): output o = (n + b + e - k) // 2 + 1. Pad
    by an even amount b' = b + b % 2 in front and tap t of output i reads position 2 (i - b'/2) + s + t with
    s = b' - b, that is block i - b'/2 + (s + t) // 2, phase (s + t) % 2: a kernel of ceil((k + s) / 2)
    blocks, the taps at offset s, over the blocks padded by b'/2 in front and what completes o behind.
    """
    a = c.attrs()
    if a["strides"] != [2, 2] or a["dilations"] != [1, 1] or any(n % 2 for n in c.shape[1:]):
        return None
    kernel, begin, tail = [], [], []
    for axis in range(2):
        n, k, b, e = c.shape[1 + axis], a["kernel_shape"][axis], a["pads"][axis], a["pads"][axis + 2]
        out = (n + b + e - k) // 2 + 1
        shift = b % 2
        blocks = -(-(k + shift) // 2)
        front = (b + shift) // 2
        back = out + blocks - 1 - front - n // 2
        if back < 0:
            return None
        kernel.append((blocks, shift, k))
        begin.append(front)
        tail.append(back)
    (bh, sh, kh), (bw, sw, kw) = kernel
    m, ch = weight.shape[:2]
    wide = np.zeros((m, ch, 2 * bh, 2 * bw), weight.dtype)
    wide[:, :, sh:sh + kh, sw:sw + kw] = weight
    # SpaceToDepth puts phase (p, q) of channel c at channel (2 p + q) * C + c
    blocked = wide.reshape(m, ch, bh, 2, bw, 2).transpose(0, 3, 5, 1, 2, 4).reshape(m, 4 * ch, bh, bw)
    attrs = a | {"kernel_shape": [bh, bw], "strides": [1, 1], "pads": [begin[0], begin[1], tail[0], tail[1]]}
    return _Rewrite([("SpaceToDepth", {"blocksize": 2}, [])], np.ascontiguousarray(blocked), attrs)


def _pre_nodes(form: _Rewrite, codes: str, x_zero: str, stem: str) -> tuple[list, list, str]:
    """The rewrite's nodes before the convolution: (nodes, initializers, the new codes' name)."""
    nodes, inits = [], []
    for i, (op, attrs, constants) in enumerate(form.pre):
        names = []
        for j, value in enumerate(constants):
            inits.append(numpy_helper.from_array(value, f"{stem}_{op.lower()}{i}_{j}"))
            names.append(inits[-1].name)
        inputs = [codes, *names] + ([x_zero] if op == "Pad" else [])  # Pad's value: the zero point
        out = f"{stem}_{op.lower()}{i}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        codes = out
    return nodes, inits, codes


def _apply(model: onnx.ModelProto, c: _Candidate, form: _Rewrite, name: str) -> None:
    """The rewrite in place; other readers of the codes unchanged."""
    graph = model.graph
    stem = f"{c.weight}_{name.replace('-', '_')}"
    nodes, inits, codes = _pre_nodes(form, c.codes, c.x_zero, stem)
    inits.append(numpy_helper.from_array(form.weight, f"{stem}_w"))
    if c.conv.op_type == "QLinearConv":
        c.conv.input[0], c.conv.input[3] = codes, f"{stem}_w"
    else:
        x_dq = helper.make_node("DequantizeLinear", [codes, c.x_scale, c.x_zero], [f"{stem}_x"])
        new_w_dq = helper.make_node("DequantizeLinear", [f"{stem}_w", *c.w_dq.input[1:]], [f"{stem}_wf"],
                                    axis=next((helper.get_attribute_value(a) for a in c.w_dq.attribute
                                               if a.name == "axis"), 1))
        nodes += [x_dq, new_w_dq]
        c.conv.input[0], c.conv.input[1] = f"{stem}_x", f"{stem}_wf"
    del c.conv.attribute[:]
    c.conv.attribute.extend(helper.make_attribute(k, v) for k, v in form.attrs.items())
    graph.initializer.extend(inits)
    at = list(graph.node).index(c.conv)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)


def _layer_model(model: onnx.ModelProto, c: _Candidate, form: _Rewrite, batch: int) -> onnx.ModelProto:
    """The layer alone, as onnxruntime will run it: uint8 codes [N, C, H, W] -> (rewrite) -> QLinearConv."""
    nodes, inits, codes = _pre_nodes(form, "codes", c.x_zero, "layer")
    inits += [_initializer(model, name) for name in (c.x_scale, c.x_zero, c.w_scale, c.w_zero)]
    inits += [numpy_helper.from_array(form.weight, "w"), numpy_helper.from_array(np.array(1.0, np.float32), "y_scale"),
              numpy_helper.from_array(np.array(0, np.uint8), "y_zero")]
    nodes.append(helper.make_node("QLinearConv", [codes, c.x_scale, c.x_zero, "w", c.w_scale, c.w_zero, "y_scale",
                                                  "y_zero"], ["y"], **form.attrs))
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("codes", TensorProto.UINT8,
                                                                            [batch, *c.shape])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _whole_model_speedup(model: onnx.ModelProto, c: _Candidate, form: _Rewrite, name: str, threads: int,
                         batch: int) -> PairedRatio:
    """The model's time plain over its time with ``form`` (above 1: the rewrite is faster), head to head."""

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    _apply(rewritten, next(x for x in _candidates(rewritten) if x.weight == c.weight), form, name)
    # quietly: the replaced weight, now unread, is left for onnxruntime to drop
    plain, faster = (in_memory_session(m, threads) for m in (model, rewritten))
    feed = _feed(model, batch)
    return head_to_head_resolved(lambda: faster.run(None, feed), lambda: plain.run(None, feed), PAIRS, MAX_PAIRS)


def _feed(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    """Inputs for timing the whole model: ``batch`` samples of each input's fixed shape (values do not matter)."""
    rng = np.random.default_rng(0)
    feed = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim[1:]
        if any(not d.HasField("dim_value") for d in dims):
            raise QCompileError(f"input {value.name} has a dynamic axis past the batch; `measure` times the model "
                                "at one fixed shape", hint="use --onnx-narrow-convs auto, which times the layer alone")
        shape = (batch, *(d.dim_value for d in dims))
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            feed[value.name] = rng.standard_normal(shape, dtype=np.float32)
        else:
            feed[value.name] = np.zeros(shape, helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
    return feed


def _time_forms(model: onnx.ModelProto, c: _Candidate, forms: dict[str, _Rewrite], threads: int,
                batch: int) -> dict[str, float]:
    """Median ms of each form of the layer, interleaved so that all see the same machine."""

    sessions = {name: in_memory_session(_layer_model(model, c, form, batch), threads) for name, form in forms.items()}
    feed = {"codes": np.random.default_rng(0).integers(0, 256, (batch, *c.shape), dtype=np.uint8)}
    start = time.perf_counter()
    for session in sessions.values():  # warm-up, and a first measure of how many runs fit in the budget
        for _ in range(3):
            session.run(None, feed)
    each = (time.perf_counter() - start) / (3 * len(sessions))
    runs = int(min(50, max(5, 0.15 / max(each, 1e-6))))  # about 0.15 s per form
    names = list(sessions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            sessions[name].run(None, feed)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}
