"""Typed configuration of the finetune stage (``conf/finetune/<task>.yaml`` + overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hipt.config import WandbConfig, non_result
from hipt.tasks.config import TargetConfig

INPUTS = ("auto", "feats256", "feats4k")
SELECT = ("last", "best_val")


@dataclass
class ModelConfig:
    """Slide model picked from the ``hipt.models`` registry.

    Attributes:
        name: ``hipt_lgp``, ``abmil``, ``meanpool`` (or their ``*_tiny_test`` variants).
        freeze_4k: keep the ViT-4K of ``hipt_lgp`` frozen (official recipe); false finetunes it.
        checkpoint_4k: ViT-4K weights (official DINO ``.pth`` or our ``.safetensors`` export)
            used to initialise ``hipt_lgp``'s region encoder; null = random init.
        input: which store array feeds the model. ``auto``: ``feats4k [M,192]`` for ``hipt_lgp``
            when its ViT-4K is frozen and the stores were made with exactly ``checkpoint_4k``
            (same result, far faster), else ``feats256 [M,256,384]``. ``feats4k`` for
            ``abmil``/``meanpool`` trains them on region features instead of patch features.
        dropout: dropout of the slide head.
        standardize: standardise the head's inputs (``hipt_lgp``: the region embeddings after
            the ViT-4K; ``abmil``/``meanpool``: the instances) per feature with the mean and std
            of the training fold's bags, fitted before training and saved in the model. Off in
            the official recipe; it rescues heads on features whose regions differ by a tiny
            fraction of their scale (tiny or briefly pretrained encoders, see the demo).
        kwargs: further constructor arguments of the model (e.g. ``hidden_dim``).
    """

    name: str = "hipt_lgp"
    freeze_4k: bool = True
    checkpoint_4k: str | None = None
    input: str = "auto"
    dropout: float = 0.25
    standardize: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """How bags are read and sampled.

    Attributes:
        max_regions: cap on regions per training bag (random subset each time the bag is drawn);
            null = whole bags (official). Validation and test always see whole bags.
        balanced_sampling: draw training bags with probability 1/(class size), with replacement
            (official; survival balances (time bin, event) pairs like MCAT).
        cache_gb: keep every bag in memory when the cohort's features need less than this.
        num_workers: DataLoader workers.
        encode_once: ``hipt_lgp`` with a frozen ViT-4K loaded from ``model.checkpoint_4k`` on
            ``feats256``: run that ViT-4K once per bag before training and train the global
            stage on the cached region embeddings (the same numbers, several times faster);
            false runs it in every step. Needs the embeddings to fit ``cache_gb``.
    """

    max_regions: int | None = None
    balanced_sampling: bool = True
    cache_gb: float = 4.0
    num_workers: int = non_result(0)
    encode_once: bool = True


@dataclass
class SplitConfig:
    """Patient-level cross-validation.

    Attributes:
        n_folds: number of disjoint test folds covering every patient.
        val_fraction: part of each training part kept for validation (stratified); 0 = none.
        seed: seed of the fold assignment.
        official_dir: folder with official HIPT/MCAT ``splits_<k>.csv`` (columns train, val
            and optionally test, of slide or case ids) used instead of generated folds.
        official_overlap: what to do when an official split puts one patient in two parts
            (the subtyping splits are slide-level): ``error`` or ``drop`` (remove the patient
            from train/val, keep it in test).
    """

    n_folds: int = 5
    val_fraction: float = 0.1
    seed: int = 1
    official_dir: str | None = None
    official_overlap: str = "error"


@dataclass
class TrainConfig:
    """Optimisation (defaults = official recipe: Adam 2e-4, L2 1e-5, 20 epochs, last epoch).

    Attributes:
        max_epochs: epochs per fold.
        lr: Adam learning rate.
        weight_decay: Adam (L2) weight decay.
        accumulate_grad_batches: bags per optimizer step (true accumulation: the loss of each
            bag is divided by this and the step happens every N bags).
        select: ``last`` epoch model (official) or ``best_val`` on ``monitor``.
        monitor: validation metric for ``best_val`` and early stopping (default per task:
            ``val/auroc``, ``val/qwk`` or ``val/c_index``); ``val/loss`` is minimised.
        early_stopping_patience: stop after this many epochs without improvement; null = off.
        progress_bar: show Lightning's progress bar.
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
        precision: Lightning precision; ``auto`` = ``bf16-mixed`` on CUDA, ``32-true`` on CPU.
        tf32: on CUDA, float32 matmuls (the frozen ViT-4K pass, ``32-true`` training) use
            TF32; ``false`` keeps IEEE float32 for bit-fidelity. CPU runs are always IEEE.
        cpu_threads: torch intra-op threads (``torch.set_num_threads``); null = torch's default.
            1 is fastest for tiny models and on a busy machine.
    """

    max_epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    accumulate_grad_batches: int = 1
    select: str = "last"
    monitor: str | None = None
    early_stopping_patience: int | None = None
    progress_bar: bool = non_result(False)
    accelerator: str = "auto"
    precision: str = "auto"
    tf32: bool = True
    cpu_threads: int | None = non_result(None)


@dataclass
class FinetuneConfig:
    """The ``make finetune`` stage.

    Attributes:
        task: ``subtype``, ``stage``, ``survival`` or ``response``.
        cohort: cohort CSV (``slide_id``, ``patient_id``/``case_id`` + the task's columns).
        features: folder of ``<slide_id>.zarr`` feature stores.
        out: output folder (``splits/``, ``fold_<k>/``, ``summary.csv``, plots).
        expect_checkpoint_4k: ViT-4K checkpoint file (or its sha256) the stores must have been
            made with; stores made otherwise are reported.
        shuffle_labels: permute labels across patients (seeded by ``seed``) before splitting:
            the negative control, which should score at chance.
        seed: base seed; fold ``k`` trains with ``seed + k``.
        overwrite: redo folds whose outputs were made with another config (else an error).
        model: slide model.
        target: label columns and task options.
        data: bag reading and sampling.
        split: cross-validation.
        train: optimisation.
        wandb: W&B logging (one run per fold, grouped by experiment).
    """

    task: str = "???"
    cohort: str = "???"
    features: str = "???"
    out: str = non_result("???")
    expect_checkpoint_4k: str | None = None
    shuffle_labels: bool = False
    seed: int = 1
    overwrite: bool = non_result(False)
    model: ModelConfig = field(default_factory=ModelConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = non_result(default_factory=WandbConfig)
