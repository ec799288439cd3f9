"""RoleStore: the roles of one directory, reloaded when files change, last good version kept.

The store keeps no state that another process would need: each process (gunicorn worker) watches
the directory itself. A check costs a few `stat`s per file and runs at most every `check_interval`
seconds, on the request path, so no background thread has to survive a fork.

What is read: only regular files whose real path is inside the roles folder (a symbolic link may
point to another file in it, never out of it). FIFOs, devices and sockets are refused: files are
opened non-blocking and checked with `fstat` before a byte is read, so nothing can block a reload.
Any OS error is the error of one file. An empty file is an error too (a file being rewritten in
place is empty for a moment), so the last good version keeps serving until the new text is there.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from role_injector.roles import (
    DEFAULT_LIMITS,
    PartialExpander,
    Role,
    RoleError,
    RoleLimits,
    RoleSource,
    build_role,
    over_limit,
    parse_role_source,
)

PARTIALS_DIR = "_partials"
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class NotARegularFile(OSError):
    """A FIFO, device, socket or folder where a file was expected."""


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
            raise NotARegularFile(f"the file is {_kind(before.st_mode)}; only regular files are read")
        chunks, length = [], 0
        while length <= max_bytes and (chunk := os.read(fd, 1 << 20)):
            chunks.append(chunk)
            length += len(chunk)
        return b"".join(chunks), before, os.fstat(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LoadError:
    file: str
    message: str


@dataclass(frozen=True)
class RoleSet:
    """One consistent view of the directory. `directory_error` says why the folder itself cannot
    be read (missing, not a folder, no permission); the roles last loaded from it keep serving."""

    roles: Mapping[str, Role] = field(default_factory=dict)
    errors: tuple[LoadError, ...] = ()
    directory_error: str | None = None


class FileChanged(Exception):
    """A file changed while it was read: the reload is retried later, never half-applied."""


@dataclass(frozen=True)
class ScannedFile:
    """A `.md` file found by a scan: where its content really is, or why it will not be read."""

    rel: str  # "name.md" or "_partials/name.md"
    real: str
    mtime_ns: int = 0
    size: int = 0
    problem: str | None = None


@dataclass(frozen=True)
class Scan:
    roles: tuple[ScannedFile, ...] = ()
    partials: tuple[ScannedFile, ...] = ()
    directory_error: str | None = None
    partials_error: str | None = None  # the partials folder exists but cannot be listed

    @property
    def fingerprint(self) -> tuple[object, ...]:
        return (self.directory_error, self.partials_error, self.roles, self.partials)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


class RoleStore:
    def __init__(
        self,
        directory: str | Path,
        *,
        limits: RoleLimits = DEFAULT_LIMITS,
        check_interval: float = 0.5,
        settle_time: float = 0.1,
        max_settle_wait: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self.limits = limits
        self.check_interval = check_interval
        self.settle_time = settle_time
        self.max_settle_wait = max_settle_wait
        self._unsettled_since: float | None = None
        self._snapshot = RoleSet()
        self._fingerprint: tuple[object, ...] | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        for _ in range(20):  # a file changing under the first read is read again shortly after
            self.refresh(force=True)
            if self._fingerprint is not None:
                break
            time.sleep(0.05)

    def current(self) -> RoleSet:
        """The latest role set, reloading first when files changed and the interval has passed."""
        if time.monotonic() - self._checked_at >= self.check_interval:
            self.refresh()
        return self._snapshot

    def refresh(self, force: bool = False) -> None:
        # One thread reloads; the others keep answering from the snapshot they have.
        if not self._lock.acquire(blocking=force):
            return
        try:
            self._checked_at = time.monotonic()
            scan = self._scan()
            if scan.fingerprint == self._fingerprint:
                return
            if scan.directory_error is not None:
                previous = self._snapshot
                self._snapshot = RoleSet(previous.roles, previous.errors, scan.directory_error)
                self._fingerprint = scan.fingerprint
                return
            newest = max((f.mtime_ns for f in (*scan.roles, *scan.partials)), default=0)
            if not force and time.time_ns() - newest < self.settle_time * 1e9:
                # A writer may still be busy: look again on the next check, but not for ever, or
                # files that change all the time would never be seen (each read is still checked).
                self._unsettled_since = self._unsettled_since or self._checked_at
                if self._checked_at - self._unsettled_since < self.max_settle_wait:
                    return
            try:
                loaded = self._load(scan)
            except FileChanged:
                return
            self._snapshot = _keep_last_good(self._snapshot, loaded)
            self._fingerprint = scan.fingerprint
            self._unsettled_since = None
        finally:
            self._lock.release()

    # Scanning ------------------------------------------------------------------------------

    def _scan(self) -> Scan:
        try:
            root = os.path.realpath(self.directory)
            roles = tuple(self._listing(self.directory, root, ""))
        except FileNotFoundError:
            return Scan(directory_error=f"the roles folder {self.directory} does not exist")
        except NotADirectoryError:
            return Scan(directory_error=f"the roles folder {self.directory} is not a folder")
        except OSError as exc:
            return Scan(directory_error=f"the roles folder {self.directory} cannot be read: {exc.strerror or exc}")
        try:
            partials = tuple(self._listing(self.directory / PARTIALS_DIR, root, PARTIALS_DIR + "/"))
        except FileNotFoundError:
            return Scan(roles=roles)  # no partials: a role that includes one says so
        except OSError as exc:
            return Scan(roles=roles, partials_error=f"the folder {PARTIALS_DIR} cannot be read: {exc.strerror or exc}")
        return Scan(roles=roles, partials=partials)

    def _listing(self, folder: Path, root: str, prefix: str) -> Iterator[ScannedFile]:
        real_folder = os.path.realpath(folder)
        with os.scandir(folder) as listing:
            entries = sorted((entry.name, entry) for entry in listing
                             if entry.name.endswith(".md") and not (entry.name.startswith("_") and not prefix))
        for name, entry in entries:
            yield _inspect(entry, prefix + name, root, real_folder)

    # Reading -------------------------------------------------------------------------------

    def _read(self, scanned: ScannedFile) -> str:
        if scanned.problem is not None:
            raise RoleError(scanned.problem)
        data, before, after = read_regular_file(scanned.real, self.limits.max_file_bytes, follow_symlinks=False)
        if (before.st_mtime_ns, before.st_size) != (scanned.mtime_ns, scanned.size):
            raise FileChanged(scanned.rel)  # changed since the scan (e.g. truncated by a rewrite)
        if before.st_size > self.limits.max_file_bytes:
            raise over_limit(self.limits, "max_file_bytes", f"the file is {before.st_size} bytes")
        if before.st_size == 0:
            raise RoleError("the file is empty (an empty partial needs at least a newline)")
        if (before.st_mtime_ns, before.st_size) != (after.st_mtime_ns, after.st_size) or len(data) != after.st_size:
            raise FileChanged(scanned.rel)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RoleError(f"the file is not valid UTF-8 (byte {exc.start})") from None

    # Loading -------------------------------------------------------------------------------

    def _load(self, scan: Scan) -> tuple[dict[str, Role], list[LoadError]]:
        limits = self.limits
        sources: dict[str, RoleSource] = {}
        failures: dict[str, str] = {}  # role name -> message
        for scanned in scan.roles:
            name = scanned.rel[:-3]
            try:
                sources[name] = parse_role_source(name, scanned.rel, self._read(scanned), limits)
            except RoleError as exc:
                failures[name] = exc.message
            except OSError as exc:
                failures[name] = exc.strerror or str(exc)
            except Exception as exc:  # a defect must cost one file, not the service
                failures[name] = f"cannot load the file ({type(exc).__name__}: {exc}); please report this"

        partial_files = {f.rel[len(PARTIALS_DIR) + 1 : -3]: f for f in scan.partials}

        def read_partial(name: str) -> str:
            scanned = partial_files.get(name)
            if scanned is None:
                raise RoleError(f"partial {name!r}: {scan.partials_error}" if scan.partials_error
                                else f"partial {name!r} not found (expected {PARTIALS_DIR}/{name}.md)")
            try:
                return self._read(scanned)
            except RoleError as exc:
                raise RoleError(f"partial {name!r}: {exc.message}") from None
            except OSError as exc:
                raise RoleError(f"partial {name!r}: {exc.strerror or exc}") from None

        partials = PartialExpander(read_partial, limits)
        roles: dict[str, Role] = {}
        ancestors: dict[str, int] = {}  # role -> how many parents are above it

        def lineage(name: str) -> list[str]:
            """`name` and the parents above it that are not built yet, child first; bounded walk."""
            names = [name]
            while (parent := sources[names[-1]].meta.get("extends")) is not None and parent not in roles:
                if parent in names:
                    raise RoleError(f"roles extend each other in a cycle: {' -> '.join([*names, parent])}")
                if parent in failures:
                    raise RoleError(f"parent role {parent!r} failed to load: {failures[parent]}")
                if parent not in sources:
                    raise RoleError(f"parent role {parent!r} not found")
                if len(names) > limits.max_extends_depth:
                    raise over_limit(limits, "max_extends_depth",
                                     f"more than {limits.max_extends_depth} parents above {name!r}")
                names.append(parent)
            above = 0 if parent is None else ancestors[parent] + 1
            if len(names) - 1 + above > limits.max_extends_depth:
                raise over_limit(limits, "max_extends_depth",
                                 f"{len(names) - 1 + above} parents above {name!r}")
            return names

        for name in sorted(sources):
            if name in roles or name in failures:
                continue
            try:
                chain = lineage(name)
            except RoleError as exc:
                failures[name] = exc.message
                continue
            for i in range(len(chain) - 1, -1, -1):  # the oldest parent first
                current = chain[i]
                parent = sources[current].meta.get("extends")
                try:
                    roles[current] = build_role(sources[current], roles.get(parent) if parent else None, partials)
                    ancestors[current] = 0 if parent is None else ancestors[parent] + 1
                except RoleError as exc:
                    failures[current] = exc.message
                except Exception as exc:  # a defect must cost one role, not the service
                    failures[current] = f"cannot load the role ({type(exc).__name__}: {exc}); please report this"
                if current in failures:
                    for j in range(i - 1, -1, -1):
                        failures[chain[j]] = f"parent role {chain[j + 1]!r} failed to load: {failures[chain[j + 1]]}"
                    break
        errors = [LoadError(f"{name}.md", message) for name, message in failures.items()]
        return roles, sorted(errors, key=lambda e: e.file)


def _inspect(entry: os.DirEntry[str], rel: str, root: str, real_folder: str) -> ScannedFile:
    """Where a listed file really leads and what is there, without opening it (links are resolved;
    a plain entry is in the folder's real path, so it costs no more than the listing's stat)."""
    path, link = entry.path, False
    try:
        link = entry.is_symlink()
        real = os.path.realpath(path) if link else os.path.join(real_folder, entry.name)
        if os.path.commonpath([real, root]) != root:
            return ScannedFile(rel, real, problem="the file is a symbolic link to outside the roles folder")
        info = os.stat(real) if link else entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return ScannedFile(rel, path, problem="the file is a symbolic link to nothing" if link else "the file is gone")
    except (OSError, ValueError) as exc:
        return ScannedFile(rel, path, problem=f"cannot read the file: {getattr(exc, 'strerror', None) or exc}")
    if not stat.S_ISREG(info.st_mode):
        return ScannedFile(rel, real, info.st_mtime_ns, 0,
                           problem=f"the file is {_kind(info.st_mode)}; only regular files are read")
    return ScannedFile(rel, real, info.st_mtime_ns, info.st_size)


def _keep_last_good(previous: RoleSet, loaded: tuple[dict[str, Role], list[LoadError]]) -> RoleSet:
    """A role whose new source is broken keeps serving its previous version; its error is shown."""
    roles, errors = loaded
    merged = dict(roles)
    shown = []
    for error in errors:
        name = error.file[:-3]
        if name in previous.roles and name not in roles:
            merged[name] = previous.roles[name]
            shown.append(LoadError(error.file, f"{error.message} (serving the last good version)"))
        else:
            shown.append(error)
    return RoleSet(roles=merged, errors=tuple(shown))
