"""LayerNorm over pruned channels in torch: the statistics count only the kept channels.

A torch ``nn.LayerNorm`` averages over every channel of its last axis, zeros included, so
a masked model whose embedding width is pruned would compute something else than its
compact form (where the pruned channels are gone). With the Pruner's ``masked_layernorm``
(on by default) every ``nn.LayerNorm`` whose weight gets a channel mask becomes a
:class:`MaskedLayerNorm` (the same module, class swapped; ``state_dict`` keys unchanged):

    k = sum(kept);  mean = sum(x * kept) / k;  d = (x - mean) * kept
    y = d / sqrt(sum(d * d) / k + eps) * weight + bias

which is what the compact model's LayerNorm computes on the kept channels (and what the
sparse ONNX's ``drpopt.MaskedLayerNormalization`` computes). The kept channels are the
weight's mask buffer while the Pruner holds it, else the ``drpopt_kept`` attribute that
``finalize`` and the export's prepared copy leave. While ``torch.onnx.export`` traces, the
module writes a plain ``LayerNormalization`` (the export's plan then prunes or masks it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from drpopt.retrain.buffers import MASK_SUFFIX

KEPT_ATTR = "drpopt_kept"


def masked_layer_norm(x: Any, kept: Any, weight: Any, bias: Any, eps: float) -> Any:
    """LayerNorm of ``x`` over its last axis counting only the ``kept`` channels."""
    m = kept.to(x.dtype)
    k = m.sum()
    mean = (x * m).sum(dim=-1, keepdim=True) / k
    d = (x - mean) * m
    y = d * torch.rsqrt((d * d).sum(dim=-1, keepdim=True) / k + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias * m
    return y


class MaskedLayerNorm(nn.LayerNorm):
    """An ``nn.LayerNorm`` whose statistics count only the kept channels (module docstring)."""

    drpopt_fx_as = nn.LayerNorm  # the fx frontend maps it as a LayerNorm (a leaf)
    drpopt_masked_norm = True  # the torch frontend lets the analysis prune its channels

    def kept(self) -> Any:
        mask = self._buffers.get("weight" + MASK_SUFFIX)
        return mask if mask is not None else self.__dict__.get(KEPT_ATTR)

    def forward(self, x: Any) -> Any:
        kept = self.kept()
        if kept is None or torch.onnx.is_in_onnx_export():
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return masked_layer_norm(x, kept.to(torch.bool), self.weight, self.bias, self.eps)


def maskable(module: Any) -> bool:
    """Whether ``module`` is a LayerNorm over one axis with a weight (can be masked)."""
    return (
        isinstance(module, nn.LayerNorm)
        and type(module) in (nn.LayerNorm, MaskedLayerNorm)
        and module.weight is not None
        and len(module.normalized_shape) == 1
    )


def use_masked_layernorms(model: Any, masked: set[str]) -> list[str]:
    """Makes every maskable LayerNorm of ``model`` whose ``<name>.weight`` is in ``masked``
    a :class:`MaskedLayerNorm`; the names of those modules."""
    out = []
    for name, module in model.named_modules():
        if maskable(module) and f"{name}.weight" in masked:
            module.__class__ = MaskedLayerNorm
            out.append(name)
    return out


def keep_after_masks(module: Any) -> None:
    """Before a MaskedLayerNorm's weight mask buffer goes: keep the kept channels as a plain
    attribute, so the module still computes what it computed."""
    if isinstance(module, MaskedLayerNorm):
        mask = module._buffers.get("weight" + MASK_SUFFIX)
        if mask is not None:
            module.__dict__[KEPT_ATTR] = (mask > 0.5).detach().clone()


def maskable_weights(model: Any) -> set[str]:
    """``<name>.weight`` of every maskable LayerNorm of ``model``, except those inside
    torch's transformer layers, whose fused inference path reads the norms' weights
    without calling the modules (their channels stay whole)."""
    fused = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    inside = [f"{n}." for n, m in model.named_modules() if isinstance(m, fused)]
    return {
        f"{n}.weight"
        for n, m in model.named_modules()
        if maskable(m) and not any(n.startswith(p) for p in inside)
    }


def masked_weights(model: Any) -> set[str]:
    """``<name>.weight`` of every module of ``model`` that already is a MaskedLayerNorm."""
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, MaskedLayerNorm)}


def match_masked_norms(source: Any, clone: Any) -> int:
    """The LayerNorms of ``clone`` (a copy of ``source``) at the names where ``source`` has
    a MaskedLayerNorm become MaskedLayerNorms too (a copy made before the Pruner swapped the
    source's classes); returns how many changed."""
    count = 0
    for name in masked_weights(source):
        try:
            sub = clone.get_submodule(name[: -len(".weight")])
        except AttributeError:
            continue
        if maskable(sub) and not isinstance(sub, MaskedLayerNorm):
            sub.__class__ = MaskedLayerNorm
            count += 1
    return count


def mask_exported_layernorms(graph: Any, plan: Any, norms: set[str]) -> None:
    """In a sparse export, the LayerNorms of the model's ``MaskedLayerNorm`` modules (scale
    named in ``norms``) over channels the plan prunes count only the kept ones
    (``drpopt.MaskedLayerNormalization``), as the modules do."""
    from drpopt.ir.rules_norm import mask_layernorm
    from drpopt.passes.common import get_analysis
    from drpopt.passes.plan import keep_masks

    nodes = [
        n
        for n in graph.nodes
        if n.op_type == "LayerNormalization" and n.input(1) is not None and n.input(1).name in norms
    ]
    if not nodes or not plan.groups:
        return
    masks = keep_masks(plan.resolve(get_analysis(graph)))
    for node in nodes:
        x = node.input(0)
        keep = masks.get((x.name, x.rank - 1)) if x is not None and x.rank else None
        if keep is not None and not keep.all():
            mask_layernorm(graph, node, keep)
