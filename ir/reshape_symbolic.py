"""Reshapes whose dims are symbolic (a dynamic batch, height or width): how
``rules_shapes._map_axes`` maps their axes when some dims are not numbers.

Imported by ``_map_axes`` when it first meets a symbolic dim (static models never load it).
"""

from __future__ import annotations

import math

from drpopt.ir import rules_shapes as rs
from drpopt.ir import symdims
from drpopt.ir.channels import ChannelGraph
from drpopt.ir.core import Node, Value


def pin_symbol(ins, outs):
    """One symbolic dim against fixed sizes only (a batch-1 export with a symbolic batch
    declared: ``(batch, 64, 256) -> (1, 64, 16, 16)``): the reshape runs only when the
    element counts agree, which fixes the symbol's size; the dims with it in place (size-1
    axes left out), or None when that is not a single symbol solved exactly."""
    for side, other in ((ins, outs), (outs, ins)):
        symbolic = [d for _, d in side if not isinstance(d, int)]
        if len(symbolic) != 1 or any(not isinstance(d, int) for _, d in other):
            continue
        rest = math.prod(d for _, d in side if isinstance(d, int))
        total = math.prod(d for _, d in other)
        if not rest or total % rest:
            return None
        size = total // rest
        fixed = [(a, size if not isinstance(d, int) else d) for a, d in side]
        fixed = [(a, d) for a, d in fixed if d != 1]
        return (fixed, outs) if side is ins else (ins, fixed)
    return None


def map_symbolic(node: Node, cg: ChannelGraph, x: Value, ins, y: Value, outs) -> None:
    """``_map_axes`` where some dims are symbolic (a dynamic batch, height or width).

    A reshape keeps the element count, so leading axes of equal size map 1:1 (the rest
    holds as many elements on both sides), and so do trailing ones: they are matched from
    both ends first. The middle maps block by block where the products of its dims divide
    each other as monomials (``h, w`` against ``h*w``); in a block with a symbolic dim only
    leading fixed sizes that divide each other map (``_map_factor``: GroupNorm's ``(N, C,
    h, w) -> (N, G, C // G * h * w)``), the rest is locked, and so is a middle that cannot
    be matched (``h`` against ``h//7, 7``)."""
    head = 0
    while head < min(len(ins), len(outs)) and ins[head][1] == outs[head][1]:
        cg.identity(cg.space(x, ins[head][0]), cg.space(y, outs[head][0]), node)
        head += 1
    tail = 0
    while tail < min(len(ins), len(outs)) - head and ins[-1 - tail][1] == outs[-1 - tail][1]:
        cg.identity(cg.space(x, ins[-1 - tail][0]), cg.space(y, outs[-1 - tail][0]), node)
        tail += 1
    ins, outs = ins[head : len(ins) - tail], outs[head : len(outs) - tail]
    i = j = 0
    while i < len(ins) and j < len(outs):
        bi, bj = [ins[i]], [outs[j]]
        pi, pj = ins[i][1], outs[j][1]
        while pi != pj:
            if symdims.divides(pi, pj) and i + len(bi) < len(ins):
                bi.append(ins[i + len(bi)])
                pi = symdims.mul(pi, bi[-1][1])
            elif symdims.divides(pj, pi) and j + len(bj) < len(outs):
                bj.append(outs[j + len(bj)])
                pj = symdims.mul(pj, bj[-1][1])
            else:
                break
        if pi != pj:
            break
        if all(isinstance(d, int) for _, d in (*bi, *bj)):
            if len(bi) == 1 and len(bj) == 1:
                cg.identity(cg.space(x, bi[0][0]), cg.space(y, bj[0][0]), node)
            else:
                rs._map_block(cg, node, x, bi, y, bj)
        elif len(bi) == 1 or len(bj) == 1 or not rs._map_factor(cg, node, x, bi, y, bj):
            why = "merges or splits axes whose sizes are known only at run time"
            rs._lock_block(cg, node, x, bi, y, bj, why)
        i, j = i + len(bi), j + len(bj)
    if i < len(ins) or j < len(outs):
        why = "maps axes of sizes known only at run time in a way drpopt cannot follow"
        rs._lock_block(cg, node, x, ins[i:], y, outs[j:], why)
