"""StainNormalizer: closed-form Macenko and Reinhard checks, passthrough, provenance, errors."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import Tensor
from torchstain.torch.normalizers import TorchMacenkoNormalizer
from torchstain.torch.utils.rgb2lab import rgb2lab
from torchstain.torch.utils.split import lab_split

from hipt.errors import ConfigError
from hipt.stain import StainConfig, StainNormalizer, load_reference, tissue_fraction


def _unit(*v: float) -> Tensor:
    t = torch.tensor(v, dtype=torch.float64)
    return t / t.norm()


#: Stain vectors in OD space (rows R, G, B; columns hematoxylin, eosin). H has the larger red
#: OD in both, which is how torchstain orders its two columns.
S_REF = torch.stack([_unit(0.5626, 0.7201, 0.4062), _unit(0.2159, 0.8012, 0.5581)], dim=1)
S_SRC = torch.stack([_unit(0.70, 0.60, 0.38), _unit(0.35, 0.85, 0.40)], dim=1)

#: Direction tolerance for stain vectors. The synthetic images are exact up to (a) torchstain's
#: OD = -ln((I + 1) / 240), whose +1 tilts each vector toward the channel with the smallest I,
#: (b) uint8 rounding of I, and (c) for the normalized image, torchstain's int truncation.
#: Together these move the estimates by < 0.8 degrees here; 2 degrees leaves margin and is still
#: 5x smaller than the 10.6 / 12.2 degrees between S_SRC and S_REF, so a normalizer that changed
#: nothing fails.
MAX_ANGLE_DEG = 2.0


def _angles_deg(he: Tensor, s: Tensor) -> list[float]:
    cos = (he.double() * s).sum(dim=0) / (he.double().norm(dim=0) * s.norm(dim=0))
    return [math.degrees(math.acos(min(1.0, c))) for c in cos.tolist()]


def _synthetic(stains: Tensor, side: int = 96, seed: int = 0) -> Tensor:
    """uint8 ``[3, side, side]`` by Beer-Lambert: ``OD = C @ S.T``, ``I = 240 * 10**-OD``.

    30 % of pixels are pure H and 30 % pure E, so both extreme angles that Macenko takes at its
    1st/99th percentiles are the stain vectors themselves; the rest mix both. Concentrations in
    [0.4, 1.0] keep every pixel above torchstain's tissue threshold (OD >= 0.15 in all channels).
    """
    gen = torch.Generator().manual_seed(seed)
    n = side * side
    conc = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.6 + 0.4
    kind = torch.randint(0, 10, (n,), generator=gen)
    conc[kind < 3, 1] = 0  # pure hematoxylin
    conc[(kind >= 3) & (kind < 6), 0] = 0  # pure eosin
    intensity = 240 * 10 ** (-(conc @ stains.T))
    rgb = intensity.round().clamp(0, 255).to(torch.uint8)  # [n, 3]
    return rgb.T.reshape(3, side, side).contiguous()


def _save_png(image: Tensor, path: Path) -> Path:
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return path


def _lab_stats(image: Tensor) -> Tensor:
    """``[3, 2]`` LAB (mean, std) with torchstain's own conversion."""
    labs = lab_split(rgb2lab(image.float() / 255))
    return torch.tensor([[float(x.mean()), float(x.std())] for x in labs])


@pytest.fixture(scope="module")
def reference() -> Tensor:
    return load_reference(None)[0]


@pytest.fixture(scope="module")
def synthetic_ref_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_png(_synthetic(S_REF), tmp_path_factory.mktemp("stain") / "synthetic_ref.png")


def test_macenko_closed_form(synthetic_ref_png: Path) -> None:
    norm = StainNormalizer.from_config(StainConfig("macenko", str(synthetic_ref_png)))
    he_ref = torch.tensor(norm.provenance()["he_ref"])
    assert max(_angles_deg(he_ref, S_REF)) < MAX_ANGLE_DEG

    source = _synthetic(S_SRC, seed=1)
    probe = TorchMacenkoNormalizer()
    probe.fit(source)
    assert min(_angles_deg(probe.HERef, S_REF)) > 5 * MAX_ANGLE_DEG  # the source differs

    out = norm(source[None])[0]
    assert norm.n_passthrough == 0 and norm.n_normalized == 1
    probe.fit(out)
    assert max(_angles_deg(probe.HERef, S_REF)) < MAX_ANGLE_DEG
    # Macenko also rescales concentrations to the reference's 99th percentiles.
    max_c_ref = torch.tensor(norm.provenance()["max_c_ref"])
    torch.testing.assert_close(probe.maxCRef, max_c_ref, rtol=0.05, atol=0)


def test_reinhard_matches_reference_lab_stats(reference: Tensor) -> None:
    shift = torch.tensor([0.75, 0.9, 0.7]).view(3, 1, 1), torch.tensor([50, 10, 60]).view(3, 1, 1)
    source = (reference.float() * shift[0] + shift[1]).clamp(0, 255).to(torch.uint8)
    target = _lab_stats(reference)
    # Tolerance: torchstain truncates to uint8 (mean -0.5/255 per RGB channel, ~0.2 in L) and
    # clips out-of-gamut colours; 0.5 in means / 0.2 in stds is well under the source's offsets.
    assert (_lab_stats(source) - target)[:, 0].abs().max() > 5 * 0.5
    norm = StainNormalizer("reinhard")
    out = norm(source[None])[0]
    stats = _lab_stats(out)
    torch.testing.assert_close(stats[:, 0], target[:, 0], atol=0.5, rtol=0)
    torch.testing.assert_close(stats[:, 1], target[:, 1], atol=0.2, rtol=0)
    prov = norm.provenance()
    torch.testing.assert_close(torch.tensor(prov["target_means"]), target[:, 0], atol=1e-3, rtol=0)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_background_passes_through_and_is_counted(method: str, reference: Tensor) -> None:
    white = torch.full_like(reference, 255)
    batch = torch.stack([reference, white, white.clone()])
    norm = StainNormalizer(method)
    out = norm(batch)
    assert torch.equal(out[1:], batch[1:])
    assert not torch.equal(out[0], batch[0])
    assert (norm.n_passthrough, norm.n_normalized) == (2, 1)
    assert tissue_fraction(batch).tolist() == pytest.approx([0.911, 0.0, 0.0], abs=1e-3)


