"""Real servers the tests run in threads on loopback: uvicorn serving an app, and a TCP relay
that can cut or freeze the connections between a client and a real server."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any, Self

import uvicorn

from tests.services import free_port


class UvicornThread:
    """A real uvicorn server in a thread (its own event loop) on a free loopback port, serving
    ``app`` with ``options`` (any of ``uvicorn.Config``'s); as a context manager it returns once
    the server listens and stops it at the end."""

    def __init__(self, app: Any, **options: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", **options
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Relay:
    """A TCP relay on loopback to the port ``target`` of a real server (RabbitMQ, uvicorn, moto):
    ``cut()`` is a server that is gone (the port refuses connections, carried ones are shut) and
    ``up()`` the server back on the same port; ``freeze()`` a server that stops answering
    (connections are accepted and kept open, but no byte goes through in either direction).
    Every loop is bounded: ``close()`` ends them all."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        """Listen (again) on the relay's port."""
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.1)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """The server is gone: refuse new connections and shut the carried ones."""
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
        with self.lock:
            carried = set(self.sockets)
        self._drop(carried)

    def freeze(self) -> None:
        """The server stops answering: everything stays connected, nothing goes through."""
        self.frozen.set()

    def close(self) -> None:
        self.closed.set()
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while self.listener is listener and not self.closed.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.sockets.add(client)
            if self.frozen.is_set():
                continue  # accepted, never answered
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets.add(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        pair = {client: upstream, upstream: client}
        with contextlib.suppress(OSError, ValueError):
            while not self.closed.is_set():
                if self.frozen.is_set():  # bytes stay in the kernel's buffers
                    time.sleep(0.05)
                    continue
                readable, _, _ = select.select(list(pair), [], [], 0.1)
                for source in readable:
                    data = source.recv(65_536)
                    if not data:  # one side closed: so does the other
                        self._drop(pair)
                        return
                    pair[source].sendall(data)

    def _drop(self, sockets: Iterable[socket.socket]) -> None:
        with self.lock:
            self.sockets.difference_update(sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
