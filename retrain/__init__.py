"""Masked fine-tuning in the user's own training loop, and export.

``Pruner`` owns the masks (gradual schedules, enforcement through every optimizer step),
``Schedule`` says when to prune how far, ``ModelEMA`` averages without reviving pruned
weights, ``load_pruned_state_dict`` / ``deepcopy_model`` handle checkpoints and EMA copies,
``get_model_info`` reports sparsity, parameters and MACs, ``export_onnx`` writes verified
sparse or compact ONNX. ``drpopt.retrain.drpai`` mirrors the DRP-AI Extension Pack's API.
"""

from __future__ import annotations

from drpopt.retrain.checkpoint import deepcopy_model, load_pruned_state_dict
from drpopt.retrain.ema import ModelEMA
from drpopt.retrain.export import export_onnx, plan_from_zeros
from drpopt.retrain.info import ModelInfo, get_model_info
from drpopt.retrain.pruner import Pruner
from drpopt.retrain.schedule import Schedule

__all__ = [
    "ModelEMA",
    "ModelInfo",
    "Pruner",
    "Schedule",
    "deepcopy_model",
    "export_onnx",
    "get_model_info",
    "load_pruned_state_dict",
    "plan_from_zeros",
]
