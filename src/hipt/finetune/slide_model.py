"""Which store array feeds which slide model, and building that model from the registry."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from hipt.errors import ConfigError, HiptError
from hipt.features import FeatureStoreMeta
from hipt.finetune.config import INPUTS, ModelConfig
from hipt.models import FEATS256, CheckpointError, build, model_spec
from hipt.provenance import sha256_file

if TYPE_CHECKING:
    from hipt.models import ABMIL, HiptLGP, MeanPool

log = logging.getLogger(__name__)

_SHA = re.compile(r"^[0-9a-f]{64}$")


def checkpoint_sha(value: str) -> str:
    """sha256 of a checkpoint file, or ``value`` itself when it already is a 64-hex digest."""
    if _SHA.match(value.lower()):
        return value.lower()
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"checkpoint {value} is neither a file nor a sha256 hex digest")
    return sha256_file(path)


@dataclass
class ModelPlan:
    """How the slide model is built and fed.

    Attributes:
        name: registry key.
        kind: store array fed to the model (``feats256`` or ``feats4k``).
        kwargs: arguments of :func:`hipt.models.build` (besides the name).
        reason: one line for the log explaining ``kind``.
    """

    name: str
    kind: str
    kwargs: dict[str, Any]
    reason: str


def has_region_encoder(name: str) -> bool:
    """Whether the slide head ``name`` embeds its own ViT-4K (its registry declaration)."""
    return model_spec(name).region_encoder


def plan_model(cfg: ModelConfig, meta: FeatureStoreMeta, n_outputs: int) -> ModelPlan:
    """Pick the input array (fast ``feats4k`` path when it is exact) and the build arguments.

    ``hipt_lgp`` with a frozen ViT-4K gives the same region embeddings whether it runs the
    ViT-4K on ``feats256`` or reads ``feats4k`` made by the same ViT-4K weights; ``auto``
    takes ``feats4k`` only then (store ``checkpoint_4k_sha256`` = sha256 of ``checkpoint_4k``).
    """
    if cfg.input not in INPUTS:
        raise ConfigError(f"model.input must be one of {INPUTS}, got '{cfg.input}'")
    spec = model_spec(cfg.name)  # a slide head (checked with the config)
    kwargs: dict[str, Any] = {"n_classes": n_outputs, "dropout": cfg.dropout, **cfg.kwargs}
    if cfg.standardize:
        kwargs["standardize"] = True
    if not spec.region_encoder:
        if cfg.checkpoint_4k:
            raise ConfigError(f"model.checkpoint_4k only applies to hipt_lgp, not {cfg.name}")
        kind = "feats4k" if cfg.input == "feats4k" else "feats256"
        if kind == "feats4k":
            kwargs.setdefault("input_dim", meta.feature_dim_4k)
        return ModelPlan(cfg.name, kind, kwargs, f"{cfg.name} on {kind} instances")
    kwargs.update(freeze_4k=cfg.freeze_4k, checkpoint_4k=cfg.checkpoint_4k)
    kwargs.setdefault("grid_dim", meta.feature_dim_256)  # the ViT-4K reads D-d patch grids
    want = checkpoint_sha(cfg.checkpoint_4k) if cfg.checkpoint_4k else None
    same = want is not None and meta.checkpoint_4k_sha256 == want
    if cfg.input == "feats4k":
        if not cfg.freeze_4k:
            raise ConfigError(
                "model.input=feats4k skips the ViT-4K, so it cannot be finetuned "
                "(freeze_4k=false); use model.input=feats256"
            )
        if want is not None and not same:
            raise ConfigError(
                f"the stores' feats4k were made with ViT-4K sha256 {meta.checkpoint_4k_sha256}, "
                f"not model.checkpoint_4k ({want}); use model.input=feats256"
            )
        why = "stores' feats4k (global stage only on the stored ViT-4K features)"
        return ModelPlan(cfg.name, "feats4k", kwargs, why)
    if cfg.input == "auto" and cfg.freeze_4k and same:
        why = "fast path: frozen ViT-4K = the stores' ViT-4K (same sha256), reading feats4k"
        return ModelPlan(cfg.name, "feats4k", kwargs, why)
    why = "feats256 through the ViT-4K" + (
        " (finetuned)"
        if not cfg.freeze_4k
        else " (stores' feats4k made by other ViT-4K weights)"
        if want and not same
        else " (random-init ViT-4K)"
        if want is None
        else ""
    )
    return ModelPlan(cfg.name, "feats256", kwargs, why)


def build_model(plan: ModelPlan, meta: FeatureStoreMeta) -> nn.Module:
    """Build the model and check that the stores' feature width fits it."""
    try:
        model = build(plan.name, **plan.kwargs)
    except CheckpointError as exc:  # a bad file is bad input (exit 1), like in extraction
        raise HiptError(f"model.checkpoint_4k: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build model '{plan.name}' with {plan.kwargs}: {exc}") from None
    have = meta.feature_dim_256 if plan.kind == FEATS256 else meta.feature_dim_4k
    try:
        want = int(model.input_width(plan.kind))  # type: ignore[operator]
    except ValueError as exc:
        raise ConfigError(f"model '{plan.name}': {exc}") from None
    if want != have:
        raise ConfigError(
            f"the stores hold {have}-d {plan.kind} but model '{plan.name}' takes {want}-d input; "
            "pick the model that matches the extractor (e.g. *_tiny_test for tiny stores)"
        )
    return model


def fit_scaler(
    model: nn.Module, bags: Iterable[Tensor], device: torch.device | str = "cpu"
) -> int | None:
    """Fit the model's :class:`~hipt.models.scaler.FeatureScaler` on training ``bags``.

    Each bag goes through ``model.scaler_inputs`` (for ``hipt_lgp`` on ``feats256`` that runs
    the ViT-4K) in eval mode without gradients, on ``device``: the model moves there first,
    so the ViT-4K pass runs on the GPU of a GPU run. Returns the number of rows fitted on, or
    None when the model has no scaler.
    """
    scaler = getattr(model, "scaler", None)
    if scaler is None:
        return None
    head = cast("HiptLGP | ABMIL | MeanPool", model)  # the slide heads that carry a scaler
    model.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            scaler.fit(head.scaler_inputs(bag.to(device)) for bag in bags)
    finally:
        model.train(was_training)
    log.info("standardize: scaler fitted on %d training rows", int(scaler.count))
    return int(scaler.count)


def frozen_region_encoder(
    cfg: ModelConfig, plan: ModelPlan, meta: FeatureStoreMeta, device: torch.device
) -> nn.Module | None:
    """The frozen ViT-4K that every fold's ``hipt_lgp`` shares, or None when there is none.

    Only when the weights are the same in every fold: ``hipt_lgp`` on ``feats256``, frozen,
    loaded from ``checkpoint_4k`` (a random init differs per fold seed).
    """
    if not (has_region_encoder(plan.name) and plan.kind == FEATS256 and cfg.freeze_4k):
        return None
    if not cfg.checkpoint_4k:
        return None
    # the region encoder its spec declares
    encoder = cast("HiptLGP", build_model(plan, meta)).local_vit
    if encoder is None:
        return None
    return encoder.requires_grad_(False).eval().to(device)
