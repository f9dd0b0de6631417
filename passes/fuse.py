"""``fuse``: fold BatchNorm into the preceding conv/linear and fuse ReLU / ReLU6.

requires: ``lowered``    provides: ``fused``

Patterns, each optional part in brackets::

    conv{1,2,3}d [-> batch_norm{1,2,3}d] [-> relu | relu6]
    linear       [-> batch_norm1d]       [-> relu | relu6]
    cat(conv, conv, ...) over channels   -> batch_norm  [-> relu | relu6]
    add | mul (of two tensors)           -> relu

BatchNorm folds into the weights (W' = W * g / sqrt(var + eps),
b' = (b - mean) * g / sqrt(var + eps) + beta); the activation becomes the
node's typed ``act`` field (``Node.act``, printed among its attributes), and
the folded norm's shift and scale stay as the node's ``norm_prior`` (what
the output's distribution was trained to be, for data-free passes such as
``equalize``). Before and after, on ResNet-18::

    %conv1 = conv2d(%x, $conv1.weight) : f32[1,64,112,112] {bias=False, ...}
    %bn1   = batch_norm2d(%conv1, $bn1.{weight,bias,running_mean,running_var,num_batches_tracked}) : ...
    %relu  = relu(%bn1) : f32[1,64,112,112]

    %conv1 = conv2d(%x, $conv1.weight, $conv1.bias) : f32[1,64,112,112] {act='relu', ...}

A norm after a concatenation of convs over channels (MixNet's mixed
convolution: a conv per group of channels, concatenated, one norm) folds
slice by slice into the convs that make its channels, and an activation
after it fuses into each of them (``relu(cat(a, b)) = cat(relu(a), relu(b))``).
``nn.Identity()`` modules go first: timm's norm layers put one between the
norm and its activation. Before and after, on timm's MixNet-S::

    %blocks_1_0_conv_pw_0 = conv2d(%getitem, $blocks.1.0.conv_pw.0.weight) : f32[1,48,112,112] {bias=False, ...}
    %blocks_1_0_conv_pw_1 = conv2d(%getitem_1, $blocks.1.0.conv_pw.1.weight) : f32[1,48,112,112] {bias=False, ...}
    %cat                  = cat([%blocks_1_0_conv_pw_0, %blocks_1_0_conv_pw_1], 1) : f32[1,96,112,112]
    %blocks_1_0_bn1       = batch_norm2d(%cat, $blocks.1.0.bn1.{weight,bias,running_mean,...}) : f32[1,96,112,112]
    %blocks_1_0_bn1_drop  = identity(%blocks_1_0_bn1) : f32[1,96,112,112]
    %blocks_1_0_bn1_act   = relu(%blocks_1_0_bn1_drop) : f32[1,96,112,112]

    %blocks_1_0_conv_pw_0 = conv2d(%getitem, $blocks.1.0.conv_pw.0.{weight,bias}) : f32[1,48,112,112] {act='relu', ...}
    %blocks_1_0_conv_pw_1 = conv2d(%getitem_1, $blocks.1.0.conv_pw.1.{weight,bias}) : f32[1,48,112,112] {act='relu', ...}
    %cat                  = cat([%blocks_1_0_conv_pw_0, %blocks_1_0_conv_pw_1], 1) : f32[1,96,112,112]

A candidate is left alone when the intermediate value has other readers, the
weights are shared with another node, or the conv already carries an
activation; with ``--debug`` the reason is listed for every candidate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from qcompile.ir.graph import Graph
from qcompile.ir.node import Node, NodeKind, Ref
from qcompile.ir.types import TensorType
from qcompile.pipeline import FLOAT_GRAPH_ONLY, Pass, PassContext, PassResult, register_pass

_WEIGHTED = {"conv1d", "conv2d", "conv3d", "linear"}
_NORMS = {"batch_norm1d", "batch_norm2d", "batch_norm3d"}
_ACTIVATIONS = {"relu", "relu6"}


def _sole_consumer(graph: Graph, node: Node) -> tuple[Node | None, str]:
    """The only node reading ``node``, reading it as its only input; else a reason."""
    uses = graph.uses(node)
    if len(uses) != 1:
        return None, f"its output has {len(uses)} readers"
    user, port = uses[0]
    if len(graph.inputs(user)) != 1 or port != 0:
        return None, f"%{user.name} takes other inputs too"
    return user, ""


def _is_activation(node: Node) -> bool:
    """A plain ReLU/ReLU6: the module, ``F.relu``/``torch.relu`` or ``x.relu()``."""
    if node.op not in _ACTIVATIONS:
        return False
    extra = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    return node.args == (Ref(0),) and not extra and node.kind in (
        NodeKind.MODULE, NodeKind.FUNCTION, NodeKind.METHOD
    )


def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, bn_state: dict,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of a conv/linear with the following BatchNorm folded in."""
    mean, var = bn_state["running_mean"], bn_state["running_var"]
    gamma = bn_state.get("weight")
    beta = bn_state.get("bias")
    gamma = torch.ones_like(mean) if gamma is None else gamma
    beta = torch.zeros_like(mean) if beta is None else beta
    inv_std = torch.rsqrt(var + eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    new_weight = (weight * (gamma * inv_std).reshape(shape)).detach().clone()
    bias = torch.zeros_like(mean) if bias is None else bias
    new_bias = ((bias - mean) * inv_std * gamma + beta).detach().clone()
    return new_weight, new_bias


@register_pass
@dataclass(frozen=True)
class Fuse(Pass):
    """Fold BatchNorm into conv/linear weights and fuse ReLU/ReLU6 activations.

    Options:
        batch_norm: Fold BatchNorm layers.
        activations: Activations to fuse into the preceding conv/linear
            (``relu``, ``relu6``; empty for none). PyTorch's quantization does not fuse ReLU6;
            ``fuse{activations=relu}`` reproduces its graphs.
        binary_relu: Fuse a ReLU into a preceding add/mul of two tensors.
    """

    name = "fuse"
    requires = ("lowered",)
    provides = ("fused",)
    forbids = FLOAT_GRAPH_ONLY

    batch_norm: bool = True
    activations: tuple[str, ...] = ("relu", "relu6")
    binary_relu: bool = True

    def validate(self) -> None:
        unknown = set(self.activations) - _ACTIVATIONS
        if unknown:
            raise ValueError(f"cannot fuse {sorted(unknown)}; choose from {sorted(_ACTIVATIONS)}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        counts: dict[str, int] = {}
        identities = _drop_identities(graph)
        if identities:
            counts["identity removed"] = identities
        # how many nodes read each parameter (fusion never adds readers to existing ones)
        readers = Counter(p for n in graph.nodes() for p in set(n.params.values()))
        for node in graph.find(kind=NodeKind.MODULE):
            if node.op in _WEIGHTED and node in graph:
                pattern = self._fuse_from(graph, node, ctx, readers)
                if pattern:
                    counts[pattern] = counts.get(pattern, 0) + 1
        if self.binary_relu:
            for node in graph.nodes():
                if node.op in ("add", "mul") and node.kind != NodeKind.MODULE and _two_tensor_operands(graph, node):
                    pattern = self._fuse_activation(graph, node, ("relu",), ctx)
                    if pattern:
                        counts[pattern] = counts.get(pattern, 0) + 1
        for node in graph.nodes():
            if self.batch_norm and node.op in _NORMS and node in graph:
                pattern = self._fold_after_cat(graph, node, ctx, readers)
                if pattern:
                    counts[pattern] = counts.get(pattern, 0) + 1
        for node in graph.nodes():
            if node.op in _NORMS:
                ctx.explain(f"%{node.name} ({node.op}) stays: no conv/linear feeds it alone")
        return PassResult(modified=bool(counts), stats=counts)

    def _fuse_from(self, graph: Graph, node: Node, ctx: PassContext, readers: Counter) -> str:
        parts = [node.op]
        if any(readers[name] > 1 for name in node.params.values()):
            ctx.explain(f"%{node.name}: its weights are shared with another node")
            return ""
        next_node, reason = _sole_consumer(graph, node)
        if next_node is not None and self.batch_norm and next_node.op in _NORMS:
            if next_node.kind != NodeKind.MODULE or next_node.attrs.get("track_running_stats") is False:
                ctx.explain(f"%{node.name} + %{next_node.name}: the norm has no running statistics")
            elif node.act:
                ctx.explain(f"%{node.name} + %{next_node.name}: an activation is already fused")
            else:
                self._fold(graph, node, next_node)
                parts.append(next_node.op)
                next_node, reason = _sole_consumer(graph, node)
        activation = self._fuse_activation(graph, node, self.activations, ctx) if next_node else ""
        if activation:
            parts.append(activation.rpartition("+")[2])
        elif len(parts) == 1:
            follower = f"next is %{next_node.name} ({next_node.op})" if next_node else reason
            ctx.explain(f"%{node.name} ({node.op}) stays unfused: {follower}")
        return "+".join(parts) if len(parts) > 1 else ""

    def _fuse_activation(self, graph: Graph, node: Node, allowed: tuple[str, ...], ctx: PassContext) -> str:
        """Fold the sole consumer of ``node`` into it if it is an allowed activation."""
        next_node, _ = _sole_consumer(graph, node)
        if next_node is None or not _is_activation(next_node) or next_node.op not in allowed:
            return ""
        if node.act:
            ctx.explain(f"%{node.name} + %{next_node.name}: an activation is already fused")
            return ""
        node.act = next_node.op
        graph.replace_all_uses(next_node, node)
        graph.erase(next_node)
        return f"{node.op}+{next_node.op}"

    def _fold_after_cat(self, graph: Graph, bn: Node, ctx: PassContext, readers: Counter) -> str:
        """Fold a norm after a channel concatenation of convs into them, a slice each; then the activation."""
        cat = graph.inputs(bn)[0]
        if cat.op != "cat" or bn.kind != NodeKind.MODULE or bn.attrs.get("track_running_stats") is False:
            return ""
        convs = graph.inputs(cat)
        dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
        channels = sum(graph.param(c, "weight").shape[0] for c in convs if c.op in _WEIGHTED and "weight" in c.params)
        foldable = (_sole_consumer(graph, cat)[0] is bn and isinstance(dim, int) and isinstance(cat.type, TensorType)
                    and dim % len(cat.type.shape) == 1 and len({c.name for c in convs}) == len(convs)
                    and all(c.op in _WEIGHTED and c.kind == NodeKind.MODULE and not c.act
                            and len(graph.uses(c)) == 1 and not any(readers[p] > 1 for p in c.params.values())
                            for c in convs)
                    and channels == graph.param(bn, "running_mean").numel())
        if not foldable:
            ctx.explain(f"%{bn.name} stays: %{cat.name} is not a channel concatenation of convs read by it alone")
            return ""
        bn_state = {key: graph.params[name] for key, name in bn.params.items()}
        start = 0
        for conv in convs:
            width = graph.param(conv, "weight").shape[0]
            part = {k: v[start:start + width] if v.dim() == 1 else v for k, v in bn_state.items()}
            self._fold_state(graph, conv, part, bn.attrs["eps"])
            start += width
        graph.replace_all_uses(bn, cat)
        graph.erase(bn)
        act, _ = _sole_consumer(graph, cat)
        if act is None or not _is_activation(act) or act.op not in self.activations:
            return f"cat+{bn.op}"
        for conv in convs:
            conv.act = act.op
        graph.replace_all_uses(act, cat)
        graph.erase(act)
        return f"cat+{bn.op}+{act.op}"

    def _fold(self, graph: Graph, node: Node, bn: Node) -> None:
        self._fold_state(graph, node, {key: graph.params[name] for key, name in bn.params.items()}, bn.attrs["eps"])
        graph.replace_all_uses(bn, node)
        graph.erase(bn)

    def _fold_state(self, graph: Graph, node: Node, bn_state: dict, eps: float) -> None:
        """Fold a norm's statistics and affine (one entry per output channel of ``node``) into its weights."""
        weight, bias = fold_batch_norm(graph.param(node, "weight"), graph.param(node, "bias"), bn_state, eps)
        graph.params[node.params["weight"]] = weight
        node.norm_prior = _norm_prior(bn_state, weight.shape[0])
        if "bias" in node.params:
            graph.params[node.params["bias"]] = bias
        else:
            node.params["bias"] = graph.add_param(f"{node.source.module_path or node.name}.bias", bias)
            node.attrs["bias"] = True


def _norm_prior(bn_state: dict, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per channel of a BatchNorm's output as its training sees it: its shift and |scale|."""
    gamma, beta = bn_state.get("weight"), bn_state.get("bias")
    std = torch.ones(channels) if gamma is None else gamma.detach().abs().clone()
    mean = torch.zeros(channels) if beta is None else beta.detach().clone()
    return mean, std


def _drop_identities(graph: Graph) -> int:
    """Erase ``nn.Identity()`` modules, which stand between a norm and its activation in timm's blocks."""
    dropped = 0
    for node in graph.nodes():
        if node.op == "identity" and node.kind == NodeKind.MODULE and node.args == (Ref(0),) and not node.kwargs:
            graph.replace_all_uses(node, graph.inputs(node)[0])
            graph.erase(node)
            dropped += 1
    return dropped


def _two_tensor_operands(graph: Graph, node: Node) -> bool:
    inputs = graph.inputs(node)
    return (len(inputs) == 2 and node.args == (Ref(0), Ref(1)) and not node.kwargs
            and all(isinstance(i.type, TensorType) for i in inputs))
