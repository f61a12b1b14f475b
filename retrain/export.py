"""Export a pruned torch model to ONNX: sparse (dense shapes with zeros) or compact.

Rules:
- the model is never changed: a CPU float32 copy in eval mode is exported; on that copy
  ``torch.nn.utils.prune`` reparametrisations are made permanent and drpopt mask buffers
  (``<param>_drpopt_mask``, ``drpopt_state``) are applied to their parameters and removed;
- the channel plan is read from the weights (:func:`plan_from_zeros`): in every prunable
  group, a channel whose producer parameter slices are all zero is pruned (a group keeps at
  least one channel), so any pruned checkpoint works, ours or another tool's;
- the export is ``torch.onnx.export`` (TorchScript trace, ``dynamo=False``, no constant
  folding, ``TrainingMode.PRESERVE`` on the eval copy so BatchNorm is not fused into Conv),
  done on a copy with distinct random values so that no initializer is merged with another
  of equal contents; the real values are then written into the initializers by name, which
  keeps every initializer named after its parameter or buffer;
- the plan and per-layer sparsity go into ``metadata_props`` (``drpopt.plan``,
  ``drpopt.sparsity``); ``compact`` removes the pruned channels (``CompactPass``);
  ``fold_batchnorm`` folds each BatchNorm into the Conv/Gemm before it
  (``FoldBatchNormPass``, as the recipes' eval-mode exports do), and ``CleanupPass`` always
  runs (shape inference, ``onnx.checker``);
- ``input_names`` / ``output_names`` name the graph's inputs and outputs as the caller's
  own exporter does (YOLOX's ``torch2onnx.py``: ``images`` / ``output``); by default they
  are ``input`` / ``output`` (``_0``, ``_1``, ... when there are several);
- onnxruntime's outputs on the example inputs must match torch's: ``max|ort - torch| <=
  atol + rtol * max|torch|`` per output, else ``CheckFailedError``; only then is the file
  written, atomically.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from drpopt.errors import BadInputError, CheckFailedError
from drpopt.ir.analysis import Analysis, analyze
from drpopt.ir.core import Graph
from drpopt.ir.from_onnx import from_onnx
from drpopt.ir.from_torch import _distinct_copy, _export, split_inputs, trace_module, unwrap
from drpopt.passes.plan import GroupPlan, Plan, group_key
from drpopt.retrain.builders import _short, load_builder  # noqa: F401 (load_builder: public here too)
from drpopt.retrain.pruner import MASK_SUFFIX, STATE_BUFFER

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What was written: the form, the plan, sizes before and after, the verification.

    ``params``/``macs`` are those of the written model, ``dense_params``/``dense_macs``
    those of the model before compaction (equal for a sparse export); ``nonzero_weights``
    counts the nonzero weights of Conv/Gemm/MatMul layers; ``max_abs_error`` and
    ``max_rel_error`` are the worst output's difference from torch (relative to
    ``max|torch output|``); ``plan_source`` and ``trace_path`` say how the plan and the
    graph were obtained.
    """

    path: Path
    form: str
    plan: Plan
    plan_source: str
    trace_path: str
    params: int
    macs: int
    nonzero_weights: int
    dense_params: int
    dense_macs: int
    max_abs_error: float
    max_rel_error: float
    rtol: float
    atol: float
    outputs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: form, channels pruned, parameters and the verification error."""
        return (
            f"{self.form} ONNX {self.path}: {self.plan.pruned_channels} channels pruned "
            f"({self.plan_source}), {self.params} parameters, {self.macs} MACs; outputs match "
            f"torch (max abs error {self.max_abs_error:.3g}, max rel error "
            f"{self.max_rel_error:.3g}, rtol {self.rtol:g})"
        )


# ---- the plan from zeros ----------------------------------------------------------------
def plan_from_zeros(model: Any, example_inputs: Any) -> Plan:
    """The channel plan implied by the zero weights of ``model`` (see the module rules).

    The model is traced in eval mode on a :func:`prepared_copy` (drpopt and
    ``torch.nn.utils.prune`` masks applied), so its groups are keyed as the Pruner keys them.
    """
    work, _ = prepared_copy(model)
    args, kwargs = _float32_inputs(example_inputs)
    trace = trace_module(work, kwargs or args)
    params = {name: p.detach().numpy() for name, p in work.named_parameters()}
    return plan_from_analysis(analyze(trace.graph), params)


def plan_from_analysis(analysis: Analysis, params: dict[str, np.ndarray]) -> Plan:
    """The plan of zero channels in ``analysis``'s prunable groups, reading the producer
    weight values from ``params`` (parameter name to array); groups whose producers are
    not among ``params`` are left whole."""
    groups: list[GroupPlan] = []
    eligible = 0
    for g in analysis.groups:
        if not g.prunable:
            continue
        producers = [m for m in g.members if m.role == "producer" and m.tensor in params]
        if not producers:
            continue
        eligible += g.size
        alive = np.zeros(g.size, dtype=bool)
        for m in producers:
            arr = np.asarray(params[m.tensor])
            rows = np.moveaxis(arr, m.axis, 0)[m.start : m.start + g.size * m.block]
            alive |= rows.reshape(g.size, -1).any(axis=1)
        keep = [int(j) for j in np.flatnonzero(alive)] or [0]
        if len(keep) < g.size:
            groups.append(GroupPlan(group_key(g), g.size, keep, g.producers))
    pruned = sum(len(gp.pruned) for gp in groups)
    return Plan(
        groups,
        rate=round(pruned / eligible, 6) if eligible else 0.0,
        criterion="zeros",
        settings={"source": "zero weights", "eligible_channels": eligible},
    )


# ---- preparing the copy -----------------------------------------------------------------
def prepared_copy(model: Any) -> tuple[Any, str]:
    """A float32 CPU eval-mode copy with pruning masks folded into the weights, and what
    masks it had: ``"drpopt masks"``, ``"torch.nn.utils.prune masks"`` or ``"zero weights"``.
    """
    import torch

    module = unwrap(model)
    # torch.nn.utils.prune keeps ``weight = weight_orig * weight_mask`` as a non-leaf tensor,
    # which deepcopy refuses; the copy gets a detached one (its forward recomputes it anyway)
    memo = {
        id(t): t.detach().clone()
        for m in module.modules()
        for t in vars(m).values()
        if isinstance(t, torch.Tensor) and not t.is_leaf
    }
    work = copy.deepcopy(module, memo).cpu().float().eval()
    source = "zero weights"
    if _fold_torch_prune(work):
        source = "torch.nn.utils.prune masks"
    from drpopt.retrain.masked_norm import keep_after_masks

    with torch.no_grad():
        for sub in work.modules():
            keep_after_masks(sub)
            sub._buffers.pop(STATE_BUFFER, None)
            for name in [n for n in sub._buffers if n.endswith(MASK_SUFFIX)]:
                mask = sub._buffers.pop(name)
                param = sub._parameters.get(name[: -len(MASK_SUFFIX)])
                if param is not None and mask is not None:
                    param.mul_((mask > 0.5).to(param))  # an EMA's averaged masks stay near 0/1
                    source = "drpopt masks"
    return work, source


def _fold_torch_prune(model: Any) -> bool:
    """Makes every ``torch.nn.utils.prune`` reparametrisation permanent; True if any."""
    from torch.nn.utils import prune

    found = False
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
                found = True
    return found


# ---- export -----------------------------------------------------------------------------
def _tensor_leaves(value: Any) -> list[Any]:
    import torch
    from torch.utils._pytree import tree_leaves

    return [v for v in tree_leaves(value) if isinstance(v, torch.Tensor)]


def _float32_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    import torch

    def cast(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            return v.float() if v.is_floating_point() else v
        return v

    args, kwargs = split_inputs(example_inputs)
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _names(prefix: str, count: int) -> list[str]:
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]


def _io_names(given: list[str] | None, prefix: str, count: int, what: str) -> list[str]:
    if given is None:
        return _names(prefix, count)
    names = list(given)
    if len(names) != count or len(set(names)) != len(names) or not all(names):
        raise BadInputError(
            f"{len(names)} {what} names {names} for {count} {what}s; give one distinct name "
            f"per {what} (e.g. --{what}-names images)"
        )
    return names


def _torch_export(
    model: Any,
    args: tuple,
    kwargs: dict,
    opset: int,
    n_inputs: int,
    n_outputs: int,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
) -> onnx.ModelProto:
    """``model`` exported from a distinct-valued copy, its real values put back by name."""
    clone = _distinct_copy(model).eval()
    proto = _export(
        clone,
        args,
        kwargs,
        opset,
        input_names=_io_names(input_names, "input", n_inputs, "input"),
        output_names=_io_names(output_names, "output", n_outputs, "output"),
    )
    real = {n: t for n, t in (*model.named_parameters(), *model.named_buffers())}
    for init in proto.graph.initializer:
        tensor = real.get(init.name)
        if tensor is not None and tuple(init.dims) == tuple(tensor.shape):
            arr = tensor.detach().cpu().numpy()
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return proto


def _first_tensor(args: tuple, kwargs: dict) -> Any:
    import torch

    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v
    raise BadInputError("the example inputs hold no tensor to export the model with")


def _export_with_fallback(
    work: Any,
    args: tuple,
    kwargs: dict,
    opset: int,
    names: tuple[list[str] | None, list[str] | None] = (None, None),
) -> tuple[onnx.ModelProto, list[Any], list[Any], str]:
    """(proto, input tensors, torch outputs, path): all inputs first, then the first tensor."""
    import torch

    attempts = [(args, kwargs, "all example inputs")]
    if len(_tensor_leaves((args, kwargs))) > 1 or kwargs:
        attempts.append(((_first_tensor(args, kwargs),), {}, "first tensor only"))
    errors = []
    for a, kw, how in attempts:
        try:
            with torch.no_grad():
                outputs = _tensor_leaves(work(*a, **kw))
            inputs = _tensor_leaves((a, kw))
            proto = _torch_export(work, a, kw, opset, len(inputs), len(outputs), *names)
        except BadInputError:
            raise
        except Exception as err:
            errors.append(f"{how}: {_short(err)}")
            log.info("export with %s failed: %s", how, err)
            continue
        return proto, inputs, outputs, f"torch.onnx.export (TorchScript trace, eval mode, {how})"
    raise BadInputError(
        f"{type(work).__name__} could not be exported by torch.onnx.export ({'; '.join(errors)}); "
        "give example inputs its forward accepts in eval mode"
    )


# ---- verification -----------------------------------------------------------------------
def _run_onnxruntime(
    proto: onnx.ModelProto, inputs: list[Any], input_names: list[str] | None = None
) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        wanted = {i.name for i in session.get_inputs()}  # the exporter drops unused inputs
        feeds = {
            name: t.detach().cpu().numpy()
            for name, t in zip(
                _io_names(input_names, "input", len(inputs), "input"), inputs, strict=True
            )
            if name in wanted
        }
        return session.run(None, feeds)
    except Exception as err:  # onnxruntime raises its own exception types
        raise CheckFailedError(
            f"onnxruntime cannot run the exported model: {_short(err)}; the export is broken "
            "(please report it with the model)"
        ) from err


def _verify(
    proto: onnx.ModelProto,
    inputs: list[Any],
    expected: list[Any],
    rtol: float,
    atol: float,
    input_names: list[str] | None = None,
) -> tuple[float, float, list[str]]:
    """(max abs error, max rel error, failures) of onnxruntime against torch per output."""
    from drpopt.passes.verify import _compare

    got = _run_onnxruntime(proto, inputs, input_names)
    names = [o.name for o in proto.graph.output]
    if len(got) != len(expected):
        return (
            float("inf"),
            float("inf"),
            [f"the ONNX model has {len(got)} outputs, torch {len(expected)}"],
        )
    worst_abs = worst_rel = 0.0
    failures = []
    for name, out, ref in zip(names, got, expected, strict=True):
        report = _compare(name, ref.detach().cpu().numpy(), np.asarray(out), rtol, atol)
        worst_abs = max(worst_abs, report.max_abs)
        worst_rel = max(worst_rel, report.max_rel)
        if not report.ok:
            failures.append(
                f"output '{name}': max abs error {report.max_abs:.3g}, max rel error "
                f"{report.max_rel:.3g}"
                + (
                    f" ({report.degenerate or report.message})"
                    if report.degenerate or report.message
                    else ""
                )
            )
    return worst_abs, worst_rel, failures


def _live_followers(analysis: Analysis, plan: Plan, params: dict[str, np.ndarray]) -> list[str]:
    """Planned groups whose pruned channels still have a nonzero follower parameter (a bias,
    a BatchNorm scale or shift): such channels carry a constant, so removing them changes
    the outputs unless an activation zeroes it."""
    found = []
    for g, gp in plan.resolve(analysis):
        pruned = gp.pruned
        for m in g.members:
            if m.role != "follower" or m.tensor not in params:
                continue
            arr = np.asarray(params[m.tensor])
            if np.moveaxis(arr, m.axis, 0)[m.indices(pruned)].any():
                found.append(f"{gp.key} ({m.tensor})")
                break
    return found


# ---- the entry point --------------------------------------------------------------------
def _output_path(path: str | os.PathLike, rtol: float, atol: float) -> Path:
    """``path`` once the tolerances are valid and its folder exists."""
    from drpopt.passes.verify import check_tolerances

    check_tolerances(rtol, atol)
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadInputError(f"{parent}: the output directory does not exist; create it first")
    return path


def _plan_of(
    analysis: Analysis, work: Any, plan: Plan | None, source: str
) -> tuple[Plan, str, list[str]]:
    """The plan to export (``plan``, else the one the zero weights of ``work`` give), where
    it came from, and the groups whose pruned channels still have live followers."""
    params = {n: p.detach().numpy() for n, p in work.named_parameters()}
    if plan is None:
        plan = plan_from_analysis(analysis, params)
    else:
        source = "given plan"
    return plan, source, _live_followers(analysis, plan, params)


def _rewrite(
    graph: Graph, plan: Plan, compact: bool, fold_batchnorm: bool, norms: set[str]
) -> Graph:
    """The exported graph with ``plan`` recorded, compacted (``compact``), BatchNorm folded
    (``fold_batchnorm``) and cleaned up."""
    from drpopt.passes import CleanupPass, CompactPass, PassManager
    from drpopt.passes.apply_masks import record_metadata
    from drpopt.passes.context import PipelineContext
    from drpopt.passes.fold_batchnorm import FoldBatchNormPass

    record_metadata(graph, plan)
    if not compact:
        from drpopt.retrain.masked_norm import mask_exported_layernorms

        mask_exported_layernorms(graph, plan, norms)
    passes = [CompactPass()] if compact else []
    passes += [FoldBatchNormPass()] if fold_batchnorm else []
    passes.append(CleanupPass())
    return PassManager(passes)(graph, context=PipelineContext(plan=plan)).model


def _refuse_mismatch(
    failures: list[str], live: list[str], compact: bool, rtol: float, atol: float
) -> None:
    """``CheckFailedError`` when onnxruntime's outputs differ from torch's (naming pruned
    channels whose biases still live when that explains it); a warning about such
    channels in a sparse export that matched."""
    if failures:
        hint = ""
        if compact and live:
            hint = (
                "; pruned channels with zero weights but nonzero biases or BatchNorm "
                f"parameters: {', '.join(live[:3])}{' ...' if len(live) > 3 else ''}; zero "
                "those too (the Pruner does) or export sparse"
            )
        raise CheckFailedError(
            f"the exported {'compact' if compact else 'sparse'} ONNX differs from torch "
            f"(rtol {rtol:g}, atol {atol:g}): {'; '.join(failures)}{hint}"
        )
    if live and not compact:
        log.warning(
            "groups %s have pruned channels with nonzero biases or BatchNorm parameters; "
            "their zeros are not whole dead channels",
            ", ".join(live),
        )


def export_onnx(
    model: Any,
    example_inputs: Any,
    path: str | os.PathLike,
    compact: bool = False,
    opset: int = 17,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    plan: Plan | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    fold_batchnorm: bool = False,
) -> ExportResult:
    """Exports ``model`` (a pruned torch module) to ``path`` as sparse or compact ONNX.

    ``plan`` overrides the plan read from the zero weights; ``input_names`` /
    ``output_names`` name the graph's inputs and outputs; ``fold_batchnorm`` folds BatchNorm
    into the layer before it. Raises ``CheckFailedError``
    when onnxruntime's outputs differ from torch's (nothing is written then) and
    ``BadInputError`` when the model cannot be exported or the output cannot be written.
    """
    from drpopt.ir.files import save_model
    from drpopt.ir.to_onnx import to_onnx
    from drpopt.passes.common import get_analysis, layer_sparsity

    path = _output_path(path, rtol, atol)
    work, source = prepared_copy(model)
    args, kwargs = _float32_inputs(example_inputs)
    proto, inputs, expected, trace_path = _export_with_fallback(
        work, args, kwargs, opset, (input_names, output_names)
    )
    graph: Graph = from_onnx(proto, where=type(work).__name__)
    analysis = get_analysis(graph)
    plan, source, live = _plan_of(analysis, work, plan, source)
    norms = {f"{n}.weight" for n, m in work.named_modules() if getattr(m, "drpopt_masked_norm", 0)}
    final = _rewrite(graph, plan, compact, fold_batchnorm, norms)
    out = to_onnx(final)
    max_abs, max_rel, failures = _verify(out, inputs, expected, rtol, atol, input_names)
    _refuse_mismatch(failures, live, compact, rtol, atol)
    save_model(out, path)
    stats = get_analysis(final)
    exported = ExportResult(
        path=path,
        form="compact" if compact else "sparse",
        plan=plan,
        plan_source=source,
        trace_path=trace_path,
        params=stats.params,
        macs=stats.macs,
        nonzero_weights=sum(s.total - s.zeros for s in layer_sparsity(final)),
        dense_params=analysis.params,
        dense_macs=analysis.macs,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        rtol=rtol,
        atol=atol,
        outputs=[o.name for o in out.graph.output],
    )
    log.info("export: %s", exported.summary())
    return exported
