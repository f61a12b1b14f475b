"""The dead-channel check: a numerical test of a group's completeness.

Zero every consumer slice (the weight columns that read a group's channels) for some of a
group's channels; those channels are then dead, so scrambling everything on their producing
side (weight rows, biases, BN parameters, per-channel constants) must not change any model
output. A group that misses a consumer (a concat branch, a Flatten into a Gemm, a residual
path) leaks the scrambled values into the output and fails the check.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from drpopt.ir.analysis import Analysis
from drpopt.ir.channels import Group
from drpopt.ir.rules_layers import MASKED_REDUCTIONS


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else 1 for d in inp.type.tensor_type.shape.dim
        ]
        elem = inp.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else np.float32
        feeds[inp.name] = rng.standard_normal(dims).astype(dtype)  # float16 models too
    return feeds


def with_initializers(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(numpy_helper.from_array(arrays[t.name], t.name))
    return out


def materialize_folded(model: onnx.ModelProto) -> onnx.ModelProto:
    """Identity/Cast of an initializer becomes an initializer of its own, as the analysis
    treats it (exporters share one deduplicated tensor between layers through Identity);
    so does a Constant node's tensor (onnxsim writes some weights so), which the check
    could not scramble or zero otherwise."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    keep = []
    for node in out.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:  # onnxsim writes weights so too
            arr = numpy_helper.to_array(value)
            out.graph.initializer.append(numpy_helper.from_array(arr.copy(), node.output[0]))
        elif node.op_type in ("Identity", "Cast") and node.input[0] in inits:
            arr = inits[node.input[0]]
            if node.op_type == "Cast":
                arr = arr.astype(onnx.helper.tensor_dtype_to_np_dtype(node.attribute[0].i))
            out.graph.initializer.append(numpy_helper.from_array(arr.copy(), node.output[0]))
        else:
            keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def _mask_layernorms(model: onnx.ModelProto, groups: list[Group], chosen) -> onnx.ModelProto:
    """A normalisation over a group's channels reads every channel for its statistics;
    pruning gives it the masked form that ignores the pruned ones (``apply-masks``' sparse
    forms, ir/rules_norm.py). The check does the same for the channels it kills, so only
    missing members leak."""
    from drpopt.ir.from_onnx import from_onnx
    from drpopt.ir.rules_compact import KeptChannels
    from drpopt.ir.to_onnx import to_onnx
    from drpopt.passes.apply_masks import sparse_forms

    ops = {n.op_type for n in model.graph.node}
    if not ops & {
        "LayerNormalization",
        "RMSNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "SkipLayerNormalization",  # com.microsoft (ir/rules_ort.py)
        *MASKED_REDUCTIONS,  # a reduction over channels ignores the pruned (ir/rules_reduce.py)
    }:
        return model
    masks: dict = {}
    for g in groups:  # a normalisation over a concat reads a group in several segments
        for seg in g.segments:
            keep = masks.setdefault((seg.value, seg.axis), np.ones(seg.space_length, bool))
            for j in chosen[g.id]:
                keep[seg.start + j * seg.block : seg.start + (j + 1) * seg.block] = False
    graph = from_onnx(model)
    return to_onnx(graph, reshare=False) if sparse_forms(graph, KeptChannels(masks)) else model


def _input_dependent(model: onnx.ModelProto) -> set[str]:
    """The values computed from a graph input (not from constants alone: a QDQ model's
    dequantized weights, a TF converter's transposed ones)."""
    inits = {t.name for t in model.graph.initializer}
    live = {i.name for i in model.graph.input if i.name not in inits}
    for node in model.graph.node:  # topological order
        if any(i in live for i in node.input):
            live.update(node.output)
    return live


def _inner_axis(node, a, b, live: set[str]) -> int | None:
    """The axis of ``a`` that ``node`` sums against ``b``, both computed from the input: the
    last of a MatMul's first operand; the channels of a Conv's input when its weight is
    (SOLOv2's, CondInst's dynamic kernels); None otherwise."""
    if a is None or b is None or a.is_const or b.is_const or not a.rank:
        return None
    if node.op_type == "MatMul":
        return a.rank - 1
    return 1 if node.op_type == "Conv" and b.name in live else None


