"""CPU work off the event loop: a bounded pool of OS threads per process, with admission.

Under gevent one OS thread serves every connection of a worker process: counting one large body there
held all of them (4 MiB of blanks 5 s; 60 MiB past gunicorn's worker timeout, which killed the worker).
So the CPU work of a request (counting, fitting, ranking, listing roles) runs in one of `threads` OS
threads while its greenlet waits, like it waits for a socket, and the loop serves everyone else.
tiktoken's encoder releases the GIL while it encodes, and so does the one-piece encoder that counts
long runs of blanks (`tokens.py`); pure-Python parts hold it, but a thread hands it back every switch
interval (5 ms), so the loop keeps answering. (Parsing JSON is one C call that holds the GIL whichever
thread makes it, 60 ms for 64 MiB: it stays on the loop.)

Admission bounds the work in flight: each piece declares its size in bytes (the body it comes from, at
least `MIN_WORK_BYTES`); work that would take the sizes running and waiting beyond `max_pending_bytes`
is refused (`Overloaded`: 503 with Retry-After) instead of queued, so CPU time and the memory of the
bodies waiting stay bounded whatever the clients send. (Work alone is always taken, whatever its size.)

Most requests are small and find what they need in the fit cache: handing them to a thread would cost
more than their work (the handoff and the GIL passed back and forth). So work that comes from a small
body (`INLINE_BYTES`) is first tried on the loop itself, and leaves it when it meets a heavy piece: the
library calls `weigh(chars)` before CPU work proportional to `chars` (counting a text that is not
cached, building a relevance index, a fit that is not cached), and past `INLINE_CHARS` in all the try is
abandoned and the whole work runs again in a thread. That is why work given to the pool must be free of
side effects other than filling caches (each route's is: it counts, fits and renders).

Where gevent has not patched the process (the CLI, tests with Flask's test client), the work runs at once
in the caller's thread: there is no event loop to keep free.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from role_injector import os_threads
from role_injector.errors import Overloaded

T = TypeVar("T")
MIN_WORK_BYTES = 16 * 1024  # what a request counts for at least (so 4,096 connections of small ones fit)
DEFAULT_THREADS = 2
DEFAULT_MAX_PENDING_BYTES = 128 * 1024 * 1024  # two bodies at the proxy's limit (ROLE_INJECTOR_CPU_QUEUE_BYTES)
QUEUE_VARIABLE = "ROLE_INJECTOR_CPU_QUEUE_BYTES"
INLINE_BYTES = 8 * 1024  # work from a body this small is tried on the loop first
INLINE_CHARS = 2 * 1024  # what such a try may weigh in all: ~0.1 ms of counting prose, < 1 ms of blanks

_inline_left: ContextVar[int] = ContextVar("inline_left", default=-1)  # -1: not a try on the loop


class _LeaveLoop(BaseException):
    """A try on the loop met a heavy piece (`weigh`). A BaseException, so that no `except Exception`
    of the work can take it for an error of its own."""


def weigh(chars: int) -> None:
    """Called before CPU work proportional to `chars`: during a try on the event loop, pieces that
    weigh more than `INLINE_CHARS` in all leave it for the pool's threads (a flood of small requests
    then holds the loop no longer than their reading and answering does); anywhere else this does
    nothing."""
    left = _inline_left.get()
    if left >= 0:
        if chars > left:
            raise _LeaveLoop
        _inline_left.set(left - chars)


def _gevent_patched() -> bool:
    from gevent import monkey

    return bool(monkey.is_module_patched("threading"))


class CpuPool:
    def __init__(self, threads: int = DEFAULT_THREADS, max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> None:
        self.threads = threads
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0  # of the work running and waiting
        self._lock = os_threads.lock()  # the count is changed by the loop (admitting) and the threads (done)
        self._pool: Any = None
        self._pid: int | None = None
        self._loop_thread: int | None = None

    def run(self, size: int, work: Callable[[], T]) -> T:
        """`work()` in one of the pool's threads while the calling greenlet waits, with the caller's
        context (Flask's app and request); at once where there is no event loop to free, or when called
        from the pool itself. Raises `Overloaded` when `size` does not fit what is in flight."""
        if not _gevent_patched() or (self._pid == os.getpid() and os_threads.thread_id() != self._loop_thread):
            return work()
        if size <= INLINE_BYTES:
            trying = _inline_left.set(INLINE_CHARS)
            try:
                return work()
            except _LeaveLoop:
                pass
            finally:
                _inline_left.reset(trying)
        weight = max(size, MIN_WORK_BYTES)
        with self._lock:
            if self.pending_bytes and self.pending_bytes + weight > self.max_pending_bytes:
                raise Overloaded(
                    f"the worker has {self.pending_bytes} bytes of requests to count and fit, and takes at most "
                    f"{self.max_pending_bytes} (set by {QUEUE_VARIABLE}); try again in a moment",
                    details={"pending_bytes": self.pending_bytes, "limit": QUEUE_VARIABLE},
                )
            self.pending_bytes += weight
        context = contextvars.copy_context()

        def task() -> tuple[bool, Any]:
            # An error comes back as a value: gevent's pool would print its traceback as a failure of its own.
            try:
                return True, context.run(work)
            except BaseException as exc:
                return False, exc
            finally:  # when the work is done, not when its waiter gives up (a client that left)
                with self._lock:
                    self.pending_bytes -= weight

        try:
            running = self._threads().spawn(task)
        except BaseException:
            with self._lock:
                self.pending_bytes -= weight
            raise
        done, outcome = running.get()
        if not done:
            raise outcome
        return outcome  # type: ignore[no-any-return]

    def _threads(self) -> Any:
        """The OS threads of this process (made after a fork: a pool does not survive one)."""
        if self._pid != os.getpid():
            from gevent.threadpool import ThreadPool

            self._pool = ThreadPool(self.threads)
            self._pid, self._loop_thread = os.getpid(), os_threads.thread_id()
        return self._pool
