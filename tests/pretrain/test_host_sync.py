import pytest
import torch
from quiet_trainer import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader

import hipt.pretrain.dino as dino
from hipt.models import build
from hipt.pretrain.datamodules import DinoSample
from hipt.pretrain.dino import DinoModule
from hipt.pretrain.heads import MultiCropWrapper, build_head
from hipt.pretrain.loss import DinoCriterion
from hipt.pretrain.schedules import DinoOptim, clip_gradients
from hipt.pretrain.transforms import GridMultiCrop

#: Tensor methods that read a value back to the host (on a GPU: wait for the device).
HOST_READS = ("item", "__float__", "__bool__", "__int__", "tolist")


def _dino_clip_gradients(grads, clip):
    """DINO's own ``utils.clip_gradients`` (facebookresearch/dino), on a list of gradients."""
    norms = []
    for g in grads:
        param_norm = g.norm(2)
        norms.append(param_norm.item())
        clip_coef = clip / (param_norm + 1e-6)
        if clip_coef < 1:
            g.mul_(clip_coef)
    return norms


def _random_params(n=60, seed=0):
    """Parameters with gradients of random shapes and norms from 1e-3 to ~1e3 (plus a zero one
    and one without gradient)."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(n):
        shape = tuple(
            int(s) for s in torch.randint(1, 40, (int(torch.randint(1, 4, ())),), generator=g)
        )
        p = nn.Parameter(torch.zeros(shape))
        scale = 10 ** float(torch.empty(()).uniform_(-3, 2, generator=g))
        p.grad = torch.randn(shape, generator=g) * scale
        params.append(p)
    params[3].grad.zero_()
    params.append(nn.Parameter(torch.zeros(5)))  # no gradient: skipped
    return params


@pytest.mark.parametrize("max_norm", [0.3, 3.0])
def test_clip_gradients_equals_dinos_per_parameter_loop(max_norm):
    """The foreach version gives every gradient exactly what DINO's per-parameter loop (written
    out above, with its host reads) gives it, on gradients below, around and far above the
    limit, and returns the largest norm before clipping; ``max_norm <= 0`` changes nothing."""
    params = _random_params()
    reference = [p.grad.clone() for p in params if p.grad is not None]
    norms = _dino_clip_gradients(reference, max_norm)
    assert min(norms) < max_norm < max(norms)  # both branches are exercised

    largest = clip_gradients(params, max_norm)

    assert isinstance(largest, torch.Tensor) and largest.dim() == 0
    assert float(largest) == pytest.approx(max(norms), rel=1e-6)
    got = [p.grad for p in params if p.grad is not None]
    for i, (g, want) in enumerate(zip(got, reference, strict=True)):
        torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-9, msg=f"gradient {i}")

    before = [g.clone() for g in got]
    clip_gradients(params, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(got, before, strict=True))
    assert clip_gradients([nn.Parameter(torch.zeros(2))], 3.0) is None


def _module():
    torch.manual_seed(0)
    student = MultiCropWrapper(build("vit4k_tiny_test"), build_head(16, 16, 32, 16))
    teacher = MultiCropWrapper(build("vit4k_tiny_test"), build_head(16, 16, 32, 16))
    optim = DinoOptim(warmup_steps=0, freeze_last_layer_steps=1, clip_grad=0.01)
    return DinoModule(student, teacher, DinoCriterion(16), optim, batch_size=4)


def _loader():
    g = torch.Generator().manual_seed(0)
    crop = GridMultiCrop(n_local_crops=2)
    grids = [torch.randn(32, 16, 16, generator=g) for _ in range(4)]
    samples = [DinoSample(crop(x, i), 0, {"index": i}) for i, x in enumerate(grids)]
    return DataLoader(samples, batch_size=4)


class _HostReadTrap:
    """While the module's ``optimizer_step`` runs (closure: training_step, backward, the finite
    check, freeze and clip hooks; then AdamW and the EMA update), every :data:`HOST_READS` call
    is recorded as a violation, except inside ``FiniteLossCheck.check`` and on AdamW's step
    counters, which torch keeps in host memory (``capturable=False``)."""

    def __init__(self, module, monkeypatch):
        self.module, self.active = module, False
        self.violations, self.steps, self.checks, self.clips_inside = [], 0, 0, 0
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._trap(name, getattr(torch.Tensor, name)))
        monkeypatch.setattr(module, "optimizer_step", self._scoped(module.optimizer_step))
        monkeypatch.setattr(module.finite_check, "check", self._allowed(module.finite_check.check))
        monkeypatch.setattr(dino, "clip_gradients", self._clip(dino.clip_gradients))

    def _adam_step_counter(self, t):
        states = self.module.trainer.optimizers[0].state.values()
        return any(t is s.get("step") for s in states)

    def _trap(self, name, original):
        def read(t, *args, **kwargs):
            if self.active and not self._adam_step_counter(t):
                self.violations.append(name)
                raise AssertionError(f"Tensor.{name} inside the training step")
            return original(t, *args, **kwargs)

        return read

    def _scoped(self, optimizer_step):
        def scoped(*args, **kwargs):
            self.active = True
            try:
                optimizer_step(*args, **kwargs)
            finally:
                self.active = False
            self.steps += 1

        return scoped

    def _allowed(self, check):
        def allowed(*args, **kwargs):
            inside, self.active = self.active, False
            try:
                check(*args, **kwargs)
            finally:
                self.active = inside
            self.checks += inside

        return allowed

    def _clip(self, clip):
        def counted(*args, **kwargs):
            self.clips_inside += self.active
            return clip(*args, **kwargs)

        return counted


def test_a_training_step_reads_no_tensor_value_back_to_the_host(monkeypatch):
    """Two real optimizer steps of a tiny DINO module under Trainer.fit (a frozen-last-layer step
    and a normal one, both clipped): inside optimizer_step, which wraps training_step with its
    logging, the backward pass, the hooks, the clipping, AdamW and the EMA update, no Tensor
    item/__float__/__bool__/__int__/tolist is called except the one read of FiniteLossCheck.check
    per step and AdamW's host-side step counters; without a progress bar, Lightning is given no
    progress-bar metric to read back after each step either. What this cannot see: syncs inside
    C++ ops (e.g. nonzero) and blocking host-to-device copies, which need a CUDA run with
    torch.cuda.set_sync_debug_mode("error")."""
    module = _module()
    trap = _HostReadTrap(module, monkeypatch)
    trainer = quiet_trainer(2)
    trainer.fit(module, train_dataloaders=_loader())

    assert trap.violations == []
    assert trainer.global_step == 2 and (trap.steps, trap.checks, trap.clips_inside) == (2, 2, 2)
    assert "train/lr" in trainer.callback_metrics and trainer.progress_bar_metrics == {}


def _sync_debug(mode, fn):
    def run(*args, **kwargs):
        before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(mode)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(before)

    return run


@pytest.mark.gpu
def test_a_cuda_training_step_never_synchronizes_with_the_device(monkeypatch):
    """On CUDA in bf16-mixed (as real runs), with torch.cuda.set_sync_debug_mode("error") for
    the whole of optimizer_step, two real steps complete: no operation in training_step, the
    backward pass, the clipping, AdamW or the EMA update synchronizes the host with the device
    (item, nonzero, blocking copies in either direction, stream syncs); only
    FiniteLossCheck.check runs outside the error mode, as it waits on purpose."""
    module = _module()
    monkeypatch.setattr(module, "optimizer_step", _sync_debug("error", module.optimizer_step))
    check = _sync_debug("default", module.finite_check.check)
    monkeypatch.setattr(module.finite_check, "check", check)
    trainer = quiet_trainer(2, accelerator="gpu", precision="bf16-mixed")
    trainer.fit(module, train_dataloaders=_loader())
    assert trainer.global_step == 2
