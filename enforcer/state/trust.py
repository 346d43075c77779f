"""Whether a state file can be trusted before SQLite opens it, and what went wrong with it, told as a person
can fix it: damage (its size against its own header), files other users could have planted beside it (SQLite
replays a -wal or a hot -journal on open), a full or read-only disk, permissions, a lock.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import sqlite3
from contextlib import suppress
from pathlib import Path

from ..errors import UserError

SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100
# Files SQLite reads beside the database when it opens it: it replays a -wal, and a hot -journal, into the state.
COMPANIONS = ("-wal", "-shm", "-journal")
SQLITE_BUSY, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 5, 11, 13, 26  # primary result codes
LOW_SPACE = 1 << 20  # below this much free space, a write error on the state's device is the device being full


def size_fault(header: bytes, size: int, journal_live: bool) -> str | None:
    """Why a database file's size disagrees with its own header (the SQLite file format, section 1.3), or None.

    The size is a whole number of pages, always: SQLite writes whole pages. The page count in the header (bytes
    28-31) holds only while the version-valid-for number (92-95) equals the change counter (24-27), and only for
    the file alone: while a -wal or a -journal holds pages the file may be longer than the count (measured: a
    checkpoint held back by a reader copies pages that the file's page 1 does not count yet) or shorter (a
    checkpoint cut short by a crash), and SQLite completes it from there."""
    if len(header) < HEADER_SIZE:
        return f"{size} bytes, shorter than an SQLite header"
    raw = int.from_bytes(header[16:18], "big")
    page = 65536 if raw == 1 else raw
    if page < 512 or page & (page - 1):
        return f"its header is corrupt: page size {raw}"
    if size % page:
        return f"{size} bytes is not a whole number of {page}-byte pages: it was cut short or written past its end"
    pages = int.from_bytes(header[28:32], "big")
    if pages and header[24:28] == header[92:96] and not journal_live and size != pages * page:
        return f"its header counts {pages} pages of {page} bytes, the file holds {size // page}"
    return None


# The system user and group the service runs as (`enforcer service install` makes them): the daemon reads the
# state as that user, so the state's directory and files are its group's, and the files SQLite keeps beside the
# state may be its own. Whoever can act as it can change the state: it is the enforcer.
SERVICE_ACCOUNT = "enforcer"


def service_account() -> tuple[int, int] | None:
    """(uid, gid) of the service's own user and group, where both exist."""
    try:
        return pwd.getpwnam(SERVICE_ACCOUNT).pw_uid, grp.getgrnam(SERVICE_ACCOUNT).gr_gid
    except KeyError:
        return None


def untrusted(st: os.stat_result, service: tuple[int, int] | None = None) -> str | None:
    """Why root must not trust a file or directory with this status: another user could write it. Root, and the
    service's own user and group where they exist, may."""
    faults = []
    if st.st_uid != 0 and (service is None or st.st_uid != service[0]):
        faults.append(f"owned by uid {st.st_uid}")
    if st.st_mode & (0o002 if service is not None and st.st_gid == service[1] else 0o022):
        faults.append(f"writable by others (mode {st.st_mode & 0o7777:o})")
    return " and ".join(faults) or None


def new_file_mode(directory: Path) -> int:
    """The mode of a new state file: shared with the service's group in the directory `enforcer service install`
    made for it (set-group-ID, that group's), else root's alone."""
    service = service_account()
    with suppress(OSError):
        st = directory.stat()
        if service is not None and st.st_gid == service[1] and st.st_mode & 0o2000:
            return 0o660
    return 0o600


def mount_point(path: Path) -> Path:
    """Where the file system holding `path` is mounted: what `mount -o remount` needs."""
    try:
        device = path.stat().st_dev
        while path.parent != path and path.parent.stat().st_dev == device:
            path = path.parent
    except OSError:
        pass
    return path


