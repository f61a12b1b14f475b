"""The Pruner's buffers: names, dtypes, legacy loading, and sharing with model copies.

Rules:
- a mask is a ``bool`` buffer ``<param>_drpopt_mask`` beside its parameter; the pruning
  state is an ``int64`` buffer ``drpopt_state`` on the root module: ``[step, channel rate,
  weight share]``, rates in parts per billion. Neither is floating point, so an EMA written
  for dense models (YOLOX's ``ModelEMA`` averages every floating state-dict entry) leaves
  them alone;
- checkpoints of older drpopt versions (float masks, possibly averaged by such an EMA, and a
  float ``[step, rate]`` state) load: masks are binarised at 0.5, the state converted; a
  mask or state the model has and the checkpoint lacks (an older drop-in kept no masks for
  fine-grained-only layers) keeps its current value, also under strict loading;
- copies made by ``deepcopy_model`` share the source's mask and state buffers (the same
  tensors), so an EMA copy always holds the model's current masks; a copy made before a
  Pruner was attached gets the buffers when it is.
"""

from __future__ import annotations

import weakref
from typing import Any

MASK_SUFFIX = "_drpopt_mask"
STATE_BUFFER = "drpopt_state"
STATE_SCALE = 1_000_000_000  # rates in the state buffer: parts per billion
STATE_LEN = 3

# source module -> its deepcopy_model copies
_COPIES: weakref.WeakKeyDictionary[Any, weakref.WeakSet] = weakref.WeakKeyDictionary()


def kept(mask: Any) -> Any:
    """Where ``mask`` keeps its weight: a bool mask as is, a float one above 0.5."""
    import torch

    return mask if mask.dtype == torch.bool else mask > 0.5


def new_state() -> Any:
    import torch

    return torch.zeros(STATE_LEN, dtype=torch.int64)


def legacy_state(value: Any) -> Any:
    """A state entry in the current form (int64 ``[step, rate, share]``) from any older one."""
    if not value.dtype.is_floating_point and value.numel() == STATE_LEN:
        return value
    old = value.detach().double().flatten().cpu()
    out = new_state()
    if old.numel() >= 1:
        out[0] = int(round(float(old[0])))
    if old.numel() >= 2:
        out[1] = int(round(float(old[1]) * STATE_SCALE))
        out[2] = out[1]
    return out.to(value.device)


def convert_legacy_entries(state_dict: dict[str, Any], prefix: str = "") -> None:
    """Rewrites, in place, the pruning entries under ``prefix`` to the current dtypes."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        value = state_dict[key]
        if not hasattr(value, "dtype"):
            continue
        if key.endswith(MASK_SUFFIX) and value.dtype.is_floating_point:
            state_dict[key] = value > 0.5
        elif key.rsplit(".", 1)[-1] == STATE_BUFFER:
            state_dict[key] = legacy_state(value)


def legacy_load_hook(module: Any, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
    """A ``load_state_dict`` pre-hook (root module): old float masks and state converted,
    pruning buffers the checkpoint lacks kept as they are."""
    convert_legacy_entries(state_dict, prefix)
    for name, buf in pruning_buffers(module).items():
        state_dict.setdefault(prefix + name, buf.detach().clone())


def register_copy(source: Any, clone: Any) -> None:
    """Remembers ``clone`` as a copy of ``source`` (masks attached later are shared)."""
    _COPIES.setdefault(source, weakref.WeakSet()).add(clone)


def pruning_buffers(module: Any) -> dict[str, Any]:
    """Every mask and state buffer of ``module`` by its state-dict name."""
    return {
        name: buf
        for name, buf in module.named_buffers()
        if name.endswith(MASK_SUFFIX) or name.rsplit(".", 1)[-1] == STATE_BUFFER
    }


def share_buffers(source: Any, clone: Any) -> int:
    """Registers ``source``'s pruning buffers on ``clone`` (same tensors) where the clone
    has the owning submodule; returns how many were shared."""
    count = 0
    for name, buf in pruning_buffers(source).items():
        *path, attr = name.split(".")
        try:
            owner = clone.get_submodule(".".join(path))
        except AttributeError:
            continue
        if owner._buffers.get(attr) is buf:
            continue
        owner.register_buffer(attr, buf)
        count += 1
    return count


def share_with_copies(source: Any) -> None:
    """After a Pruner attached its buffers to ``source``: its earlier copies get them too
    (and its MaskedLayerNorm classes)."""
    from drpopt.retrain.checkpoint import install_mask_hooks
    from drpopt.retrain.masked_norm import match_masked_norms

    for clone in list(_COPIES.get(source, ())):
        if share_buffers(source, clone):
            install_mask_hooks(clone)
        match_masked_norms(source, clone)
