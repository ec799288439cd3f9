"""OS threads, and the locks and waits they use, also in a process whose `threading`, `time` and `select`
gevent has patched (`role-injector serve`).

There, `threading.Thread` makes a greenlet and `time.sleep` or `select.select` wait on the event loop.
Work that must not hold that loop (the role store's watcher, the CPU pool's counting) runs in real
threads, which must wait with the original primitives; a lock taken by both the event loop's thread
and such threads is an OS lock, held only around a few dictionary operations (never across a wait).
Without gevent's patching these are simply the standard ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent.monkey import get_original


def start_thread(target: Callable[[], Any]) -> None:
    """Run `target` in a new OS thread (a daemon: it does not keep the process alive)."""
    get_original("_thread", "start_new_thread")(target, ())


def lock() -> Any:
    """An OS lock (`threading.Lock` before gevent patched it)."""
    return get_original("_thread", "allocate_lock")()


def local() -> Any:
    """Storage of one OS thread (`threading.local` before gevent made it one greenlet's)."""
    return get_original("threading", "local")()


def sleep(seconds: float) -> None:
    get_original("time", "sleep")(seconds)


def wait_readable(fd: int, timeout: float) -> bool:
    """Whether `fd` can be read within `timeout` seconds, waiting in this OS thread."""
    readable, _, _ = get_original("select", "select")([fd], [], [], timeout)
    return bool(readable)


def thread_id() -> int:
    return int(get_original("_thread", "get_ident")())
