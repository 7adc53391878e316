"""Slide-level prediction tasks (subtype, stage, survival, response): labels, heads, metrics.

Shared by the stages that train models (finetune) and apply them (predict, heatmap).
"""

from hipt.tasks.config import TargetConfig

__all__ = ["TargetConfig"]