def _mask_inner_products(model: onnx.ModelProto, groups: list[Group], chosen) -> onnx.ModelProto:
    """A MatMul of two activations (``q @ k^T`` of an attention whose head width prunes
    channel by channel, as a single-head one does) sums the products of its operands' inner
    channels: a killed channel is dead there when one side is zero, as the sparse model's
    zeroed producers make it, not when both are scrambled. The check zeroes the killed
    channels of the first operand there (both runs), so only members missing elsewhere leak.
    A Conv whose weight is an activation (a dynamic kernel) sums its input's channels
    against the kernel's so: the same for its input."""
    from drpopt.ir.from_onnx import from_onnx
    from drpopt.ir.to_onnx import to_onnx

    live = _input_dependent(model)
    if not any(
        n.op_type == "MatMul" or (n.op_type == "Conv" and n.input[1] in live)
        for n in model.graph.node
    ):
        return model
    graph = from_onnx(model)
    changed = False
    for node in [n for n in graph.nodes if n.op_type in ("MatMul", "Conv")]:
        a = node.input(0)
        axis = _inner_axis(node, a, node.input(1), live)
        if axis is None:
            continue
        keep = None
        for g in groups:
            for seg in g.segments:
                if seg.value == a.name and seg.axis == axis:
                    keep = np.ones(seg.space_length, dtype=np.float32) if keep is None else keep
                    for j in chosen[g.id]:
                        keep[seg.start + j * seg.block : seg.start + (j + 1) * seg.block] = 0
        if keep is None:
            continue
        keep = keep.reshape((-1,) + (1,) * (a.rank - 1 - axis))  # broadcast on that axis
        mask = graph.value(graph.fresh_name(f"{node.name}.dead"), const=keep, shape=keep.shape)
        out = graph.value(graph.fresh_name(f"{a.name}.dead"), shape=a.shape, dtype=a.dtype)
        graph.add_node(
            "Mul", graph.fresh_name(f"{node.name}.dead"), [a, mask], [out], {}, before=node
        )
        graph.set_input(node, 0, out)
        changed = True
    return to_onnx(graph, reshare=False) if changed else model


def _put(arr: np.ndarray, axis: int, idx: list[int], values: np.ndarray | float) -> None:
    index = [slice(None)] * arr.ndim
    index[axis] = idx  # type: ignore[call-overload]
    arr[tuple(index)] = values


