"""Shared fixtures for the model tests: an official-layout DINO checkpoint writer."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from torch import Tensor


def dino_head_state(dim: int, out_dim: int = 64) -> dict[str, Tensor]:
    """DINO projection-head tensors (names as the official file; out_dim shrunk from 65536)."""
    return {
        "head.mlp.0.weight": torch.randn(32, dim),
        "head.mlp.0.bias": torch.randn(32),
        "head.mlp.2.weight": torch.randn(32, 32),
        "head.mlp.2.bias": torch.randn(32),
        "head.mlp.4.weight": torch.randn(16, 32),
        "head.mlp.4.bias": torch.randn(16),
        "head.last_layer.weight_g": torch.ones(out_dim, 1),
        "head.last_layer.weight_v": torch.randn(out_dim, 16),
    }


OfficialWriter = Callable[..., Path]


@pytest.fixture
def write_official(tmp_path: Path) -> OfficialWriter:
    """Write ``{teacher, student, optimizer, epoch, args, dino_loss, fp16_scaler}`` like main_dino.

    Teacher keys are ``backbone.*`` + ``head.*``; student keys carry an extra ``module.`` (DDP).
    Returns a function ``(backbone, name=, student=, teacher=, with_student=) -> path``.
    """

    def write(
        backbone: Mapping[str, Tensor],
        name: str = "ckpt.pth",
        student: Mapping[str, Tensor] | None = None,
        teacher: bool = True,
        with_student: bool = True,
    ) -> Path:
        dim = next(v.shape[-1] for k, v in backbone.items() if k == "cls_token")
        head = dino_head_state(dim)
        student = backbone if student is None else student
        ckpt: dict[str, object] = {
            "optimizer": {
                "state": {0: {"step": torch.tensor(3.0)}},
                "param_groups": [{"lr": 1e-4}],
            },
            "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536, lr=5e-4),
            "dino_loss": {"center": torch.zeros(1, 64)},
            "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 10},
        }
        if with_student:
            ckpt["student"] = {
                **{f"module.backbone.{k}": v.clone() for k, v in student.items()},
                **{f"module.{k}": v for k, v in head.items()},
            }
        if teacher:
            ckpt["teacher"] = {
                **{f"backbone.{k}": v.clone() for k, v in backbone.items()},
                **head,
            }
        path = tmp_path / name
        torch.save(ckpt, path)
        return path

    return write
