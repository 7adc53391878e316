"""The layout shows the pipeline: stage packages hand off through files, never through imports."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "hipt"
STAGES = ("tile", "extract", "pretrain", "finetune", "heatmap", "predict", "demo")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_stage_package_imports_another():
    """hipt.<stage>.* imports the library (slides, features, models, ...) and its own package
    only; what stages share lives in the library."""
    present = [s for s in STAGES if (SRC / s).is_dir()]
    assert {"tile", "extract", "pretrain", "finetune", "heatmap"} <= set(present)
    bad = []
    for own in present:
        for path in sorted((SRC / own).rglob("*.py")):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "hipt" and len(parts) > 1 and parts[1] in STAGES and parts[1] != own:
                    bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, bad


def test_every_stage_package_has_an_init_and_src_has_no_test_helpers():
    for own in ("tile", "extract", "pretrain", "finetune", "heatmap"):
        assert (SRC / own / "__init__.py").is_file(), own
    assert not (SRC / "wandb_offline.py").exists()
    assert not (SRC / "finetune" / "synthetic.py").exists()
