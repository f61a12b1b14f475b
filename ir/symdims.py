"""Arithmetic on symbolic dims (sizes known only at run time: a dynamic batch, height or
width, and what shape arithmetic computes from them).

A dim is an ``int`` or a ``str``. A string is read as a *monomial*: an integer coefficient
times a product of atomic factors, written ``"2*h*w"`` (factors sorted, the coefficient
first and left out when it is 1). An atomic factor is any string without a top-level
``*``, or one whose top level also holds another operator (``"(h+1)//2"``, the name an
exporter gave: ``"unk__0"``, ``"batch"``): it is never taken apart, so two factors are equal
only when they are the same string.

Products and exact quotients of monomials are monomials (``resolve_reshape``'s ``-1`` over
``h*w``); anything else (a floor division that is not exact, a sum) is written as a new
atomic factor in parentheses, ``"(h//2)"``, so the same computation on the same dims gives
the same string. Nothing here guesses: a quotient that is not exact is None to the caller
that needs an exact one.
"""

from __future__ import annotations

import hashlib
from collections import Counter

Dim = int | str
Monomial = tuple[int, tuple[str, ...]]  # coefficient, sorted atomic factors

_OPERATORS = frozenset("+-/%")


def _split(text: str) -> list[str] | None:
    """The top-level ``*`` factors of ``text``, or None when its top level holds another
    operator (then it is one atomic factor)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0:
            if ch == "*":
                if i + 1 < len(text) and text[i + 1] == "*":  # a power: atomic
                    return None
                if i > 0 and text[i - 1] == "*":
                    return None
                parts.append(text[start:i].strip())
                start = i + 1
            elif ch in _OPERATORS and i > 0:
                return None
    parts.append(text[start:].strip())
    return parts if all(parts) else None


def parse(d: Dim) -> Monomial | None:
    """``d`` as (coefficient, factors); None for anything else than an int or a string."""
    if isinstance(d, bool):
        return None
    if isinstance(d, int):
        return d, ()
    if not isinstance(d, str) or not d:
        return None
    parts = _split(d) if "*" in d else None
    if parts is None:
        return 1, (d,)
    coef, factors = 1, []
    for p in parts:
        if p.lstrip("-").isdigit():
            coef *= int(p)
        else:
            factors.append(p)
    return coef, tuple(sorted(factors))


def fmt(m: Monomial) -> Dim:
    """The dim a monomial writes as (an int when it has no factors)."""
    coef, factors = m
    if not factors or coef == 0:
        return coef
    return _short("*".join(([str(coef)] if coef != 1 else []) + list(factors)))


MAX_LENGTH = 160  # longer expressions (deep pyramids summed by a concat) get a short name


def _short(text: str) -> str:
    """``text``, or a name derived from it (the same expression, the same name) when it is
    long: an expression's length grows with the depth of the network."""
    if len(text) <= MAX_LENGTH:
        return text
    return "expr#" + hashlib.sha1(text.encode()).hexdigest()[:12]


def mul(a: Dim, b: Dim) -> Dim | None:
    ma, mb = parse(a), parse(b)
    if ma is None or mb is None:
        return None
    return fmt((ma[0] * mb[0], tuple(sorted(ma[1] + mb[1]))))


def product(dims) -> Dim | None:
    """The product of dims (an int, a monomial string), or None when one is unknown."""
    out: Dim | None = 1
    for d in dims:
        out = mul(out, d) if out is not None else None  # type: ignore[arg-type]
        if out is None:
            return None
    return out


