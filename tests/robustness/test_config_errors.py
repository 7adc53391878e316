"""A typo or an invalid value in any stage's config: exit code 2, one line naming it, no output."""

from __future__ import annotations

import pytest
from robust_utils import error_lines, stage

TYPOS = [
    ("tile", ["slides=x.svs", "min_tisue=0.1"], "min_tisue", "min_tissue"),
    ("extract_features", ["tiles=t", "batch_sise=4"], "batch_sise", "batch_size"),
    ("pretrain", ["level=256", "data.tiles=t", "optim.lrr=1"], "optim.lrr", "optim.lr"),
    ("pretrain", ["level=4k", "data.features=f", "crops4k.n_local=2"], "crops4k.n_local", None),
    (
        "finetune",
        ["task=subtype", "cohort=c", "features=f", "train.epochs=3"],
        "train.epochs",
        None,
    ),
    (
        "finetune",
        ["task=survival", "cohort=c", "features=f", "target.nbins=3"],
        "target.nbins",
        "target.n_bins",
    ),
    ("heatmap", ["slide=s", "features=f", "canvas_mp=4"], "canvas_mp", "canvas_mpp"),
    ("demo", ["cohort.n_patient=3"], "cohort.n_patient", "cohort.n_patients"),
]


@pytest.mark.parametrize(
    ("module", "args", "bad", "hint"), TYPOS, ids=[f"{t[0]}-{t[2]}" for t in TYPOS]
)
def test_typo_exits_2_naming_the_key(module, args, bad, hint, tmp_path, capsys):
    out = tmp_path / "out"
    assert stage(module, *args, f"out={out}") == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and f"unknown config key '{bad}'" in errors[0]
    if hint:
        assert f"did you mean {hint}" in errors[0]
    assert not out.exists()


INVALID = [
    ("tile", ["slides=x.svs", "target_mpp=-1"], "target_mpp"),
    ("extract_features", ["tiles=t", "dtype=float8"], "dtype"),
    ("pretrain", ["level=8k", "data.tiles=t"], "level"),
    ("finetune", ["task=subtype", "cohort=c", "features=f", "train.select=best"], "train.select"),
    ("heatmap", ["slide=s", "features=f", "combine=max"], "combine"),
    ("demo", ["tasks=[subtype,grade]"], "tasks"),
    ("demo", ["headline_model=vit"], "headline_model"),
    ("demo", ["run_models=[abmil,clam]"], "run_models"),
    ("demo", ["models={abmil:[a=1]}"], "overrides"),  # a value YAML cannot parse
    ("finetune", ["task=grade", "cohort=c", "features=f"], "task"),
    ("tile", ["min_tissue=0.1"], "slides"),  # missing mandatory value
]


@pytest.mark.parametrize(
    ("module", "args", "key"), INVALID, ids=[f"{t[0]}-{t[2]}" for t in INVALID]
)
def test_invalid_value_exits_2_naming_it(module, args, key, tmp_path, capsys):
    out = tmp_path / "out"
    assert stage(module, *args, f"out={out}") == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and key in errors[0]
    assert not any(out.rglob("*.parquet")) if out.exists() else True


def test_typo_in_a_yaml_file_names_the_file(tmp_path, capsys):
    """A stage YAML with a misspelt key (here a pretrain config=) fails before any work."""
    yaml = tmp_path / "mine.yaml"
    yaml.write_text("level: 256\ntrainer:\n  max_step: 3\n")
    assert stage("pretrain", f"config={yaml}", "data.tiles=t", f"out={tmp_path / 'o'}") == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert "trainer.max_step" in error and str(yaml) in error


def test_unknown_registry_names_exit_2_in_every_stage(sample_tiles, planted, tmp_path, capsys):
    """A misspelt model name is a configuration error (exit 2) in every stage that takes one,
    in one line naming the close registered name."""
    runs = [
        ("extract_features", [f"tiles={sample_tiles}", "model_256=vit256_tiny_tset"]),
        ("pretrain", ["level=4k", "data.features=f", "model.name=vit4k_xss"]),
        ("finetune", ["task=subtype", f"cohort={planted.csv}", f"features={planted.features}",
                      "ARCH=abmil_tiny_tset", "wandb.mode=disabled"]),
    ]  # fmt: skip
    for module, args in runs:
        capsys.readouterr()
        assert stage(module, *args, f"out={tmp_path / module}") == 2, module
        (error,) = error_lines(capsys.readouterr().err)
        assert "unknown model" in error and "did you mean" in error, error


def test_old_spellings_work_for_one_release_with_one_warning(planted, tmp_path, caplog):
    """finetune's CHECKPOINT_4K= and MODEL=<registry name> still work, each with one warning
    naming the new spelling; heatmap's slide_mpp= is accepted and ignored."""
    from pipelines.finetune import DEPRECATED, SHORTCUTS
    from robust_utils import TINY_FINETUNE

    from hipt.cli import expand_shortcuts

    argv = ["MODEL=abmil_tiny_test", "CHECKPOINT_4K=w.pth", "OUT=o"]
    with caplog.at_level("WARNING", logger="hipt"):
        got = expand_shortcuts(argv, SHORTCUTS, DEPRECATED)
    assert got == ["model.name=abmil_tiny_test", "model.checkpoint_4k=w.pth", "out=o"]
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 2 and "ARCH=" in warnings[0] and "CHECKPOINT4K=" in warnings[1]
    args = ["task=subtype", f"cohort={planted.csv}", f"features={planted.features}",
            *[a for a in TINY_FINETUNE if not a.startswith("model.name")]]  # fmt: skip
    assert stage("finetune", *args, "MODEL=abmil_tiny_test", f"out={tmp_path / 'ft'}") == 0
    from pipelines.heatmap import DEPRECATED as HEATMAP_OLD

    assert expand_shortcuts(["slide_mpp=0.5", "OUT=o"], {"OUT": "out"}, HEATMAP_OLD) == ["out=o"]