class StateFile:
    """The state's path, and the checks and error messages that concern the file rather than its content."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def real(self) -> Path:
        """The file SQLite opens: it resolves symbolic links, and keeps its -wal and -shm beside the target."""
        return Path(os.path.realpath(self.path))

    def refuse(self, why: str) -> UserError:
        return UserError(f"{self.path} {why}; it was left untouched: move it away or pass --state PATH")

    def damaged(self, why: str) -> UserError:
        why = " ".join(why.split())  # one line, whatever the damaged bytes held
        why = why if len(why) <= 200 else why[:200] + "..."
        return UserError(f"{self.path} is damaged ({why}); it was left untouched: restore it from a backup or move "
                         "it away")

    def journal_live(self) -> bool:
        """Whether a -wal or -journal holds pages, which the database file alone does not show."""
        for suffix in ("-wal", "-journal"):
            with suppress(OSError):
                if os.stat(f"{self.real}{suffix}").st_size > 0:
                    return True
        return False

    def read_header(self) -> tuple[bytes, int, bool]:
        """The header, the file's size, and whether a journal was live while they were read: a connection
        closing elsewhere checkpoints the -wal into the file, then deletes it."""
        live = self.journal_live()
        try:
            with open(self.path, "rb") as f:
                header, size = f.read(HEADER_SIZE), os.fstat(f.fileno()).st_size
        except OSError as e:
            raise self.os_trouble(e, "read") from None
        return header, size, live or self.journal_live()

    def check_owner(self) -> None:
        """As root, refuse a state that another user owns or can write: the daemon would enforce what they
        wrote, and the audit log would not say who. The same holds for the files SQLite replays into it on open
        (a -wal, a hot -journal) and for its directory, where whoever can write could plant them."""
        if os.geteuid() != 0:
            return
        real = self.real
        service = service_account()
        for directory in dict.fromkeys((self.path.absolute().parent, real.parent)):
            self.check_directory(directory, service)
        for path in (real, *(Path(f"{real}{suffix}") for suffix in COMPANIONS)):
            try:
                why = untrusted(path.stat(), service)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise self.os_trouble(e, "read") from None
            if why and path == real:
                raise self.refuse(f"is {why}; if it is yours: chown root {path} && chmod 600 {path}")
            if why:
                raise UserError(f"{path}, beside the state, is {why}: SQLite would replay it into the state; it and "
                                f"the state were left untouched: if you did not make it, delete it; if you did: "
                                f"chown root {path} && chmod 600 {path}")

    def check_directory(self, directory: Path, service: tuple[int, int] | None = None) -> None:
        try:
            st = directory.stat()
        except OSError as e:
            raise self.os_trouble(e, "read") from None
        why = untrusted(st, service)
        if why is None:
            return
        fix = (f"keep the state in a directory of its own (mkdir -m 700 DIR, then --state DIR/{self.path.name})"
               if st.st_mode & 0o1000 else f"chown root {directory} && chmod go-w {directory}")
        raise UserError(f"{self.path} is in {directory}, which is {why}: another user could plant a -wal file "
                        f"there that SQLite replays into the state; it was left untouched: {fix}")

    def trouble(self, e: sqlite3.Error) -> UserError:
        """An SQLite error told as what it is: damage, a full or read-only disk, permissions, a lock."""
        code = getattr(e, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
            return self.damaged(str(e))
        if primary is None and "decode" in str(e):  # Python's sqlite3 meeting stored text that is not UTF-8
            return self.damaged("a stored text is not UTF-8")
        if primary == SQLITE_BUSY:
            return UserError(f"the state {self.path} stayed locked by another process for 30 s; nothing was "
                             "changed: run the command again when it is done")
        found = self.environment(errno.ENOSPC if primary == SQLITE_FULL else None)
        return found or UserError(f"cannot use the state {self.path}: {e}; nothing was changed: check the disk "
                                  "(dmesg) and the file's permissions")

    def os_trouble(self, e: OSError, doing: str) -> UserError:
        return self.environment(e.errno) or UserError(f"cannot {doing} the state {self.path}: {e.strerror}; run "
                                                       "as root or pass --state PATH")

    def environment(self, err: int | None) -> UserError | None:
        """The cause of a failure to use the state that lies in its disk or its permissions: an error number
        where the system gave one, else what the file system and the file say now."""
        directory = self.real.parent
        if err is None:
            err = self.guess_errno(directory)
        if err == errno.EROFS:
            where = mount_point(directory)
            return UserError(f"{self.path} is on a read-only file system (SQLite writes beside the state even to "
                             f"read it); nothing was changed: remount it read-write (mount -o remount,rw {where}) "
                             "or copy the state elsewhere and pass --state PATH")
        if err in (errno.ENOSPC, errno.EDQUOT):
            return UserError(f"no space left on the device holding {self.path}; nothing was changed: free some "
                             f"space there (df -h {directory}) and run the command again")
        if err in (errno.EACCES, errno.EPERM):
            return UserError(f"permission denied: cannot use the state {self.path} (SQLite reads and writes it, "
                             f"and writes its -wal and -shm in {directory}); nothing was changed: run as root or "
                             "pass --state PATH")
        return None

    def guess_errno(self, directory: Path) -> int | None:
        """SQLite reports what failed (an I/O error, a file it cannot open), not the system's reason: ask."""
        try:
            fs = os.statvfs(directory)
        except OSError:
            return None
        if fs.f_flag & os.ST_RDONLY:
            return errno.EROFS
        free = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail  # root may use the reserved blocks
        if free * fs.f_frsize < LOW_SPACE or (fs.f_files and not fs.f_favail):
            return errno.ENOSPC
        real = self.real
        if not os.access(directory, os.W_OK | os.X_OK) or (real.exists() and not os.access(real, os.R_OK | os.W_OK)):
            return errno.EACCES
        return None
