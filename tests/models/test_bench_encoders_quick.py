"""`make bench-encoders quick=true`: the encoder-family table in a few seconds (tiny widths).

The full run (`make bench-encoders`, ~12 min on 2 CPU cores) has the same code paths; here the
rows run inline (no fresh interpreter per row) at 48-d x 2 blocks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_encoders  # noqa: E402
from bench_models import vit_gflops  # noqa: E402
from hipt.models import available, build  # noqa: E402


def _rows(report: dict) -> dict[str, dict]:
    (table,) = report["tables"]
    return {row["models"]: row for row in table["rows"]}


def test_quick_run_has_both_rows_and_the_baseline_ratio(capsys):
    report = bench_encoders.main(
        ["--quick", "--device", "cpu", "--batch", "8", "--only", "vit256_small,kaiko_vits16"]
    )
    out = capsys.readouterr().out
    rows = _rows(report)
    assert set(rows) == {"vit256_small", "kaiko_vits16"}
    for row in rows.values():
        assert row["images_s"] > 0 and row["peak_mb"] >= 0 and 0 < row["peak_share"]
        assert row["measured_depth"] is None and row["note"] == ""
    assert rows["vit256_small"]["vs_baseline"] == pytest.approx(1.0)
    assert rows["kaiko_vits16"]["input_px"] == 224 and rows["vit256_small"]["input_px"] == 256
    lines = {line.split(" | ")[1]: line for line in out.splitlines() if line.startswith("| ViT")}
    assert set(lines) == {"vit256_small", "kaiko_vits16"}
    assert "| 1.00x |" in lines["vit256_small"]
    assert "matmul peak 1024^3 (fp32)" in out


def test_over_budget_models_are_extrapolated_from_a_shallower_variant(tmp_path):
    out = tmp_path / "enc.json"
    report = bench_encoders.main(
        ["quick=true", "device=cpu", "batch=4", "budget_s=0", "only=kaiko_vits8", f"json={out}"]
    )
    rows = _rows(report)
    assert set(rows) == {"vit256_small", "kaiko_vits8"}  # the baseline is always run
    for row in rows.values():
        assert row["measured_depth"] == 1 and row["note"] == "extrapolated from depth 1"
        assert row["images_s"] > 0 and row["raw"]["seconds"].keys() == {0, 1}
    assert out.exists() and '"extrapolated from depth 1"' in out.read_text()


def test_families_group_identical_architectures_with_analytic_flops():
    fams = bench_encoders.families()
    assert fams[0].names == ["vit256_small"]  # baseline first
    names = [n for f in fams for n in f.names]
    assert sorted(names) == sorted(n for n in available("patch_encoder") if n != "vit256_tiny_test")
    by = {f.names[0]: f for f in fams}
    assert by["kaiko_vits8"].names == ["kaiko_vits8", "lunit_vits8"]
    assert by["h_optimus_0"].names == ["h_optimus_0", "h_optimus_1"]
    assert by["vit256_small"].params == 21_665_664
    assert by["vit256_small"].gflop == pytest.approx(vit_gflops(256, 16, 384, 12))
    assert by["virchow2"].width == 2560 and by["virchow2"].label.endswith("SwiGLU CLS+mean")
    assert by["uni"].label == "ViT-L/16" and by["prov_gigapath"].label == "ViT-g/16 SwiGLU"


@pytest.mark.parametrize("name", ["uni2_h", "virchow2", "kaiko_vitl14"])
def test_analytic_flops_equal_the_counted_matmuls_of_math_attention(name):
    """FlopCounterMode misses the fused CPU SDPA kernel, but counts its math fallback."""
    model = build(name, embed_dim=48, num_heads=2, depth=2).eval()
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(torch.randn(2, 3, 224, 224))
    assert fc.get_total_flops() / 2 / 1e9 == pytest.approx(bench_encoders.matmul_gflops(model, 224))
