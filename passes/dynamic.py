"""``dynamic``: int8 weights, activations quantized on the fly (Linear, LSTM, GRU); int8 embedding tables.

requires: ``lowered``    provides: ``converted``

What ``torch.ao.quantization.quantize_dynamic`` does, on the graph: each
Linear (with a fused ReLU where ``fuse`` ran first), LSTM and GRU gets int8
weights (min/max, symmetric, per tensor unless ``per-channel=true``); at run
time its input is quantized with a range measured on that very input, so no
calibration data is needed. Before and after::

    %fc = linear(%flatten, $fc.{weight,bias}) : f32[1,10] {in_features=512, out_features=10}

    %fc = linear(%flatten, $fc.{weight,bias}) : f32[1,10] {in_features=512, out_features=10,
          target='torch.ao.nn.quantized.dynamic.Linear'}  # mode=dynamic | weight: int8 scale=0.00312 zp=0

Embedding tables (``nn.Embedding``, ``F.embedding``, torch.export's
``aten.embedding``, and ``nn.EmbeddingBag``) get uint8 rows with a float
scale and offset per row, as torch.ao's ``float_qparams_weight_only_qconfig``
gives them: a quarter of the float table's size, and rows within half a step
of the float ones. Sum bags become torch.ao's int8 ``EmbeddingBag``; mean
and max bags, which that module would sum, and bags that skip a padding id,
which it would not, :class:`qcompile.nn.int8_bags.Int8EmbeddingBag`. Their output is float, so
the layers that read them are unchanged. After a static pipeline,
``--passes ptq,dynamic{ops=embedding}`` adds only that.

Options:
    ops: Which ops to quantize (``linear``, ``lstm``, ``gru``, ``embedding``, ``embedding_bag``).
    per_channel: One weight scale per output channel (Linear only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.backends.torch_ao.tensors import quantize_tensor
from qcompile.ir.graph import Graph
from qcompile.ir.modules import ctor_defaults
from qcompile.ir.node import Node, NodeKind
from qcompile.ir.quant_types import ObserverSpec
from qcompile.ir.targets import resolve_target
from qcompile.pipeline import Pass, PassContext, PassResult, register_pass
from qcompile.quant.embedding import embedding_as_module, quantize_rows, rows_as_read
from qcompile.quant.observers import make_observer
from qcompile.quant.qparams import qparams_from_range

_TARGETS = {
    ("linear", None): "torch.ao.nn.quantized.dynamic.Linear",
    ("linear", "relu"): "torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU",
    ("lstm", None): "torch.ao.nn.quantized.dynamic.LSTM",
    ("gru", None): "torch.ao.nn.quantized.dynamic.GRU",
    ("embedding", None): "torch.ao.nn.quantized.Embedding",
    ("embedding_bag", None): "torch.ao.nn.quantized.EmbeddingBag",
}
ANY_MODE_BAG = "qcompile.nn.int8_bags.Int8EmbeddingBag"  # the same int8 rows in mean and max mode, padding skipped
OPS = ("linear", "lstm", "gru", "embedding", "embedding_bag")
TABLES = ("embedding", "embedding_bag")


def _needs_any_mode_bag(node: Node) -> bool:
    """A bag torch.ao's int8 ``EmbeddingBag`` would get wrong: it sums whatever its mode says, over every id."""
    return node.op == "embedding_bag" and (node.attrs.get("mode", "mean") != "sum"
                                           or node.attrs.get("padding_idx") is not None)


def _private_param(graph: Graph, node: Node, key: str) -> torch.Tensor:
    """``node``'s parameter ``key``, first copied under a name of its own if other nodes read it too.

    Quantizing a weight in place must not change it for the others: a table
    tied to an output projection gets one int8 copy per reader, each on the
    grid its use needs.
    """
    name = node.params[key]
    shared = any(other is not node and (name in other.params.values()
                                        or (other.kind == NodeKind.PARAM and other.target == name))
                 for other in graph.nodes())
    if shared:
        node.params[key] = graph.add_param(f"{node.source.module_path or node.name}.{key}", graph.params[name].clone())
    return graph.params[node.params[key]]