def divide(a: Dim, b: Dim) -> Dim | None:
    """``a / b`` when it is exact as monomials (``"2*h*w" / "h"`` is ``"2*w"``), else None."""
    ma, mb = parse(a), parse(b)
    if ma is None or mb is None or mb[0] == 0 or ma[0] % mb[0]:
        return None
    rest = Counter(ma[1])
    rest.subtract(mb[1])
    if any(n < 0 for n in rest.values()):
        return None
    return fmt((ma[0] // mb[0], tuple(sorted(rest.elements()))))


def divides(a: Dim, b: Dim) -> bool:
    """Whether ``b`` is ``a`` times a monomial (``a`` divides ``b``)."""
    return divide(b, a) is not None


def _atom(d: Dim) -> str:
    text = str(d)
    return text if parse(d) == (1, (text,)) and text.startswith("(") else f"({text})"


def floordiv(a: Dim, b: Dim) -> Dim | None:
    if isinstance(a, int) and isinstance(b, int):
        return a // b if b else None
    if b == 0:
        return None
    if b == 1:
        return a
    exact = divide(a, b)
    if exact is not None:
        return exact
    inner = _floor_parts(a)
    if inner is not None and isinstance(b, int) and b > 0:  # (x // k) // b is x // (k * b)
        return floordiv(inner[0], inner[1] * b)
    return _short(f"({a}//{_atom(b) if not isinstance(b, int) else b})")


def _offset(d: Dim) -> tuple[Dim, int]:
    """``"(x+3)"`` as ``("x", 3)``, ``"(x-1)"`` as ``("x", -1)``; anything else with 0."""
    if isinstance(d, str) and d.startswith("(") and d.endswith(")"):
        inner, depth = d[1:-1], 0
        for i in range(len(inner) - 1, 0, -1):
            ch = inner[i]
            if ch == ")":
                depth += 1
            elif ch == "(":
                depth -= 1
            elif depth == 0 and ch in "+-":
                tail = inner[i + 1 :]
                if tail.isdigit() and _balanced(inner[:i]):
                    base = inner[:i]
                    base = base if _split(base) is not None else f"({base})"
                    return base, int(tail) if ch == "+" else -int(tail)
                break
            elif depth == 0 and not ch.isdigit():
                break
    return d, 0


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


def _floor_parts(d: Dim) -> tuple[str, int] | None:
    """``"(x//4)"`` as ``("x", 4)`` (a positive literal divisor), else None."""
    if not isinstance(d, str) or not d.startswith("(") or not d.endswith(")"):
        return None
    inner = d[1:-1]
    cut = inner.rfind("//")
    if cut <= 0 or not inner[cut + 2 :].isdigit() or not _balanced(inner[:cut]):
        return None
    base = inner[:cut]
    if _split(base) is None and not (base.startswith("(") and _balanced(base[1:-1])):
        return None  # "a+b//4" reads as a + (b // 4): not a floor of the whole
    return base, int(inner[cut + 2 :])


def add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if isinstance(a, int):
        a, b = b, a
    if isinstance(b, int):
        base, offset = _offset(a)
        offset += b
        if offset == 0:
            return base
        return _short(f"({base}+{offset})" if offset > 0 else f"({base}-{-offset})")
    return _short(f"({a}+{b})")


def sub(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    if a == b:
        return 0
    if isinstance(b, int):
        return add(a, -b)
    return _short(f"({a}-{_atom(b)})")


def broadcast(dims) -> Dim | None:
    """Numpy broadcasting of one axis over symbolic dims: equal dims, 1 and a fixed size
    greater than 1 decide it (a valid model broadcasts a symbol only against itself, 1, or
    the fixed size); two different symbols leave it unknown (None)."""
    out: Dim = 1
    for d in dims:
        if d == 1 or d == out:
            continue
        if out == 1:
            out = d
        elif isinstance(out, int) and isinstance(d, int):
            return None  # sizes that do not broadcast
        elif isinstance(d, int):
            out = d
        elif not isinstance(out, int):
            return None
    return out


def conv_dim(d: Dim, kernel: int, stride: int, dilation: int, pad: int) -> Dim:
    """The output size of a convolution or pool over an axis of size ``d`` (``pad`` both
    sides together): ``(d + pad - span) // stride + 1``."""
    span = dilation * (kernel - 1) + 1
    if isinstance(d, int):
        return (d + pad - span) // stride + 1
    if stride == 1:
        return add(d, pad - span + 1)
    return add(floordiv(add(d, pad - span), stride), 1)  # type: ignore[arg-type]
