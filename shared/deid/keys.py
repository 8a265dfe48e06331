"""Local secrets for one-machine use: created once in the user's config directory, mode 0600.

The fleet requires its keys explicitly (environment or mounted files); only the local CLI calls
`ensure_local_secret`, which then points ``DICOMFLEET_<NAME>_FILE`` at the file so that the pool
processes it starts read the same key. The key itself never reaches argv, logs or task messages.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from ..options import ENV_PREFIX, env


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "dicomfleet"


def ensure_local_secret(name: str, filename: str, make: Callable[[], str], what: str,
                        why: str) -> str | None:
    """Use ``DICOMFLEET_<NAME>`` if set; else the user's key file, created if missing.

    Returns a one-line notice when a new key was created (None otherwise).
    """
    if env(name):
        return None
    path = config_dir() / filename
    notice = None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_private(path.parent, directory=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        _check_private(path, directory=False)
    except OSError as err:
        raise ConfigError(f"cannot create the {what} key file {path} ({err.strerror})") from err
    else:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(make() + "\n")
        notice = f"created a new {what} key in {path} (mode 0600): keep it {why}"
    os.environ[f"{ENV_PREFIX}{name}_FILE"] = str(path)
    return notice


def _check_private(path: Path, *, directory: bool) -> None:
    """The key file, or its directory, must be this user's own, not a symlink, and closed to others
    (a directory others may write to could have had a planted key linked in)."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{path} is a symbolic link: a key file and its directory must be real")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{path} belongs to another user (uid {st.st_uid})")
    if directory and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{path} is writable by other users: run `chmod go-w {path}`")
    if not directory and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} is readable by other users: run `chmod 600 {path}`")


def use_local_secret(name: str, filename: str) -> None:
    """Point ``DICOMFLEET_<NAME>_FILE`` at the user's key file when the variable is unset and the
    file exists (commands that read with a key but must never create one)."""
    path = config_dir() / filename
    if not env(name) and path.is_file():
        os.environ[f"{ENV_PREFIX}{name}_FILE"] = str(path)
