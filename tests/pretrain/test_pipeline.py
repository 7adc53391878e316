import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from pipelines.pretrain import main, pick_yaml

from hipt.config import load_config
from hipt.models import build
from hipt.pretrain.config import PretrainConfig, validate
from hipt.pretrain.runner import prepare_out, train
from hipt.stage import StageRun

REPO = Path(__file__).resolve().parents[2]


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _sub(state, prefix):
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _args(stores, out, *extra):
    return ["config=tests/pretrain_4k_tiny.yaml", f"FEATURES={stores}", f"OUT={out}", *extra]


@pytest.mark.parametrize(
    "name",
    [
        "pretrain_256.yaml",
        "pretrain_4k.yaml",
        "tests/pretrain_256_tiny.yaml",
        "tests/pretrain_4k_tiny.yaml",
    ],
)
def test_every_pretrain_config_loads(name):
    """Each pretrain YAML loads into the schema and validates (official values where stated)."""
    cfg = load_config(PretrainConfig, name, ["out=x", "data.tiles=t", "data.features=f"])
    validate(cfg)
    if not name.startswith("tests/"):
        assert cfg.head.out_dim == 65536 and cfg.optim.lr == 5e-4 and cfg.optim.clip_grad == 3.0
        assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end) == (0.04, 0.4)
        assert (cfg.loss.teacher_temp, cfg.loss.student_temp) == (0.04, 0.1)
        assert cfg.model.drop_path_rate == 0.1 and cfg.optim.momentum_teacher == 0.996
    assert pick_yaml(["level=4k", "x=1"]) == ("pretrain_4k.yaml", ["level=4k", "x=1"])
    assert pick_yaml(["config=a.yaml", "level=4k"]) == ("a.yaml", ["level=4k"])


def test_pretrain_4k_end_to_end(stores_dir, tmp_path, capsys):
    """make pretrain-4k on tiny stores: outputs, strict export reproducing the teacher, refusal."""
    out = tmp_path / "run"
    assert main(_args(stores_dir, out)) == 0
    err = capsys.readouterr().err  # our lines, not Lightning's tips or its INFO chatter
    assert "Tip" not in err and "TPU available" not in err and "precision 32-true" in err
    for name in (
        "checkpoints/last.ckpt",
        "backbone.safetensors",
        "backbone.json",
        "run.json",
        "resolved_config.yaml",
    ):
        assert (out / name).is_file(), name
    assert list((out / "wandb").glob("offline-run-*"))
    run = json.loads((out / "run.json").read_text())
    assert run["extra"]["global_step"] == 4 and run["extra"]["upstream"]["n_regions"] == 21
    card = json.loads((out / "backbone.json").read_text())
    assert card["architecture"] == "vit4k_tiny_test" and card["meta"]["teacher"] is True
    assert (card["kind"], card["consumes"]) == ("region_encoder", "feats256")
    assert card["trained_on"]["model_256"] == "vit256_tiny_test"

    state = _ckpt(out / "checkpoints/last.ckpt")["state_dict"]
    teacher = build("vit4k_tiny_test")
    teacher.load_state_dict(_sub(state, "teacher.backbone."), strict=True)
    exported = build("vit4k_tiny_test", checkpoint=out / "backbone.safetensors")
    x = torch.randn(2, 32, 16, 16)
    torch.testing.assert_close(exported.eval()(x), teacher.eval()(x), rtol=0, atol=0)
    student = _sub(state, "student.backbone.")
    assert any(not torch.equal(student[k], v) for k, v in teacher.state_dict().items())

    capsys.readouterr()
    assert main(_args(stores_dir, out)) == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "already holds a finished pretraining run" in errors[0]


def test_pretrain_256_on_the_sample_slide_with_patch_cache(tiles_dir, tmp_path, monkeypatch):
    """make pretrain-256 on the real sample slide (patches via the reader into a patch cache)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = [
        "config=tests/pretrain_256_tiny.yaml",
        f"TILES={tiles_dir}",
        f"OUT={out}",
        f"data.patch_cache={cache}",
        "trainer.max_steps=2",
    ]
    assert main(args) == 0
    assert _ckpt(out / "checkpoints/last.ckpt")["global_step"] == 2
    assert (cache / "patches.npy").is_file()
    model = build("vit256_tiny_test", checkpoint=out / "backbone.safetensors")
    assert model(torch.zeros(1, 3, 256, 256)).shape == (1, 32)


class _Interrupt(Callback):
    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated interruption")


def test_resume_continues_exactly(stores_dir, tmp_path, monkeypatch):
    """Interrupted mid-epoch 0, at the epoch boundary or mid-epoch 1 (5 batches per epoch) and
    resumed, a run ends with the weights, teacher, center and AdamW state of an uninterrupted
    run: same step, schedules, data order and augmentations."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    extra = ["trainer.max_steps=9", "trainer.max_epochs=3", "checkpoint_every_n_steps=100"]
    assert main(_args(stores_dir, tmp_path / "a", *extra)) == 0
    a = _ckpt(tmp_path / "a/checkpoints/last.ckpt")
    for at in (2, 5, 7):
        out = tmp_path / f"b{at}"
        cfg = load_config(
            PretrainConfig,
            "tests/pretrain_4k_tiny.yaml",
            [f"data.features={stores_dir}", f"out={out}", *extra],
        )
        stage = StageRun("pretrain", cfg, out, prepare=lambda c=cfg, o=out: prepare_out(c, o))
        with stage, pytest.raises(RuntimeError, match="simulated"):
            train(cfg, None, stage, callbacks=[_Interrupt(at=at)])
        assert _ckpt(out / "checkpoints/last.ckpt")["global_step"] == at
        assert main(_args(stores_dir, out, *extra)) == 1  # no silent restart
        assert main(_args(stores_dir, out, *extra, "resume=true")) == 0

        b = _ckpt(out / "checkpoints/last.ckpt")
        assert a["global_step"] == b["global_step"] == 9
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for k, v in a["state_dict"].items():
            torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-6, atol=1e-7, msg=f"{at} {k}")
        for sa, sb in zip(
            a["optimizer_states"][0]["state"].values(),
            b["optimizer_states"][0]["state"].values(),
            strict=True,
        ):
            for k in sa:
                torch.testing.assert_close(sb[k], sa[k], rtol=1e-6, atol=1e-9)


def test_resume_with_other_settings_and_wrong_model_are_refused(stores_dir, tmp_path, monkeypatch):
    """resume=true with a changed result key is refused naming it; overwrite=true starts over;
    a ViT-256 model at level 4k is a config error (exit 2)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "run"
    assert main(_args(stores_dir, out, "trainer.max_steps=1")) == 0
    assert main(_args(stores_dir, out, "trainer.max_steps=1", "resume=true", "optim.lr=0.1")) == 1
    assert (
        main(_args(stores_dir, out, "trainer.max_steps=1", "resume=true", "data.num_workers=1"))
        == 0
    )
    assert main(_args(stores_dir, out, "trainer.max_steps=2", "overwrite=true")) == 0
    assert _ckpt(out / "checkpoints/last.ckpt")["global_step"] == 2
    assert main(_args(stores_dir, tmp_path / "x", "model.name=vit256_tiny_test")) == 2
