"""Where the queue file lives, and making sure no other local user can take it.

The queue holds the headers and bodies of API calls. Whoever can write in its
directory can plant a file or a symlink at one of its names (the database, its
`-wal` and `-shm`, the lock files) and read what we write there; whoever owns a
directory we reuse can swap our file for theirs. So:

- the default location is a directory this process creates, or finds owned by
  its own uid, opened without following symlinks and set to mode 0700;
- a directory named explicitly (QUEUE_PATH) must be owned by this uid or root
  and writable by nobody else;
- no ancestor may be writable by other users without the sticky bit (they could
  rename the directory away), nor owned by another user; except above an
  explicit directory that is private (ours, 0700): a substitute is refused at
  the next open, every open checking again;
- every file of the queue is opened with O_NOFOLLOW, must be a regular file
  owned by this uid, and is set to 0600 whatever the umask.

When no such place exists the error names the setting to use instead. Root
reading or draining a queue another user owns (`moesif-flush` as an admin) is
allowed: root can read it anyway.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from typing import List, Optional

__all__ = [
    "UnsafeQueueLocation",
    "default_queue_name",
    "default_queue_path",
    "open_private_file",
    "prepare_queue_file",
    "queue_directories",
    "resolve_queue_path",
]

QUEUE_FILE_SUFFIXES = ("-wal", "-shm", "-journal")
_POSIX = os.name == "posix"  # owners, modes and O_NOFOLLOW; elsewhere the checks do not apply
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_SETTING_HINT = ("set QUEUE_PATH (or the MOESIF_QUEUE_PATH environment variable) to a file in a directory "
                 "that only this user can write")


class UnsafeQueueLocation(ValueError):
    """No place for the queue that other local users cannot read or take over."""


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else -1


def _home() -> Optional[str]:
    """The user's home, or None; never a literal `~` (HOME unset and no passwd entry)."""
    home = os.environ.get("HOME")
    if home and os.path.isabs(home):
        return home
    try:
        import pwd

        entry = pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError, OSError):
        return None
    return entry if entry and os.path.isabs(entry) else None


def _check_ancestors(directory: str) -> None:
    """Nobody but us and root may rename `directory` or anything above it."""
    euid = _euid()
    current = os.path.dirname(os.path.realpath(directory))
    while True:
        st = os.stat(current)
        if st.st_uid not in (euid, 0):
            raise UnsafeQueueLocation(f"{current} is owned by uid {st.st_uid}, who could replace the queue directory")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise UnsafeQueueLocation(f"{current} is writable by other users (mode {st.st_mode & 0o7777:04o}, "
                                      "no sticky bit), who could replace the queue directory")
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent


def _check_links(directory: str) -> None:
    """A symlink on the way to `directory` must be ours or root's: another user could repoint it."""
    euid = _euid()
    current = os.path.abspath(directory)
    while True:
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (euid, 0):
            raise UnsafeQueueLocation(f"{current} is a symlink owned by uid {st.st_uid}, who could repoint it")
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent


