"""Models exported with a dynamic batch, height and width (``dynamic_axes={'input': {0:
'batch', 2: 'height', 3: 'width'}}``, as YOLOX's ``export_onnx.py --dynamic``, PaddleOCR's
models and segmenters declare them) analyse and prune as their static export does.

The same seeded network is exported twice by torch, static and dynamic (no stored
intermediate shapes: drpopt infers them, ``ir/sym_propagate.py``), and per model: every lock
is named; the share of channels and parameters in prunable groups and the compact
parameters at rate 0.5 equal the static export's; sparse and compact outputs agree within
1e-4 of the spread at two resolutions and batches 1 and 2; rate 0 is bit-identical.
"""

from __future__ import annotations

import functools
import importlib
import io
import warnings

import numpy as np
import onnx
import pytest
from corpus_checks import CONFIGS, TOLERANCE, PruneConfig, compact_counts, compare_outputs, prune
from deadchannels import random_feeds, run_model

from drpopt import analyze

torch = pytest.importorskip("torch")


def _zoo(name: str):
    from drpopt.zoo import torch_models

    return getattr(torch_models, name)()


def _shufflenet():
    shuffle = importlib.import_module("test_channel_shuffle")
    return shuffle._randomize(shuffle.ShuffleNetV2())


def _module(module: str, cls: str, norms: bool = False):
    from bn_calibrate import randomize_norms

    model = getattr(importlib.import_module(module), cls)()
    return randomize_norms(model) if norms else model


# name -> (builder, (C, H, W) of the export, (batch, H, W) of the second run, opset)
MODELS = {
    # channel shuffles: view(b, g, c // g, h, w) with every size read from the tensor
    "shufflenet": (_shufflenet, (3, 32, 32), (2, 64, 48), 13),
    # tokens: flatten(2).transpose over h*w, reshaped back to images with H and W read
    # from an earlier conv's shape
    "segformer": (
        lambda: _module("vision_transformers_torch", "SegFormer", True),
        (3, 64, 64),
        (2, 96, 64),
        11,
    ),
    # window partition view(B, H // 7, 7, W // 7, 7, C), window padding, heads
    "swin": (lambda: _module("swin_torch", "TinySwin"), (3, 32, 32), (2, 64, 48), 17),
    # branches resized to each other's computed sizes and summed
    "hrnet": (lambda: _module("multibranch_torch", "HRNetSeg"), (3, 64, 64), (2, 96, 64), 11),
    # GroupNorm (N, G, -1) over a dynamic H*W in the head towers
    "fcos": (lambda: _module("detect_torch", "FCOSNet"), (3, 64, 64), (2, 96, 64), 17),
    # the head's view(x.shape[0], C, -1) of three levels, concatenated and transposed
    "yolox": (lambda: _zoo("yolox_s_like"), (3, 64, 64), (2, 96, 64), 11),
    # split attention: view(B, card, radix, -1) and its softmax over the radix axis
    "resnest": (lambda: _module("multibranch_torch", "ResNeSt"), (3, 64, 64), (2, 96, 64), 17),
}
SLOW = {"yolox", "resnest"}  # 8-15 s each
# the dynamo exporter's (SegFormer's and Swin's exports there fix the input size; YOLOX's
# export takes minutes)
DYNAMO = ["shufflenet", "resnest"]


