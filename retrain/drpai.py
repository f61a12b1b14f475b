"""A drop-in for the DRP-AI Extension Pack's ``drpai_compaction_tool.pytorch`` API.

Scripts written for the Extension Pack run by changing only the import line::

    from drpopt.retrain.drpai import (
        make_pruning_layer_list, Pruner, get_model_info, load_pruned_state_dict,
        deepcopy_model,
    )

Rules (the idioms of the public examples):
- ``make_pruning_layer_list(model, input_data=...)`` traces once; the returned list holds
  the trace, so ``Pruner`` does not trace again. ``input_data`` is a list of tensors or a
  dict of forward kwargs (``{"x": imgs, "targets": targets}`` for YOLOX in training mode);
  ``input_size=[shape, ...]`` makes random inputs instead; the list names the layers the
  DRP-AI profile prunes (channels and fine-grained, ``retrain/share.py``);
- ``final_pr`` is the share of zero weights in the pruning layers, reached with the target
  profile's pattern (default ``target="drpai"``: aligned channels, then fine-grained zeros
  inside the kept channels; ``retrain/share.py`` says how the two split it);
- ``Pruner(model, pruning_layer_list=..., final_pr=0.7)`` prunes one-shot to ``final_pr`` at
  the first ``update()``; ``schedule="cubic"|"linear"`` with ``end_step`` prunes gradually;
- ``Pruner(model, pruning_layer_list=..., final_pr=0.0)`` before ``model.load_state_dict``
  of a pruned checkpoint: the mask buffers exist, so strict loading restores the masks, and
  later ``update()`` calls never change them (a lower rate never revives channels);
- masks are bool buffers, shared with ``deepcopy_model`` copies, so an EMA that averages
  every floating entry leaves them alone; float masks of older checkpoints (or averaged
  ones) are binarised at 0.5 on loading and applied at once;
- a layer removed from the list keeps its output channels (the groups it produces);
- LayerNorms over pruned channels count only the kept ones (``MaskedLayerNorm``, as the
  base Pruner's default ``masked_layernorm``), so a transformer's embedding width is
  pruned too and ``final_pr`` stays the zero share of the listed layers;
  ``make_pruning_layer_list(..., masked_layernorm=False)`` leaves the LayerNorms alone;
- ``get_model_info`` prints a rich table and returns the :class:`ModelInfo`; its second
  argument may be ``input_data`` or a list of shapes (``get_model_info(model, [(1, 3, 640,
  640)])``, as the recipes' ``torch2onnx.py`` calls it).
"""

from __future__ import annotations

import logging
import numbers
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from drpopt.errors import BadInputError
from drpopt.ir.from_torch import TorchTrace, trace_module, unwrap
from drpopt.retrain import info as _info
from drpopt.retrain.buffers import STATE_SCALE
from drpopt.retrain.checkpoint import (
    _apply_own_masks,
    deepcopy_model,
    is_pruning_key,
    load_pruned_state_dict,
)
from drpopt.retrain.ema import ModelEMA
from drpopt.retrain.info import ModelInfo
from drpopt.retrain.pruner import Pruner as _BasePruner
from drpopt.retrain.schedule import Schedule
from drpopt.retrain.share import ShareSplit, listed_layers

log = logging.getLogger(__name__)

__all__ = [
    "ModelInfo",
    "PrunedModelEMA",
    "Pruner",
    "PruningLayerList",
    "deepcopy_model",
    "get_model_info",
    "load_pruned_state_dict",
    "make_pruning_layer_list",
]

# Pruners by id of the (unwrapped) model they are attached to, for get_model_info.
_ATTACHED: weakref.WeakValueDictionary[int, Pruner] = weakref.WeakValueDictionary()


class PruningLayerList(list):
    """The prunable layers (module names) of a model, holding the trace they came from.

    Rules: a layer is listed when the DRP-AI profile prunes it: it produces the channels of
    a group the analysis may prune, or the profile's fine-grained pattern touches it (not
    the first or the final prediction layers); ``example_inputs`` and ``trace`` are kept for
    the Pruner; ``layers`` is the list as first made: a removed name is left dense (no
    pattern, the groups it produces whole).
    """

    def __init__(self, names: Iterable[str], trace: TorchTrace, example_inputs: Any) -> None:
        super().__init__(names)
        self.trace = trace
        self.example_inputs = example_inputs
        self.layers: tuple[str, ...] = tuple(self)
        self.nodes: dict[str, list[str]] = {}

    def removed(self) -> list[str]:
        """Names in the original list that the user has since removed."""
        now = set(self)
        return [name for name in self.layers if name not in now]


def _is_shape(obj: Any) -> bool:
    return (
        isinstance(obj, Sequence)
        and not isinstance(obj, str)
        and len(obj) > 0
        and all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in obj)
    )


