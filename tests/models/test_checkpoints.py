"""Strict checkpoint loading: official DINO layout, our safetensors exports, and the errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import Tensor

from hipt.models import (
    CheckpointError,
    build,
    export_model,
    filter_hipt_checkpoint,
    load,
    load_checkpoint,
    read_card,
)
from hipt.provenance import sha256_file


def _random_state(name: str) -> dict[str, Tensor]:
    torch.manual_seed(1)
    return {k: torch.randn_like(v) for k, v in build(name).state_dict().items()}


def _assert_loaded(model: torch.nn.Module, state: dict[str, Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


@pytest.mark.parametrize("name", ["vit4k_xs", "vit256_tiny_test", "vit4k_tiny_test"])
def test_official_layout_loads_teacher_strictly(write_official, name, caplog) -> None:
    teacher = _random_state(name)
    student = {k: v + 1 for k, v in teacher.items()}
    path = write_official(teacher, student=student)
    model = build(name)
    with caplog.at_level(logging.INFO, logger="hipt.models.checkpoints"):
        report = load_checkpoint(model, path)
    _assert_loaded(model, teacher)  # the teacher, not the student
    assert report.wrapper == "teacher"
    assert report.n_loaded == len(teacher)
    assert sorted(report.dropped) == sorted(
        f"head.{k}"
        for k in (
            "mlp.0.weight",
            "mlp.0.bias",
            "mlp.2.weight",
            "mlp.2.bias",
            "mlp.4.weight",
            "mlp.4.bias",
            "last_layer.weight_g",
            "last_layer.weight_v",
        )
    )
    assert "dropped 8 DINO head keys" in caplog.text


def test_official_vit256_small_full_size(write_official) -> None:
    teacher = _random_state("vit256_small")
    assert teacher["pos_embed"].shape == (1, 197, 384)
    assert len(teacher) == 150
    model = build("vit256_small", checkpoint=write_official(teacher, with_student=False))
    _assert_loaded(model, teacher)


def test_student_only_checkpoint_strips_module_and_backbone(write_official) -> None:
    state = _random_state("vit4k_tiny_test")
    model = build("vit4k_tiny_test")
    report = load_checkpoint(model, write_official(state, teacher=False))
    assert report.wrapper == "student"
    _assert_loaded(model, state)


def _expect_error(model: torch.nn.Module, path: Path, *needles: str) -> None:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    message = str(err.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message


def test_missing_key_is_an_error(write_official) -> None:
    state = _random_state("vit4k_tiny_test")
    del state["blocks.1.mlp.fc2.bias"]
    path = write_official(state)
    _expect_error(build("vit4k_tiny_test"), path, "missing keys (1)", "blocks.1.mlp.fc2.bias")


def test_unexpected_key_is_an_error(write_official) -> None:
    state = _random_state("vit4k_tiny_test")
    state["prototypes"] = torch.zeros(64, 16)  # the old ViT-4K class version had these
    path = write_official(state)
    _expect_error(build("vit4k_tiny_test"), path, "unexpected keys (1)", "prototypes")


def test_wrong_shape_is_an_error(write_official) -> None:
    state = _random_state("vit4k_tiny_test")
    state["pos_embed"] = torch.zeros(1, 257, 16)  # a static 16x16 table instead of 14x14
    path = write_official(state)
    _expect_error(
        build("vit4k_tiny_test"), path, "shape mismatches (1)", "pos_embed (checkpoint [1, 257, 16]"
    )


def test_every_problem_is_listed_at_once(write_official) -> None:
    state = _random_state("vit4k_tiny_test")
    del state["norm.weight"]
    state["extra"] = torch.zeros(1)
    state["cls_token"] = torch.zeros(1, 1, 8)
    path = write_official(state)
    _expect_error(build("vit4k_tiny_test"), path, "norm.weight", "extra", "cls_token")


def test_prefixes_are_stripped_only_at_the_start() -> None:
    t = torch.zeros(1)
    state, dropped = filter_hipt_checkpoint(
        {
            "module.backbone.a": t,
            "_orig_mod.b": t,
            "blocks.0.module.c": t,
            "x.backbone.d": t,
            "module.head.mlp.0.weight": t,
            "blocks.head.e": t,
        }
    )
    assert sorted(state) == ["a", "b", "blocks.0.module.c", "blocks.head.e", "x.backbone.d"]
    assert dropped == ["head.mlp.0.weight"]


def test_colliding_keys_are_an_error() -> None:
    t = torch.zeros(1)
    with pytest.raises(CheckpointError, match="collide"):
        filter_hipt_checkpoint({"module.a": t, "a": t})


def test_compiled_state_dict_prefix_loads() -> None:
    state = _random_state("vit4k_tiny_test")
    model = build("vit4k_tiny_test")
    load_checkpoint(model, {f"_orig_mod.{k}": v for k, v in state.items()})
    _assert_loaded(model, state)


_SIDE_EFFECT: list[str] = []


def _side_effect(tag: str) -> str:
    _SIDE_EFFECT.append(tag)
    return tag


class _Evil:
    """Unpickling this would call ``_side_effect``."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_side_effect, ("ran",))


