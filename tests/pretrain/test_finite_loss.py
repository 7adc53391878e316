import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from quiet_trainer import quiet_trainer
from torch.utils.data import DataLoader

from hipt.config import load_config
from hipt.errors import ConfigError
from hipt.models import build
from hipt.pretrain.callbacks import SaveOnException
from hipt.pretrain.config import PretrainConfig, validate
from hipt.pretrain.datamodules import DinoSample
from hipt.pretrain.dino import DinoModule
from hipt.pretrain.finite import NonFiniteLossError
from hipt.pretrain.heads import MultiCropWrapper, build_head
from hipt.pretrain.loss import DinoCriterion
from hipt.pretrain.runner import build_trainer
from hipt.pretrain.schedules import DinoOptim
from hipt.pretrain.transforms import GridMultiCrop

REPO = Path(__file__).resolve().parents[2]
INJECT = Path(__file__).with_name("inject_fault.py")
LIMIT_S = 120  # the bound; a hang would last trainer.collective_timeout_s (600 s)


class _NanAtStep(DinoCriterion):
    """The DINO loss, made NaN at one optimizer step (one call per step)."""

    def __init__(self, step):
        super().__init__(16)
        self.step, self.calls = step, 0

    def forward(self, teacher_out, student_out, epoch):
        loss = super().forward(teacher_out, student_out, epoch)
        self.calls += 1
        return loss * float("nan") if self.calls - 1 == self.step else loss


def _module(criterion):
    torch.manual_seed(0)
    student = MultiCropWrapper(build("vit4k_tiny_test"), build_head(16, 16, 32, 16))
    teacher = MultiCropWrapper(build("vit4k_tiny_test"), build_head(16, 16, 32, 16))
    optim = DinoOptim(warmup_steps=0, freeze_last_layer_steps=0, lr=0.1)
    return DinoModule(student, teacher, criterion, optim, batch_size=4)


class _StopAfterFirstStep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = True


def _fit(module, steps, callbacks=()):
    g = torch.Generator().manual_seed(0)
    crop = GridMultiCrop(n_local_crops=2)
    grids = [torch.randn(32, 16, 16, generator=g) for _ in range(4)]
    samples = [DinoSample(crop(x, i), 0, {"index": i}) for i, x in enumerate(grids)]
    trainer = quiet_trainer(steps, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=DataLoader(samples, batch_size=4))


def test_a_nan_loss_stops_the_run_before_any_weight_changes():
    """A loss made NaN at step 1 raises NonFiniteLossError naming step 1, as one line with the
    fix; student and teacher then equal those of an independent run (same schedules) stopped
    after step 0, so the NaN gradients were never applied (AdamW and the EMA update did not run)."""
    reference = _module(DinoCriterion(16))
    _fit(reference, 3, [_StopAfterFirstStep()])
    failing = _module(_NanAtStep(1))
    with pytest.raises(NonFiniteLossError) as raised:
        _fit(failing, 3)
    assert str(raised.value) == (
        "DINO loss is not finite at step 1; lower optim.lr or optim.clip_grad, or check the "
        "input data"
    )
    for part in ("student", "teacher"):
        want = getattr(reference, part).state_dict()
        for k, v in getattr(failing, part).state_dict().items():
            assert torch.isfinite(v).all(), k
            torch.testing.assert_close(v, want[k], rtol=0, atol=0, msg=f"{part}.{k}")


class _StubTrainer:
    def __init__(self, world_size):
        self.world_size, self.is_global_zero, self.saved = world_size, True, []

    def save_checkpoint(self, path, weights_only):
        self.saved.append(path)


@pytest.mark.parametrize(
    ("world_size", "exception", "saves"),
    [
        (1, RuntimeError("data"), True),
        (1, KeyboardInterrupt(), True),
        (2, NonFiniteLossError("nan"), True),
        (2, RuntimeError("data"), False),
        (2, KeyboardInterrupt(), False),
    ],
)
def test_save_on_exception_saves_only_where_every_process_takes_part(
    world_size, exception, saves, tmp_path
):
    """The rule of SaveOnException: one process always saves; several processes save only for
    the error they all raise together (a save is a collective that the others would not join)."""
    trainer = _StubTrainer(world_size)
    SaveOnException(tmp_path / "last.ckpt").on_exception(trainer, None, exception)
    assert trainer.saved == ([tmp_path / "last.ckpt"] if saves else [])


