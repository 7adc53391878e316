"""Best-validation selection and early stopping, and the config checks around them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from finetune_helpers import ft_config
from torch import nn

from hipt.cohort import CohortError
from hipt.errors import ConfigError
from hipt.finetune.runner import run_finetune
from hipt.finetune.selection import SelectBest


def _epochs(cb, module, values):
    trainer = SimpleNamespace(sanity_checking=False, should_stop=False, callback_metrics={})
    for epoch, v in enumerate(values):
        with torch.no_grad():
            module.weight.fill_(float(epoch))
        trainer.current_epoch = epoch
        trainer.callback_metrics = {"val/auroc": torch.tensor(v)}
        cb.on_validation_end(trainer, module)
        if trainer.should_stop:
            break
    cb.on_fit_end(trainer, module)
    return trainer


def test_best_epoch_is_restored_and_nan_is_ignored():
    """The weights of the best finite epoch come back; NaN epochs neither win nor crash."""
    module = nn.Linear(1, 1, bias=False)
    cb = SelectBest("val/auroc", restore_best=True)
    _epochs(cb, module, [0.5, float("nan"), 0.8, 0.7, float("nan")])
    assert cb.best_epoch == 2 and module.weight.item() == 2.0


def test_early_stopping_after_patience():
    """Training stops after `patience` validations without improvement; loss is minimised."""
    module = nn.Linear(1, 1, bias=False)
    cb = SelectBest("val/auroc", restore_best=False, patience=2)
    trainer = _epochs(cb, module, [0.6, 0.7, 0.65, 0.66, 0.9])
    assert trainer.should_stop and trainer.current_epoch == 3 and module.weight.item() == 3.0
    assert SelectBest("val/loss", restore_best=False).minimize


def test_config_checks_and_expected_checkpoint(planted, tmp_path, monkeypatch):
    """best_val without a validation part is refused up front; stores made by another ViT-4K
    than expect_checkpoint_4k are reported (every slide row) before any training."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(ConfigError, match="val_fraction"):
        run_finetune(
            ft_config(
                "subtype", planted.csv, planted.features, tmp_path / "a", "train.select=best_val"
            )
        )
    with pytest.raises(CohortError) as info:
        run_finetune(
            ft_config(
                "subtype",
                planted.csv,
                planted.features,
                tmp_path / "b",
                f"expect_checkpoint_4k={'c' * 64}",
            )
        )
    rows = [r for p in info.value.problems for r in p.rows]
    assert len(rows) == 91 and "checkpoint_4k_sha256" in str(info.value)
