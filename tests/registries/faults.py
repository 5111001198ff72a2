"""A fault-injecting TCP proxy in front of a real test registry (plain HTTP).

It forwards bytes both ways and, for the first `cuts` connections whose request is a blob
GET, closes the connection after `cut_after` bytes of the answer: a connection dropped
mid-blob, as a flaky network or a restarted proxy does it.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.registries.harness import LOCALHOST


class CuttingProxy:
    def __init__(self, upstream_port: int, *, cut_after: int, cuts: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.cuts_done = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server((LOCALHOST, 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    def close(self) -> None:
        self._listener.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((LOCALHOST, self.upstream_port))
            self._open += [client, upstream]
            threading.Thread(target=self._serve, args=(client, upstream), daemon=True).start()

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        cut_at: list[int | None] = [None]

        def to_upstream() -> None:
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    if b"GET " in data and b"/blobs/sha256:" in data:
                        with self._lock:
                            if self.cuts_left > 0:
                                self.cuts_left -= 1
                                cut_at[0] = self.cut_after
                    upstream.sendall(data)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

        threading.Thread(target=to_upstream, daemon=True).start()
        sent = 0
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                limit = cut_at[0]
                if limit is not None and sent + len(data) >= limit:
                    client.sendall(data[: limit - sent])
                    with self._lock:
                        self.cuts_done += 1
                    break
                client.sendall(data)
                sent += len(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
