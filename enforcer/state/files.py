"""Reading the text of a file a person hands us (an inventory, a lab file, the config, a profile) so that it can
neither block (a FIFO, a device) nor grow without bound, with one-line errors. No YAML here: the commands that
read only TOML or nothing at all do not load a YAML parser.
"""

from __future__ import annotations

import os
import stat

from ..errors import UserError

MAX_BYTES = 16 << 20  # the example lab is 6 KiB: this bounds memory and parse time, not real inventories
_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def shown(path: str) -> str:
    """The path as a message shows it: on one line, whatever characters it holds."""
    return path if path.isprintable() else repr(path)


def read_text(path: str, what: str = "it") -> str:
    """The text of a regular file of at most MAX_BYTES, decoded as strict UTF-8. `what` names the file in the
    message when it cannot be read ("the config")."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the type check below refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise UserError(f"{shown(path)}: cannot read {what}: {e.strerror}; check the path") from None
    try:
        return _decode(path, _read_regular(path, fd))
    finally:
        os.close(fd)


def _read_regular(path: str, fd: int) -> bytes:
    info = os.fstat(fd)
    mode, size = info.st_mode, info.st_size
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
        raise UserError(f"{shown(path)}: is {kind}, not a regular file; give the path of a file")
    too_large = UserError(f"{shown(path)}: larger than {MAX_BYTES >> 20} MiB, the most this reads; "
                          "split it or check that it is the right file")
    if size > MAX_BYTES:
        raise too_large
    chunks, total = [], 0
    try:
        while chunk := os.read(fd, 1 << 20):  # read to the end: /proc-like files report size 0
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_BYTES:
                raise too_large
    except OSError as e:
        raise UserError(f"{shown(path)}: cannot read it: {e.strerror}; check the file") from None
    return b"".join(chunks)


def _decode(path: str, data: bytes) -> str:
    utf16 = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data else ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{shown(path)}: not UTF-8 text: line {line} holds byte 0x{data[e.start]:02x}{utf16}; "
                        "save the file as UTF-8") from None
    if "\x00" in text:  # valid UTF-8, but no text format has NULs: UTF-16 without a byte order mark
        raise UserError(f"{shown(path)}: not UTF-8 text: it holds NUL bytes{utf16}; save the file as UTF-8")
    return text.removeprefix("\ufeff")
