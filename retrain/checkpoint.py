"""Pruned checkpoints: loading them into plain models, and copies of pruned models for EMA.

A pruned checkpoint is the ``model.state_dict()`` of a model with a :class:`Pruner` attached:
besides the model's own keys it holds a ``<param>_drpopt_mask`` buffer per masked parameter
and the root ``drpopt_state`` buffer (schedule step, rate).

Rules:
- a mask counts as "kept" where it is above 0.5, so masks averaged by an EMA (near 0 or 1)
  read as the binary masks they came from;
- pruned weights are written as exact zeros; kept weights are loaded unchanged;
- every key that is not a mask or the pruning state must match the model exactly (missing
  or unexpected keys are an error that names them);
- ``{"model": sd}`` / ``{"state_dict": sd}`` wrappers and DDP ``module.`` prefixes are
  accepted.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from drpopt.errors import BadInputError
from drpopt.ir.from_torch import unwrap
from drpopt.retrain.buffers import (
    MASK_SUFFIX,
    STATE_BUFFER,
    convert_legacy_entries,
    kept,
    pruning_buffers,
    register_copy,
)

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "ema")
_PREFIX = "module."
_LIST_LIMIT = 8


def is_mask_key(key: str) -> bool:
    """Whether ``key`` is a Pruner mask buffer (``<param>_drpopt_mask``)."""
    return key.endswith(MASK_SUFFIX)


def is_state_key(key: str) -> bool:
    """Whether ``key`` is the Pruner's ``drpopt_state`` buffer (at any module)."""
    return key.rsplit(".", 1)[-1] == STATE_BUFFER


def is_pruning_key(key: str) -> bool:
    """Whether ``key`` is a mask or the pruning state (not one of the model's own keys)."""
    return is_mask_key(key) or is_state_key(key)


