import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hipt.pretrain.heads import build_head
from hipt.pretrain.schedules import (
    DECAY_FLAG,
    DinoOptim,
    DinoSchedules,
    apply_schedules,
    clip_gradients,
    global_batch_size,
    make_schedules,
    param_groups,
)


def _sched(total, warmup, freeze=0):
    return DinoSchedules(
        total_steps=total,
        peak_lr=1e-3,
        min_lr=1e-6,
        warmup_steps=warmup,
        weight_decay=(0.04, 0.4),
        momentum=(0.996, 1.0),
        freeze_last_layer_steps=freeze,
    )


@settings(max_examples=40, deadline=None)
@given(total=st.integers(3, 400), frac=st.floats(0.0, 0.9))
def test_schedules_hit_endpoints_and_are_monotone(total, frac):
    """lr rises linearly from ~0 to the peak, then falls to min_lr; wd and momentum rise."""
    warmup = int(frac * (total - 2))
    s = _sched(total, warmup)
    lr = np.array([s.lr(i) for i in range(total)])
    wd = np.array([s.weight_decay_at(i) for i in range(total)])
    m = np.array([s.momentum_at(i) for i in range(total)])
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.4)
    assert m[0] == pytest.approx(0.996) and m[-1] == pytest.approx(1.0)
    assert np.all(np.diff(wd) >= -1e-12) and np.all(np.diff(m) >= -1e-12)
    assert lr[-1] == pytest.approx(1e-6)
    assert lr.max() == pytest.approx(1e-3)
    peak = int(np.argmax(lr))
    assert np.all(np.diff(lr[: peak + 1]) >= -1e-15) and np.all(np.diff(lr[peak:]) <= 1e-15)
    if warmup:
        # linear warm-up from 0: step i has (i + 1) / warmup of the peak
        np.testing.assert_allclose(lr[:warmup], 1e-3 * np.arange(1, warmup + 1) / warmup)
    # steps past the end stay at the end values (a resumed run asking for step total)
    assert s.lr(total + 5) == lr[-1] and s.momentum_at(total) == m[-1]


def test_cosine_midpoint_closed_form():
    """Without warm-up, the value halfway is the mean of the endpoints (cosine, not linear)."""
    s = _sched(total=101, warmup=0)
    assert s.weight_decay_at(50) == pytest.approx((0.04 + 0.4) / 2)
    assert s.weight_decay_at(25) == pytest.approx(
        0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi / 4)) / 2
    )


@pytest.mark.parametrize(("batch", "world", "acc"), [(64, 1, 1), (64, 4, 1), (32, 2, 4)])
def test_lr_scales_with_global_batch(batch, world, acc):
    """Peak lr = 5e-4 x (batch x devices x nodes x accumulation) / 256 (DINO linear rule)."""
    g = global_batch_size(batch, world, acc)
    assert g == batch * world * acc
    s = make_schedules(
        DinoOptim(warmup_epochs=1), total_steps=100, steps_per_epoch=10, global_batch=g
    )
    assert s.peak_lr == pytest.approx(5e-4 * g / 256)
    assert s.warmup_steps == 10 and s.freeze_last_layer_steps == 10
    steps = make_schedules(DinoOptim(warmup_steps=7, freeze_last_layer_steps=3), 100, 10, g)
    assert steps.warmup_steps == 7 and steps.freeze_last_layer_steps == 3


def test_param_groups_no_decay_on_biases_and_norms():
    """Every trainable parameter is in one group; biases and LayerNorm params are not decayed."""
    from hipt.models import build

    model = torch.nn.ModuleDict({"b": build("vit256_tiny_test"), "h": build_head(32, 16, 32, 16)})
    groups = param_groups([model])
    by_id = {id(p): g[DECAY_FLAG] for g in groups for p in g["params"]}
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    assert set(by_id) == set(trainable)
    for pid, name in trainable.items():
        no_decay = name.endswith(".bias") or "norm" in name
        assert by_id[pid] is (not no_decay), name
    assert all(id(p) not in by_id for n, p in model.named_parameters() if n.endswith("weight_g"))
    opt = torch.optim.AdamW(groups, lr=0.0)
    apply_schedules(opt, _sched(10, 2), step=9)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(1e-6)] * 2
    assert [g["weight_decay"] for g in opt.param_groups] == [pytest.approx(0.4), 0.0]


def test_clip_gradients_is_per_parameter():
    """Each gradient is clipped to norm 3 on its own, keeping its direction; small ones stay."""
    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.tensor([30.0, 40.0, 0.0, 0.0])
    b.grad = torch.tensor([1.0, 2.0, 2.0])
    largest = clip_gradients([a, b], 3.0)
    assert largest == pytest.approx(50.0)
    torch.testing.assert_close(a.grad, torch.tensor([1.8, 2.4, 0.0, 0.0]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, torch.tensor([1.0, 2.0, 2.0]))