@pytest.mark.parametrize(
    ("strategy", "devices", "ddp"), [("ddp", 2, True), ("auto", 2, True), ("auto", 1, False)]
)
def test_ddp_gets_the_configured_collective_timeout(strategy, devices, ddp, tmp_path):
    """strategy ddp, and auto when Lightning resolves it to DDP, get trainer.collective_timeout_s
    as the process-group timeout (Lightning's default is 30 min); one device stays single-device;
    a timeout <= 0 is a config error."""
    overrides = ["out=o", "data.features=f", "trainer.accelerator=cpu"]
    overrides += [f"trainer.strategy={strategy}", f"trainer.devices={devices}"]
    cfg = load_config(PretrainConfig, "tests/pretrain_4k_tiny.yaml", [*overrides])
    assert cfg.trainer.collective_timeout_s == 600
    cfg.trainer.collective_timeout_s = 42
    trainer = build_trainer(cfg, tmp_path, False, [])
    if ddp:
        assert type(trainer.strategy) is DDPStrategy
        assert trainer.strategy._timeout == datetime.timedelta(seconds=42)  # read at setup
    else:
        assert isinstance(trainer.strategy, SingleDeviceStrategy)
    cfg.trainer.collective_timeout_s = 0
    with pytest.raises(ConfigError, match="trainer.collective_timeout_s must be > 0"):
        validate(cfg)


def _run_with_fault(mode, stores, out):
    """2 CPU processes (gloo) of the tiny 4k stage; rank 1's step 1 fails as ``mode`` says."""
    cmd = [
        sys.executable,
        str(INJECT),
        mode,
        "1",
        "1",
        "config=tests/pretrain_4k_tiny.yaml",
        f"FEATURES={stores}",
        f"OUT={out}",
        "data.batch_size=2",
        "model.drop_path_rate=0.0",
        "checkpoint_every_n_steps=100",  # no periodic checkpoint: last.ckpt only on error
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.accelerator=cpu",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("OMP_NUM_THREADS", None)  # the runner splits the cores itself
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # both ranks (their own session)
        _, err = proc.communicate()
        pytest.fail(f"{mode}: still running after {LIMIT_S} s (hang):\n{err[-3000:]}")
    return proc.returncode, err, time.monotonic() - start


def test_nan_loss_on_one_ddp_process_stops_both_in_the_same_step(stores_dir, tmp_path):
    """Two gloo processes, only rank 1's loss NaN at step 1 (before the fix: a hang until the
    collective timeout): both processes end within the limit, each with the same single error
    line naming step 1 and 1 of 2 processes and no traceback, and both took part in the save,
    whose weights are the finite ones of step 1 (the NaN update was never applied)."""
    out = tmp_path / "nan"
    code, err, seconds = _run_with_fault("nan", stores_dir, out)
    assert code == 1, err[-3000:]
    assert seconds < LIMIT_S
    errors = [ln.split(" ERROR ", 1)[1] for ln in err.splitlines() if " ERROR " in ln]
    want = (
        "hipt: DINO loss is not finite at step 1 on 1 of 2 processes; lower optim.lr or "
        "optim.clip_grad, or check the input data"
    )
    assert errors == [want, want], err[-3000:]
    assert "Traceback" not in err
    ckpt = torch.load(out / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_an_error_on_one_ddp_process_ends_the_run_without_a_save(stores_dir, tmp_path):
    """Two gloo processes, rank 1 raising its own error at step 1 (before the fix: its save's
    barrier never met rank 0, a hang): rank 1 skips the save and exits, rank 0 fails on the lost
    peer and skips it too, all within the limit; no checkpoint is written, rank 0 says why."""
    out = tmp_path / "raise"
    code, err, seconds = _run_with_fault("raise", stores_dir, out)
    assert code != 0 and seconds < LIMIT_S
    assert "RuntimeError: injected fault on rank 1 at step 1" in err
    warnings = [ln for ln in err.splitlines() if "not written at this interruption" in ln]
    assert len(warnings) == 1, err[-3000:]
    assert not (out / "checkpoints/last.ckpt").exists()
