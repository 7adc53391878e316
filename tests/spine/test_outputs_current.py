"""`outputs_current`: the one rule by which predict and heatmap reuse or refuse an output folder."""

from __future__ import annotations

import json

import pytest

from hipt.errors import StaleOutputError
from hipt.stage import outputs_current


def test_reuse_only_the_same_fingerprint_and_refuse_another(tmp_path):
    """No summary: run. Same fingerprint (top level, as predict writes it, or under `identity`,
    as heatmap does): reuse. Another: refuse in one line, unless overwrite=true. A missing
    marker file (a page never written) means: run."""
    assert not outputs_current(tmp_path, "a", overwrite=False, what="predictions")
    (tmp_path / "summary.json").write_text(json.dumps({"fingerprint": "a"}))
    assert outputs_current(tmp_path, "a", overwrite=False, what="predictions")
    assert not outputs_current(tmp_path, "a", overwrite=True, what="predictions")
    with pytest.raises(StaleOutputError, match="holds predictions made from other inputs"):
        outputs_current(tmp_path, "b", overwrite=False, what="predictions")
    assert not outputs_current(tmp_path, "b", overwrite=True, what="predictions")

    (tmp_path / "summary.json").write_text(json.dumps({"identity": {"fingerprint": "h"}}))
    assert not outputs_current(tmp_path, "h", overwrite=False, what="heatmaps",
                               marker="index.html")  # fmt: skip
    (tmp_path / "index.html").write_text("<html>")
    assert outputs_current(tmp_path, "h", overwrite=False, what="heatmaps", marker="index.html")
    (tmp_path / "summary.json").write_text("{not json")
    assert not outputs_current(tmp_path, "h", overwrite=False, what="heatmaps")
