"""Slide discovery: folders, manifests, duplicate ids, relative paths, per-row problems."""

from pathlib import Path

import pytest

from hipt.errors import ConfigError
from hipt.slides.inputs import discover_slides


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_lists_slide_files_sorted_and_ignores_others(tmp_path):
    for name in ("b.svs", "a.TIF", "c.ndpi", "notes.txt", "img.png", ".hidden.svs"):
        touch(tmp_path / name)
    (tmp_path / "sub.mrxs").mkdir()  # a folder is not a slide (mrxs keeps data in a folder)
    entries = discover_slides(tmp_path)
    assert [e.slide_id for e in entries] == ["a", "b", "c"]
    assert all(e.path.is_absolute() and e.error is None and e.mpp is None for e in entries)


def test_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        discover_slides(tmp_path / "nope")
    touch(tmp_path / "x.txt")
    with pytest.raises(ConfigError, match="no slides in"):
        discover_slides(tmp_path)
    touch(tmp_path / "s.svs")
    touch(tmp_path / "s.tiff")
    with pytest.raises(ConfigError, match="s.svs and s.tiff"):
        discover_slides(tmp_path)


def test_manifest_relative_paths_mpp_and_bad_rows(tmp_path):
    touch(tmp_path / "slides" / "a.svs")
    touch(tmp_path / "b.png")
    csv = tmp_path / "meta" / "m.csv"
    csv.parent.mkdir()
    csv.write_text(
        f"slide_id,path,mpp\na,../slides/a.svs,0.25\nb,../b.png,\nc,{tmp_path / 'missing.svs'},\n"
    )
    a, b, c = discover_slides(csv)
    assert a.path == (tmp_path / "slides" / "a.svs").resolve() and a.mpp == 0.25 and not a.error
    assert b.mpp is None and "unsupported slide format '.png'" in b.error and "b.png" in b.error
    assert "file not found" in c.error and "missing.svs" in c.error


@pytest.mark.parametrize(
    "body,match",
    [
        ("slide_id,path\na,x.svs\nb,y.svs\na,z.svs\n", r"duplicate slide_id.*'a' on lines 2, 4"),
        ("id,path\na,x.svs\n", "lacks column.*slide_id"),
        ("slide_id,path\n../a,x.svs\n", "line 2: slide_id"),
        ("slide_id,path,mpp\na,x.svs,abc\n", "line 2: mpp 'abc'"),
        ("slide_id,path\n", "has no rows"),
    ],
)
def test_manifest_config_errors(tmp_path, body, match):
    csv = tmp_path / "m.csv"
    csv.write_text(body)
    with pytest.raises(ConfigError, match=match):
        discover_slides(csv)


def test_single_slide_file_and_other_files(tmp_path):
    (entry,) = discover_slides(touch(tmp_path / "one.svs"))
    assert entry.slide_id == "one" and entry.path == (tmp_path / "one.svs").resolve()
    with pytest.raises(ConfigError, match="neither a slide nor a .csv manifest"):
        discover_slides(touch(tmp_path / "notes.txt"))
