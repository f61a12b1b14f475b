"""Shape arithmetic with symbolic dims (a dynamic batch, height and width): ``ir/symdims``,
computed shape entries as expressions (``ir/shape_expr``), symbolic output shapes
(``ir/sym_propagate``) and reshapes whose dims are symbols (``rules_shapes``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from drpopt import analyze
from drpopt.ir import symdims
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.shape_expr import DERIVED, Dim, Expr, shape_entries
from drpopt.ir.shape_resolve import entry_dim, resolve_reshape


def test_monomials_multiply_and_divide_exactly():
    assert symdims.mul("h", "w") == "h*w" == symdims.mul("w", "h")
    assert symdims.product(["batch", 16, "h", "w"]) == "16*batch*h*w"
    assert symdims.divide("16*batch*h*w", "batch*16") == "h*w"
    assert symdims.divide("2*h*w", 4) is None  # not exact: never guessed
    assert symdims.divide("h*w", "h*h") is None
    assert symdims.divides("h", "2*h*w") and not symdims.divides("h*w", "h")
    # a string whose top level holds another operator is one factor, never taken apart
    assert symdims.parse("(h-1)//2*3") == (1, ("(h-1)//2*3",))
    assert symdims.parse("3*(h//2)") == (3, ("(h//2)",))


def test_sums_and_floor_divisions_are_canonical():
    assert symdims.add(symdims.add("h", -3), 3) == "h"
    assert symdims.floordiv(symdims.floordiv("(h-1)", 2), 2) == "((h-1)//4)"
    assert symdims.floordiv("4*h", 2) == "2*h"
    assert symdims.floordiv("(a+b//4)", 2) == "((a+b//4)//2)"  # a + (b // 4): not nested
    # a stride-1 'same' conv keeps the symbol; two stride-2 convs equal one stride-4 one
    assert symdims.conv_dim("h", 3, 1, 1, 2) == "h"
    twice = symdims.conv_dim(symdims.conv_dim("h", 3, 2, 1, 2), 3, 2, 1, 2)
    assert twice == symdims.add(symdims.floordiv(symdims.add("h", -1), 4), 1)


def test_broadcast_of_symbols_and_long_names():
    assert symdims.broadcast(["h", 1, "h"]) == "h"
    assert symdims.broadcast([16, "c"]) == 16  # a valid model broadcasts c as 1 or 16
    assert symdims.broadcast(["h", "w"]) is None  # unknown: the caller names it afresh
    long = "+".join(f"s{i}" for i in range(80))
    short = symdims.add(f"({long})", 1)
    assert short.startswith("expr#") and short == symdims.add(f"({long})", 1)


def _value_graph(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _const(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def test_computed_sizes_are_expressions_and_resolve_a_reshape():
    """``x.view(b, h // 2, 2, w, c)`` with every size read from ``x``'s symbolic shape:
    the entries are an ``Expr`` that evaluates to ``(h//2)``; ``-1`` next to a computed
    size is inferred from the element count as a monomial."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["s", "i1"], ["h"], axis=0),
        helper.make_node("Div", ["h", "two"], ["h2"]),
        helper.make_node("Concat", ["b", "h2", "two", "m1"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "H", "W", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [_const("i0", [0]), _const("i1", [1]), _const("two", [2]), _const("m1", [-1])]
    graph = from_onnx(_value_graph(nodes, [x], [y], inits))
    entries = shape_entries(graph.values["t"], {})
    assert isinstance(entries[0], Dim) and isinstance(entries[1], Expr)
    assert entry_dim(entries[1]) == "(H//2)"
    # (H // 2) * 2 is H only when H is even: a -1 beside it is not inferred, never guessed
    assert resolve_reshape(("N", "H", "W", 8), entries) is None
    w = Dim(graph.values["x"], 2)
    assert resolve_reshape(("N", "H", "W", 8), [*entries[:3], w, 8]) == ("N", "(H//2)", 2, "W", 8)
    assert resolve_reshape(("N", 16, "h", "w"), [Dim(graph.values["x"], 0), 16, -1]) == (
        "N",
        16,
        "h*w",
    )
    assert resolve_reshape(("N", 16, "h"), [DERIVED, 16, -1]) is None  # two unknowns


def test_a_size_is_never_negative():
    """torch writes ``expand`` sizes as ``Where(size == -1, 1, size)``: with a symbolic
    size the comparison is decided (a size is never -1), so the entry stays the size."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Equal", ["s", "m1"], ["eq"]),
        helper.make_node("Where", ["eq", "one", "s"], ["t"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    t = helper.make_tensor_value_info("t", TensorProto.INT64, [2])
    graph = from_onnx(_value_graph(nodes, [x], [t], [_const("m1", [-1]), _const("one", [1])]))
    entries = shape_entries(graph.values["t"], {})
    assert [entry_dim(e) for e in entries] == ["N", 4]


def _export(module, shape, axes, opset=17) -> onnx.ModelProto:
    import io

    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (torch.randn(*shape),),
            buf,
            opset_version=opset,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=axes,
        )
    model = onnx.load_from_string(buf.getvalue())
    del model.graph.value_info[:]
    return model


def _tokens_module():
    """conv -> tokens (flatten(2).transpose) -> Linear -> back to an image with H, W read
    from the conv's shape -> strided conv -> GroupNorm -> conv."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, 2, 1)
            self.fc = nn.Linear(16, 24)
            self.down = nn.Conv2d(24, 32, 3, 2, 1)
            self.norm = nn.GroupNorm(4, 32)
            self.head = nn.Conv2d(32, 5, 1)

        def forward(self, x):
            x = self.stem(x)
            b, _, h, w = x.shape
            t = torch.relu(self.fc(x.flatten(2).transpose(1, 2)))
            x = t.transpose(1, 2).reshape(b, -1, h, w)
            return self.head(torch.relu(self.norm(self.down(x))))

    torch.manual_seed(0)
    return Tokens()


def test_tokens_over_a_dynamic_height_and_width_keep_their_channels():
    """Before: the reshape to ``(b, c, -1)`` over symbolic ``h*w`` left every later shape
    unknown; every layer locked ("rank unknown", "unknown shapes"). Now the shapes carry
    ``h*w``, the channels map through the tokens, and every group but the output prunes
    as in the static export (GroupNorm's whole groups included)."""
    module = _tokens_module()
    axes = {"x": {0: "batch", 2: "height", 3: "width"}, "y": {0: "batch", 2: "h", 3: "w"}}
    dynamic = analyze(_export(module, (1, 3, 16, 16), axes))
    static = analyze(_export(module, (1, 3, 16, 16), None))
    graph = dynamic.graph
    shapes = {n.op_type: n.outputs[0].shape for n in graph.nodes if n.op_type != "Constant"}
    assert shapes["MatMul"][2] == 24 and "*" in shapes["MatMul"][1]  # (batch, h*w, 24)
    sizes = lambda a: sorted((g.size, g.prunable) for g in a.groups)  # noqa: E731
    assert sizes(dynamic) == sizes(static)
    assert dynamic.prunable_params == static.prunable_params > 0.9 * static.params


def test_unknown_dims_get_fresh_symbols_and_ranks_stay_known():
    """A dim nothing determines (a slice to a computed end) gets a fresh symbol of its own:
    the rank is known, the channel axis keeps its size, the symbol equals only itself."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Gather", ["s", "i3"], ["e"], axis=0),
        helper.make_node("Div", ["e", "two"], ["half"]),
        helper.make_node("Slice", ["c", "zero", "half", "ax"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w"),
        _const("i3", [3]),
        _const("two", [2]),
        _const("zero", [0]),
        _const("ax", [2]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = from_onnx(_value_graph(nodes, [x], [y], inits))
    shape = graph.values["y"].shape
    assert shape[:2] == ("N", 8) and shape[3] == "W" and shape[2].startswith("unk@")


def test_negative_input_dims_become_symbols_and_declared_output_symbols_give_way():
    """paddle2onnx writes dynamic dims as ``-1``; torch declares some fixed output sizes
    as symbols (``Transposeoutput_dim_2``). The first become symbols the shapes propagate
    from, the second the computed size."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1]),
    ]
    w = numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "a", "b", "dim_3"])
    graph = from_onnx(_value_graph(nodes, [x], [y], [w]))
    assert graph.values["c"].shape == ("x.0", 8, "x.2", "x.3")
    assert graph.values["y"].shape[3] == 8


def test_deep_size_arithmetic_stays_bounded():
    """A size doubled 40 times over (each step ``s + s``): as a tree of expressions that is
    2**40 terms; past ``MAX_TERMS`` the entry is ``DERIVED`` (not followed), so evaluating
    it costs nothing and never recurses deeply."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s0"]),
        helper.make_node("Gather", ["s0", "i1"], ["g0"], axis=0),
    ]
    for k in range(40):
        nodes.append(helper.make_node("Add", [f"g{k}", f"g{k}"], [f"g{k + 1}"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "H"])
    out = helper.make_tensor_value_info("g40", TensorProto.INT64, [1])
    graph = from_onnx(_value_graph(nodes, [x], [out], [_const("i1", [1])]))
    (entry,) = shape_entries(graph.values["g40"], {})
    assert entry is DERIVED and entry_dim(entry) is None
    (small,) = shape_entries(graph.values["g2"], {})
    assert isinstance(small, Expr) and entry_dim(small) == "((H+H)+(H+H))"
