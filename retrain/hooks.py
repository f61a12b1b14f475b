"""The Pruner's hooks into torch: optimizer and load_state_dict hooks that hold the Pruner
weakly, the gradient mask, optimizer state of pruned weights, and rank 0's choice broadcast
under torch.distributed."""

from __future__ import annotations

import weakref
from typing import Any


def weak_hook(pruner: Any, method: str):
    """A global optimizer hook that does not keep the Pruner (and its model) alive: keep a
    reference to the Pruner while training."""
    ref = weakref.ref(pruner)

    def hook(optimizer: Any, *args: Any, **kwargs: Any) -> None:
        live = ref()
        if live is not None:
            getattr(live, method)(optimizer)

    return hook


def binarize_hook(pruner: Any):
    ref = weakref.ref(pruner)

    def hook(module: Any, incompatible: Any) -> None:
        live = ref()
        if live is not None:
            live.binarize_masks()
            live.apply_masks()

    return hook


def grad_hook(entry: Any):
    def hook(grad):
        return grad * entry.fresh_factor()

    return hook


def zero_optimizer_state(optimizers, entries) -> None:
    """Momentum and Adam moments of pruned weights are zeroed in the optimizers seen so far."""
    import torch

    masks = {id(e.param): e.fresh_factor() for e in entries}
    for obj in list(optimizers):
        if isinstance(obj, torch.optim.Optimizer):
            for p, st in obj.state.items():
                mask = masks.get(id(p))
                if mask is None:
                    continue
                for v in st.values():
                    if isinstance(v, torch.Tensor) and v.shape == mask.shape:
                        v.mul_(mask)


def broadcast(keep: dict[str, list[int]]) -> dict[str, list[int]]:
    """Rank 0's choice on every rank (identical masks under torch.distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [keep]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return keep
