"""Which files of a folder changed, as the kernel reports it (Linux inotify, through ctypes): the role
store's watcher hears of an edit at once and looks only at the files named, instead of a `stat` of every
file of the folder. One watch per folder, not per file. Where there is no inotify (other systems), or it
hears nothing (some network and bind mounts deliver no events), the store's periodic full scan still
finds every change, only later.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from collections.abc import Mapping

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_ONLYDIR = 0x01000000
WATCHED = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
LOST = IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED  # then no name is known: look at all
EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name


class FolderEvents:
    """inotify watches on folders, each with the prefix its file names get (e.g. "" and "_partials/")."""

    def __init__(self, folders: Mapping[str, str]) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError("inotify is Linux's")
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._prefixes: dict[int, str] = {}
        for prefix, folder in folders.items():
            watch = self._libc.inotify_add_watch(self.fd, os.fsencode(folder), WATCHED)
            if watch < 0:
                error = ctypes.get_errno()
                self.close()
                raise OSError(error, f"cannot watch {folder}")
            self._prefixes[watch] = prefix

    def read(self) -> tuple[set[str], set[str]] | None:
        """The names (with their folder's prefix) reported since the last read, and those of them that a
        writer finished (closed after writing, or renamed into place: nothing more is coming); or None
        when events were lost or a watched folder itself moved or went: then every file must be looked at."""
        names: set[str] = set()
        finished: set[str] = set()
        lost = False
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            offset = 0
            while offset + EVENT.size <= len(data):
                watch, mask, _, length = EVENT.unpack_from(data, offset)
                name = data[offset + EVENT.size : offset + EVENT.size + length].split(b"\0", 1)[0]
                offset += EVENT.size + length
                if mask & LOST or watch not in self._prefixes:
                    lost = True
                elif name:
                    path = self._prefixes[watch] + os.fsdecode(name)
                    names.add(path)
                    if mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM):
                        finished.add(path)
                    else:
                        finished.discard(path)
        return None if lost else (names, finished)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
