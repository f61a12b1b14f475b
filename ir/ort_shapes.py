"""Output shapes of the ops onnxruntime's graph optimizer writes into a model it saves
(``ir/rules_ort.py`` has their rules), which ONNX's inference does not know: com.microsoft
``FusedConv``, ``FusedGemm``, ``FusedMatMul`` and ``SkipLayerNormalization`` (outputs 0 and
3), and the NCHWc layout's ``com.microsoft.nchwc`` ops. An NCHWc tensor is given its logical
NCHW shape (the channel count of the layer writing it, not the padded block count): those
channels are locked anyway, and the shapes let the rest of the graph (a transformer's MLP
between ``ReorderOutput`` and ``ReorderInput``) be analysed. ``ORT_SHAPES`` maps
``(domain, op type)`` to a function that sets a node's output shapes and returns how many
it learnt (``ir/propagate.py`` calls it once the inputs' shapes are known)."""

from __future__ import annotations

from collections.abc import Callable

from drpopt.ir.core import Node

# onnxruntime's fused layers: a standard layer and its activation, with that layer's weight
# layout and attributes (rules, counting, the pattern passes and check treat them as it)
FUSED_LAYERS = {"FusedConv": "Conv", "FusedGemm": "Gemm"}
# what each fused op computes, for MACs (FusedMatMul is a MatMul that may transpose A or B)
FUSED_COMPUTE = {**FUSED_LAYERS, "FusedMatMul": "MatMul"}


def layer_op(node: Node) -> str:
    """The op type ``node`` weighs like: a com.microsoft FusedConv or FusedGemm is a Conv or
    a Gemm, any other node its own op type."""
    if node.domain == "com.microsoft":
        return FUSED_LAYERS.get(node.op_type, node.op_type)
    return node.op_type


def _ms_fused_layer(node: Node) -> int:
    """onnxruntime's graph optimizer's FusedConv, FusedGemm, FusedMatMul (``ir/rules_ort.py``)
    and SkipLayerNormalization's outputs 0 and 3 (its sum, read by the next residual add)."""
    shape = _fused_layer_shape(node)
    outs = [o for i, o in enumerate(node.outputs) if i in (0, 3) and o is not None and o.name]
    if shape is None or not outs:
        return 0
    for o in outs:
        o.shape, o.dtype = shape, node.inputs[0].dtype  # type: ignore[union-attr]
    return 1


def _fused_layer_shape(node: Node) -> tuple | None:
    a, b = node.input(0), node.input(1)
    if a is None or a.shape is None or b is None or b.shape is None:
        return None
    if node.op_type == "SkipLayerNormalization":
        return a.shape
    if node.op_type == "FusedGemm" and a.rank == b.rank == 2:
        m = a.shape[1] if node.attr("transA", 0) else a.shape[0]
        return (m, b.shape[0] if node.attr("transB", 0) else b.shape[1])
    if node.op_type == "FusedMatMul" and a.rank >= 2 and b.rank >= 2:  # type: ignore[operator]
        if node.attr("transBatchA", 0) or node.attr("transBatchB", 0):
            return None
        m = a.shape[-1] if node.attr("transA", 0) else a.shape[-2]
        n = b.shape[-2] if node.attr("transB", 0) else b.shape[-1]
        batch = _broadcast_dims(a.shape[:-2], b.shape[:-2])
        return None if batch is None else (*batch, m, n)
    if (
        node.op_type == "FusedConv"
        and a.rank == b.rank
        and all(isinstance(d, int) for d in a.shape[2:] + b.shape[2:])
    ):
        return (a.shape[0], b.shape[0], *_conv_sizes(node, a.shape[2:], b.shape[2:]))
    return None


def _broadcast_dims(x: tuple, y: tuple) -> tuple | None:
    x, y = (1,) * (len(y) - len(x)) + x, (1,) * (len(x) - len(y)) + y
    if any(p != q and 1 not in (p, q) for p, q in zip(x, y, strict=True)):
        return None
    return tuple(q if p == 1 else p for p, q in zip(x, y, strict=True))


def _conv_sizes(node: Node, sizes: tuple, kernel: tuple) -> list[int]:
    """Spatial output sizes of a window over ``sizes``: ``propagate.window_sizes`` (explicit
    pads; VALID has none), or the ceiling division of SAME padding."""
    from drpopt.ir.propagate import window_sizes  # (propagate imports this module)

    strides = node.attr("strides") or [1] * len(sizes)
    if node.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        return [-(-d // s) for d, s in zip(sizes, strides, strict=True)]
    return window_sizes(node, (None, None, *sizes), kernel)


def _nchwc(node: Node) -> int:
    x, out = node.input(0), node.outputs[0]
    if x is None or x.shape is None or x.rank != 4 or out is None:
        return 0
    shape = _nchwc_shape(node, x.shape)
    if shape is None:
        return 0
    out.shape, out.dtype = shape, x.dtype
    return 1


def _nchwc_shape(node: Node, shape: tuple) -> tuple | None:
    op, (n, c, h, w) = node.op_type, shape
    last = node.attr("channels_last", 0)
    if op == "ReorderInput":
        return (n, w, c, h) if last else shape
    if op == "ReorderOutput":
        channels = node.attr("channels", c)
        return (n, h, w, channels) if last else (n, channels, h, w)
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        return (n, c, 1, 1)
    if not isinstance(h, int) or not isinstance(w, int):
        return None
    if op == "Upsample":
        scales = node.attr("scales") or [1, 1, 1, 1]
        return (n, c, int(h * scales[2]), int(w * scales[3]))
    if op in ("MaxPool", "AveragePool") and not node.attr("ceil_mode", 0):
        kernel = node.attr("kernel_shape") or []
        return (n, c, *_conv_sizes(node, (h, w), tuple(kernel))) if len(kernel) == 2 else None
    weight = node.input(1)
    if op == "Conv" and weight is not None and weight.shape is not None and weight.rank == 4:
        kernel = node.attr("kernel_shape") or weight.shape[2:]
        if all(isinstance(k, int) for k in kernel):
            return (n, weight.shape[0], *_conv_sizes(node, (h, w), tuple(kernel)))
    return None


_NCHWC_OPS = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Upsample")
ORT_SHAPES: dict[tuple[str, str], Callable[[Node], int]] = {
    **{
        ("com.microsoft", op): _ms_fused_layer
        for op in ("FusedConv", "FusedGemm", "FusedMatMul", "SkipLayerNormalization")
    },
    **{
        ("com.microsoft.nchwc", op): _nchwc for op in (*_NCHWC_OPS, "ReorderInput", "ReorderOutput")
    },
}
