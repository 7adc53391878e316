"""Read back what an offline W&B run logged (its ``.wandb`` LevelDB-style log of protobuf records).

wandb 0.31 keeps offline runs only in ``run-<id>.wandb`` until ``wandb sync``; this reader lets
tests and reports check the logged values without a server.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    if ident != b":W&B":
        raise ValueError(f"{path} is not a W&B run log")
    out: list[bytes] = []
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        space = _BLOCK - pos % _BLOCK
        if space < _HEADER:
            pos += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:
            pos += space
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            out.append(pending + chunk)
            pending = b""
    return out


def read_offline_run(
    run_dir: str | Path, require: tuple[str, ...] = (), timeout: float = 20.0
) -> dict[str, Any]:
    """History rows, summary and config of an offline run folder (``.../offline-run-*``).

    Args:
        run_dir: the run folder.
        require: summary keys to wait for: wandb's service process may still be flushing the
            log for a moment after ``finish()`` returns.
        timeout: seconds to wait for ``require``.

    Returns:
        ``{"history": [ {key: value}, ... ], "summary": {key: value}, "config": {key: value}}``;
        the summary is the last value of every history key updated by explicit summary records.
    """
    deadline = time.monotonic() + timeout
    while True:
        run = _read_once(Path(run_dir))
        if all(k in run["summary"] for k in require) or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _read_once(run_dir: Path) -> dict[str, Any]:
    logs = sorted(run_dir.glob("*.wandb"))
    if not logs:
        raise FileNotFoundError(f"no .wandb file in {run_dir}")
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for raw in _records(logs[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                   for item in rec.history.item}  # fmt: skip
            history.append(row)
            summary.update({k: v for k, v in row.items() if not k.startswith("_")})
        elif kind == "summary":
            for item in rec.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind in ("config", "run"):
            updates = rec.config.update if kind == "config" else rec.run.config.update
            for item in updates:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return {"history": history, "summary": summary, "config": config}


def find_offline_runs(folder: str | Path) -> list[Path]:
    """Offline run folders under ``folder`` (searched recursively), oldest first."""
    return sorted(Path(folder).rglob("offline-run-*"), key=lambda p: p.name)


def read_artifacts(run_dir: str | Path) -> list[dict[str, Any]]:
    """The artifacts an offline run logged: type, name, aliases, metadata and manifest paths."""
    logs = sorted(Path(run_dir).glob("*.wandb"))
    if not logs:
        raise FileNotFoundError(f"no .wandb file in {run_dir}")
    found = []
    for raw in _records(logs[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") != "artifact":
            continue
        art = rec.artifact
        found.append({
            "type": art.type, "name": art.name, "aliases": list(art.aliases),
            "digest": art.digest, "metadata": json.loads(art.metadata or "{}"),
            "files": {e.path: (e.digest, e.ref) for e in art.manifest.contents},
        })  # fmt: skip
    return found
