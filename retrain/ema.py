"""An exponential moving average of a pruned model's weights (YOLOX's ModelEMA, mask-aware).

Rules:
- the decay ramps up as YOLOX's: ``d(n) = decay * (1 - exp(-n / tau))`` after ``n`` updates;
- floating parameters and buffers are averaged: ``ema = d * ema + (1 - d) * model``;
- mask buffers (``*_drpopt_mask``, bool) and the ``drpopt_state`` buffer (int64) are the
  model's own tensors, shared by the copy (``deepcopy_model``), and integer buffers
  (``num_batches_tracked``) are copied, never averaged; masks the model gained since the
  copy was made (a Pruner attached later) are shared with the copy too;
- after each update the averaged weights are multiplied by their masks, so pruned weights
  of the EMA are exactly zero;
- the copy's LayerNorms are MaskedLayerNorms where the model's are (also when the Pruner
  swapped them after the copy was made), so both count the same channels;
- a DDP/DataParallel-wrapped model is unwrapped.
"""

from __future__ import annotations

import math
from typing import Any

from drpopt.errors import BadInputError
from drpopt.ir.from_torch import unwrap
from drpopt.retrain.buffers import share_buffers
from drpopt.retrain.checkpoint import (
    _names,
    deepcopy_model,
    install_mask_hooks,
    is_mask_key,
    is_pruning_key,
    load_pruned_state_dict,
)
from drpopt.retrain.pruner import MASK_SUFFIX


class ModelEMA:
    """Keeps ``ema``, a moving average of ``model`` that respects its pruning masks."""

    def __init__(
        self, model: Any, decay: float = 0.9998, tau: float = 2000, updates: int = 0
    ) -> None:
        if not (0.0 <= decay < 1.0):
            raise BadInputError(f"EMA decay {decay} is outside [0, 1); give e.g. 0.9998")
        if tau <= 0:
            raise BadInputError(f"EMA tau {tau} must be positive (YOLOX uses 2000)")
        self.ema = deepcopy_model(model).eval()
        self.decay = decay
        self.tau = tau
        self.updates = updates
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses (``updates`` already counted)."""
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    def update(self, model: Any) -> None:
        """Averages ``model``'s weights into ``ema`` (call after every optimizer step)."""
        import torch

        from drpopt.retrain.masked_norm import match_masked_norms

        with torch.no_grad():
            self.updates += 1
            d = self.current_decay()
            source = unwrap(model)
            msd = source.state_dict()
            if share_buffers(source, self.ema):
                install_mask_hooks(self.ema)
            match_masked_norms(source, self.ema)
            esd = self.ema.state_dict()
            missing = sorted(k for k in esd if k not in msd and not is_pruning_key(k))
            if missing:
                raise BadInputError(
                    f"the model lacks EMA entries {_names(missing)}; build the EMA from the "
                    "model it averages"
                )
            for key, value in esd.items():
                if key not in msd:
                    continue  # a pruning key the model dropped (finalize)
                src = msd[key].detach()
                if is_pruning_key(key) or not value.dtype.is_floating_point:
                    value.copy_(src)
                else:
                    value.mul_(d).add_(src.to(value.dtype), alpha=1.0 - d)
            for key, value in esd.items():
                if is_mask_key(key):
                    target = esd.get(key[: -len(MASK_SUFFIX)])
                    if target is not None:
                        target.mul_(value.to(target.dtype))

    def _add_new_masks(self, msd: dict[str, Any]) -> None:
        """Mask buffers the model has and the copy lacks are registered on the copy."""
        have = set(self.ema.state_dict())
        added = False
        for key, value in msd.items():
            if is_pruning_key(key) and key not in have:
                *path, attr = key.split(".")
                owner = self.ema.get_submodule(".".join(path))
                owner.register_buffer(attr, value.detach().clone())
                added = True
        if added:
            install_mask_hooks(self.ema)

    def state_dict(self) -> dict[str, Any]:
        """``{"ema": ..., "updates": ..., "decay": ..., "tau": ...}``."""
        return {
            "ema": self.ema.state_dict(),
            "updates": self.updates,
            "decay": self.decay,
            "tau": self.tau,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved (masks in ``ema`` loaded and applied)."""
        if not isinstance(state, dict) or "ema" not in state:
            raise BadInputError(
                "an EMA state is the dict ModelEMA.state_dict() returns (with an 'ema' entry)"
            )
        self._add_new_masks(state["ema"])
        load_pruned_state_dict(self.ema, state["ema"])
        self.updates = int(state.get("updates", self.updates))
        self.decay = float(state.get("decay", self.decay))
        self.tau = float(state.get("tau", self.tau))
