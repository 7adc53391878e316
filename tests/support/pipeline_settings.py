"""The tiny `make pipeline` settings the pipeline tests share (tiny models, 2 folds, no W&B)."""

from __future__ import annotations

#: Everything but the tasks and the patch encoder: tiny ViT-4K DINO, tiny HIPT slide model,
#: one heatmap pair per task, a short bootstrap.
TINY_PIPELINE = [
    "PRETRAIN=4k",
    "pretrain_4k_config=tests/pretrain_4k_tiny.yaml",
    "extract.model_4k=vit4k_tiny_test",
    "extract.num_workers=0",
    "extract.progress=false",
    "finetune.model.name=hipt_lgp_tiny_test",
    "finetune.split.n_folds=2",
    "finetune.split.val_fraction=0",
    "finetune.train.max_epochs=2",
    "finetune.train.cpu_threads=1",
    "heatmaps=1",
    "heatmap.heads256=[0]",
    "heatmap.heads4k=[0]",
    "heatmap.progress=false",
    "wandb.mode=disabled",
]
