"""Compiler passes over the IR (BN folding, scoring, masks, compaction, export, verify).

The pass registry is the ``PASSES`` list below; it grows with the pass pipeline (issue 3).
Nothing here is public yet beyond the empty registry.
"""

from __future__ import annotations

PASSES: list[type] = []

__all__ = ["PASSES"]
