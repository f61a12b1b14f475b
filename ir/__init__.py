"""The framework-neutral IR, its ONNX frontend, and the coupled channel analysis.

Importing this package does not import torch: the ONNX path stays fast to start.
"""

from __future__ import annotations

from drpopt.ir.analysis import Analysis, analyze
from drpopt.ir.channels import Group, Lock, Member
from drpopt.ir.core import Graph, Node, Value
from drpopt.ir.from_onnx import from_onnx, load_model
from drpopt.ir.rules import RULES, KeptChannels, OpRule, follow_members, register_rule

__all__ = [
    "RULES",
    "Analysis",
    "Graph",
    "Group",
    "KeptChannels",
    "Lock",
    "Member",
    "Node",
    "OpRule",
    "Value",
    "analyze",
    "follow_members",
    "from_onnx",
    "load_model",
    "register_rule",
]
