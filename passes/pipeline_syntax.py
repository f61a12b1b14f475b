"""The pipeline string syntax: splitting with quotes, and quoting a value back.

Rules:
- ``,`` separates passes, ``:`` separates a pass name from its ``key=value`` arguments,
  ``|`` separates the items of a list value; each splits only outside quotes;
- a value (or one list item) may be quoted with ``'...'`` or ``"..."`` to hold ``,`` ``:``
  ``|`` or ``=`` (``mask:plan="runs/1:a,b.json"``); quotes are removed, there are no escapes
  (a value holding ``'`` is quoted with ``"`` and the other way round);
- an unterminated quote is bad input, named with its position.
"""

from __future__ import annotations

from drpopt.errors import BadInputError

QUOTES = ("'", '"')
SPECIAL = ",:|='\""


def split_top(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """``text`` split at each ``sep`` outside quotes (quotes kept in the parts)."""
    parts: list[str] = []
    start, quote = 0, ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in QUOTES:
            quote = ch
        elif ch == sep and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append(text[start:i])
            start = i + 1
    if quote:
        raise BadInputError(
            f"unterminated {quote} quote in {text!r}; close it (values holding , : or | "
            'are written e.g. plan:path="a,b.json")'
        )
    parts.append(text[start:])
    return parts


def unquote(text: str) -> str:
    """``text`` with its quotes removed (``a"b,c"d`` -> ``ab,cd``), outer blanks stripped."""
    out, quote = [], ""
    for ch in text.strip():
        if quote:
            if ch == quote:
                quote = ""
            else:
                out.append(ch)
        elif ch in QUOTES:
            quote = ch
        else:
            out.append(ch)
    return "".join(out)


def parse_value(raw: str) -> list[str]:
    """The items of one argument value: split at ``|`` outside quotes, each unquoted."""
    return [unquote(part) for part in split_top(raw, "|")]


def quote(value: str) -> str:
    """``value`` as it must be written in a pipeline string to read back unchanged."""
    if not any(ch in SPECIAL for ch in value) and value == value.strip():
        return value
    q = '"' if '"' not in value else "'"
    if q in value:
        raise BadInputError(f"{value!r} holds both quote characters; it cannot be written")
    return f"{q}{value}{q}"


def spec_value(value: object) -> str:
    """A pass argument as pipeline text: list items joined with ``|``, each quoted as needed."""
    if isinstance(value, list | tuple):
        return "|".join(quote(str(v)) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return quote(str(value))
