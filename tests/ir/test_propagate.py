"""Per-node shape propagation (``ir/propagate.py``) gives the shapes onnxruntime computes.

The small Swin of ``swin_torch`` pads its windows with ``F.pad`` by amounts computed from
``x.shape``: ONNX shape inference leaves every shape after the first ``Pad`` unknown, and
propagation fills them from the numbers the shape arithmetic holds (``Pad`` among them,
from its pads read statically).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from swin_torch import export

from drpopt.ir.from_onnx import from_onnx


def _run_all(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """The shape of every node output, as onnxruntime computes it."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [o for n in probe.graph.node for o in n.output if o]
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_empty_tensor_value_info(o) for o in names if o not in have
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {
        i.name: np.random.default_rng(0).standard_normal(i.shape).astype(np.float32)
        for i in session.get_inputs()
    }
    outs = session.run(None, feeds)
    return {o.name: tuple(r.shape) for o, r in zip(session.get_outputs(), outs, strict=True)}


def test_propagated_shapes_are_the_shapes_onnxruntime_computes():
    model = export(size=36)  # 36 = 9 windows of 4 after padding: the pads are not zero
    inferred = onnx.shape_inference.infer_shapes(model)
    unknown = {
        vi.name
        for vi in inferred.graph.value_info
        if any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)
    }
    graph = from_onnx(model)
    actual = _run_all(model)
    pads = [n.outputs[0].name for n in graph.nodes if n.op_type == "Pad"]
    assert pads and any(
        p in unknown or p not in {v.name for v in inferred.graph.value_info} for p in pads
    )
    learnt = 0
    for name, shape in actual.items():
        value = graph.values.get(name)
        if value is None or value.static_shape is None:
            continue
        assert value.static_shape == shape, name
        learnt += name in unknown
    assert learnt >= 10
    assert all(graph.values[p].static_shape == actual[p] for p in pads)