def dead_channel_outputs(
    model: onnx.ModelProto, groups: list[Group], seed: int = 0, zero_consumers: bool = True
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outputs before and after scrambling the producing side of some channels of each
    group (with their consumers zeroed in both runs when ``zero_consumers``)."""
    rng = np.random.default_rng(seed)
    model = materialize_folded(model)
    arrays = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    chosen = {}
    for g in groups:
        k = max(1, g.size // 2)
        chosen[g.id] = sorted(rng.choice(g.size, size=k, replace=False).tolist())
    # inner products first: the shapes they need are those of the model as analysed
    model = _mask_layernorms(_mask_inner_products(model, groups, chosen), groups, chosen)
    arrays = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    if zero_consumers:
        for g in groups:
            for m in g.members:
                if m.role == "consumer" and m.tensor in arrays:
                    _put(arrays[m.tensor], m.axis, m.indices(chosen[g.id]), 0.0)
    feeds = random_feeds(model, seed)
    before = run_model(with_initializers(model, arrays), feeds)
    # BN variances must stay positive, whatever the exporter named them (caffe2's '_riv')
    variances = {n.input[4] for n in model.graph.node if n.op_type == "BatchNormalization"}
    for g in groups:
        for m in g.members:
            if m.role == "consumer" or m.tensor not in arrays:
                continue
            arr = arrays[m.tensor]
            if arr.dtype.kind != "f":
                continue
            idx = m.indices(chosen[g.id])
            shape = list(arr.shape)
            shape[m.axis] = len(idx)
            scale = float(arr.std()) + 0.1  # large enough to show, small enough not to overflow
            noise = (rng.standard_normal(shape) * scale).astype(arr.dtype)
            if m.tensor in variances or "var" in m.tensor:
                noise = np.abs(noise) + 0.5
            _put(arr, m.axis, idx, noise)
    after = run_model(with_initializers(model, arrays), feeds)
    return before, after


def assert_groups_complete(analysis: Analysis, model: onnx.ModelProto, seed: int = 0) -> None:
    """Scrambles dead channels of every prunable group; outputs must not move. The model
    run is the analysis' own graph written back without re-sharing constants, so every
    member names an initializer (the analysis un-shares exporters' shared constants)."""
    from drpopt.ir.to_onnx import to_onnx

    model = to_onnx(analysis.graph, reshare=False)
    groups = analysis.prunable_groups
    before, after = dead_channel_outputs(model, groups, seed)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * (1 + float(np.abs(b).max())))


def assert_members_tile(a: Analysis, model: onnx.ModelProto) -> None:
    """Every member slice lies inside its tensor, slices of one axis never overlap, and the
    producer rows of each Conv/Gemm weight (with more than one output) are cut exactly into
    the groups; the ``group`` attribute of a grouped conv likewise."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    covered: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for g in a.groups:
        for m in g.members:
            assert m.block >= 1 and (m.length == g.size or not g.prunable)
            key = (m.tensor, m.axis) if m.tensor is not None else (f"{m.node}:{m.attr}", 0)
            if m.tensor is not None:
                assert m.start + m.block * m.length <= dims[m.tensor][m.axis]
            if m.role in ("producer", "structure"):
                covered.setdefault(key, []).append((m.start, m.start + m.block * m.length))
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in dims:
            continue  # (a weight computed in the graph: Transpose of a TF converter's HWIO)
        # a Gemm with transB=0 keeps its output rows on axis 1 of the weight
        trans_b = next((at.i for at in node.attribute if at.name == "transB"), 0)
        out_axis = 1 if node.op_type == "Gemm" and not trans_b else 0
        rows = dims[node.input[1]][out_axis]
        spans = sorted(covered.get((node.input[1], out_axis), []))
        if rows > 1:
            assert spans and spans[0][0] == 0 and spans[-1][1] == rows, (node.name, spans)
            assert all(e == s for (_, e), (s, _) in itertools.pairwise(spans)), (node.name, spans)
        group = next((at.i for at in node.attribute if at.name == "group"), 1)
        if group > 1:
            spans = sorted(covered.get((f"{node.name}:group", 0), []))
            weight = node.input[1]
            per_group = rows // group
            equal_counts = all(
                {m.start // per_group for m in g.members if m.tensor == weight and m.axis == 0}
                in (set(), set(range(group)))
                for g in a.prunable_groups
            )
            if not spans and (
                equal_counts
                or any(
                    m.tensor == weight and m.axis == 1 and m.role == "consumer"
                    for g in a.groups
                    for m in g.members
                )
            ):
                continue  # pruned inside every conv group (equal counts): group stays
            if not spans:
                # conv groups cut by a split inside one group: no unit, every row locked
                assert all(
                    not g.prunable for g in a.groups for m in g.members if m.tensor == weight
                ), node.name
                continue
            assert spans and spans[0][0] == 0 and spans[-1][1] == group, (node.name, spans)
            assert all(e == s for (_, e), (s, _) in itertools.pairwise(spans)), (node.name, spans)
    seen: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for g in a.groups:
        for m in g.members:
            if m.tensor is not None:
                seen.setdefault((m.tensor, m.axis), []).append(
                    (m.start, m.start + m.block * m.length)
                )
    for key, spans in seen.items():
        spans.sort()
        assert all(e <= s for (_, e), (s, _) in itertools.pairwise(spans)), (key, spans)
