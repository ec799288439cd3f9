"""Notice at once that an HTTP client went away while the worker waits on Ollama for it.

A client that disconnects while Ollama is silent (loading a model, thinking before the first token)
would otherwise be noticed only at the next write, which may be minutes later: its connection to
Ollama, and Ollama's work for it, would go on until then. Under gunicorn's gevent worker a watcher on
the client's socket raises `ClientGone` in the request's greenlet as soon as the socket reports the end
of the stream, wherever that greenlet waits (for Ollama's answer, for its next piece); the forwarding
code then closes the connection to Ollama, which tells Ollama to stop.

Outside a gevent worker (Flask's test client, another server) the watch is inert.
"""

from __future__ import annotations

import _socket  # the unpatched socket type: the probe must not wait on the hub it runs in
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import request


class ClientGone(Exception):
    """Raised into the request's greenlet when its client closed the connection while it waited on
    Ollama. Not an OSError, so that no network code on the way mistakes it for its own failure."""


def _gevent_active() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency of the worker
        return False
    return bool(monkey.is_module_patched("socket"))


class ClientWatch:
    """Watches the current request's client socket until `stop()`. Only inside `waiting()` is the
    request interrupted; a client found gone elsewhere (e.g. while its answer is written, which fails
    on its own) is reported by the next `waiting()`."""

    def __init__(self, fd: int | None) -> None:
        self.gone = False
        self._waiting = False
        self._io: Any = None
        if fd is not None:
            import gevent

            self._fd = fd
            self._target = gevent.getcurrent()
            self._io = gevent.get_hub().loop.io(fd, 1)  # 1: readable (which the end of the stream is)
            self._io.start(self._readable)

    @classmethod
    def start(cls) -> ClientWatch:
        sock = request.environ.get("gunicorn.socket")
        return cls(sock.fileno() if sock is not None and _gevent_active() else None)

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """The request's greenlet waits on Ollama inside this block: interrupt it if the client goes."""
        if self.gone:
            raise ClientGone()
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    def stop(self) -> None:
        if self._io is not None:
            self._io.stop()
            self._io.close()
            self._io = None

    def _readable(self) -> None:
        # Runs in gevent's hub, while the request's greenlet waits: peek without blocking, on the raw fd.
        probe = _socket.socket(fileno=self._fd)
        try:
            data = probe.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # reset by the peer
        finally:
            probe.detach()  # the fd stays the request's
        self.stop()  # the client either left, or sent more (pipelining), which ends the watch too
        if not data:
            self.gone = True
            if self._waiting:
                self._target.throw(ClientGone())
