"""Precision policy: fp32 on CPU, bf16 autocast on CUDA."""

from __future__ import annotations

import contextlib

import pytest
import torch

from hipt.models import autocast_context, build, prepare_images, prepare_model


def test_cpu_stays_fp32() -> None:
    assert isinstance(autocast_context("cpu"), contextlib.nullcontext)
    model = prepare_model(build("vit256_tiny_test").eval(), "cpu")
    x = prepare_images(torch.randn(1, 3, 256, 256), "cpu")
    with autocast_context("cpu"), torch.no_grad():
        assert model(x).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_is_bf16() -> None:
    model = prepare_model(build("vit256_tiny_test").eval(), "cuda")
    x = prepare_images(torch.randn(1, 3, 256, 256), "cuda")
    assert x.is_contiguous(memory_format=torch.channels_last)
    with autocast_context("cuda"), torch.no_grad():
        assert model(x).dtype == torch.bfloat16