def _inputs(input_data: Any, input_size: Any) -> Any:
    """Forward inputs from ``input_data`` (as given) or random tensors of ``input_size``;
    ``input_data`` that is a list of shapes (no tensors) is read as ``input_size``."""
    import torch

    if (
        input_data is not None
        and input_size is None
        and isinstance(input_data, list | tuple)
        and input_data
        and (all(_is_shape(s) for s in input_data) or _is_shape(input_data))
    ):
        input_data, input_size = None, input_data
    if input_data is not None:
        if isinstance(input_data, torch.Tensor | dict):
            return input_data
        if isinstance(input_data, Sequence) and not isinstance(input_data, str):
            return list(input_data)
        raise BadInputError(
            f"input_data of type {type(input_data).__name__} is not supported; give a list of "
            'tensors or a dict of forward keyword arguments (e.g. {"x": imgs})'
        )
    if input_size is not None:
        shapes = list(input_size)
        if shapes and all(isinstance(d, numbers.Integral) for d in shapes):
            shapes = [shapes]
        try:
            gen = torch.Generator().manual_seed(0)
            return [torch.randn(tuple(int(d) for d in s), generator=gen) for s in shapes]
        except (TypeError, ValueError, RuntimeError) as err:
            raise BadInputError(
                f"input_size {input_size!r} is not a list of shapes; give e.g. [[1, 3, 224, 224]]"
            ) from err
    raise BadInputError(
        "give input_data or input_size: input_data is a list of tensors or a dict of forward "
        "kwargs, input_size a list of input shapes (e.g. [[1, 3, 224, 224]])"
    )


def make_pruning_layer_list(
    model: Any, input_data: Any = None, input_size: Any = None, masked_layernorm: bool = True
) -> PruningLayerList:
    """Traces ``model`` (DDP unwrapped, in its current mode) and lists its prunable layers;
    ``masked_layernorm`` as the Pruner's (the LayerNorm width prunable, default on)."""
    from drpopt.retrain.masked_norm import maskable_weights

    module = unwrap(model)
    example = _inputs(input_data, input_size)
    trace = trace_module(
        module, example, masked_norms=maskable_weights(module) if masked_layernorm else None
    )
    names = listed_layers(trace.graph, (n for n, _ in module.named_parameters()))
    layers = PruningLayerList(names, trace, example)
    layers.nodes = names
    log.info("%d prunable layers (%s)", len(layers), trace.path)
    return layers


def _check_rate(final_pr: Any) -> float:
    if isinstance(final_pr, bool) or not isinstance(final_pr, numbers.Real):
        raise BadInputError(f"final_pr {final_pr!r} is not a number; give e.g. final_pr=0.7")
    rate = float(final_pr)
    if not (0.0 <= rate < 1.0):
        raise BadInputError(
            f"final_pr {final_pr} is outside [0, 1): it is the share of the pruning layers' "
            "weights made zero (give e.g. 0.7 to prune 70%)"
        )
    return rate


def _check_schedule(
    schedule: str | Schedule | None, rate: float, end_step: int | None
) -> str | Schedule:
    """The schedule the Extension Pack ``Pruner`` was given, checked (None: ``"oneshot"``)."""
    if schedule is None:
        schedule = "oneshot"
    if isinstance(schedule, Schedule):
        if schedule.final_rate != rate:
            raise BadInputError(
                f"the schedule's final rate {schedule.final_rate} differs from final_pr {rate}"
            )
    elif schedule not in ("oneshot", "cubic", "linear"):
        raise BadInputError(f"schedule {schedule!r} is not one of None, 'cubic', 'linear'")
    elif schedule != "oneshot" and end_step is None:
        raise BadInputError(
            f"a {schedule} schedule needs end_step (the update() step the final rate is reached at)"
        )
    return schedule


