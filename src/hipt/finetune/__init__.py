"""Slide-level finetuning: cohort validation, patient-level CV, tasks, training and reports.

The stage itself is :func:`hipt.finetune.runner.run_finetune` (imported on use: it loads
plotting and training libraries).
"""

from hipt.finetune.config import FinetuneConfig

__all__ = ["FinetuneConfig"]
