"""No superlinear node-list work in the passes (issue 8 item 2), as a step budget, not a
clock: the node list is rebuilt (``Graph._apply_order_edits``, one linear pass) a number of
times that does not grow with the model, so removing or inserting nodes costs O(1) each.

The models are where passes edit the node list most: BatchNorms folded away (a CNN) and
LayerNorms rewritten into their masked forms and back (a ViT exported by torch)."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from vit_blocks_torch import TorchvisionViT

from drpopt.ir import core
from drpopt.ir.from_onnx import from_onnx
from drpopt.passes import PassManager
from drpopt.passes.pipeline import parse_pipeline
from drpopt.zoo.random_graphs import large_model

PIPELINE = "fold-batchnorm,score,mask:rate=0.5:keep_first=false,apply-masks,compact,cleanup"


def _vit(depth: int):
    import onnx

    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TorchvisionViT(depth=depth).eval(),
            (torch.randn(1, 3, 32, 32),),
            buf,
            dynamo=False,
            opset_version=14,  # LayerNorm written out: the pattern rewrites edit the list
        )
    return onnx.load_from_string(buf.getvalue())


def _rebuilds_per_pass(model, monkeypatch) -> tuple[list[int], int]:
    counts = [0]
    original = core.Graph._apply_order_edits

    def counted(self):
        counts[0] += 1
        return original(self)

    monkeypatch.setattr(core.Graph, "_apply_order_edits", counted)
    graph = from_onnx(model)
    nodes = len(graph.nodes)
    per_pass = []
    for spec in PIPELINE.split(","):
        counts[0] = 0
        graph = PassManager(parse_pipeline(spec)).run(graph).model
        per_pass.append(counts[0])
    return per_pass, nodes


@pytest.mark.parametrize(
    "make, sizes",
    [(large_model, (400, 2000)), (_vit, (1, 6))],
    ids=["cnn", "vit"],
)
def test_node_list_rebuilds_do_not_grow_with_the_model(make, sizes, monkeypatch):
    (small, n_small), (big, n_big) = (_rebuilds_per_pass(make(s), monkeypatch) for s in sizes)
    assert n_big > 3 * n_small  # the sizes really differ
    assert big == small, f"node list rebuilt per pass {small} at {n_small} nodes, {big} at {n_big}"
    assert sum(big) <= 2 * len(big)  # a few rebuilds per pipeline, not one per node
