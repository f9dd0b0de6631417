"""How often onnxruntime's fused int8 convolutions miss their own exact result, layer by layer, on real inputs.

    python benchmarks/ort_exactness.py [--models resnet18 mobilenet_v2] [--images 8] [--json out.json]

On a CPU with AVX2 but no VNNI, onnxruntime's u8 x s8 kernels add pairs of
byte products in saturating int16 (``benchmarks/int8_peak.py`` shows it on a
constructed input). This measures what that costs on real data, for
onnxruntime's own ``quantize_static`` model (full-range uint8 activations)
and qcompile's QDQ export (``x86`` preset: activation grids of 128 steps, as
torch.ao does on x86, except the ReLU6 grids ``convert`` widens to [0, 6] over
255 codes, whose readers get 7-bit weights).

For each convolution and Gemm of a QDQ model, the real input codes (the
bundled photos, evaluation crops) are captured from the model run with
graph optimizations off. Then the layer alone, as a one-layer QDQ model with
the layer's own weights, bias and grids, runs twice on those codes:
optimizations off (Dequantize, float convolution, Quantize: the exact result
up to float rounding) and on (fused into ``QLinearConv`` / ``QGemm``,
onnxruntime's integer kernels). Legitimate rounding differences are one
step; an output code more than one step away is an accumulator the integer
kernel got wrong. qcompile writes linear layers as MatMul + Add, which this
does not take apart: its classifier is the one layer it leaves out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.int8_latency import NATIVE_PTQ, build, onnxruntime_int8, photo_split, quiet  # noqa: E402
from qcompile.frontend.lower import lower  # noqa: E402
from qcompile.onnx.export import export_onnx  # noqa: E402
from qcompile.pipeline import PassContext, run_pipeline  # noqa: E402
from qcompile.quant.config import QuantConfig  # noqa: E402


def session(model: onnx.ModelProto, optimize: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def consumers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if name in node.input]


def quantized_layers(model: onnx.ModelProto) -> list[dict]:
    """Each Conv / Gemm / MatMul between DequantizeLinear inputs and a QuantizeLinear output, with its grids.

    The output grid is the first QuantizeLinear downstream through Relu / Clip (which the fused kernels
    absorb); layers whose input or weights are not dequantized codes are left out.
    """
    made_by, init = producers(model), {i.name: i for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        dq = [made_by.get(name) for name in node.input]
        if not all(d is not None and d.op_type == "DequantizeLinear" for d in dq[:2]):
            continue
        if dq[1].input[0] not in init:
            continue
        after = consumers(model, node.output[0])
        while len(after) == 1 and after[0].op_type in ("Relu", "Clip"):
            after = consumers(model, after[0].output[0])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        layers.append(dict(node=node, x=dq[0], w=dq[1], bias=dq[2] if len(dq) > 2 else None, y=after[0]))
    return layers


def one_layer_model(model: onnx.ModelProto, layer: dict, x_shape: list[int]) -> onnx.ModelProto:
    """The layer alone: uint8 codes in, DequantizeLinear, the float op, QuantizeLinear, uint8 codes out."""
    init = {i.name: i for i in model.graph.initializer}
    made_by = producers(model)

    def constant(name: str) -> onnx.TensorProto:
        if name in init:
            return init[name]
        node = made_by[name]  # a Constant node (qcompile writes initializers; others may not)
        value = next(a for a in node.attribute if a.name == "value").t
        copy = onnx.TensorProto()
        copy.CopyFrom(value)
        copy.name = name
        return copy

    nodes, needed = [], []
    for role in ("x", "w", "bias"):
        dq = layer[role]
        if dq is None:
            continue
        inputs = ["codes" if role == "x" else dq.input[0], *dq.input[1:]]
        needed += [n for n in dq.input[0 if role != "x" else 1:] if n]
        nodes.append(helper.make_node("DequantizeLinear", inputs, [dq.output[0]], axis=_axis(dq)))
    op = layer["node"]
    nodes.append(helper.make_node(op.op_type, list(op.input), ["float_out"], name=op.name))
    nodes[-1].attribute.extend(op.attribute)
    y = layer["y"]
    nodes.append(helper.make_node("QuantizeLinear", ["float_out", *y.input[1:]], ["out"], axis=_axis(y)))
    needed += [n for n in y.input[1:] if n]
    x_zero = layer["x"].input[2] if len(layer["x"].input) > 2 else ""
    in_type = constant(x_zero).data_type if x_zero else TensorProto.UINT8
    out_type = constant(y.input[2]).data_type if len(y.input) > 2 and y.input[2] else TensorProto.UINT8
    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info("codes", in_type, x_shape)],
        [helper.make_tensor_value_info("out", out_type, None)], [constant(n) for n in dict.fromkeys(needed)])
    one = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    one.ir_version = 10
    return one


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def measure(path: Path, images: np.ndarray) -> list[dict]:
    """Per layer: output elements, and those more than one step from the exact result."""
    model = onnx.load(str(path))
    layers = quantized_layers(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for layer in layers:  # capture every layer's input codes
        probe.graph.output.append(onnx.ValueInfoProto(name=layer["x"].input[0]))
    reference = session(probe, optimize=False)
    names = [o.name for o in reference.get_outputs()][1:]
    captured = dict(zip(names, reference.run(None, {reference.get_inputs()[0].name: images})[1:], strict=True))
    rows = []
    for layer in layers:
        codes = captured[layer["x"].input[0]]
        one = one_layer_model(model, layer, list(codes.shape))
        exact = session(one, optimize=False).run(None, {"codes": codes})[0].astype(np.int32)
        fused = session(one, optimize=True).run(None, {"codes": codes})[0].astype(np.int32)
        wrong = np.abs(fused - exact) > 1
        rows.append(dict(layer=layer["node"].name or layer["node"].output[0], op=layer["node"].op_type,
                         elements=int(exact.size), wrong=int(wrong.sum()),
                         max_steps=int(np.abs(fused - exact).max()),
                         input_codes_above_127=float((codes.astype(np.int32) > 127).mean())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()
    quiet()
    calib, evaluation = photo_split()
    images = evaluation[:args.images].numpy()
    results = []
    print("| model | ONNX model | layers | layers with wrong outputs | output elements wrong (> 1 step) | max steps "
          "| input codes above 127 |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model = build(name)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            graph = lower(model, (calib[0][0][:1],))
            run_pipeline(graph, NATIVE_PTQ, PassContext(calib_data=calib, quant_config=QuantConfig.from_preset("x86")))
            paths = {"qcompile export (x86 preset)": export_onnx(graph, tmp / "qcompile.onnx")}
            onnxruntime_int8(model, calib, tmp, 1)
            paths["onnxruntime quantize_static"] = tmp / "int8.onnx"
            for label, path in paths.items():
                rows = measure(path, images)
                elements, wrong = sum(r["elements"] for r in rows), sum(r["wrong"] for r in rows)
                above = max(r["input_codes_above_127"] for r in rows)
                results.append(dict(model=name, onnx=label, layers=rows))
                print(f"| {name} | {label} | {len(rows)} | {sum(r['wrong'] > 0 for r in rows)} | "
                      f"{wrong} of {elements} ({wrong / elements:.3%}) | {max(r['max_steps'] for r in rows)} | "
                      f"up to {above:.2%} per layer |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
