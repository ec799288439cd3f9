"""RoleStore: the roles of one folder, reloaded when files change, last good version kept.

Each process keeps its own store; nothing is shared between gunicorn's workers. A change costs what it
touches: only the files that changed are read and parsed again, and only the roles built from them (their
own file, the partials they reached: `roles.Built`) and the roles that extend those, however far down, are
built again; the new `RoleSet` is published at once, whole (`RoleTable`: nothing copied per edit). Finding
changes:

- `watch()`, which the server calls in each worker after the fork: a background OS thread keeps the set
  current, and `current()` never reloads (no request waits for a reload). On Linux, inotify names the
  changed files at once (`folder_events`); a full scan (one `stat` per file) runs every `check_interval`,
  or less often in a large folder, so that scanning takes at most 1/`SCAN_SHARE` of a core (a tenth of
  that with inotify, where it only catches what inotify cannot see).
- without it (the CLI, library callers), `current()` scans at most every `check_interval` seconds.

What is read: only regular files whose real path is inside the roles folder (a symbolic link may point to
another file in it, never out of it), at most `max_files` of them. FIFOs, devices and sockets are refused
before a byte is read (`regular_files`), so nothing can block a reload. Any OS error is the error of one
file. An empty file is an error too (a file being rewritten in place is empty for a moment), and a file is
read only once its writer closed it (inotify says so) or it has not changed for `settle_time`, so the last
good version serves until the new text is there.
"""

from __future__ import annotations

import bisect
import difflib
import logging
import os
import stat
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple, TypeVar

from role_injector import os_threads
from role_injector.folder_events import FolderEvents
from role_injector.regular_files import file_kind, read_regular_file
from role_injector.roles import (
    DEFAULT_LIMITS,
    Built,
    PartialExpander,
    Role,
    RoleError,
    RoleLimits,
    RoleSource,
    build_roles,
    over_limit,
    parse_role_source,
)

log = logging.getLogger("role_injector.store")
V = TypeVar("V")

PARTIALS_DIR = "_partials"
PARTIALS_FOLDER = PARTIALS_DIR  # a scan's entry for the partials folder itself, present when it cannot be listed
MAX_CLOSE_NAME_CANDIDATES = 2_000  # difflib over all of 50,000 names took 1.7 s per unknown name
SCAN_SHARE = 20  # a full scan at most every 20 times its own duration: 5% of a core
SCAN_SHARE_WITH_EVENTS = 200  # with inotify, the full scan is only a safety net


@dataclass(frozen=True)
class LoadError:
    file: str
    message: str


@dataclass(frozen=True)
class RoleSet:
    """One consistent view of the directory. `directory_error` says why the folder itself cannot
    be read (missing, not a folder, no permission, too many files); the roles last loaded from it
    keep serving."""

    roles: Mapping[str, Role] = field(default_factory=dict)
    errors: tuple[LoadError, ...] = ()
    directory_error: str | None = None

    def close_names(self, name: str, count: int = 3) -> list[str]:
        """Up to `count` role names like `name` (difflib's), for "did you mean". Among many roles only the
        names beside it in alphabetical order are compared: a miss costs the same with 50,000 roles."""
        names = self.sorted_names
        if len(names) > MAX_CLOSE_NAME_CANDIDATES:
            at = bisect.bisect_left(names, name)
            names = names[max(0, at - MAX_CLOSE_NAME_CANDIDATES // 2) : at + MAX_CLOSE_NAME_CANDIDATES // 2]
        return difflib.get_close_matches(name, names, n=count, cutoff=0.5)

    @cached_property
    def sorted_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.roles))


class ScannedFile(NamedTuple):
    """A `.md` file found by a scan: where its content really is, or why it will not be read."""

    real: str
    inode: int = 0
    mtime_ns: int = 0
    size: int = 0
    problem: str | None = None
    link: bool = False


@dataclass(frozen=True)
class Scan:
    files: Mapping[str, ScannedFile]  # "name.md", "_partials/name.md", and PARTIALS_FOLDER when unlistable
    directory_error: str | None = None