def _private_directory(directory: str) -> None:
    """Create `directory` mode 0700, or accept it only if it is ours (then make it 0700).

    Opened with O_NOFOLLOW and checked through that descriptor, so a symlink or a
    directory swapped in between the check and the use is refused.
    """
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    try:
        fd = os.open(directory, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        if os.path.islink(directory):
            raise UnsafeQueueLocation(f"{directory} is a symlink") from None
        raise UnsafeQueueLocation(f"{directory}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeQueueLocation(f"{directory} is not a directory")
        if st.st_uid != _euid():
            raise UnsafeQueueLocation(f"{directory} is owned by uid {st.st_uid}, not by this user (uid {_euid()})")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)  # ours: closed to others, usable by us whatever the umask
    finally:
        os.close(fd)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UnsafeQueueLocation(f"{directory} is not writable")
    _check_ancestors(directory)


def default_queue_name(application_id: str, cwd: Optional[str] = None) -> str:
    """`queue-<the first 16 hex digits of sha256(application id, NUL, real working directory)>.sqlite`."""
    cwd = os.path.realpath(cwd or os.getcwd())
    digest = hashlib.sha256(f"{application_id}\0{cwd}".encode()).hexdigest()[:16]
    return f"queue-{digest}.sqlite"


def queue_directories() -> List[str]:
    """The directories a default queue file may live in, first choice first; nothing is
    created here (`moesif-flush queues` lists them): `$XDG_STATE_HOME/moesifasgi` (or
    `~/.local/state/moesifasgi`), then `<tempdir>/moesifasgi-<uid>`."""
    candidates: List[str] = []
    state = os.environ.get("XDG_STATE_HOME")
    if state and os.path.isabs(state):  # the XDG spec says to ignore a relative one
        candidates.append(os.path.join(state, "moesifasgi"))
    else:
        home = _home()
        if home is not None:
            candidates.append(os.path.join(home, ".local", "state", "moesifasgi"))
    uid = os.getuid() if hasattr(os, "getuid") else 0
    candidates.append(os.path.join(tempfile.gettempdir(), f"moesifasgi-{uid}"))
    return candidates


def default_queue_path(application_id: str, cwd: Optional[str] = None) -> str:
    """Where the queue lives when neither QUEUE_PATH nor MOESIF_QUEUE_PATH is set.

    Every worker of one app runs as the same user from the same directory with the
    same application id, so hashing those two gives them the same file, while two
    apps on one host get two files. The state directory survives reboots, unlike a
    tmpfs /tmp; when it cannot be used, `<tempdir>/moesifasgi-<uid>`, but only a
    private one this process creates or already owns.
    """
    name = default_queue_name(application_id, cwd)
    reasons = []
    for directory in queue_directories():
        try:
            parent = os.path.dirname(directory)
            if not os.path.isdir(parent):
                os.makedirs(parent, mode=0o700, exist_ok=True)
            _private_directory(directory)
            return os.path.join(directory, name)
        except (OSError, UnsafeQueueLocation) as exc:
            reasons.append(str(exc) if isinstance(exc, UnsafeQueueLocation) else f"{directory}: {exc}")
    raise UnsafeQueueLocation(
        "moesifasgi: no private directory for the queue (" + "; ".join(reasons) + "); " + _SETTING_HINT)


def resolve_queue_path(explicit: Optional[str], application_id: str) -> str:
    """QUEUE_PATH, else MOESIF_QUEUE_PATH, else the default location; absolute."""
    path = explicit or os.environ.get("MOESIF_QUEUE_PATH") or default_queue_path(application_id)
    if path.startswith("~"):
        expanded = os.path.expanduser(path)
        if expanded.startswith("~"):
            home = _home()
            if home is None or not path.startswith(("~/", "~" + os.sep)) and path != "~":
                raise UnsafeQueueLocation(
                    f"moesifasgi: the queue path {path!r} starts with '~' but there is no home directory to "
                    "expand it to; set QUEUE_PATH (or MOESIF_QUEUE_PATH) to an absolute path")
            expanded = home + path[1:]
        path = expanded
    return os.path.abspath(path)


def _check_directory(directory: str, *, create: bool) -> None:
    """The directory of a queue file: ours or root's, writable by nobody else."""
    if create and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # the umask may have taken our own bits
    st = os.stat(directory)
    euid = _euid()
    if not create and euid == 0:
        return  # root inspecting or draining another user's queue
    if st.st_uid not in (euid, 0):
        raise UnsafeQueueLocation(
            f"moesifasgi: the queue directory {directory} is owned by uid {st.st_uid}, not by this user "
            f"(uid {euid}) or root; {_SETTING_HINT}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeQueueLocation(
            f"moesifasgi: the queue directory {directory} is writable by other users (mode "
            f"{st.st_mode & 0o7777:04o}), who could read the queue by planting its files; {_SETTING_HINT}")
    private = st.st_uid == euid and not st.st_mode & 0o077
    try:
        _check_links(directory)
        if not private:
            # A private directory (ours, 0700) may sit in a shared one (a Kubernetes
            # emptyDir is 0777): whoever renames it away and plants their own is
            # refused at our next open, as every open checks again.
            _check_ancestors(directory)
    except UnsafeQueueLocation as exc:
        raise UnsafeQueueLocation(f"moesifasgi: unsafe queue location: {exc}; {_SETTING_HINT}") from None


def open_private_file(path: str, *, create: bool = True, flags: int = os.O_RDWR) -> int:
    """Open `path` without following a symlink; a regular file of ours, mode 0600.

    Returns the descriptor. Used for the database file before SQLite opens it and
    for the lock files beside it. (Without POSIX owners and modes, Windows, only opened.)
    """
    if not _POSIX:
        return os.open(path, flags | (os.O_CREAT if create else 0), 0o600)
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | (os.O_CREAT if create else 0), 0o600)
    except OSError:
        if os.path.islink(path):
            raise UnsafeQueueLocation(f"moesifasgi: {path} is a symlink; refusing to follow it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeQueueLocation(f"moesifasgi: {path} is not a regular file")
        euid = _euid()
        if st.st_uid != euid:
            if not (euid == 0 and not create):
                raise UnsafeQueueLocation(
                    f"moesifasgi: {path} is owned by uid {st.st_uid}, not by this user (uid {euid}); refusing to "
                    f"write API calls into it; {_SETTING_HINT}")
        elif stat.S_IMODE(st.st_mode) != 0o600:
            # Exactly 0600 whatever the umask (0 would give 0666 elsewhere; 0277 a file we cannot write).
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def prepare_queue_file(path: str, *, create: bool = True) -> None:
    """Check (and with `create`, make) the queue file and its directory before SQLite opens it.

    SQLite gives the -wal and -shm files the database file's mode, so a 0600
    database keeps them private; ones left by an older version are fixed here.
    """
    directory = os.path.dirname(path) or "."
    if not _POSIX:
        if create:
            os.makedirs(directory, exist_ok=True)
        os.close(open_private_file(path, create=create))
        return
    _check_directory(directory, create=create)
    if not _already_private(path, create=create):
        os.close(open_private_file(path, create=create))
    for suffix in QUEUE_FILE_SUFFIXES:
        if _already_private(path + suffix, create=False):
            continue
        try:
            os.close(open_private_file(path + suffix, create=False))
        except FileNotFoundError:
            pass


def _already_private(path: str, *, create: bool) -> bool:
    """True when `path` is already a regular file that needs nothing from us (lstat only).

    Why not always open it to check: closing *any* descriptor of a file drops
    every POSIX lock this process holds on it, including the locks of SQLite
    connections this process already has open on the queue file, its -wal and
    its -shm. Another process closing its last connection then believes it is
    the only user, checkpoints and deletes the -wal, and our connection goes on
    committing into the unlinked -wal: events acknowledged, never drained, never
    counted (seen when a helper stopped after its worker's kill -9). So a file
    that is already right is never opened; only a missing or wrong one is, which
    no connection of ours can hold (SQLite gives -wal/-shm the database's mode),
    provided no other thread of ours is creating it meanwhile: storage._OPENING
    keeps them apart.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False  # a symlink or something else: open_private_file says why
    euid = _euid()
    if st.st_uid == euid:
        return stat.S_IMODE(st.st_mode) == 0o600
    return euid == 0 and not create  # root reading another user's queue, as open_private_file allows
