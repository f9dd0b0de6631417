"""Builders for torch modules whose state is not a plain set of tensors.

The graph keeps plain tensors (an int8 weight, a float bias, a scale, a zero
point); these functions put them into modules that pack their weights, or
that take their settings in the constructor rather than the state dict.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.intrinsic.quantized.dynamic as nniqd
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd

from qcompile.ir.modules import register_builder
from qcompile.nn.int8_bags import Int8EmbeddingBag


@register_builder(nnq.Quantize, nnq.DeQuantize)
def _constructor_only(cls: type, kwargs: dict[str, Any], state: dict[str, torch.Tensor]):
    return cls(**kwargs)


@register_builder(nnq.Linear, nniq.LinearReLU)
def _quantized_linear(cls: type, kwargs: dict[str, Any], state: dict[str, torch.Tensor]):
    module = cls(**kwargs)
    module.set_weight_bias(state["weight"], state.get("bias"))
    module.scale = float(state["scale"])
    module.zero_point = int(state["zero_point"])
    return module


@register_builder(nnqd.Linear, nniqd.LinearReLU)
def _dynamic_linear(cls: type, kwargs: dict[str, Any], state: dict[str, torch.Tensor]):
    module = cls(**kwargs)
    module.set_weight_bias(state["weight"], state.get("bias"))
    return module


@register_builder(nnq.Embedding, nnq.EmbeddingBag, Int8EmbeddingBag)
def _quantized_embedding(cls: type, kwargs: dict[str, Any], state: dict[str, torch.Tensor]):
    module = cls(**kwargs)
    module.set_weight(state["weight"])
    return module


@register_builder(nnqd.LSTM, nnqd.GRU)
def _dynamic_rnn(cls: type, kwargs: dict[str, Any], state: dict[str, torch.Tensor]):
    """Dynamic LSTM/GRU from float weights (the graph keeps them; int8 packing happens here)."""
    from torch import nn
    from torch.ao.quantization import default_dynamic_qconfig

    float_cls = nn.LSTM if cls is nnqd.LSTM else nn.GRU
    rnn = float_cls(**{k: v for k, v in kwargs.items() if k != "dtype"})
    rnn.load_state_dict(state)
    rnn.qconfig = default_dynamic_qconfig
    return cls.from_float(rnn)