class Pruner(_BasePruner):
    """``Pruner(model, pruning_layer_list, final_pr=0.7)`` as in the Extension Pack examples.

    ``schedule``: None (one-shot at ``start_step``, i.e. the first ``update()``), or
    ``"cubic"`` / ``"linear"`` from ``start_step`` to ``end_step`` (required) every
    ``frequency`` steps, or a :class:`Schedule` (its final rate must be ``final_pr``). Other
    keyword arguments go to :class:`drpopt.retrain.pruner.Pruner`
    (``criterion``, ``target``, ``exclude``, ...).
    """

    def __init__(
        self,
        model: Any,
        pruning_layer_list: PruningLayerList | None = None,
        final_pr: float = 0.7,
        schedule: str | Schedule | None = None,
        start_step: int = 0,
        end_step: int | None = None,
        frequency: int = 1,
        **kwargs: Any,
    ) -> None:
        rate = _check_rate(final_pr)
        if not isinstance(pruning_layer_list, PruningLayerList):
            raise BadInputError(
                "pruning_layer_list must come from make_pruning_layer_list(model, "
                "input_data=...) (it holds the trace of the model)"
            )
        schedule = _check_schedule(schedule, rate, end_step)
        module = unwrap(model)
        have = {n for n, _ in [*module.named_parameters(), *module.named_buffers()]}
        missing = {n for n in pruning_layer_list.trace.tensor_names - have if not is_pruning_key(n)}
        if missing:
            raise BadInputError(
                f"pruning_layer_list was made from another model (this one lacks "
                f"{sorted(missing)[:5]}); call make_pruning_layer_list on this model"
            )
        kwargs.pop("trace", None)
        kwargs.setdefault("target", "drpai")
        kwargs.setdefault(
            "masked_layernorm", bool(pruning_layer_list.trace.graph.meta.get("masked_norms"))
        )
        super().__init__(
            module,
            pruning_layer_list.example_inputs,
            final_rate=rate,
            schedule=schedule,
            start_step=start_step,
            end_step=end_step,
            frequency=frequency,
            trace=pruning_layer_list.trace,
            **kwargs,
        )
        self.pruning_layer_list = pruning_layer_list
        self.example_inputs = pruning_layer_list.example_inputs
        self._drop_removed_layers()
        params = dict(self.model.named_parameters())
        self.share_params = [
            f"{name}.weight" for name in pruning_layer_list if f"{name}.weight" in params
        ]
        shapes = {n: tuple(params[n].shape) for n in self.share_params}
        shapes.update({x.param: tuple(params[x.param].shape) for x in self.pattern_layers})
        self.splitter = ShareSplit(self.groups, shapes, self.pattern)
        self._hooks.append(self.model.register_load_state_dict_post_hook(_after_load))
        _ATTACHED[id(self.model)] = self

    def _drop_removed_layers(self) -> None:
        """Layers the user removed from the list are left dense: the groups they produce and
        their fine-grained pattern; their mask buffers stay (all ones), so checkpoints keep
        the same keys."""
        removed = self.pruning_layer_list.removed()
        drop = {n for name in removed for n in self.pruning_layer_list.nodes.get(name, [])}
        if not drop:
            return
        kept = [
            (g, key)
            for g, key in zip(self.groups, self.keys, strict=True)
            if not set(g.producers) & drop
        ]
        self.groups = [g for g, _ in kept]
        self.keys = [key for _, key in kept]
        self.pattern_layers = [x for x in self.pattern_layers if x.node not in drop]
        log.info("layers removed from the list stay dense: %s", ", ".join(removed))

    @property
    def final_pr(self) -> float:
        return self.schedule.final_rate

    @property
    def rate(self) -> float:
        """The weight share the masks were last computed for (``final_pr`` once pruned)."""
        return int(self.state[2].item()) / STATE_SCALE

    def update(self) -> None:
        """Call at the start of every iteration: advances the schedule; at its update steps
        the share it asks for is split into a channel rate and per-layer pattern rates."""
        step = self.step
        if self.schedule.is_update_step(step):
            share = self.schedule.rate(step)
            if share > self.rate + 1e-12:
                rate, pattern = self.splitter.split(share, [x.param for x in self.pattern_layers])
                final = step >= self.schedule.end or self.schedule.kind == "oneshot"
                self.prune_to(max(rate, self.channel_rate), pattern, final)
                self.state[2] = int(round(share * STATE_SCALE))
        self.state[0] += 1

    def info(self) -> ModelInfo:
        """The model's per-layer sparsity and MACs on the pruner's own trace."""
        return _info.pruner_info(self)

    def remove(self) -> None:
        """Detaches the hooks (masks stay as buffers)."""
        super().remove()
        if _ATTACHED.get(id(self.model)) is self:
            del _ATTACHED[id(self.model)]


class PrunedModelEMA(ModelEMA):
    """The recipes' ``PrunedModelEMA(ModelEMA)``: YOLOX's EMA over a ``deepcopy_model`` copy.

    ``PrunedModelEMA(model, decay=0.9999, updates=0)`` as YOLOX's ``ModelEMA``; the copy
    shares the model's masks, and every update keeps the EMA's pruned weights exactly zero
    (see :class:`drpopt.retrain.ema.ModelEMA`).
    """

    def __init__(
        self, model: Any, decay: float = 0.9999, updates: int = 0, tau: float = 2000
    ) -> None:
        super().__init__(model, decay=decay, tau=tau, updates=updates)


def _after_load(module: Any, _incompatible: Any) -> None:
    """After ``load_state_dict``: masks binarised at 0.5 and applied to their weights."""
    _apply_own_masks(module)


def attached_pruner(model: Any) -> Pruner | None:
    """The drop-in Pruner attached to ``model`` (DDP unwrapped), if any."""
    return _ATTACHED.get(id(unwrap(model)))


def get_model_info(model: Any, input_data: Any = None, input_size: Any = None) -> ModelInfo:
    """Prints (rich) and returns the per-layer sparsity and MACs of ``model``.

    Rules: with neither ``input_data`` nor ``input_size`` the trace of the Pruner attached to
    the model is reused; the pruning rates are shown when a Pruner is attached.
    """
    from rich.console import Console

    module = unwrap(model)
    pruner = attached_pruner(module)
    if input_data is None and input_size is None:
        if pruner is None:
            raise BadInputError(
                "get_model_info needs input_data or input_size (no Pruner is attached to the "
                "model whose trace could be reused)"
            )
        result = _info.get_model_info(module, pruner=pruner)
    else:
        result = _info.get_model_info(module, _inputs(input_data, input_size), pruner=pruner)
    Console().print(result.table())
    return result
