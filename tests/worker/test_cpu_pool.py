"""The CPU pool: under gevent's patching the work runs in OS threads while the event loop serves others
(work from a small body is tried on the loop first, and leaves it at its first heavy piece), admission
refuses what would go past the bound (work alone is always taken), errors come back to the caller, and
the count of work in flight returns to zero whatever happened. Without gevent (the CLI,
this test process) the work runs at once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

from role_injector.cpu_pool import MIN_WORK_BYTES, CpuPool
from role_injector.errors import Overloaded


def test_without_gevent_the_work_runs_at_once_in_the_caller() -> None:
    pool = CpuPool(threads=2, max_pending_bytes=1)
    assert pool.run(10**9, threading.get_ident) == threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        pool.run(0, lambda: 1 // 0)
    assert pool.pending_bytes == 0


UNDER_GEVENT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, time, gevent
    from role_injector import os_threads
    from role_injector.cpu_pool import CpuPool, INLINE_BYTES, INLINE_CHARS, MIN_WORK_BYTES, weigh
    from role_injector.errors import Overloaded

    pool = CpuPool(threads=2, max_pending_bytes=3 * MIN_WORK_BYTES)
    loop = os_threads.thread_id()
    report = {}

    def busy(seconds):
        os_threads.sleep(seconds)  # an OS thread's wait: the loop must go on meanwhile
        return os_threads.thread_id()

    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(30)])
    first = gevent.spawn(pool.run, 2 * MIN_WORK_BYTES, lambda: busy(0.5))
    gevent.sleep(0.05)
    try:
        pool.run(2 * MIN_WORK_BYTES, lambda: busy(0.1))
        report["refused"] = False
    except Overloaded as exc:
        report["refused"] = exc.details["limit"]
    report["small_taken"] = pool.run(INLINE_BYTES + 1, lambda: busy(0.01)) != loop
    report["ran_elsewhere"] = first.get() != loop
    report["ticks_meanwhile"] = len(ticks)
    report["alone_taken"] = pool.run(10 * MIN_WORK_BYTES, lambda: busy(0.01)) != loop
    try:
        pool.run(1, lambda: 1 // 0)
    except ZeroDivisionError:
        report["error_back"] = True
    waiter = gevent.spawn(pool.run, MIN_WORK_BYTES, lambda: busy(0.3))
    gevent.sleep(0.05)
    waiter.kill()  # its client left: the work goes on, and is counted until it ends
    report["counted_after_kill"] = pool.pending_bytes
    gevent.sleep(0.5)
    report["pending_at_end"] = pool.pending_bytes
    report["nested_runs_in_place"] = pool.run(INLINE_BYTES + 1, lambda: pool.run(10**12, os_threads.thread_id)) != loop

    def pieces(chars):
        tried.append(os_threads.thread_id())
        weigh(chars)
        return os_threads.thread_id()

    tried = []
    report["light_on_loop"] = pool.run(INLINE_BYTES, lambda: pieces(INLINE_CHARS)) == loop and tried == [loop]
    tried = []
    left = pool.run(INLINE_BYTES, lambda: pieces(INLINE_CHARS + 1))
    report["heavy_leaves_loop"] = left != loop and tried == [loop, left]  # tried there, then all again
    tried = []
    left = pool.run(INLINE_BYTES, lambda: [pieces(INLINE_CHARS // 2), pieces(INLINE_CHARS // 2 + 1)][1])
    report["pieces_add_up"] = left != loop and tried == [loop, loop, left, left]
    tried = []
    report["big_body_never_tried"] = pool.run(INLINE_BYTES + 1, lambda: pieces(0)) != loop and tried != [loop]
    report["weigh_elsewhere_nothing"] = pool.run(INLINE_BYTES + 1, lambda: pieces(10**9)) != loop
    try:
        pool.run(1, lambda: [weigh(INLINE_CHARS + 1), 1 // 0])
    except ZeroDivisionError:
        report["error_after_leaving"] = True
    report["pending_after_all"] = pool.pending_bytes
    print(json.dumps(report))
""")


def test_under_gevent_work_runs_in_os_threads_with_admission_unless_small_and_light() -> None:
    done = subprocess.run([sys.executable, "-c", UNDER_GEVENT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "refused": "ROLE_INJECTOR_CPU_QUEUE_BYTES", "small_taken": True, "ran_elsewhere": True,
        "ticks_meanwhile": report["ticks_meanwhile"], "alone_taken": True, "error_back": True,
        "counted_after_kill": MIN_WORK_BYTES, "pending_at_end": 0, "nested_runs_in_place": True,
        "light_on_loop": True, "heavy_leaves_loop": True, "pieces_add_up": True, "big_body_never_tried": True,
        "weigh_elsewhere_nothing": True, "error_after_leaving": True, "pending_after_all": 0,
    }
    assert report["ticks_meanwhile"] >= 10  # the loop ran while an OS thread worked for 0.5 s


def test_overloaded_is_a_503_that_names_its_setting() -> None:
    error = Overloaded("full", details={"limit": "ROLE_INJECTOR_CPU_QUEUE_BYTES"})
    assert (error.kind.rest_status, error.kind.ollama_status, error.kind.openai_status) == (503, 503, 503)
