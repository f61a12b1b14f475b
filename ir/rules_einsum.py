"""The coupling rule of ``Einsum`` (attention written with ``torch.einsum``: MaxViT's
``"B G H I D, B G H J D -> B G H I J"``, a linear layer as ``"bnc,dc->bnd"``).

Every subscript letter names one index: the axes it labels are coupled 1:1 across the
operands and the output; a letter missing from the output is summed over (its axes are
coupled with each other, as a MatMul's inner axes are). A constant operand is a layer's
weight: its axes that reach the output produce channels, its summed axes consume them.
An equation with an ellipsis, or a letter repeated inside one operand (a diagonal), locks
every axis with the reason.
"""

from __future__ import annotations

from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Node, Value
from drpopt.ir.rules import rule
from drpopt.ir.solve import weight_like


def parse_einsum(equation: str, n_inputs: int) -> tuple[list[str], str] | None:
    """(subscripts of each input, subscripts of the output) of an explicit equation without
    ellipsis or repeated letters inside one operand; None otherwise."""
    eq = equation.replace(" ", "")
    if "..." in eq or "->" not in eq:
        return None
    lhs, out = eq.split("->", 1)
    ins = lhs.split(",")
    terms = [*ins, out]
    if len(ins) != n_inputs or not all(t.isalpha() or t == "" for t in terms):
        return None
    if any(len(set(t)) != len(t) for t in terms):
        return None
    return ins, out


@rule("Einsum")
def _einsum(node: Node, cg: ChannelGraph) -> None:
    inputs = [v for v in node.inputs if v is not None]
    y = node.outputs[0]
    equation = node.attr("equation", "")
    parsed = parse_einsum(str(equation), len(inputs))
    ranks_ok = all(v.rank is not None for v in (*inputs, y))
    if parsed is None or not ranks_ok or not _ranks_match(parsed, inputs, y):
        why = f"Einsum '{node.name}': equation {equation!r} is not one drpopt maps"
        for v in (*inputs, y):
            cg.lock_value(v, "rule", why, node)
        return
    ins, out = parsed
    axes: dict[str, list[tuple[Value, int]]] = {}
    for v, term in zip(inputs, ins, strict=True):
        for ax, letter in enumerate(term):
            axes.setdefault(letter, []).append((v, ax))
    for letter, where in axes.items():
        first = cg.space(*where[0])
        for v, ax in where[1:]:
            cg.identity(first, cg.space(v, ax), node)
        if letter in out:
            cg.identity(cg.space(y, out.index(letter)), first, node)
    for v, term in zip(inputs, ins, strict=True):
        if weight_like(v):
            for ax, letter in enumerate(term):
                role = "producer" if letter in out else "consumer"
                cg.role(cg.space(v, ax), role, node)


def _ranks_match(parsed: tuple[list[str], str], inputs: list[Value], y: Value) -> bool:
    ins, out = parsed
    return all(v.rank == len(t) for v, t in zip(inputs, ins, strict=True)) and y.rank == len(out)