class TooManyFiles(Exception):
    pass


def _inspect(path: str, name: str, info: os.stat_result, root: str, real_folder: str) -> ScannedFile:
    """Where a listed file (its `lstat` is `info`) really leads and what is there, without opening it.
    A plain entry is in its folder's real path (`real_folder`, known to be inside `root`), so it costs
    nothing beyond that `lstat`; a link is resolved and checked."""
    link = stat.S_ISLNK(info.st_mode)
    real = real_folder + os.sep + name
    if link:
        try:
            real = os.path.realpath(path)
            if os.path.commonpath([real, root]) != root:
                return ScannedFile(real, problem="the file is a symbolic link to outside the roles folder", link=True)
            info = os.stat(real)
        except FileNotFoundError:
            return ScannedFile(path, problem="the file is a symbolic link to nothing", link=True)
        except (OSError, ValueError) as exc:
            return ScannedFile(path, problem=f"cannot read the file: {getattr(exc, 'strerror', None) or exc}",
                               link=True)
    if not stat.S_ISREG(info.st_mode):
        return ScannedFile(real, info.st_ino, info.st_mtime_ns, 0,
                           f"the file is {file_kind(info.st_mode)}; only regular files are read", link)
    return ScannedFile(real, info.st_ino, info.st_mtime_ns, info.st_size, None, link)


def _real_folder(folder: Path, root: str) -> str:
    """The folder's real path, which must be inside the roles folder (`_partials` may be a link)."""
    real = os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root:
        raise OSError(f"{folder.name} is a symbolic link to outside the roles folder")
    return real


