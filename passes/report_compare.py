"""Which two models a report compares, and how: outputs checked when the second should
compute what the first computes, drift (reported, not judged) when they differ by design.

Rules (``drift_reason``): one model carries a ``drpopt.plan`` and the other none (an original
against its pruned model), the two carry plans that keep different channels, or the same
plan with different fine-grained patterns (``drpopt.pattern``) -- drift; otherwise a check.
Outputs are compared only when both models have the same input and output names and the
shapes both declare agree (``incomparable``).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import onnx

from drpopt.errors import DrpoptError

if TYPE_CHECKING:
    from drpopt.passes.report import ModelStats

log = logging.getLogger(__name__)


def _io(proto: onnx.ModelProto) -> tuple[dict[str, Any], dict[str, Any]]:
    def dims(info: onnx.ValueInfoProto) -> tuple | None:
        t = info.type.tensor_type
        if not t.HasField("shape"):
            return None
        return tuple(
            d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in t.shape.dim
        )

    init = {t.name for t in proto.graph.initializer}
    inputs = {i.name: dims(i) for i in proto.graph.input if i.name not in init}
    return inputs, {o.name: dims(o) for o in proto.graph.output}


def incomparable(model: onnx.ModelProto, reference: onnx.ModelProto) -> str | None:
    """Why the outputs of the two models cannot be compared, or None when they can: the
    input and output names must agree, and so must the shapes both models declare."""
    for kind, a, b in zip(("input", "output"), _io(model), _io(reference), strict=True):
        if set(a) != set(b):
            return f"{kind} names differ ({', '.join(a) or 'none'} vs {', '.join(b) or 'none'})"
        for name, shape in a.items():
            other = b[name]
            if shape is not None and other is not None and shape != other:
                show = ["x".join(map(str, s)) for s in (shape, other)]
                return f"{kind} '{name}' has shape {show[0]} vs {show[1]}"
    return None


def _plan_channels(plan: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    groups = [g for g in plan.get("groups", []) if isinstance(g, dict)]
    return sorted((str(g.get("key")), tuple(g.get("keep", []))) for g in groups)


def _plan_words(plan: dict[str, Any]) -> str:
    return f"rate {plan.get('rate')}, target {plan.get('target')}"


def _pattern(m: ModelStats) -> str | None:
    text = m.graph.metadata.get("drpopt.pattern")
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return "unreadable"
    if not isinstance(data, dict):
        return "unreadable"
    return f"{data.get('granularity')} at rate {data.get('rate')} (target {data.get('target')})"


def drift_reason(m: ModelStats, c: ModelStats) -> str | None:
    """Why ``m`` is expected to differ from ``c`` (so their comparison is drift, reported and
    not judged), or None when ``m`` should compute what ``c`` computes: one carries a plan
    and the other none (an original against its pruned model), the two carry plans that
    keep different channels (two different prunings), or only one carries a fine-grained
    pattern (``sparsify``'s single weights, n:m, blocks) or the two carry different ones."""
    pm, pc = m.plan(), c.plan()
    if pm is None and pc is None:
        return None
    if pm is None or pc is None:
        original, pruned = (c, m) if pc is None else (m, c)
        return (
            f"{original.name} carries no drpopt plan, so it is taken as the unpruned original "
            f"of {pruned.name} and differences are expected"
        )
    if "error" in pm or "error" in pc:
        return None
    if _plan_channels(pm) != _plan_channels(pc):
        return (
            f"the models carry different plans ({_plan_words(pm)} vs {_plan_words(pc)}), so "
            "their outputs differ by design; to check a compact model, compare it with the "
            "sparse model of the same plan (prune --plan)"
        )
    tm, tc = _pattern(m), _pattern(c)
    if tm != tc:
        return (
            f"the same plan, but fine-grained patterns differ ({m.name}: {tm or 'none'}, "
            f"{c.name}: {tc or 'none'}), so their outputs differ by design; to check, compare "
            "models pruned with the same --target"
        )
    return None


def compare_stats(
    m: ModelStats, c: ModelStats, rtol: float, atol: float, inputs: Any = None
) -> tuple[Any, str | None, str | None]:
    """(report or None, why not compared, why drift): ``m`` against ``c`` on ``inputs``
    (``(samples, description)``) or random ones. The third is ``drift_reason``: when set,
    differences are expected and are reported, not judged."""
    from drpopt.passes.verify import compare_models

    drift = drift_reason(m, c)
    why = incomparable(m.proto, c.proto)
    if why is not None:
        return None, why, drift
    feeds, desc = inputs if inputs is not None else (None, None)
    try:
        report = compare_models(c.proto, m.proto, feeds, rtol=rtol, atol=atol, inputs_desc=desc)
    except DrpoptError as err:
        why = " ".join(str(err).split())
        log.warning("report: the models could not be compared: %s", why)
        return None, why, drift
    return report, None, drift
