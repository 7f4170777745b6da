"""One process per run folder: `run.lock` names its holder (pid, host, start time) and is held with flock.

The kernel drops a flock when its process ends, kill -9 included, so a lock file that nobody holds is stale:
the next run takes it over and says whose it was. A second run while the holder lives is refused at once,
naming the holder. (flock works on local disks and on NFS v4, where Linux maps it to POSIX locks.)
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from ..config.errors import UserError

log = logging.getLogger(__name__)


class RunLocked(UserError, RuntimeError):
    """Another live process holds the run folder."""


def _describe(raw: bytes) -> str:
    try:
        h = json.loads(raw)
        return f"pid {h['pid']} on host {h['host']} (since {h['since']})"
    except (ValueError, KeyError, TypeError):
        return "an unknown process (unreadable run.lock)"


class RunLock:
    """`with RunLock(run_dir):` holds the folder for the block; raises RunLocked if a live process holds it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "run.lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(os.read(fd, 4096))
                os.close(fd)
                raise RunLocked(f"{self.path.parent} is in use by {holder}, running this config now; nothing "
                                f"was changed. Wait for it to end (or stop it) and run the command again.") from None
            try:  # the holder we waited on may have removed the file: then our lock is on an orphan
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.read(fd, 4096)
        if previous:
            log.warning("%s: took over a stale lock left by %s, which is no longer running", self.path,
                        _describe(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)  # before unlocking: a waiter then sees the file gone, not ours
        os.close(self.fd)
        self.fd = None
