"""Reading a regular file whatever stands at its path: a FIFO, device, socket or folder is refused before a
byte is read (opened non-blocking and checked with `fstat`), so nothing can block the reader. Role files,
partials and the model profile file are read this way."""

from __future__ import annotations

import os
import stat

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class NotARegularFile(OSError):
    """A FIFO, device, socket or folder where a file was expected."""


def file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def read_regular_file(
    path: str, max_bytes: int, *, follow_symlinks: bool = True
) -> tuple[bytes, os.stat_result, os.stat_result]:
    """At most `max_bytes + 1` bytes of a regular file (so a file over the limit shows), with its
    `fstat` before and after reading. Opened non-blocking and checked before a byte is read: a
    FIFO or device in its place is refused, never waited on."""
    flags = OPEN_FLAGS if follow_symlinks else OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise NotARegularFile(f"the file is {file_kind(before.st_mode)}; only regular files are read")
        chunks, length = [], 0
        while length <= max_bytes and (chunk := os.read(fd, 1 << 20)):
            chunks.append(chunk)
            length += len(chunk)
        return b"".join(chunks), before, os.fstat(fd)
    finally:
        os.close(fd)
