"""Slide-level finetuning: cohort validation, patient-level CV, tasks, training and reports."""

from hipt.finetune.config import FinetuneConfig
from hipt.finetune.runner import run_finetune
from hipt.finetune.tasks import TASKS, build_task

__all__ = ["TASKS", "FinetuneConfig", "build_task", "run_finetune"]
