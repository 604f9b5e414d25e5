"""The cache directory belongs to the mounting user, and only what cosencfs made is used.

The cache holds ciphertext, wrapped keys and the journal, which the next
mount *acts on*: it uploads what the journal names to the keys the journal
names.  So:

* the directories above it must not let another user replace it (each one
  owned by root or the mounting user, not writable by others unless sticky;
  group-writable only for the user's own private group);
* the cache directory and everything in it belong to the mounting user, and
  nothing in it is a symbolic link (every check is an ``lstat``; files are
  created with ``O_NOFOLLOW``);
* a cache of the mounting user whose modes are looser than 0700/0600 (every
  cache made before this check existed has a 0644 ``journal.db``) is
  tightened, with one warning — never refused, so no dirty data is stranded;
* the journal's version ids are file names cosencfs made (``valid_vid``): a
  record naming ``../../etc/shadow`` would otherwise upload that file.

Anything else is refused with ``CacheDirError``, naming the path and the fix.
The checks run once per mount; after them the directory is 0700 and owned by
the mounting user, so no other user can change it while it is in use.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import stat
import uuid
from pathlib import Path

from cosencfs.errors import CacheDirError

log = logging.getLogger(__name__)

#: Suffixes a cache file name may carry after its 32 hex digits (uuid4().hex).
#: A new kind of cache file adds its suffix here.
VID_SUFFIXES: tuple[str, ...] = (".log",)
_VID = re.compile(
    r"[0-9a-f]{32}(?:" + "|".join(re.escape(s) for s in VID_SUFFIXES) + r")?",
)
#: Files cosencfs creates before something else opens them (SQLite would
#: create the journal with the umask's mode and give -wal/-shm the same).
_PRIVATE_FILES = ("journal.db", "lock")
_reported_vids: set[str] = set()


def new_vid() -> str:
    """A name for a new cache file (``valid_vid`` accepts it)."""
    return uuid.uuid4().hex


def valid_vid(vid: object) -> bool:
    """Whether ``vid`` is a cache file name cosencfs makes (no path, no dots)."""
    return isinstance(vid, str) and _VID.fullmatch(vid) is not None


def accept_journal_vid(vid: object, fid: object) -> bool:
    """Whether a journal record's version id may be used; logs the ones refused.

    A refused record stays in the journal untouched (it may be evidence) and
    is skipped: nothing is read, uploaded or deleted because of it.
    """
    if valid_vid(vid):
        return True
    shown = repr(vid)[:80]
    if shown not in _reported_vids:
        _reported_vids.add(shown)
        log.error(
            "cache journal record %r names the cache file %s, which is not a name cosencfs "
            "makes: ignored (the cache directory may have been tampered with)",
            fid,
            shown,
        )
    return False


def prepare_cache_dir(root: Path) -> None:
    """Create or check the cache directory ``root``; raise CacheDirError if unsafe."""
    uid = os.geteuid()
    base = root.parent
    if not os.path.lexists(base):
        # Our own base directory (e.g. ~/.cache/cosencfs): private as well.
        os.makedirs(base, mode=0o700, exist_ok=True)
    _check_ancestors(Path(os.path.realpath(base)), uid)
    tightened: list[str] = []
    _private_dir(root, uid, tightened, create=True)
    _private_dir(root / "data", uid, tightened, create=True)
    for name in _PRIVATE_FILES:
        _private_file(root / name, uid, tightened)
    _walk(root, uid, tightened)
    if tightened:
        log.warning(
            "cache directory %s was accessible by other users; made it private (0700 "
            "directories, 0600 files): %d entries, e.g. %s",
            root,
            len(tightened),
            tightened[0],
        )


def _check_ancestors(path: Path, uid: int) -> None:
    for d in (path, *path.parents):
        st = os.stat(d)
        if st.st_uid not in (0, uid):
            raise CacheDirError(
                f"cache directory {d} belongs to uid {st.st_uid}, not to root or to uid {uid} "
                "who mounts: its owner could replace the cache. Use a --cache-dir of your own"
            )
        if _writable_by_others(st, uid):
            raise CacheDirError(
                f"{d}, above the cache directory, is writable by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), who could replace the cache. Run: "
                f"chmod go-w {d}, or use another --cache-dir"
            )


def _writable_by_others(st: os.stat_result, uid: int) -> bool:
    """Whether someone else may rename or replace entries of this directory."""
    if st.st_mode & stat.S_ISVTX:
        return False  # sticky (/tmp): only an entry's owner may move it
    if st.st_mode & 0o002:
        return True
    if not st.st_mode & 0o020:
        return False
    # Group-writable is fine for a user-private group (the user's own group
    # with no other member), as many distributions give home directories.
    try:
        group = grp.getgrgid(st.st_gid)
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return True
    return st.st_gid != os.getegid() or any(m != name for m in group.gr_mem)


def _private_dir(path: Path, uid: int, tightened: list[str], *, create: bool) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise
        os.mkdir(path, 0o700)
        st = os.lstat(path)
    _check_entry(path, st, uid)
    if not stat.S_ISDIR(st.st_mode):
        raise CacheDirError(f"{path} in the cache is not a directory: move it away and mount again")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
        tightened.append(str(path))


def _private_file(path: Path, uid: int, tightened: list[str]) -> None:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        st = _lstat(path)
        if st is not None:
            _check_entry(path, st, uid)
        raise CacheDirError(f"cannot open {path} in the cache: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        _check_entry(path, st, uid)
        if not stat.S_ISREG(st.st_mode):
            raise CacheDirError(f"{path} in the cache is not a regular file: move it away")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
            tightened.append(str(path))
    finally:
        os.close(fd)


def _walk(d: Path, uid: int, tightened: list[str]) -> None:
    """Every entry below ``d``: no links, ours, private (directories recursed)."""
    with os.scandir(d) as entries:
        for entry in entries:
            path = Path(entry.path)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                # Deleted since it was listed (a cache file an earlier mount of
                # this process was still removing): nothing left to check.
                continue
            _check_entry(path, st, uid)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                if mode & 0o077:
                    os.chmod(path, 0o700)
                    tightened.append(str(path))
                _walk(path, uid, tightened)
            elif mode & 0o077:
                os.chmod(path, mode & 0o700)
                tightened.append(str(path))


def _check_entry(path: Path, st: os.stat_result, uid: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise CacheDirError(
            f"{path} in the cache is a symbolic link; cosencfs uses no links in its cache "
            f"(one could make it write or upload another file). Remove the link "
            "(or point --cache-dir at the real directory) and mount again"
        )
    if st.st_uid != uid:
        raise CacheDirError(
            f"{path} in the cache belongs to uid {st.st_uid}, not to uid {uid} who mounts; "
            "another user could read or forge its contents. If it is yours, chown -R it; "
            "otherwise move it away and mount again"
        )


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None
