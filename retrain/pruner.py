"""The Pruner: owns the channel masks of a torch model during fine-tuning in the user's loop.

Rules:
- groups come from the torch frontend (``ir/from_torch.py``) and the same analysis as the
  ONNX side; the target profile and the arguments resolve once into the ``SelectionPolicy``
  of the ``mask`` pass (``passes/policy.py``): groups it leaves whole (locked, a dense layer
  by ``keep_first``/``keep_last``, ``dense_ops`` or ``exclude``) and groups whose producing
  weights are not parameters are left whole;
- each masked parameter gets a ``bool`` buffer ``<param>_drpopt_mask`` on its module, and
  the root module an ``int64`` buffer ``drpopt_state`` (schedule step, current rates; see
  ``retrain/buffers.py``): ``model.state_dict()`` is the whole checkpoint, resuming restores
  masks and schedule position exactly, and an EMA that averages every floating-point entry
  leaves the pruning state alone;
- ``update()`` (start of every iteration) advances the schedule; at an update step the
  channels are scored (``l1``/``l2``/``bn-gamma``/``random``, as the ``score`` pass) and
  ``choose_channels`` (the ``mask`` pass's function: ``uniform`` or ``global`` allocation)
  picks each group's channels among those still kept (a pruned channel is never revived
  unless ``allow_unprune``); under torch.distributed the choice of rank 0 is broadcast;
- masks are enforced at all times: pruned weights are zeroed when masks change and after
  every step of an optimizer that holds a masked parameter (a global step hook, so
  optimizers built before the Pruner work; other optimizers are left alone), and gradients
  of pruned weights are zeroed by tensor hooks; only parameters with a mask are touched,
  with one fused multiply per step;
- a fine-grained pattern (``granularity`` ``nm``/``block``/``unstructured``, default: the
  target profile's) composes with the channel groups: its weights (the profile's targeted
  Conv/Linear layers) get mask buffers too, and the pattern is multiplied into the same
  masks (``retrain/patterns.py``), so enforcement, checkpoints, EMA and export are unchanged.
  One rule drives both parts: the channel part follows the schedule to ``final_rate`` (0: no
  channel pruning) and the pattern part follows the same schedule (same kind, steps and
  progress) to its own final rate (``nm``: ``1 - n/m``, exact ``n:m`` at the schedule's last
  step; ``block``/``unstructured``: ``pattern_rate``, the share of the channel-kept weights
  zeroed); at every update step channels are chosen first, then the pattern; the pattern
  layers get their mask buffers whenever the profile has a pattern (also at rate 0, so a
  pruned checkpoint loads strictly into ``Pruner(..., final_rate=0)``);
- ``finalize()`` zeroes the weights for good, removes hooks and buffers, and leaves a plain
  module whose ``state_dict`` has the original keys;
- ``masked_layernorm`` (on by default, as the ONNX path prunes a LayerNorm's width):
  LayerNorms over pruned channels become ``MaskedLayerNorm`` (``retrain/masked_norm.py``:
  statistics over the kept channels, as the compact model computes them; still so after
  ``finalize``, in ``deepcopy_model``/EMA copies and in a model a checkpoint is loaded
  into), and the analysis prunes their channels; ``masked_layernorm=False`` leaves every
  module's class untouched and those channels whole. With a ``trace`` given, the trace
  decides which LayerNorms are masked (it was made with or without them).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from drpopt.errors import BadInputError
from drpopt.ir.analysis import analyze
from drpopt.ir.channels import Group
from drpopt.ir.from_torch import TorchTrace, trace_module, unwrap
from drpopt.passes.mask import eligible_groups
from drpopt.passes.plan import GroupPlan, Plan, group_key
from drpopt.passes.policy import (
    SelectionPolicy,
    choose_channels,
    pattern_profile,
    weight_shapes,
)
from drpopt.passes.score import group_scores
from drpopt.passes.targets import TargetProfile, get_target
from drpopt.retrain.buffers import (
    MASK_SUFFIX,
    STATE_BUFFER,
    STATE_SCALE,
    kept,
    legacy_load_hook,
    legacy_state,
    new_state,
    share_with_copies,
)
from drpopt.retrain.hooks import (
    binarize_hook,
    broadcast,
    grad_hook,
    weak_hook,
    zero_optimizer_state,
)
from drpopt.retrain.patterns import PatternLayer, pattern_layers, pattern_masks
from drpopt.retrain.schedule import Schedule, as_schedule

log = logging.getLogger(__name__)

__all__ = ["MASK_SUFFIX", "STATE_BUFFER", "Pruner"]

MASKED_ROLES = ("producer", "consumer", "follower")


@dataclass
class _Masked:
    name: str
    module: Any
    attr: str
    param: Any
    mask: Any
    factor: Any = None  # the mask in the parameter's dtype (what the multiplies use)
    version: int = -1  # the mask's _version when ``factor`` was made

    def fresh_factor(self) -> Any:
        """``factor``, remade if the mask buffer was written since (load, prune, swap)."""
        mask = getattr(self.module, self.attr + MASK_SUFFIX, None)
        if mask is not None and mask is not self.mask:
            self.mask, self.version = mask, -1  # replaced (e.g. a load with assign=True)
        if self.factor is None or self.version != self.mask._version:
            self.factor = kept(self.mask).to(self.param.dtype)
            self.version = self.mask._version
        return self.factor


def _owner(model: Any, name: str) -> tuple[Any, str]:
    *path, attr = name.split(".")
    module = model
    for part in path:
        module = getattr(module, part)
    return module, attr


class Pruner:
    """Gradual (or one-shot) structured pruning of ``model`` to ``final_rate``.

    ``masked_layernorm`` (default on): the ``nn.LayerNorm`` modules over a pruned channel
    axis count only the kept channels (they become ``retrain.masked_norm.MaskedLayerNorm``),
    so the channels they normalise (a transformer's embedding width) can be pruned, as the
    ONNX path prunes them; ``False`` leaves the modules untouched and those channels whole.

    ``granularity``, ``pattern_rate``, ``n``, ``m``, ``block`` and ``scope`` override the
    target profile's fine-grained pattern (see the module docstring); ``pattern_rate`` is for
    ``block``/``unstructured`` (``nm`` zeroes ``1 - n/m``), ``scope`` (``layer``/``global``)
    for ``unstructured``.
    """

    def __init__(
        self,
        model: Any,
        example_inputs: Any,
        final_rate: float = 0.7,
        schedule: str | Schedule = "oneshot",
        start_step: int = 0,
        end_step: int | None = None,
        frequency: int = 1,
        target: str = "generic",
        criterion: str = "l2",
        allocation: str = "uniform",
        exclude: list[str] | tuple[str, ...] = (),
        keep_first: bool | None = None,
        keep_last: bool | None = None,
        allow_unprune: bool = False,
        seed: int = 0,
        trace: TorchTrace | None = None,
        granularity: str | None = None,
        pattern_rate: float | None = None,
        n: int | None = None,
        m: int | None = None,
        block: int | None = None,
        scope: str | None = None,
        masked_layernorm: bool = True,
    ) -> None:
        pattern_args = (granularity, pattern_rate, n, m, block, scope)
        self.model = unwrap(model)
        norms = _norms_to_mask(self.model, masked_layernorm, trace)
        self.schedule = as_schedule(schedule, final_rate, start_step, end_step, frequency)
        self.profile = get_target(target)
        self.policy = SelectionPolicy.resolve(
            self.profile,
            rate=self.schedule.final_rate,
            allocation=allocation,
            exclude=exclude,
            keep_first=keep_first,
            keep_last=keep_last,
        )
        if criterion not in ("l1", "l2", "bn-gamma", "random"):
            raise BadInputError(f"criterion {criterion!r} is not one of l1, l2, bn-gamma, random")
        self.criterion = criterion
        self.allow_unprune = allow_unprune
        self._rng = np.random.default_rng(seed)
        self.trace = trace or trace_module(self.model, example_inputs, masked_norms=norms)
        self.graph = self.trace.graph
        self.analysis = analyze(self.graph)
        self._attach_masks(pattern_args, list(exclude))
        self.masked_norms = _use_masked_norms(self.model, set(self._masked) & norms)
        self._install_hooks()
        self.example_inputs = example_inputs
        share_with_copies(self.model)
        log.info(
            "Pruner: %d groups, %d masked parameters, %s",
            len(self.groups),
            len(self._masked),
            self.trace.path,
        )

    def _attach_masks(self, pattern_args: tuple, exclude: list[str]) -> None:
        """Chooses the groups (and the fine-grained pattern's layers) to prune and gives
        every parameter they touch a mask buffer."""
        params = dict(self.model.named_parameters())
        self.groups: list[Group] = [
            g
            for g in eligible_groups(self.graph, self.analysis.groups, self.policy)
            if self._mappable(g, params)
        ]
        self.keys = [group_key(g) for g in self.groups]
        self._shapes = weight_shapes(self.graph, self.groups)
        self._masked: dict[str, _Masked] = {}
        for g in self.groups:
            for member in g.members:
                if member.role in MASKED_ROLES and member.tensor in params:
                    self._attach_mask(member.tensor, params[member.tensor])
        self.pattern = _pattern_profile(self.profile, *pattern_args)
        self.pattern_schedule = replace(
            self.schedule, final_rate=self.pattern.pattern_rate, initial_rate=0.0
        )
        self.pattern_layers: list[PatternLayer] = (
            pattern_layers(self.graph, self.pattern, exclude, params)
            if self.pattern.granularity != "channel"
            else []
        )
        for layer in self.pattern_layers:
            self._attach_mask(layer.param, params[layer.param])

    def _install_hooks(self) -> None:
        """The state buffer, and the hooks that keep masked weights, their gradients and
        optimizer moments at zero and binarise masks loaded from a checkpoint."""
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        if not hasattr(self.model, STATE_BUFFER):
            self.model.register_buffer(STATE_BUFFER, new_state())
        else:
            self.model.register_buffer(STATE_BUFFER, legacy_state(self.state))
        self._hooks: list[Any] = [self.model.register_load_state_dict_pre_hook(legacy_load_hook)]
        for entry in self._masked.values():
            self._hooks.append(entry.param.register_hook(grad_hook(entry)))
        self._optimizers: weakref.WeakSet = weakref.WeakSet()
        self._owns: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._param_ids = {id(e.param) for e in self._masked.values()}
        self._hooks.append(register_optimizer_step_pre_hook(weak_hook(self, "_before_step")))
        self._hooks.append(register_optimizer_step_post_hook(weak_hook(self, "_after_step")))
        self._hooks.append(self.model.register_load_state_dict_post_hook(binarize_hook(self)))

    def _attach_mask(self, name: str, param: Any) -> None:
        """Gives ``param`` its mask buffer (all ones; kept if a checkpoint already made it)."""
        import torch

        if name in self._masked:
            return
        module, attr = _owner(self.model, name)
        buf_name = attr + MASK_SUFFIX
        if not hasattr(module, buf_name):
            mask = torch.ones(param.shape, dtype=torch.bool, device=param.device)
            module.register_buffer(buf_name, mask)
        elif getattr(module, buf_name).dtype != torch.bool:  # an older drpopt's float mask
            module.register_buffer(buf_name, kept(getattr(module, buf_name)).detach().clone())
        self._masked[name] = _Masked(name, module, attr, param, getattr(module, buf_name))

    def _holds_masked(self, optimizer: Any) -> bool:
        """Whether ``optimizer`` updates one of the masked parameters (cached per groups)."""
        groups = getattr(optimizer, "param_groups", None)
        if groups is None:
            return False
        cached = self._owns.get(optimizer)
        if cached is not None and cached[0] == len(groups):
            return cached[1]
        holds = any(id(p) in self._param_ids for g in groups for p in g["params"])
        self._owns[optimizer] = (len(groups), holds)
        return holds

    def _before_step(self, optimizer: Any) -> None:
        if not self._holds_masked(optimizer):
            return
        if optimizer not in self._optimizers:
            # first sight (a fresh or resumed optimizer): moments of pruned weights go to zero
            self._optimizers.add(optimizer)
            import torch

            with torch.no_grad():
                zero_optimizer_state([optimizer], self._masked.values())

    def _after_step(self, optimizer: Any) -> None:
        if not self._holds_masked(optimizer):
            return
        self._optimizers.add(optimizer)
        self.apply_masks()

    def binarize_masks(self) -> None:
        """Masks back to exact 0/1 (a checkpoint from an averaging EMA holds 0.9991s)."""
        import torch

        with torch.no_grad():
            for e in self._masked.values():
                if e.mask.dtype != torch.bool:
                    e.mask.copy_(kept(e.mask).to(e.mask.dtype))

    # ---- state ----------------------------------------------------------------------
    @property
    def state(self) -> Any:
        return getattr(self.model, STATE_BUFFER)

    @property
    def step(self) -> int:
        return int(self.state[0].item())

    @property
    def channel_rate(self) -> float:
        """The channel rate the masks were last computed for."""
        return int(self.state[1].item()) / STATE_SCALE

    @property
    def rate(self) -> float:
        """The rate the masks were last computed for (the channel rate)."""
        return self.channel_rate

    @staticmethod
    def _mappable(g: Group, params: dict[str, Any]) -> bool:
        return any(m.role == "producer" and m.tensor in params for m in g.members)

    def keep_sets(self) -> dict[str, list[int]]:
        """The channels each group keeps, read from the mask buffers."""
        out = {}
        for g, key in zip(self.groups, self.keys, strict=True):
            m = next(m for m in g.members if m.role == "producer" and m.tensor in self._masked)
            mask = kept(self._masked[m.tensor].mask).detach().cpu().numpy()
            moved = np.moveaxis(mask, m.axis, 0)[m.start : m.start + g.size * m.block]
            alive = moved.reshape(g.size, -1).any(axis=1)
            out[key] = [int(j) for j in np.flatnonzero(alive)]
        return out

    @property
    def plan(self) -> Plan:
        """The current masks as a sparsity plan (the format the ONNX passes apply)."""
        keep = self.keep_sets()
        return Plan(
            [
                GroupPlan(key, g.size, keep[key], g.producers)
                for g, key in zip(self.groups, self.keys, strict=True)
                if len(keep[key]) < g.size
            ],
            rate=self.channel_rate,
            criterion=self.criterion,
            allocation=self.policy.allocation,
            target=self.policy.target,
            settings={**self.policy.settings(), "step": self.step},
        )

    def info(self) -> Any:
        """Per-layer and total sparsity, parameters, MACs, current and final rate."""
        from drpopt.retrain.info import pruner_info

        return pruner_info(self)

    # ---- the schedule -----------------------------------------------------------------
    def update(self) -> None:
        """Call at the start of every iteration: advances the schedule, prunes at its steps."""
        step = self.step
        if self.schedule.is_update_step(step):
            target = self.schedule.rate(step)
            pattern = self.pattern_schedule.rate(step) if self.pattern_layers else 0.0
            if (
                target > self.channel_rate + 1e-12
                or (self.allow_unprune and target != self.channel_rate)
                or pattern > 0
            ):
                final = step >= self.schedule.end or self.schedule.kind == "oneshot"
                self.prune_to(target, pattern, final)
        self.state[0] += 1

    def prune_to(
        self, rate: float, pattern: float | dict[str, float] | None = None, final: bool = True
    ) -> None:
        """Recomputes the masks for ``rate`` now and applies them, with the fine-grained
        pattern at ``pattern`` (default: its final rate; a dict gives each pattern layer's
        parameter its own rate; ``final``: exact ``n:m``)."""
        import torch

        if pattern is None:
            pattern = self.pattern.pattern_rate
        previous = {name: kept(e.mask).detach().cpu().numpy() for name, e in self._masked.items()}
        keep = self.keep_sets()
        scores = self.scores()
        new = self.choose(scores, rate, None if self.allow_unprune else keep)
        new = broadcast(new)
        self._write_masks(new)
        if self.pattern_layers and (
            any(v > 0 for v in pattern.values()) if isinstance(pattern, dict) else pattern > 0
        ):
            self._write_pattern(previous, pattern, final)
        self.state[1] = int(round(rate * STATE_SCALE))
        self.apply_masks()
        with torch.no_grad():
            zero_optimizer_state(self._optimizers, self._masked.values())

    def scores(self) -> dict[str, np.ndarray]:
        """Each group's channel scores (``criterion``) from the parameters as they are now."""
        self._load_weights()
        return {
            key: group_scores(self.graph, g, self.criterion, self._rng)
            for g, key in zip(self.groups, self.keys, strict=True)
        }

    def choose(
        self,
        scores: dict[str, np.ndarray],
        rate: float,
        candidates: dict[str, list[int]] | None = None,
    ) -> dict[str, list[int]]:
        """The channels each group keeps at ``rate`` from ``scores`` (higher: keep), by the
        policy the ``mask`` pass uses (``choose_channels``); ``candidates``: the channels
        still allowed per group (default: all)."""
        return choose_channels(
            self.groups, scores, self.policy.with_rate(rate), candidates, self._shapes
        )

    def _load_weights(self) -> None:
        """The trace graph's constants take the parameters' current values (for scoring)."""
        for name, entry in self._masked.items():
            value = self.graph.values.get(name)
            if value is not None:
                value.const = entry.param.detach().float().cpu().numpy()

    def _write_masks(self, keep: dict[str, list[int]]) -> None:
        import torch

        arrays = {
            name: np.ones(tuple(e.param.shape), dtype=bool) for name, e in self._masked.items()
        }
        for g, key in zip(self.groups, self.keys, strict=True):
            pruned = sorted(set(range(g.size)) - set(keep[key]))
            if not pruned:
                continue
            for m in g.members:
                if m.role in MASKED_ROLES and m.tensor in arrays:
                    index = [slice(None)] * arrays[m.tensor].ndim
                    index[m.axis] = m.indices(pruned)
                    arrays[m.tensor][tuple(index)] = False
        with torch.no_grad():
            for name, e in self._masked.items():
                e.mask.copy_(torch.from_numpy(arrays[name]).to(e.mask))

    def _write_pattern(
        self, previous: dict[str, np.ndarray], rate: float | dict[str, float], final: bool
    ) -> None:
        """Multiplies the pattern into the (freshly written) channel masks; never revives."""
        import torch

        names = [x.param for x in self.pattern_layers]
        channel = {k: kept(self._masked[k].mask).detach().cpu().numpy() for k in names}
        prev = {k: previous[k] | self.allow_unprune for k in names}
        weights = {k: self._masked[k].param.detach().float().cpu().numpy() for k in names}
        keep = pattern_masks(weights, channel, prev, self.pattern_layers, self.pattern, rate, final)
        keep = broadcast(keep)
        with torch.no_grad():
            for name, k in keep.items():
                e = self._masked[name]
                e.mask.copy_(torch.from_numpy(np.ascontiguousarray(k, dtype=bool)).to(e.mask))

    def apply_masks(self) -> None:
        """Zeroes every pruned weight (cheap; safe to call any time)."""
        import torch

        entries = list(self._masked.values())
        if not entries:
            return
        with torch.no_grad():
            torch._foreach_mul_([e.param for e in entries], [e.fresh_factor() for e in entries])

    # ---- the end ----------------------------------------------------------------------
    def remove(self) -> None:
        """Detaches the hooks (masks stay as buffers)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def finalize(self) -> Any:
        """Zeroes pruned weights for good and returns a plain module (original state keys)."""
        from drpopt.retrain.masked_norm import keep_after_masks

        self.apply_masks()
        self.remove()
        for e in self._masked.values():
            keep_after_masks(e.module)
            name = e.attr + MASK_SUFFIX
            if name in e.module._buffers:
                del e.module._buffers[name]
        self.model._buffers.pop(STATE_BUFFER, None)
        return self.model

    @property
    def masked_parameters(self) -> list[str]:
        return list(self._masked)


def _norms_to_mask(model: Any, masked_layernorm: bool, trace: TorchTrace | None) -> set[str]:
    """Weight names of the LayerNorms the Pruner may mask (torch imported late): the
    maskable ones with ``masked_layernorm``; with a ``trace`` given, those it was made with
    (refused when ``masked_layernorm=False`` and the trace lets plain LayerNorms prune)."""
    from drpopt.retrain.masked_norm import maskable_weights, masked_weights

    if trace is None:
        return maskable_weights(model) if masked_layernorm else set()
    norms = set(trace.graph.meta.get("masked_norms", ()))
    if not masked_layernorm and norms - masked_weights(model):
        raise BadInputError(
            "the trace was made with masked LayerNorms but the Pruner has "
            "masked_layernorm=False; make the trace (make_pruning_layer_list) with "
            "masked_layernorm=False too"
        )
    return norms


def _use_masked_norms(model: Any, names: set[str]) -> list[str]:
    """The LayerNorms of ``names`` made MaskedLayerNorms (``retrain/masked_norm.py``)."""
    from drpopt.retrain.masked_norm import use_masked_layernorms

    return use_masked_layernorms(model, names) if names else []


def _pattern_profile(
    base: TargetProfile,
    granularity: str | None,
    rate: float | None,
    n: int | None,
    m: int | None,
    block: int | None,
    scope: str | None,
) -> TargetProfile:
    """The target profile with the given pattern overrides, checked."""
    profile = pattern_profile(
        base,
        f"Pruner pattern ({base.name})",
        granularity=granularity,
        sparsity_rate=rate,
        n=n,
        m=m,
        block=block,
        sparsity_scope=scope,
    )
    if profile.pattern_rate >= 1.0:
        raise BadInputError(f"pattern rate {profile.pattern_rate} must be below 1")
    return profile
