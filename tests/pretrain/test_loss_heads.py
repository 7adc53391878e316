import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss

from hipt.pretrain.heads import MultiCropWrapper, build_head
from hipt.pretrain.loss import DinoCriterion


def _dino_closed_form(teacher, student, center, t_temp, s_temp):
    """DINO loss written from the paper: mean over pairs (t, s), t != s, of H(P_t, P_s)."""
    total, n = 0.0, 0
    for i, t in enumerate(teacher):
        p_t = F.softmax((t - center) / t_temp, dim=-1)
        for j, s in enumerate(student):
            if i == j:
                continue
            total = total + (-(p_t * F.log_softmax(s / s_temp, dim=-1)).sum(-1)).mean()
            n += 1
    return total / n


def test_criterion_matches_paper_closed_form_and_centers():
    """Loss equals the paper's formula; the center moves to m*c + (1-m)*mean(teacher outputs)."""
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(3, 8, generator=g) for _ in range(2)]
    student = [torch.randn(3, 8, generator=g) for _ in range(4)]
    crit = DinoCriterion(8, teacher_temp=0.07, student_temp=0.1, center_momentum=0.9)
    crit.loss.center.copy_(torch.randn(1, 1, 8, generator=g))
    c0 = crit.center.clone()
    got = crit(teacher, student, epoch=0)
    want = _dino_closed_form(teacher, student, c0, 0.07, 0.1)
    torch.testing.assert_close(got, want)
    batch_mean = torch.stack(teacher).mean(dim=(0, 1), keepdim=True)
    torch.testing.assert_close(crit.center, 0.9 * c0 + 0.1 * batch_mean)


def test_criterion_is_lightly_dinoloss_and_fp32_under_autocast():
    """Our wrapper returns lightly's DINOLoss value, also inside bf16 autocast (kept fp32)."""
    g = torch.Generator().manual_seed(1)
    teacher = [torch.randn(4, 16, generator=g) for _ in range(2)]
    student = [torch.randn(4, 16, generator=g) for _ in range(3)]
    ours, ref = DinoCriterion(16, teacher_temp=0.04), DINOLoss(16, teacher_temp=0.04)
    want = ref(teacher, student, epoch=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ours([t.bfloat16() for t in teacher], [s.bfloat16() for s in student], epoch=0)
    assert got.dtype == torch.float32
    bf_teacher = [t.bfloat16().float() for t in teacher]
    bf_student = [s.bfloat16().float() for s in student]
    torch.testing.assert_close(
        got, DINOLoss(16, teacher_temp=0.04)(bf_teacher, bf_student, epoch=0)
    )
    assert abs(got.item() - want.item()) < 0.05


def test_teacher_temperature_warmup_is_linear():
    """Teacher temperature goes linearly from warmup_teacher_temp to teacher_temp over N epochs."""
    crit = DinoCriterion(
        8, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=4
    )
    temps = [crit.teacher_temperature(e) for e in range(6)]
    assert temps == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07, 0.07])
    assert DinoCriterion(8).teacher_temperature(0) == pytest.approx(0.04)  # HIPT: constant


class _Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 5)
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.proj(x.mean(dim=(2, 3)))


def test_multicrop_groups_views_by_size():
    """One backbone pass per run of equal-size views; outputs equal a per-view forward."""
    torch.manual_seed(0)
    backbone, head = _Counting(), build_head(5, out_dim=16, hidden_dim=8, bottleneck_dim=4)
    wrapper = MultiCropWrapper(backbone, head).eval()
    views = [torch.randn(2, 3, 8, 8) for _ in range(2)] + [
        torch.randn(2, 3, 4, 4) for _ in range(3)
    ]
    out = wrapper(views)
    assert backbone.calls == [(4, 3, 8, 8), (6, 3, 4, 4)]
    assert [tuple(o.shape) for o in out] == [(2, 16)] * 5
    for v, o in zip(views, out, strict=True):
        torch.testing.assert_close(o, head(backbone(v)), rtol=1e-5, atol=1e-6)
