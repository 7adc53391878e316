"""HIPT models at every level (ViT-256, ViT-4K, slide heads), built by name from a registry.

``build(name, checkpoint=...)`` makes a registered architecture; ``load(path)`` rebuilds an
exported model from its card; ``export_model`` writes the one export format (weights + card).
"""

from hipt.models import foundation as _foundation  # noqa: F401 (registers the entries)
from hipt.models.attention import attention_maps, explicit_attention
from hipt.models.card import ModelCard, ModelFileError, read_card
from hipt.models.checkpoints import (
    CheckpointError,
    LoadReport,
    filter_hipt_checkpoint,
    load_checkpoint,
)
from hipt.models.factory import (
    MODELS,
    Loaded,
    available,
    build,
    export_model,
    load,
    model_spec,
    register_model,
)
from hipt.models.grid import bag_to_grid, grid_to_bag
from hipt.models.heads import HiptLGP
from hipt.models.mil import ABMIL, MeanPool
from hipt.models.pooling import SlideOutput
from hipt.models.pos_embed import dino_interpolate_pos_embed
from hipt.models.runtime import autocast_context, prepare_images, prepare_model
from hipt.models.spec import (
    FEATS4K,
    FEATS256,
    PATCH_ENCODER,
    PIXELS,
    REGION_ENCODER,
    SLIDE_HEAD,
    ModelSpec,
    Preprocessing,
)
from hipt.models.transforms import HIPT_MEAN, HIPT_STD, PatchNormalize, normalize_patches
from hipt.models.vit4k import Vit4K
from hipt.models.vit256 import Vit256, vit256_transform

__all__ = [
    "ABMIL",
    "FEATS256",
    "FEATS4K",
    "HIPT_MEAN",
    "HIPT_STD",
    "MODELS",
    "PATCH_ENCODER",
    "PIXELS",
    "REGION_ENCODER",
    "SLIDE_HEAD",
    "CheckpointError",
    "HiptLGP",
    "LoadReport",
    "Loaded",
    "MeanPool",
    "ModelCard",
    "ModelFileError",
    "ModelSpec",
    "PatchNormalize",
    "Preprocessing",
    "SlideOutput",
    "Vit256",
    "Vit4K",
    "attention_maps",
    "autocast_context",
    "available",
    "bag_to_grid",
    "build",
    "dino_interpolate_pos_embed",
    "explicit_attention",
    "export_model",
    "filter_hipt_checkpoint",
    "grid_to_bag",
    "load",
    "load_checkpoint",
    "model_spec",
    "normalize_patches",
    "prepare_images",
    "prepare_model",
    "read_card",
    "register_model",
    "vit256_transform",
]