def test_arbitrary_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    state = _random_state("vit4k_tiny_test")
    torch.save({"teacher": state, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(build("vit4k_tiny_test"), path)
    assert _SIDE_EFFECT == []


def test_export_round_trip(tmp_path: Path) -> None:
    """export_model writes weights + card; load() and build(checkpoint=) give the same model."""
    model = build("vit4k_tiny_test", drop_path_rate=0.1).eval()
    out = export_model(model, tmp_path / "exp" / "vit4k", meta={"run_id": "r-1234"})
    assert out.name == "vit4k.safetensors"
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["format"] == "hipt.model/v2" and card["architecture"] == "vit4k_tiny_test"
    assert card["kwargs"] == {"drop_path_rate": 0.1}
    assert (card["kind"], card["consumes"], card["output"]) == ("region_encoder", "feats256",
                                                                 {"dim": 16})  # fmt: skip
    assert card["sha256"] == sha256_file(out)
    assert card["meta"] == {"run_id": "r-1234"}
    assert card["n_params"] == sum(p.numel() for p in model.parameters())

    loaded = build("vit4k_tiny_test", checkpoint=out).eval()
    rebuilt, read = load(out)
    assert read.kwargs == {"drop_path_rate": 0.1} and not rebuilt.training
    grid = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(grid), model(grid))
        assert torch.equal(rebuilt(grid), model(grid))

    with pytest.raises(FileExistsError):
        export_model(model, out)


def test_two_exports_of_the_same_weights_are_the_same_bytes(tmp_path: Path) -> None:
    """The weights file is deterministic, so its sha256 identifies the weights (stores and
    cards record it)."""
    model = build("vit4k_tiny_test")
    a, b = (export_model(model, tmp_path / name) for name in ("a", "b"))
    assert a.read_bytes() == b.read_bytes() and sha256_file(a) == sha256_file(b)


def test_patch_encoder_card_declares_preprocessing(tmp_path: Path) -> None:
    """A patch encoder's card carries its registry preprocessing (input px, mean, std)."""
    out = export_model(build("vit256_tiny_test"), tmp_path / "v256")
    card = read_card(out)
    assert (card.kind, card.consumes) == ("patch_encoder", "pixels")
    want = {"input_px": 256, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": False}
    assert card.preprocessing == want


def test_legacy_backbone_sidecar_still_loads(tmp_path: Path) -> None:
    """A ``hipt.backbone/v1`` export (architecture + overrides) loads through the card reader."""
    model = build("vit4k_tiny_test").eval()
    out = export_model(model, tmp_path / "old")
    legacy = {"format": "hipt.backbone/v1", "architecture": "vit4k_tiny_test", "overrides": {},
              "sha256": sha256_file(out), "meta": {"teacher": True}}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(legacy))
    rebuilt, card = load(out)
    assert card.consumes == "feats256" and card.kind == "region_encoder"
    grid = torch.randn(1, 32, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(grid), model(grid))


def test_export_architecture_mismatch(tmp_path: Path) -> None:
    out = export_model(build("vit4k_tiny_test"), tmp_path / "a")
    with pytest.raises(CheckpointError, match="does not match the model 'vit4k_xs'"):
        build("vit4k_xs", checkpoint=out)


def test_export_tampered_or_without_sidecar(tmp_path: Path) -> None:
    out = export_model(build("vit4k_tiny_test"), tmp_path / "a.safetensors")
    with out.open("r+b") as fh:  # flip one byte of the payload
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(CheckpointError, match="sha256"):
        build("vit4k_tiny_test", checkpoint=out)
    out.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="missing card"):
        build("vit4k_tiny_test", checkpoint=out)


def test_hipt_lgp_checkpoint_4k(write_official) -> None:
    state = _random_state("vit4k_tiny_test")
    model = build("hipt_lgp_tiny_test", checkpoint_4k=str(write_official(state)), freeze_4k=True)
    assert model.local_vit is not None
    _assert_loaded(model.local_vit, state)
    assert "checkpoint_4k" not in model.hipt_overrides


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        build("vit4k_tiny_test", checkpoint=tmp_path / "nope.pth")
