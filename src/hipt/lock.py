"""An output-folder lock naming its owner (pid, host), so two runs never write one folder."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from hipt.errors import LockedError

LOCK_NAME = ".hipt.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive lock on an output folder, held for the life of a ``with`` block.

    A lock left by a dead process on this host is stale and is taken over (and said so in the
    log); a lock held by a live process, or by another host, raises :class:`LockedError`.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.stale_owner: dict[str, object] | None = None

    def _owner(self) -> dict[str, object] | None:
        try:
            return json.loads(self.path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockedError` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner() or {}
                same_host = owner.get("host") == me["host"]
                pid = int(owner.get("pid", -1))  # type: ignore[call-overload]
                if same_host and pid > 0 and not _pid_alive(pid):
                    self.stale_owner = owner
                    self.path.unlink(missing_ok=True)
                    continue
                raise LockedError(
                    f"{self.path.parent} is in use by pid {owner.get('pid')} on host "
                    f"{owner.get('host')}; wait for it, or delete {self.path} if that run is gone"
                ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            return
        raise LockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        """Drop the lock if this process holds it."""
        owner = self._owner()
        if owner and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