def _is_listed(rel: str) -> bool:
    """Role files are `name.md` (not starting with `_`), partials `_partials/name.md`."""
    if rel.startswith(PARTIALS_DIR + "/"):
        name = rel[len(PARTIALS_DIR) + 1 :]
        return name.endswith(".md") and "/" not in name
    return rel.endswith(".md") and not rel.startswith("_") and "/" not in rel


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
        self.last_scan_seconds = 0.0  # how long the last full scan took
        self._lock = os_threads.lock()  # one reload at a time; readers never take it
        self._snapshot = RoleSet()
        self._files: dict[str, ScannedFile] = {}  # what the published set was built from
        self._links: set[str] = set()  # those of them that are symbolic links: looked at on every change
        self._sources: dict[str, RoleSource] = {}
        self._unreadable: dict[str, str] = {}  # role files that cannot be read or parsed: name -> message
        self._built: dict[str, Built] = {}
        self._dependents: dict[str, set[str]] = {}  # file (as in Scan.files) -> roles built from it
        self._children: dict[str, set[str]] = {}  # role name -> the roles whose source extends it
        self._loaded = False
        self._checked_at = float("-inf")
        self._unsettled_since: float | None = None
        self._watching_pid: int | None = None
        for _ in range(20):  # a file changing under the first read is read again shortly after
            self.refresh(force=True)
            if self._loaded:
                break
            time.sleep(0.05)

    def current(self) -> RoleSet:
        """The latest role set; without a watcher, reloaded first when files changed and the interval passed."""
        if self._watching_pid != os.getpid() and time.monotonic() - self._checked_at >= self.check_interval:
            self.refresh()
        return self._snapshot

    def watch(self) -> None:
        """Keep the set current from a background OS thread of this process; `current()` then never
        reloads. (Threads do not survive a fork: a forked process calls it again.)"""
        if self._watching_pid == os.getpid():
            return
        self._watching_pid = os.getpid()
        os_threads.start_thread(_Watcher(self).run)

    def refresh(self, force: bool = False) -> set[str]:
        """Scan the whole folder and apply what changed. Returns the files whose change is not applied
        yet (still being written); `force` waits for a reload in progress and for no file to settle."""
        if not self._lock.acquire(force):  # one thread reloads; the others keep the snapshot they have
            return set()
        try:
            self._checked_at = time.monotonic()
            started = time.perf_counter()
            scan = self._full_scan()
            self.last_scan_seconds = time.perf_counter() - started
            return self._apply_scan(scan, force)
        finally:
            self._lock.release()

    def refresh_files(self, names: Iterable[str], finished: Iterable[str] = ()) -> set[str]:
        """Look again at these files only (as `Scan.files` names them) and at every symbolic link, and
        apply what changed; `finished` are files a writer is done with (inotify saw it close them), which
        need not settle. Returns the files whose change is not applied yet."""
        with self._lock:
            if self._snapshot.directory_error is not None:
                return self._apply_scan(self._full_scan(), False)
            looked = {n for n in names if _is_listed(n)} | self._links
            try:
                root = os.path.realpath(self.directory)
                real_folders = {"": _real_folder(self.directory, root)}
                if any(rel.startswith(PARTIALS_DIR + "/") for rel in looked):
                    real_folders[PARTIALS_DIR] = _real_folder(self.directory / PARTIALS_DIR, root)
            except OSError:  # the folders themselves: a full scan says what is wrong
                return self._apply_scan(self._full_scan(), False)
            found: dict[str, ScannedFile] = {}
            for rel in looked:
                where, _, name = rel.rpartition("/")
                path = os.path.join(self.directory, rel)
                try:
                    found[rel] = _inspect(path, name, os.lstat(path), root, real_folders[where])
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    found[rel] = ScannedFile(path, problem=f"cannot read the file: {exc.strerror or exc}")
            gone = looked - found.keys()
            if len(self._files) + len(found.keys() - self._files.keys()) > self.limits.max_files:
                return self._apply_scan(self._full_scan(), False)
            changed = {rel for rel in looked if self._files.get(rel) != found.get(rel)}
            pending = self._apply(Scan(_Overlay(self._files, found, gone)), changed, False, set(finished))
            if not pending:
                for rel in gone:
                    self._files.pop(rel, None)
                self._files.update(found)
                self._links = (self._links - looked) | {rel for rel, scanned in found.items() if scanned.link}
            return pending

    def _apply_scan(self, scan: Scan, force: bool) -> set[str]:
        old, new = self._files, scan.files
        pending = self._apply(scan, {name for name in new.keys() | old.keys() if old.get(name) != new.get(name)}, force)
        if not pending and scan.directory_error is None:
            self._files = dict(new)
            self._links = {rel for rel, scanned in new.items() if scanned.link}
        return pending

    # Scanning ------------------------------------------------------------------------------

    def _full_scan(self) -> Scan:
        files: dict[str, ScannedFile] = {}
        try:
            root = os.path.realpath(self.directory)
            self._list(self.directory, root, "", files)
        except FileNotFoundError:
            return Scan({}, f"the roles folder {self.directory} does not exist")
        except NotADirectoryError:
            return Scan({}, f"the roles folder {self.directory} is not a folder")
        except TooManyFiles:
            return Scan({}, self._too_many().message)
        except OSError as exc:
            return Scan({}, f"the roles folder {self.directory} cannot be read: {exc.strerror or exc}")
        try:
            self._list(self.directory / PARTIALS_DIR, root, PARTIALS_DIR + "/", files)
        except FileNotFoundError:
            pass  # no partials: a role that includes one says so
        except TooManyFiles:
            return Scan({}, self._too_many().message)
        except OSError as exc:
            files[PARTIALS_FOLDER] = ScannedFile(
                "", problem=f"the folder {PARTIALS_DIR} cannot be read: {exc.strerror or exc}")
        return Scan(files)

    def _too_many(self) -> RoleError:
        return over_limit(self.limits, "max_files", f"the roles folder {self.directory} holds more than "
                                                    f"{self.limits.max_files} role files and partials")

    def _list(self, folder: Path, root: str, prefix: str, files: dict[str, ScannedFile]) -> None:
        real_folder = _real_folder(folder, root)
        with os.scandir(folder) as listing:
            for entry in listing:
                name = entry.name
                if not name.endswith(".md") or (name.startswith("_") and not prefix):
                    continue
                if len(files) >= self.limits.max_files:
                    raise TooManyFiles
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    files[prefix + name] = ScannedFile(entry.path, problem="the file is gone" if isinstance(
                        exc, FileNotFoundError) else f"cannot read the file: {exc.strerror or exc}")
                    continue
                files[prefix + name] = _inspect(entry.path, name, info, root, real_folder)

    # Reading -------------------------------------------------------------------------------

    def _read(self, scanned: ScannedFile, changed: list[str], rel: str) -> str:
        """The file's text; `changed` gets `rel` when it changed since the scan (then the reload waits)."""
        if scanned.problem is not None:
            raise RoleError(scanned.problem)
        data, before, after = read_regular_file(scanned.real, self.limits.max_file_bytes, follow_symlinks=False)

        def moved() -> RoleError:
            changed.append(rel)
            return RoleError("the file changed while it was read")

        if (before.st_mtime_ns, before.st_size) != (scanned.mtime_ns, scanned.size):
            raise moved()  # since the scan (e.g. truncated by a rewrite)
        if before.st_size > self.limits.max_file_bytes:
            raise over_limit(self.limits, "max_file_bytes", f"the file is {before.st_size} bytes")
        if before.st_size == 0:
            raise RoleError("the file is empty (an empty partial needs at least a newline)")
        if (before.st_mtime_ns, before.st_size) != (after.st_mtime_ns, after.st_size) or len(data) != after.st_size:
            raise moved()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RoleError(f"the file is not valid UTF-8 (byte {exc.start})") from None

    # Loading -------------------------------------------------------------------------------

    def _apply(self, scan: Scan, changed: set[str], force: bool, finished: set[str] | None = None) -> set[str]:
        """Load what `changed` (names of `scan.files`) touches and publish the new set; or, while a file
        is still being written (changed within `settle_time`, unless `finished`), nothing. Returns the
        files not applied yet."""
        previous = self._snapshot
        if scan.directory_error is not None:
            if previous.directory_error != scan.directory_error:
                self._snapshot = RoleSet(previous.roles, previous.errors, scan.directory_error)
            self._loaded = True
            return set()
        if not changed:
            if previous.directory_error is not None:
                self._snapshot = RoleSet(previous.roles, previous.errors)
            self._loaded = True
            return set()
        now = time.monotonic()
        newest = max((scan.files[name].mtime_ns for name in changed - (finished or set()) if name in scan.files),
                     default=0)
        if not force and time.time_ns() - newest < self.settle_time * 1e9:
            # A writer may still be busy: look again shortly, but not for ever, or files that change
            # all the time would never be seen (each read is still checked).
            self._unsettled_since = self._unsettled_since or now
            if now - self._unsettled_since < self.max_settle_wait:
                return changed
        started = time.perf_counter()
        moved: list[str] = []  # files that changed while they were read: the reload waits for them
        sources, unreadable, removed = {}, {}, set()
        for rel in sorted(name for name in changed if "/" not in name and name.endswith(".md")):
            name = rel[:-3]
            if rel not in scan.files:
                removed.add(name)
                continue
            try:
                sources[name] = parse_role_source(name, rel, self._read(scan.files[rel], moved, rel), self.limits)
            except RoleError as exc:
                unreadable[name] = exc.message
            except OSError as exc:
                unreadable[name] = exc.strerror or str(exc)
            except Exception as exc:  # a defect must cost one file, not the service
                unreadable[name] = f"cannot load the file ({type(exc).__name__}: {exc}); please report this"
        if moved:
            return changed
        dirty = {rel[:-3] for rel in changed if "/" not in rel and rel.endswith(".md")}
        for rel in changed:
            dirty |= self._dependents.get(rel, set())
        # and every role that extends one of them, however far down (new `extends` lines count already)
        new_children: dict[str, set[str]] = {}
        for name, source in sources.items():
            if (parent := source.meta.get("extends")) is not None:
                new_children.setdefault(parent, set()).add(name)
        below = list(dirty)
        while below:
            name = below.pop()
            for child in self._children.get(name, set()) | new_children.get(name, set()):
                if child not in dirty:
                    dirty.add(child)
                    below.append(child)
        # What the state would be, seen through the changes (nothing is copied); applied once the load goes through.
        gone = removed | unreadable.keys() | sources.keys()
        all_sources = _Overlay(self._sources, sources, gone)
        all_unreadable = _Overlay(self._unreadable, unreadable, gone)
        results = build_roles(dirty - removed, all_sources, all_unreadable, _Overlay(self._built, {}, dirty),
                              PartialExpander(self._partial_reader(scan, moved), self.limits))
        if moved:
            return changed
        for name in gone:
            if (old := self._sources.pop(name, None)) is not None and (parent := old.meta.get("extends")) is not None:
                self._children.get(parent, set()).discard(name)
            self._unreadable.pop(name, None)
        for parent, children in new_children.items():
            self._children.setdefault(parent, set()).update(children)
        self._sources.update(sources)
        self._unreadable.update(unreadable)
        for name in (*results, *removed):
            for rel in _files_of(name, self._built.pop(name, None)):
                self._dependents.get(rel, set()).discard(name)
        for name, built in results.items():
            self._built[name] = built
            for rel in _files_of(name, built):
                self._dependents.setdefault(rel, set()).add(name)
        self._snapshot = _published(previous, results, removed)
        self._loaded, self._unsettled_since = True, None
        log.info("roles reloaded: %d files changed, %d roles built in %.1f ms", len(changed), len(results),
                 (time.perf_counter() - started) * 1000)
        return set()

    def _partial_reader(self, scan: Scan, moved: list[str]) -> Callable[[str], str]:
        unlistable = scan.files.get(PARTIALS_FOLDER)

        def read_partial(name: str) -> str:
            rel = f"{PARTIALS_DIR}/{name}.md"
            scanned = scan.files.get(rel)
            if scanned is None:
                raise RoleError(f"partial {name!r}: {unlistable.problem}" if unlistable is not None
                                else f"partial {name!r} not found (expected {rel})")
            try:
                return self._read(scanned, moved, rel)
            except RoleError as exc:
                raise RoleError(f"partial {name!r}: {exc.message}") from None
            except OSError as exc:
                raise RoleError(f"partial {name!r}: {exc.strerror or exc}") from None

        return read_partial


