"""Masked fine-tuning in the user's own training loop.

``Pruner`` owns the masks (gradual schedules, enforcement through every optimizer step),
``Schedule`` says when to prune how far.
"""

from __future__ import annotations

from drpopt.retrain.pruner import Pruner
from drpopt.retrain.schedule import Schedule

__all__ = ["Pruner", "Schedule"]
