"""Bags: pooled slides, region sampling, balanced sampling, one-bag batches, accumulation."""

from __future__ import annotations

import copy

import lightning as L
import numpy as np
import pytest
import torch
from finetune_helpers import make_store
from torch.utils.data import DataLoader

from hipt.features import open_store
from hipt.finetune.datamodule import BagDataset, BagReader, balanced_weights, collate_one
from hipt.finetune.module import SlideTaskModule
from hipt.models import build
from hipt.tasks.base import build_task
from hipt.tasks.config import TargetConfig


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bags")
    paths = {
        "P0": [make_store(folder, "a", m=3, seed=1), make_store(folder, "b", m=4, seed=2)],
        "P1": [make_store(folder, "c", m=2, seed=3)],
    }
    return paths


@pytest.mark.parametrize("kind", ["feats256", "feats4k"])
@pytest.mark.parametrize("cache_gb", [0.0, 1.0])
def test_bag_pools_slides_and_samples_regions(stores, kind, cache_gb):
    """A patient's bag is its slides' regions in order; max_regions draws that many distinct
    regions of that bag (same draw cached or read from disk), whole bags otherwise."""
    reader = BagReader(stores, kind, cache_gb)
    assert reader.cached == (cache_gb > 0)
    read = (lambda s: s.feats256()) if kind == "feats256" else (lambda s: s.feats4k())
    full = np.concatenate([read(open_store(p)) for p in stores["P0"]])
    np.testing.assert_array_equal(reader.read("P0").numpy(), full)
    torch.manual_seed(0)
    sub = reader.read("P0", max_regions=4).numpy()
    torch.manual_seed(0)
    rows = torch.randperm(7)[:4].sort().values.numpy()
    np.testing.assert_array_equal(sub, full[rows])
    assert reader.read("P1", max_regions=4).shape[0] == 2


def test_balanced_weights_and_one_bag_batches(stores):
    """Weights are N / class size (official sampler); batches keep the variable bag size."""
    np.testing.assert_allclose(balanced_weights(np.array([0, 0, 0, 1])), [4 / 3, 4 / 3, 4 / 3, 4])
    ds = BagDataset(BagReader(stores, "feats4k", 1.0), ["P0", "P1"], torch.tensor([0, 1]), None)
    sizes = [b.data.shape for b in DataLoader(ds, batch_size=1, collate_fn=collate_one)]
    assert sizes == [torch.Size([7, 16]), torch.Size([2, 16])]


class GradTap(L.Callback):
    """Records the gradients the optimizer is about to apply."""

    def __init__(self):
        self.grads = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append(
            {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        )


def test_gradient_accumulation_really_accumulates(stores):
    """With accumulate_grad_batches=3 the optimizer steps once per 3 bags, with the mean of their
    gradients (not per bag with a scaled loss, the official subtyping bug, HIPT issue #53)."""
    task = build_task("subtype", TargetConfig(classes=["A", "B"]))
    task.classes = ["A", "B"]
    reader = BagReader(stores, "feats256", 1.0)
    ids = ["P0", "P1", "P0", "P1", "P1", "P0"]
    targets = torch.tensor([0, 1, 1, 0, 1, 0])
    loader = DataLoader(
        BagDataset(reader, ids, targets, None), batch_size=1, collate_fn=collate_one
    )
    torch.manual_seed(0)
    model = build("meanpool_tiny_test", n_classes=2, dropout=0.0)
    start = copy.deepcopy(model)
    tap = GradTap()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        accumulate_grad_batches=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[tap],
        enable_model_summary=False,
    )
    trainer.fit(SlideTaskModule(model, task), train_dataloaders=loader)
    assert trainer.global_step == 2 and len(tap.grads) == 2
    start.zero_grad()
    for i in range(3):
        loss = task.loss(start(reader.read(ids[i])).logits, targets[i : i + 1]) / 3
        loss.backward()
    for name, p in start.named_parameters():
        torch.testing.assert_close(tap.grads[0][f"model.{name}"], p.grad, atol=1e-6, rtol=1e-5)