class _Overlay(Mapping[str, V]):
    """`base` with `changes` in place of it and `hidden` names left out, without copying `base`."""

    def __init__(self, base: Mapping[str, V], changes: Mapping[str, V], hidden: Iterable[str]) -> None:
        self._base, self._changes, self._hidden = base, changes, set(hidden) - changes.keys()

    def __getitem__(self, name: str) -> V:
        if name in self._changes:
            return self._changes[name]
        if name in self._hidden:
            raise KeyError(name)
        return self._base[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._changes
        yield from (name for name in self._base if name not in self._hidden and name not in self._changes)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _files_of(name: str, built: Built | None) -> set[str]:
    """The files (as `Scan.files` names them) a role was built from, besides its parents' (a role is
    built again with its parent: `RoleStore._children`)."""
    if built is None:
        return set()
    partials = {f"{PARTIALS_DIR}/{partial}.md" for partial in built.partials}
    return {f"{name}.md", *partials, *([PARTIALS_FOLDER] if partials else [])}


def _published(previous: RoleSet, results: Mapping[str, Built], removed: set[str]) -> RoleSet:
    """The previous set with the roles built again (and the removed ones gone). A role whose new source
    is broken keeps serving its previous version; its error is shown."""
    changes: dict[str, Role | None] = dict.fromkeys(removed)
    errors = {error.file: error for error in previous.errors}
    for name in removed:
        errors.pop(f"{name}.md", None)
    for name, built in results.items():
        file = f"{name}.md"
        if built.role is not None:
            changes[name] = built.role
            errors.pop(file, None)
        elif name in previous.roles:
            errors[file] = LoadError(file, f"{built.error} (serving the last good version)")
        else:
            errors[file] = LoadError(file, built.error or "")
    table = previous.roles if isinstance(previous.roles, RoleTable) else RoleTable(dict(previous.roles))
    return RoleSet(table.changed(changes), tuple(sorted(errors.values(), key=lambda e: e.file)))


class RoleTable(Mapping[str, Role]):
    """The roles of a set by name: a table, and the roles changed since it was made on top of it.

    A set is published whole on every change, but the table is not copied for it: copying touches every
    role (their reference counts), and in a worker forked from the master that loaded them, the first
    copy of 50,000 roles made each worker copy their memory pages (60 ms, and their RAM unshared). The
    changes are merged into a new table once they are many, which spreads that cost over many edits."""

    def __init__(self, table: Mapping[str, Role], changes: Mapping[str, Role | None] | None = None,
                 length: int | None = None) -> None:
        self._table, self._changes = table, changes or {}
        self._length = len(table) if length is None else length

    def changed(self, updates: Mapping[str, Role | None]) -> RoleTable:
        """A table with `updates` (None: a role gone) over this one."""
        length = self._length + sum((role is not None) - (name in self) for name, role in updates.items())
        changes = {**self._changes, **updates}
        if len(changes) > 1024 + len(self._table) // 16:
            merged = {name: role for name, role in self.items() if name not in updates}
            merged.update((name, role) for name, role in updates.items() if role is not None)
            return RoleTable(merged)
        return RoleTable(self._table, changes, length)

    def __getitem__(self, name: str) -> Role:
        if name in self._changes:
            role = self._changes[name]
            if role is None:
                raise KeyError(name)
            return role
        return self._table[name]

    def __contains__(self, name: object) -> bool:
        if name in self._changes:
            return self._changes[name] is not None  # type: ignore[index]
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        yield from (name for name in self._table if name not in self._changes)
        yield from (name for name, role in self._changes.items() if role is not None)

    def __len__(self) -> int:
        return self._length


class _Watcher:
    """The background thread of `RoleStore.watch`. It holds its store weakly: a store no one uses any
    more is collected, and the thread ends."""

    def __init__(self, store: RoleStore) -> None:
        self._store = weakref.ref(store)
        self._pid = os.getpid()

    def run(self) -> None:
        events: FolderEvents | None = None
        pending: set[str] = set()
        finished: set[str] = set()  # of the pending files, those their writer closed
        next_full = 0.0
        while True:
            store = self._store()
            if store is None or store._watching_pid != self._pid:
                break
            try:
                now = time.monotonic()
                wait = max(0.01, (store.settle_time if pending else next_full - now))
                full = False
                del store
                if events is not None:
                    if os_threads.wait_readable(events.fd, wait):
                        reported = events.read()
                        if reported is None or PARTIALS_DIR in reported[0]:
                            full = True
                            events.close()
                            events = None
                        else:
                            names, closed = reported
                            pending |= names
                            finished = (finished - names) | closed
                else:
                    os_threads.sleep(wait)
                store = self._store()
                if store is None:
                    break
                now = time.monotonic()
                if full or now >= next_full:
                    # Watch before scanning: a change between the scan and the watch would wait for the next scan.
                    events = events or _open_events(store)
                    pending, finished = store.refresh(), set()
                    share = SCAN_SHARE if events is None else SCAN_SHARE_WITH_EVENTS
                    next_full = time.monotonic() + max(store.check_interval, share * store.last_scan_seconds)
                elif pending:
                    pending = store.refresh_files(pending, finished)
                    finished &= pending
            except Exception:  # the watcher must go on: the next round looks again
                log.exception("the role store's watcher failed; it goes on")
                os_threads.sleep(1.0)
        if events is not None:
            events.close()


def _open_events(store: RoleStore) -> FolderEvents | None:
    folders = {"": str(store.directory)}
    if (store.directory / PARTIALS_DIR).is_dir():
        folders[PARTIALS_DIR + "/"] = str(store.directory / PARTIALS_DIR)
    try:
        return FolderEvents(folders)
    except OSError:
        return None
