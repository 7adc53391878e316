"""The one stage skeleton every runner uses: lock, temporaries, resolved config, run.json, W&B.

::

    with StageRun("extract", cfg, out, inputs=[tiles]) as run:
        ...                                   # the stage's own work; run.logger logs to W&B
        run.write_summary(summary)            # summary.json
        run.done(extra={"totals": ...})       # run.json, status "done"

Entering takes the output folder's lock (rank 0 only), removes temporaries left by killed runs,
writes ``resolved_config.yaml`` and a ``run.json`` with status ``running``. Leaving closes the
W&B run (marked failed when the block raised) and releases the lock. Errors become exit codes in
:func:`hipt.cli.run_stage`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from hipt.config import config_hash, save_resolved
from hipt.io import atomic_write_json, clean_stale_tmp
from hipt.lock import RunLock
from hipt.provenance import RunInfo

log = logging.getLogger(__name__)


def is_launch_rank_zero() -> bool:
    """Whether this process is global rank 0 of a (possibly distributed) launch.

    Known before any Trainer exists: torchrun sets ``RANK``, multi-task SLURM ``SLURM_PROCID``,
    Lightning starts its DDP children with ``LOCAL_RANK>0`` and other nodes run with
    ``NODE_RANK>0``. Once a Trainer runs, use ``trainer.is_global_zero``.
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]) == 0
    node = int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")))
    return node == 0 and int(env.get("LOCAL_RANK", "0")) == 0


class StageRun:
    """One run of a stage in its output folder.

    Args:
        stage: stage name (``tile``, ``extract``, ...); also the W&B job type.
        cfg: the stage's typed config (saved as ``resolved_config.yaml``, hashed for run.json).
        out: output folder.
        inputs: files and folders the run reads (sizes recorded in run.json).
        rank_zero: whether this process owns the folder (DDP children pass False: no lock, no
            files); default: :func:`is_launch_rank_zero`.
        subfolders: folders under ``out`` whose temporaries are cleaned as well.
        chash: the config hash recorded in run.json (default: :func:`config_hash` of ``cfg``).
        prepare: called under the lock before anything is written (e.g. to compare with, or
            clear, an earlier run's files); its result is :attr:`prepared`.
        wandb_name: name of the stage's W&B run (default: the stage name).
        defer_start: write ``resolved_config.yaml`` and the ``running`` record only when the
            caller calls :meth:`start` (a stage that may find its outputs up to date keeps the
            record of the run that made them).
    """

    def __init__(
        self,
        stage: str,
        cfg: Any,
        out: str | Path,
        *,
        inputs: Iterable[str | Path] = (),
        rank_zero: bool | None = None,
        subfolders: Iterable[str] = (),
        chash: str | None = None,
        prepare: Callable[[], Any] | None = None,
        wandb_name: str | None = None,
        defer_start: bool = False,
    ) -> None:
        self.stage = stage
        self.cfg = cfg
        self.out = Path(out)
        self.inputs: list[str | Path] = [str(p) for p in inputs]
        self.rank_zero = is_launch_rank_zero() if rank_zero is None else rank_zero
        self.subfolders = tuple(subfolders)
        self.config_hash = chash if chash is not None else config_hash(cfg)
        self._prepare = prepare
        self.prepared: Any = None
        self.wandb_name = wandb_name
        self.defer_start = defer_start
        self._lock = RunLock(self.out)
        self._logger: Any = None
        self.ok = False

    # -- context ------------------------------------------------------------------------------
    def __enter__(self) -> StageRun:
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.rank_zero:
            return self
        self._lock.acquire()
        try:
            if self._lock.stale_owner:
                log.info("%s: took over the lock of a dead run (%s)", self.out,
                         self._lock.stale_owner)  # fmt: skip
            for folder in (self.out, *(self.out / s for s in self.subfolders)):
                for tmp in clean_stale_tmp(folder):
                    log.info("removed %s left by an interrupted run", tmp)
            if self._prepare is not None:
                self.prepared = self._prepare()
            if not self.defer_start:
                self.start()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close_logger(ok=exc is None)
        finally:
            if self.rank_zero:
                self._lock.release()

    # -- files --------------------------------------------------------------------------------
    def start(self) -> None:
        """Write ``resolved_config.yaml`` and a ``run.json`` with status ``running``."""
        if self.rank_zero:
            save_resolved(self.cfg, self.out)
            self.record(status="running")

    def record(self, status: str, extra: dict[str, Any] | None = None) -> Path | None:
        """Write ``run.json`` (rank 0 only) with ``status`` and the stage's ``extra`` facts."""
        if not self.rank_zero:
            return None
        facts = {"status": status, **(extra or {})}
        info = RunInfo.collect(self.stage, self.config_hash, self.inputs, facts)
        return info.write(self.out)

    def done(self, extra: dict[str, Any] | None = None) -> None:
        """Mark the run finished in ``run.json``."""
        self.ok = True
        self.record("done", extra)

    def write_summary(self, summary: dict[str, Any], name: str = "summary.json") -> Path:
        """Write the run's summary (one JSON file, atomically)."""
        path = self.out / name
        if self.rank_zero:
            atomic_write_json(path, summary)
        return path

    # -- W&B ----------------------------------------------------------------------------------
    @property
    def logger(self) -> Any:
        """The stage's W&B logger (created on first use; offline unless configured)."""
        if self._logger is None:
            self._logger = self.new_logger(self.wandb_name)
        return self._logger

    def new_logger(self, name: str | None = None, group: str | None = None) -> Any:
        """Another W&B run of this stage (e.g. one per fold); the caller finishes it."""
        from hipt.tracking import create_logger

        return create_logger(self.cfg.wandb, self.stage, self.out, self.cfg, name=name,
                             group=group)  # fmt: skip

    def close_logger(self, ok: bool) -> None:
        """Finish the stage's W&B run, if one was started."""
        from hipt.tracking import finish

        if self._logger is not None:
            finish(self._logger, ok=ok)
            self._logger = None


def outputs_current(
    out: Path, fingerprint: str, *, overwrite: bool, what: str, marker: str = "summary.json"
) -> bool:
    """Whether ``out`` already holds outputs made from exactly these inputs and settings.

    The stage's ``summary.json`` records ``fingerprint`` (at its top level or under
    ``identity``). No summary (or no ``marker`` file), ``overwrite`` or an unreadable summary:
    False. Another fingerprint raises, so a rerun never overwrites other outputs unasked.

    Raises:
        StaleOutputError: ``out`` holds ``what`` made from other inputs or settings.
    """
    from hipt.errors import StaleOutputError

    summary = out / "summary.json"
    if overwrite or not summary.is_file() or not (out / marker).is_file():
        return False
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        return False
    old = data.get("fingerprint") or data.get("identity", {}).get("fingerprint")
    if old == fingerprint:
        return True
    raise StaleOutputError(
        f"{out} holds {what} made from other inputs or settings; pass overwrite=true or "
        "choose another OUT"
    )