def _zero_biases(graph: Graph, node: Node) -> None:
    """Zero biases for an LSTM / GRU built without them: torch's int8 modules require biases, and adding
    zeros changes nothing."""
    for key in [k for k in node.params if k.startswith("weight_")]:
        rows = graph.params[node.params[key]].shape[0]
        bias_key = key.replace("weight_", "bias_", 1)
        node.params[bias_key] = graph.add_param(f"{node.source.module_path or node.name}.{bias_key}", torch.zeros(rows))
    node.attrs["bias"] = True


@register_pass
@dataclass(frozen=True)
class Dynamic(Pass):
    """Dynamic quantization of Linear, LSTM and GRU (int8 weights, activations at run time), and embeddings."""

    name = "dynamic"
    requires = ("lowered",)
    provides = ("converted",)  # may follow convert: ptq,dynamic{ops=embedding}

    ops: tuple[str, ...] = OPS
    per_channel: bool = False

    def validate(self) -> None:
        unknown = set(self.ops) - set(OPS)
        if unknown:
            raise ValueError(f"dynamic quantization covers {', '.join(OPS)}, not {sorted(unknown)}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        engine = ctx.quant_config.engine
        torch.backends.quantized.engine = engine
        counts: dict[str, int] = {}
        if "embedding" in self.ops:
            for node in graph.find(op="embedding"):
                if node.kind != NodeKind.MODULE and node.quant.mode is None:
                    embedding_as_module(graph, node)
        for node in graph.find(kind=NodeKind.MODULE):
            if node.op not in self.ops or node.quant.mode is not None:
                continue
            if ctx.quant_config.qconfig_for(node) is None:
                ctx.explain(f"%{node.name} stays float: skipped by the config")
                continue
            act = node.act
            if (node.op, act) not in _TARGETS:
                ctx.explain(f"%{node.name}: no dynamic kernel for {node.op} with a fused {act}")
                continue
            node.target = ANY_MODE_BAG if _needs_any_mode_bag(node) else _TARGETS[(node.op, act)]
            if node.op == "linear":
                self._quantize_linear_weight(graph, node)
            elif node.op in ("lstm", "gru") and not node.attrs.get("bias", True):
                _zero_biases(graph, node)
            elif node.op in TABLES:
                _private_param(graph, node, "weight")
                graph.params[node.params["weight"]] = quantize_rows(rows_as_read(graph.param(node, "weight"),
                                                                                 node.attrs))
                if node.attrs.get("max_norm") is not None:  # applied to the rows just quantized
                    node.attrs["max_norm"] = None
                    ctx.explain(f"%{node.name}: max_norm applied to every row before quantizing")
            accepted = ctor_defaults(resolve_target(node.target))
            node.attrs = {k: v for k, v in node.attrs.items() if k in accepted}
            node.act = None  # the dynamic module applies it (LinearReLU)
            node.quant.mode = "dynamic"
            counts[node.op] = counts.get(node.op, 0) + 1
        if counts:
            graph.attrs.update(backend="native", engine=engine)
            graph.remove_unused_params()  # float weights that each quantized node copied (tied ones)
        return PassResult(bool(counts), counts)

    def _quantize_linear_weight(self, graph: Graph, node) -> None:
        spec = ObserverSpec("minmax", dtype="int8", symmetric=True, per_channel=self.per_channel, axis=0)
        observer = make_observer(spec)
        weight = _private_param(graph, node, "weight")
        observer.update(weight)
        stats = observer.stats()
        q = qparams_from_range(stats.lo, stats.hi, spec, 0 if self.per_channel else None)
        node.quant.weight_observer, node.quant.weight_stats, node.quant.weight_qparams = spec, stats, q
        node.quant.float_weight = weight.detach()  # for exports that quantize it again (fused ONNX kernels)
        graph.params[node.params["weight"]] = quantize_tensor(weight, q)
        # nnqd.Linear spells its bias flag "bias_"; LinearReLU "bias"
        flag = "bias_" if node.target.endswith("dynamic.Linear") else "bias"
        node.attrs = {"in_features": node.attrs["in_features"], "out_features": node.attrs["out_features"],
                      flag: "bias" in node.params}
        if "bias" not in node.params:
            node.params["bias"] = graph.add_param(f"{node.source.module_path or node.name}.bias",
                                                  torch.zeros(node.attrs["out_features"]))
            node.attrs[flag] = True
