"""The node's state folder: owner-only, and checked before anything in it is opened.

The folder holds case content at rest: the signed messages of the node's outbox and its journal
(``node.sqlite3``), the quarantine (``quarantine.sqlite3``), and what earlier versions wrote there
(the contact points' archive ``inbox.sqlite3``, the audit trail ``audit.sqlite3``), with the
``-wal``, ``-shm`` and ``-journal`` files SQLite writes beside them. Another local user must not
read any of it:

- :func:`secure` creates the folder with mode 0700 when it is missing, and refuses one that
  others may enter or read, or that another user owns, the way ssh refuses a key file others
  can read: one line that says what to run (``chmod 700 <folder>``);
- :func:`private_file` creates a database file with mode 0600 before SQLite opens it. SQLite
  gives the ``-wal``, ``-shm`` and ``-journal`` files it creates later the mode of their
  database, so they are owner-only too.

The node calls :func:`secure` when it starts, before it reads or writes its state; every command
that opens the state (``Store``, ``AuditLog``) does too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mlanet.broker import ConfigError

__all__ = ["DATABASES", "private_file", "secure"]

FOLDER_MODE = 0o700
FILE_MODE = 0o600
DATABASES = ("node.sqlite3", "inbox.sqlite3", "audit.sqlite3", "quarantine.sqlite3")
_BESIDE = ("", "-wal", "-shm", "-journal")


def _loose(mode: int) -> bool:
    """Any permission for the group or for others."""
    return bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def secure(folder: Path) -> Path:
    """The state folder, created owner-only when missing; ConfigError when others may read
    it or its databases, or when it belongs to another user."""
    if not folder.exists():
        folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        os.chmod(folder, FOLDER_MODE)  # whatever the umask
    info = folder.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"the state folder {folder} is not a folder")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"the state folder {folder} belongs to another user (uid {info.st_uid}); run mlanet"
            " as its owner"
        )
    loose_files = [
        path
        for name in DATABASES
        for suffix in _BESIDE
        if (path := folder / (name + suffix)).exists() and _loose(path.stat().st_mode)
    ]
    if loose_files:
        raise ConfigError(
            f"the state folder {folder} holds files other users can read"
            f" ({', '.join(p.name for p in loose_files)}): run chmod -R go= {folder}"
        )
    if _loose(info.st_mode):
        raise ConfigError(
            f"the state folder {folder} is open to other users"
            f" (mode {stat.S_IMODE(info.st_mode):04o}): run chmod 700 {folder}"
        )
    return folder


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite takes an empty file as an
    empty database, and gives the files it writes beside it the same mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return path
    os.close(fd)
    os.chmod(path, FILE_MODE)  # whatever the umask
    return path
