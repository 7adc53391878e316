"""Official finetuned HIPT slide models load strictly and give the official module's logits.

The reference below is written from the published description of ``HIPT_LGP_FC`` /
``HIPT_GP_FC`` (reference/hipt.md 6.1-6.2), not from the official code: ViT-4K per region (here
the explicit-attention ViT-4K of ``hipt.models.reference``, wrapped in ``nn.DataParallel`` as the
official ``relocate()`` does, hence ``local_vit.module.*`` keys), then ``global_phi``, a 2-layer
post-norm transformer over ``[M, 1, 192]``, gated attention pooling, ``global_rho`` and the
classifier.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hipt.models import ModelFileError, bag_to_grid
from hipt.models.official import load_official
from hipt.models.reference import ExplicitVit4K


class GatedAttn(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(0.25))
        self.attention_b = nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid(), nn.Dropout(0.25))
        self.attention_c = nn.Linear(dim, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(h) * self.attention_b(h))


class OfficialLayout(nn.Module):
    """HIPT_LGP_FC (with ``local_vit``) or HIPT_GP_FC (without), official names and wrapping."""

    def __init__(self, n_classes: int, with_vit4k: bool) -> None:
        super().__init__()
        if with_vit4k:
            self.local_vit = nn.DataParallel(ExplicitVit4K())
        self.global_phi = nn.Sequential(nn.Linear(192, 192), nn.ReLU(), nn.Dropout(0.25))
        layer = nn.TransformerEncoderLayer(192, 3, 192, 0.25, activation="relu")
        self.global_transformer = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.global_attn_pool = GatedAttn(192)
        self.global_rho = nn.Sequential(nn.Linear(192, 192), nn.ReLU(), nn.Dropout(0.25))
        self.classifier = nn.Linear(192, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.local_vit(bag_to_grid(x)) if hasattr(self, "local_vit") else x
        h = self.global_transformer(self.global_phi(h).unsqueeze(1)).squeeze(1)
        a = torch.softmax(self.global_attn_pool(h).T, dim=1)
        return self.classifier(self.global_rho(a @ h))


@pytest.mark.parametrize(("with_vit4k", "n_classes"), [(True, 3), (False, 2)])
def test_official_checkpoint_gives_the_official_logits(with_vit4k, n_classes, tmp_path: Path):
    """s_0_checkpoint.pt of either model loads strictly (weights only) into hipt_lgp; the card
    says what it consumes; logits equal the reference module's on the same bag."""
    torch.manual_seed(0)
    ref = OfficialLayout(n_classes, with_vit4k).eval()
    keys = ref.state_dict().keys()
    assert any(k.startswith("local_vit.module.") for k in keys) == with_vit4k
    path = tmp_path / "s_0_checkpoint.pt"
    torch.save(ref.state_dict(), path)
    model, card = load_official(path, task="subtype", classes=[f"c{i}" for i in range(n_classes)])
    assert card.consumes == ("feats256" if with_vit4k else "feats4k")
    assert card.output["classes"] == [f"c{i}" for i in range(n_classes)]
    assert card.meta["official_class"] == ("HIPT_LGP_FC" if with_vit4k else "HIPT_GP_FC")
    x = torch.randn(5, 256, 384) if with_vit4k else torch.randn(5, 192)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x), rtol=1e-4, atol=1e-5)


def test_wrong_class_count_foreign_files_and_missing_task_are_one_line(tmp_path: Path):
    ref = OfficialLayout(2, with_vit4k=False)
    path = tmp_path / "s_1_checkpoint.pt"
    torch.save(ref.state_dict(), path)
    with pytest.raises(ModelFileError, match="2 outputs, not n_classes=3"):
        load_official(path, task="subtype", n_classes=3)
    with pytest.raises(ModelFileError, match="task must be one of"):
        load_official(path, task="grade")
    other = tmp_path / "other.pt"
    torch.save({"teacher": {"x": torch.zeros(1)}}, other)
    with pytest.raises(ModelFileError, match="not a state dict of tensors"):
        load_official(other, task="subtype")
    torch.save({"blocks.0.x": torch.zeros(1)}, other)
    with pytest.raises(ModelFileError, match="not an official HIPT slide model"):
        load_official(other, task="subtype")
