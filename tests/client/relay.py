"""A TCP relay on loopback that a test controls, between a client and a real server (RabbitMQ,
uvicorn): ``cut()`` is a server that is gone (the port refuses connections, carried ones are
shut), ``freeze()`` a server that stops answering (connections are accepted and kept open, but
no byte goes through in either direction). Every loop is bounded: ``close()`` ends them all."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

from tests.conftest import free_port


class Relay:
    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.url_host = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.listener: socket.socket | None = None
        self._listen()

    def _listen(self) -> None:
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
            carried, self.sockets = self.sockets, set()
        for sock in carried:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

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
                        for sock in pair:
                            with contextlib.suppress(OSError):
                                sock.shutdown(socket.SHUT_RDWR)
                        return
                    pair[source].sendall(data)