def _one_dark_pixel(reference: Tensor) -> Tensor:
    img = torch.full_like(reference, 255)
    img[:, 5, 5] = 50
    return img


@pytest.mark.parametrize(
    ("method", "make"),
    [
        ("macenko", lambda ref: torch.full_like(ref, 255)),  # no tissue: empty percentile
        ("macenko", _one_dark_pixel),  # one tissue pixel: ill-conditioned eigh
        ("reinhard", lambda ref: torch.full_like(ref, 100)),  # flat colour: std 0 -> NaN
    ],
)
def test_torchstain_failures_pass_through(method: str, make: object, reference: Tensor) -> None:
    bad = make(reference)  # type: ignore[operator]
    norm = StainNormalizer(method, min_tissue_fraction=0.0)  # let torchstain itself try
    out = norm(torch.stack([bad, reference]))
    assert torch.equal(out[0], bad)
    assert (norm.n_passthrough, norm.n_normalized) == (1, 1)


def test_none_is_identity() -> None:
    norm = StainNormalizer.from_config(StainConfig())
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert not norm.enabled
    assert norm(x) is x
    assert norm.provenance() == {"method": "none"}


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize("shape", [(1, 3, 256, 256), (3, 3, 64, 96)])
def test_shape_dtype_device_preserved(
    method: str, shape: tuple[int, ...], reference: Tensor
) -> None:
    batch = reference[None, :, : shape[2], : shape[3]].repeat(shape[0], 1, 1, 1)
    out = StainNormalizer(method)(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8 and out.device == batch.device


def test_bad_inputs_raise(reference: Tensor) -> None:
    norm = StainNormalizer("macenko")
    with pytest.raises(TypeError, match="uint8"):
        norm(reference[None].float())
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        norm(reference.permute(1, 2, 0)[None])


def test_provenance_stable_and_distinct(reference: Tensor, synthetic_ref_png: Path) -> None:
    mac = StainNormalizer.from_config(StainConfig("macenko")).provenance()
    assert mac == StainNormalizer.from_config(StainConfig("macenko")).provenance()
    assert json.dumps(mac, sort_keys=True)  # plain JSON values
    assert mac["reference"] == "shipped:reference_he.png" and mac["torchstain"] == "1.4.1"
    assert len(mac["he_ref"]) == 3 and len(mac["max_c_ref"]) == 2

    rei = StainNormalizer.from_config(StainConfig("reinhard")).provenance()
    assert rei != mac and set(rei) >= {"target_means", "target_stds"}

    other = StainNormalizer.from_config(StainConfig("macenko", str(synthetic_ref_png)))
    prov = other.provenance()
    assert prov != mac and prov["reference"].startswith("sha256:")
    assert prov["he_ref"] != mac["he_ref"]
    # The same shipped image given by path: same numbers, but a distinct identity.
    shipped = Path(str(resources.files("hipt.stain") / "reference_he.png"))
    by_path = StainNormalizer("macenko", shipped).provenance()
    assert by_path["he_ref"] == mac["he_ref"] and by_path["reference"].startswith("sha256:")
    tighter = StainNormalizer("macenko", min_tissue_fraction=0.5).provenance()
    assert tighter != mac


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (StainConfig("Macenko"), "must be one of none, macenko, reinhard; got 'Macenko'"),
        (StainConfig("reinhard", "/no/such/ref.png"), "no such file '/no/such/ref.png'"),
        (StainConfig("macenko", min_tissue_fraction=1.5), r"must lie in \[0, 1\]; got 1.5"),
    ],
)
def test_config_errors_are_one_line(cfg: StainConfig, match: str) -> None:
    for call in (cfg.validate, lambda: StainNormalizer.from_config(cfg)):
        with pytest.raises(ConfigError, match=match) as info:
            call()
        assert "\n" not in str(info.value)


def test_unreadable_or_blank_reference(tmp_path: Path) -> None:
    text = tmp_path / "ref.png"
    text.write_text("not an image")
    with pytest.raises(ConfigError, match="cannot read") as info:
        StainNormalizer("macenko", text)
    assert "\n" not in str(info.value)
    blank = _save_png(torch.full((3, 32, 32), 255, dtype=torch.uint8), tmp_path / "blank.png")
    for method in ("macenko", "reinhard"):
        with pytest.raises(ConfigError, match="blank.png"):
            StainNormalizer(method, blank)


def test_config_is_an_omegaconf_schema() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(StainConfig), {"method": "reinhard"})
    stain = OmegaConf.to_object(cfg)
    assert isinstance(stain, StainConfig) and stain.reference is None
    stain.validate()


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_cuda_matches_cpu(method: str, reference: Tensor) -> None:
    white = torch.full_like(reference, 255)
    batch = torch.stack([reference, reference.flip(-1), white])
    norm = StainNormalizer(method, device="cuda")
    out = norm(batch.cuda())
    assert out.device.type == "cuda" and out.dtype == torch.uint8
    assert norm.n_passthrough == 1
    expected = StainNormalizer(method)(batch)
    # Macenko's eigh/lstsq/percentiles differ in float rounding between devices.
    assert (out.cpu().int() - expected.int()).abs().max() <= 2
