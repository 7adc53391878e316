import json
import os
import subprocess
import sys

import pytest

from hipt.errors import LockedError
from hipt.io import atomic_output, atomic_write_json, clean_stale_tmp, tmp_path_for
from hipt.lock import RunLock


def test_atomic_output_keeps_old_file_on_error(tmp_path):
    """A failing writer leaves the previous complete file and no temporary behind."""
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"v": 1}
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_output_replaces_folder(tmp_path):
    """A folder output is swapped in whole."""
    target = tmp_path / "store"
    with atomic_output(target) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("1")
    with atomic_output(target) as tmp:
        tmp.mkdir()
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["y"]


def test_clean_stale_tmp_removes_only_temporaries(tmp_path):
    """Leftovers of killed runs are removed, real outputs are kept."""
    keep = tmp_path / "keep.parquet"
    keep.write_text("x")
    stale = tmp_path_for(tmp_path / "half.parquet")
    stale.write_text("y")
    assert clean_stale_tmp(tmp_path) == [stale]
    assert keep.exists() and not stale.exists()


def test_lock_refuses_live_owner_and_takes_over_dead_one(tmp_path):
    """A second run on one folder refuses while the first lives; a dead owner's lock is stale."""
    with RunLock(tmp_path):
        with pytest.raises(LockedError, match=f"in use by pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".hipt.lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    import socket

    (tmp_path / ".hipt.lock").write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": 0})
    )
    lock = RunLock(tmp_path)
    lock.acquire()
    assert lock.stale_owner is not None and lock.stale_owner["pid"] == int(dead.stdout)
    lock.release()
