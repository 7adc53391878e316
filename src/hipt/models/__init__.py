"""HIPT models at every level (ViT-256, ViT-4K, slide heads), built by name from a registry."""

from hipt.models.attention import attention_maps, explicit_attention
from hipt.models.checkpoints import (
    CheckpointError,
    LoadReport,
    export_backbone,
    filter_hipt_checkpoint,
    load_checkpoint,
    sha256_file,
)
from hipt.models.factory import MODELS, available, build, build_from_export
from hipt.models.grid import bag_to_grid, grid_to_bag
from hipt.models.heads import ABMIL, HiptLGP, MeanPool, SlideOutput
from hipt.models.pos_embed import dino_interpolate_pos_embed
from hipt.models.runtime import autocast_context, prepare_images, prepare_model
from hipt.models.transforms import HIPT_MEAN, HIPT_STD, PatchNormalize, normalize_patches
from hipt.models.vit4k import Vit4K
from hipt.models.vit256 import Vit256, vit256_transform

__all__ = [
    "ABMIL",
    "HIPT_MEAN",
    "HIPT_STD",
    "MODELS",
    "CheckpointError",
    "HiptLGP",
    "LoadReport",
    "MeanPool",
    "PatchNormalize",
    "SlideOutput",
    "Vit256",
    "Vit4K",
    "attention_maps",
    "autocast_context",
    "available",
    "bag_to_grid",
    "build",
    "build_from_export",
    "dino_interpolate_pos_embed",
    "explicit_attention",
    "export_backbone",
    "filter_hipt_checkpoint",
    "grid_to_bag",
    "load_checkpoint",
    "normalize_patches",
    "prepare_images",
    "prepare_model",
    "sha256_file",
    "vit256_transform",
]
