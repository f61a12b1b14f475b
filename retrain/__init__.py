"""Masked fine-tuning in the user's own training loop (Pruner, schedules, EMA, checkpoints).

Not built yet: it arrives with the torch-side issue. Importing it is harmless.
"""

from __future__ import annotations

__all__: list[str] = []
