"""RoleStore: the roles of one directory, reloaded when files change, last good version kept.

The store keeps no state that another process would need: each process (gunicorn worker) watches
the directory itself. A check costs one `stat` per file and runs at most every `check_interval`
seconds, on the request path, so no background thread has to survive a fork.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from role_injector.roles import Role, RoleError, RoleSource, build_role, parse_role_source

DEFAULT_MAX_FILE_BYTES = 2 * 1024 * 1024
PARTIALS_DIR = "_partials"


@dataclass(frozen=True)
class LoadError:
    file: str
    message: str


@dataclass(frozen=True)
class RoleSet:
    """One consistent view of the directory."""

    roles: Mapping[str, Role] = field(default_factory=dict)
    errors: tuple[LoadError, ...] = ()


class FileChanged(Exception):
    """A file changed while it was read: the reload is retried later, never half-applied."""


Fingerprint = tuple[tuple[str, int, int], ...]


class RoleStore:
    def __init__(
        self,
        directory: str | Path,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        check_interval: float = 0.5,
        settle_time: float = 0.1,
        max_settle_wait: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self.max_file_bytes = max_file_bytes
        self.check_interval = check_interval
        self.settle_time = settle_time
        self.max_settle_wait = max_settle_wait
        self._unsettled_since: float | None = None
        self._snapshot = RoleSet()
        self._fingerprint: Fingerprint | None = None
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
            fingerprint = self._scan()
            if fingerprint == self._fingerprint:
                return
            newest = max((mtime for _, mtime, _ in fingerprint), default=0)
            if not force and time.time_ns() - newest < self.settle_time * 1e9:
                # A writer may still be busy: look again on the next check, but not for ever, or
                # files that change all the time would never be seen (each read is still checked).
                self._unsettled_since = self._unsettled_since or self._checked_at
                if self._checked_at - self._unsettled_since < self.max_settle_wait:
                    return
            try:
                loaded = self._load(fingerprint)
            except FileChanged:
                return
            self._snapshot = _keep_last_good(self._snapshot, loaded)
            self._fingerprint = fingerprint
            self._unsettled_since = None
        finally:
            self._lock.release()

    def _scan(self) -> Fingerprint:
        entries = []
        for folder in (self.directory, self.directory / PARTIALS_DIR):
            try:
                with os.scandir(folder) as listing:
                    for entry in listing:
                        if entry.name.endswith(".md") and entry.is_file():
                            stat = entry.stat()
                            rel = os.path.relpath(entry.path, self.directory)
                            entries.append((rel, stat.st_mtime_ns, stat.st_size))
            except (FileNotFoundError, NotADirectoryError):
                continue
        return tuple(sorted(entries))

    def _read(self, path: Path, scanned: Mapping[str, tuple[int, int]]) -> str:
        before = path.stat()
        if scanned.get(os.path.relpath(path, self.directory)) != (before.st_mtime_ns, before.st_size):
            # Changed since the scan that found it settled (e.g. truncated by an in-place rewrite).
            raise FileChanged(str(path))
        if before.st_size > self.max_file_bytes:
            raise RoleError(f"file is {before.st_size} bytes, over the limit of {self.max_file_bytes} bytes")
        with path.open("rb") as handle:
            data = handle.read(self.max_file_bytes + 1)
        after = path.stat()
        if (before.st_mtime_ns, before.st_size) != (after.st_mtime_ns, after.st_size) or len(data) != after.st_size:
            raise FileChanged(str(path))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RoleError(f"file is not valid UTF-8 (byte {exc.start})") from None

    def _load(self, fingerprint: Fingerprint) -> tuple[dict[str, Role], list[LoadError]]:
        scanned = {rel: (mtime, size) for rel, mtime, size in fingerprint}
        sources: dict[str, RoleSource] = {}
        failures: dict[str, str] = {}  # role name -> message
        files: dict[str, str] = {}
        try:
            paths = sorted(self.directory.glob("*.md"))
        except OSError:
            paths = []
        for path in paths:
            if path.name.startswith("_") or not path.is_file():
                continue
            name = path.stem
            files[name] = path.name
            try:
                sources[name] = parse_role_source(name, path.name, self._read(path, scanned))
            except RoleError as exc:
                failures[name] = exc.message
            except OSError as exc:
                failures[name] = f"cannot read file: {exc.strerror}"

        partials: dict[str, str] = {}

        def read_partial(name: str) -> str:
            if name not in partials:
                path = self.directory / PARTIALS_DIR / f"{name}.md"
                try:
                    partials[name] = self._read(path, scanned)
                except FileNotFoundError:
                    raise RoleError(f"partial {name!r} not found (expected {PARTIALS_DIR}/{name}.md)") from None
                except RoleError as exc:
                    raise RoleError(f"partial {name!r}: {exc.message}") from None
            return partials[name]

        roles: dict[str, Role] = {}
        building: list[str] = []

        def resolve(name: str) -> Role:
            if name in roles:
                return roles[name]
            if name in building:
                raise RoleError(f"roles extend each other in a cycle: {' -> '.join([*building, name])}")
            if name in failures:
                raise RoleError(f"parent role {name!r} failed to load: {failures[name]}")
            if name not in sources:
                raise RoleError(f"parent role {name!r} not found")
            building.append(name)
            try:
                roles[name] = build_role(sources[name], resolve, read_partial)
                return roles[name]
            except RoleError as exc:
                failures.setdefault(name, exc.message)
                raise
            finally:
                building.pop()

        for name in sources:
            try:
                resolve(name)
            except RoleError as exc:
                failures.setdefault(name, exc.message)
        errors = [LoadError(files[name], message) for name, message in failures.items()]
        return roles, sorted(errors, key=lambda e: e.file)


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