def _export(model, shape, opset: int, dynamic: bool, dynamo: bool) -> onnx.ModelProto:
    x = torch.randn(1, *shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            from torch.export import Dim

            axes = None
            if dynamic:
                dims = (Dim("batch", max=64), Dim("height", max=2048), Dim("width", max=2048))
                axes = {"x": {0: dims[0], 2: dims[1], 3: dims[2]}}
            program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=axes)
            proto = program.model_proto
        else:
            out = model(x)
            n_out = len(out) if isinstance(out, list | tuple) else 1
            names = ["output"] + [f"output{i}" for i in range(1, n_out)]
            axes = {"input": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
            if dynamic:  # outputs: the batch and whatever follows the image size
                x2 = torch.randn(2, shape[0], shape[1] * 2, shape[2] + 32)
                out2 = model(x2)
                outs = out if isinstance(out, list | tuple) else [out]
                outs2 = out2 if isinstance(out2, list | tuple) else [out2]
                for name, a, b in zip(names, outs, outs2, strict=True):
                    pairs = enumerate(zip(a.shape, b.shape, strict=True))
                    axes[name] = {i: f"{name}_{i}" for i, (p, q) in pairs if p != q}
            buf = io.BytesIO()
            torch.onnx.export(
                model,
                (x,),
                buf,
                opset_version=opset,
                dynamo=False,
                input_names=["input"],
                output_names=names,
                dynamic_axes=axes,
            )
            proto = onnx.load_from_string(buf.getvalue())
    del proto.graph.value_info[:]  # what onnxsim and others drop: drpopt infers them
    return proto


@functools.cache
def exports(name: str, dynamo: bool = False) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    from bn_calibrate import calibrate

    build, shape, _, opset = MODELS[name]
    torch.manual_seed(0)
    model = build()
    if name != "shufflenet":
        calibrate(model, (1, *shape))
    model.eval()
    return tuple(_export(model, shape, opset, d, dynamo) for d in (False, True))  # type: ignore[return-value]


def _feeds(model: onnx.ModelProto, batch: int, c: int, h: int, w: int) -> dict:
    inits = {t.name for t in model.graph.initializer}
    name = next(i.name for i in model.graph.input if i.name not in inits)
    x = np.random.default_rng(batch * 1000 + h).standard_normal((batch, c, h, w))
    return {name: x.astype(np.float32)}


def _check(name: str, dynamo: bool) -> None:
    static, dynamic = exports(name, dynamo)
    _, shape, second, _ = MODELS[name]
    dims = [d.dim_param for d in dynamic.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3], dims  # batch, height and width symbolic
    a_s, a_d = analyze(static), analyze(dynamic)
    assert all(g.reason for g in a_d.locked_groups)
    t_s, t_d = a_s.to_dict()["totals"], a_d.to_dict()["totals"]
    share = t_d["prunable_channels"] / t_d["channels"]
    assert share == pytest.approx(t_s["prunable_channels"] / t_s["channels"]), (
        name,
        [g.reason[:100] for g in a_d.locked_groups][:5],
    )
    assert a_d.prunable_params == a_s.prunable_params
    p_s, p_d = prune(static, CONFIGS["rate0.5"]), prune(dynamic, CONFIGS["rate0.5"])
    ratio_s = compact_counts(p_s.compact)[0] / p_s.before.params
    ratio_d = compact_counts(p_d.compact)[0] / p_d.before.params
    assert ratio_d == pytest.approx(ratio_s) and ratio_d < 0.5
    for batch, h, w in [(1, shape[1], shape[2]), second]:
        feeds = _feeds(dynamic, batch, shape[0], h, w)
        sparse, compact = run_model(p_d.masked, feeds), run_model(p_d.compact, feeds)
        err = compare_outputs(sparse, compact, f"{name} at {batch}x{h}x{w}")
        assert err < TOLERANCE, (name, batch, h, w, err)
    zero = prune(dynamic, PruneConfig("rate0", 0.0))
    feeds = _feeds(dynamic, *second[:1], shape[0], *second[1:])
    reference = run_model(dynamic, feeds)
    for model in (zero.masked, zero.compact):
        out = run_model(model, feeds)
        assert all(np.array_equal(a, b) for a, b in zip(reference, out, strict=True))


def _params(names, slow=frozenset()):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


@pytest.mark.parametrize("name", _params(MODELS, SLOW))
def test_dynamic_batch_height_width_prunes_as_the_static_export(name):
    """Before the symbolic shape arithmetic: ShuffleNet-V2 kept 0.126 of its parameters in
    prunable groups (0.972 static), SegFormer none, Swin 0.566, HRNet 0.817, FCOS 0.874."""
    _check(name, dynamo=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", DYNAMO)
def test_dynamo_dynamic_exports_prune_as_static(name):
    """The dynamo exporter writes its own size arithmetic (``((h - 1) // 4) + 1``, reshapes
    with ``allowzero``) and symbols (``s0``): the same holds."""
    _check(name, dynamo=True)


@pytest.mark.parametrize("name", ["detr", "hrnet"])
def test_a_symbolic_batch_over_batch_one_constants_keeps_the_static_coverage(name):
    """A batch-1 export declared with a symbolic batch (its reshapes hold the traced 1:
    ``(batch, 64, 256) -> (1, 64, 16, 16)``): the element count fixes the symbol where it
    is the only one, so the reshape maps as in the static model. Before: DETR kept 0.804 of
    its parameters in prunable groups (0.976 static), HRNet 0.817 (1.0)."""
    import test_unseen_architectures as unseen
    from test_unseen_fixes import _symbolic_batch

    model = _symbolic_batch(unseen.case(name).model)
    a, static = analyze(model), unseen.analysis(name)
    assert a.prunable_params == static.prunable_params
    pruned = prune(model, CONFIGS["rate0.5"])
    feeds = random_feeds(model)
    sparse, compact = run_model(pruned.masked, feeds), run_model(pruned.compact, feeds)
    assert compare_outputs(sparse, compact) < TOLERANCE
    assert compact_counts(pruned.compact)[0] == pruned.expected_params