def unwrap_state_dict(state_dict: Any, model_keys: set[str] | None = None) -> dict[str, Any]:
    """The bare state dict inside the common wrappers, without DDP ``module.`` prefixes.

    Rules: a mapping holding a ``model``/``state_dict``/``model_state_dict``/``ema`` entry
    that is itself a mapping (and no tensors at the top level) is unwrapped; ``module.`` is
    stripped when every key has it and the model's own keys (if given) do not.
    """
    import torch

    if not isinstance(state_dict, Mapping):
        raise BadInputError(
            f"a state dict is a mapping of names to tensors, not {type(state_dict).__name__}"
        )
    sd: Mapping[str, Any] = state_dict
    while not any(isinstance(v, torch.Tensor) for v in sd.values()):
        inner = next((sd[k] for k in _WRAPPER_KEYS if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            break
        sd = inner
    out = dict(sd)
    model_has_prefix = model_keys is not None and any(k.startswith(_PREFIX) for k in model_keys)
    while out and not model_has_prefix and all(k.startswith(_PREFIX) for k in out):
        out = {k[len(_PREFIX) :]: v for k, v in out.items()}
    return out


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = len(keys) - _LIST_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


def _kept(mask: Any) -> Any:
    return kept(mask)


def load_pruned_state_dict(model: Any, state_dict: Any) -> Any:
    """Loads a pruned (or plain) checkpoint into ``model``; returns ``model``.

    Rules:
    - masks in the checkpoint are applied to their weights (pruned entries exactly zero);
    - into a plain model the mask and state keys are dropped; into a model with a Pruner
      attached (its mask buffers exist) they are loaded too, masks binarised at 0.5; masks
      the model has but the checkpoint lacks keep their values and are applied after loading;
    - a LayerNorm whose weight the checkpoint masks becomes a ``MaskedLayerNorm`` (its
      statistics over the kept channels, as in training: ``retrain/masked_norm.py``);
    - all other keys must match (``BadInputError`` naming missing and unexpected keys; a
      shape mismatch is a ``BadInputError`` with torch's message).
    """
    import torch

    module = unwrap(model)
    own = module.state_dict()
    sd = unwrap_state_dict(state_dict, set(own))
    convert_legacy_entries(sd)
    masks = {k[: -len(MASK_SUFFIX)]: v for k, v in sd.items() if is_mask_key(k)}
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if is_pruning_key(key):
            if key in own:
                out[key] = _kept(value).to(own[key].dtype) if is_mask_key(key) else value
            continue
        mask = masks.get(key)
        if mask is not None and isinstance(value, torch.Tensor):
            if mask.shape != value.shape:
                raise BadInputError(
                    f"checkpoint mask {key}{MASK_SUFFIX} has shape {tuple(mask.shape)} but "
                    f"{key} has {tuple(value.shape)}; the checkpoint is inconsistent"
                )
            value = value.masked_fill(~_kept(mask.to(value.device)), 0)
        out[key] = value
    missing = sorted(k for k in own if k not in out and not is_pruning_key(k))
    unexpected = sorted(k for k in out if k not in own)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_names(unexpected)}")
        raise BadInputError(
            f"the checkpoint does not fit {type(module).__name__} ({'; '.join(parts)}); build "
            "the same architecture (and configuration) the checkpoint was saved from"
        )
    try:
        module.load_state_dict(out, strict=False)
    except RuntimeError as err:
        raise BadInputError(f"the checkpoint does not fit {type(module).__name__}: {err}") from err
    _apply_own_masks(module)
    _masked_norms_from(module, masks)
    return model


def _masked_norms_from(module: Any, masks: dict[str, Any]) -> None:
    """LayerNorms whose weight the checkpoint masks (saved by a ``masked_layernorm``
    Pruner) count only the kept channels, as they did in training."""
    from drpopt.retrain.masked_norm import KEPT_ATTR, maskable, use_masked_layernorms

    pruned = {k for k, m in masks.items() if k.endswith(".weight") and not bool(_kept(m).all())}
    if not pruned:
        return
    mods = dict(module.named_modules())
    names = {k for k in pruned if maskable(mods.get(k[: -len(".weight")]))}
    for name in use_masked_layernorms(module, names):
        sub = mods[name]
        if sub._buffers.get("weight" + MASK_SUFFIX) is None:
            sub.__dict__[KEPT_ATTR] = _kept(masks[f"{name}.weight"]).detach().clone()


def _masked_pairs(module: Any) -> list[tuple[Any, str]]:
    """(owning module, parameter name) for every parameter with a mask buffer."""
    pairs = []
    for sub in module.modules():
        for name in list(sub._buffers):
            if name.endswith(MASK_SUFFIX):
                attr = name[: -len(MASK_SUFFIX)]
                if sub._parameters.get(attr) is not None:
                    pairs.append((sub, attr))
    return pairs


def _apply_own_masks(module: Any) -> None:
    """Binarises the mask buffers of ``module`` (if any) and zeroes their pruned weights."""
    import torch

    with torch.no_grad():
        for sub, attr in _masked_pairs(module):
            mask = sub._buffers[attr + MASK_SUFFIX]
            param = sub._parameters[attr]
            if mask is None or param is None:
                continue
            if mask.dtype != torch.bool:
                mask.copy_(_kept(mask).to(mask.dtype))
            param.mul_(_kept(mask).to(param.dtype))


# ---- copies for EMA ---------------------------------------------------------------------
_HOOKED = "_drpopt_mask_hooks"


def _mask_own_params(module: Any) -> None:
    """Multiplies each masked parameter of ``module`` by (its mask buffer > 0.5), in place."""
    import torch

    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return  # a trace must see the parameters themselves, not a masking op
    with torch.no_grad():
        for name, mask in module._buffers.items():
            if mask is None or not name.endswith(MASK_SUFFIX):
                continue
            param = module._parameters.get(name[: -len(MASK_SUFFIX)])
            if param is not None:
                param.mul_(_kept(mask).to(param.dtype))


def _forward_pre_hook(module: Any, _args: Any) -> None:
    _mask_own_params(module)


def _state_dict_pre_hook(module: Any, _prefix: str, _keep_vars: bool) -> None:
    _mask_own_params(module)


def install_mask_hooks(module: Any) -> int:
    """Adds the masking hooks of :func:`deepcopy_model` to every submodule of ``module`` that
    owns a mask buffer and has none yet; returns how many modules got them."""
    count = 0
    for sub, _attr in _masked_pairs(module):
        if getattr(sub, _HOOKED, False):
            continue
        sub.register_forward_pre_hook(_forward_pre_hook)
        sub.register_state_dict_pre_hook(_state_dict_pre_hook)
        object.__setattr__(sub, _HOOKED, True)
        _mask_own_params(sub)
        count += 1
    return count


def deepcopy_model(model: Any) -> Any:
    """A deep copy of ``model`` (DDP unwrapped) that keeps its pruned weights exactly zero.

    Rules:
    - the copy shares the model's mask and pruning-state buffers (the same tensors, not
      floating point): it always holds the model's current masks, which an EMA written for
      dense models never averages; a Pruner attached to the model later shares its new
      buffers with the copy too;
    - a forward pre-hook and a state-dict pre-hook on each module owning a masked parameter
      multiply the parameter by (its mask buffer > 0.5) in place, so forward outputs and
      saved state dicts respect the masks even after an EMA averaged every floating entry
      (weights and masks alike: averaged masks stay near 0 or 1);
    - the hooks read the module's own buffers when they run (a copy of the copy stays
      correct) and do nothing while the model is traced or exported;
    - a model without masks is copied unchanged (plain ``copy.deepcopy``).
    """
    source = unwrap(model)
    shared = pruning_buffers(source)
    memo = {id(buf): buf for buf in shared.values()}
    clone = copy.deepcopy(source, memo)
    register_copy(source, clone)
    install_mask_hooks(clone)
    return clone
