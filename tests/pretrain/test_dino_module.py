import copy

import pytest
import torch
from lightning.pytorch import Callback
from quiet_trainer import quiet_trainer
from torch.utils.data import DataLoader

from hipt.models import build
from hipt.pretrain.datamodules import DinoSample
from hipt.pretrain.dino import DinoModule
from hipt.pretrain.heads import MultiCropWrapper, build_head
from hipt.pretrain.loss import DinoCriterion
from hipt.pretrain.schedules import DinoOptim
from hipt.pretrain.transforms import GridMultiCrop


def _module(drop_path=0.0, **optim):
    torch.manual_seed(0)
    student = MultiCropWrapper(
        build("vit4k_tiny_test", drop_path_rate=drop_path),
        build_head(16, out_dim=16, hidden_dim=32, bottleneck_dim=16),
    )
    teacher = MultiCropWrapper(build("vit4k_tiny_test"), build_head(16, 16, 32, 16))
    return DinoModule(student, teacher, DinoCriterion(16), DinoOptim(**optim), batch_size=4)


def _fixed_loader(n=4):
    """One fixed batch of 4 feature grids cut into 2 global 14x14 + 2 local 6x6 views."""
    g = torch.Generator().manual_seed(0)
    crop = GridMultiCrop(n_local_crops=2)
    samples = [
        DinoSample(crop(torch.randn(32, 16, 16, generator=g), i), 0, {"index": i}) for i in range(n)
    ]
    return DataLoader(samples, batch_size=n, shuffle=False)


def _fit(module, steps, callbacks=()):
    trainer = quiet_trainer(steps, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=_fixed_loader())
    return trainer


class _Probe(Callback):
    def __init__(self):
        self.records = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.teacher_before = copy.deepcopy(pl_module.teacher.state_dict())
        self.last_before = pl_module.student.head.last_layer.weight_v.detach().clone()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.records.append(
            {
                "step": trainer.global_step,
                "student_grads": {
                    n: p.grad is not None
                    for n, p in pl_module.student.named_parameters()
                    if p.requires_grad
                },
                "teacher_grads": [
                    p.grad is None and not p.requires_grad for p in pl_module.teacher.parameters()
                ],
                "lr": [g["lr"] for g in optimizer.param_groups],
                "wd": [g["weight_decay"] for g in optimizer.param_groups],
            }
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step - 1
        m = pl_module.schedules.momentum_at(step)
        student = pl_module.student.state_dict()
        for name, new in pl_module.teacher.state_dict().items():
            want = m * self.teacher_before[name] + (1 - m) * student[name]
            torch.testing.assert_close(new, want, rtol=1e-6, atol=1e-7, msg=name)
        moved = not torch.equal(self.last_before, pl_module.student.head.last_layer.weight_v)
        self.records[-1]["last_layer_moved"] = moved
        self.records[-1]["loss"] = float(outputs["loss"])


def test_teacher_is_ema_gets_no_gradient_and_last_layer_frozen():
    """After every step teacher = m*teacher + (1-m)*student (closed form); the teacher never has
    gradients; every student parameter gets one; the last layer stays put during the freeze."""
    module, probe = (
        _module(warmup_steps=0, freeze_last_layer_steps=1, momentum_teacher=0.9),
        _Probe(),
    )
    init_teacher = copy.deepcopy(module.teacher.state_dict())
    assert all(torch.equal(init_teacher[k], v) for k, v in module.student.state_dict().items())
    _fit(module, 3, [probe])
    assert [r["step"] for r in probe.records] == [0, 1, 2]
    for r in probe.records:
        assert all(r["teacher_grads"])
        assert all(r["student_grads"].values()), [n for n, g in r["student_grads"].items() if not g]
    assert [r["last_layer_moved"] for r in probe.records] == [False, True, True]
    s = module.schedules
    for r in probe.records:
        assert r["lr"] == [pytest.approx(s.lr(r["step"]))] * 2
        assert r["wd"] == [pytest.approx(s.weight_decay_at(r["step"])), 0.0]


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss():
    """DINO loss on one repeated batch goes down (student learns to match the teacher)."""
    module, probe = (
        _module(
            lr=0.1,
            warmup_steps=0,
            freeze_last_layer_steps=0,
            weight_decay=0.0,
            weight_decay_end=0.0,
            momentum_teacher=0.99,
        ),
        _Probe(),
    )
    _fit(module, 8, [probe])
    losses = [r["loss"] for r in probe.records]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2, losses
