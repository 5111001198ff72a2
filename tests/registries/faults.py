"""A fault-injecting TCP proxy in front of a real test registry (plain HTTP).

It forwards bytes both ways and, for the first `cuts` connections whose request is a blob
GET, closes the connection after `cut_after` bytes of the answer (a connection dropped
mid-blob, as a flaky network or a restarted proxy does it), or flips a bit of that byte
(a registry serving bytes that do not match their digest), or answers the GET itself with
an error status (a registry that is overloaded for a while). With `uploads=True` it cuts the
first `cuts` blob uploads (PUT or PATCH to /blobs/uploads/) after `cut_after` bytes of the
request instead. With `hold`, a matching blob GET waits until that event is set before it is
forwarded or broken (a download that is slow to start).
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.registries.harness import LOCALHOST


class CuttingProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        cut_after: int,
        cuts: int,
        flip_only: bool = False,
        blob: str = "sha256:",
        answer_status: int | None = None,
        match: str | None = None,
        uploads: bool = False,
        hold: threading.Event | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts_left = cuts
        # Instead of closing the connection, flip one bit of byte `cut_after` and go on.
        self.flip_only = flip_only
        self._match = (match or f"/blobs/{blob}").encode()  # which GETs to break
        # Instead of forwarding a matching GET, answer it with this status (503, 429...).
        self.answer_status = answer_status
        self.uploads = uploads
        self.hold = hold
        self.held = 0  # matching GETs that waited for `hold`
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
        sent = [0]  # answer bytes so far on this connection: a cut counts from its request
        request_cut: list[int | None] = [0, None]  # request bytes so far, where to cut them

        def to_upstream() -> None:
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    if self.uploads:
                        if not self._upload_forwarded(data, upstream, request_cut):
                            # The request was cut: drop the connection both ways.
                            upstream.shutdown(socket.SHUT_RDWR)
                            return
                        continue
                    if b"GET " in data and self._match in data:
                        if self.hold is not None:
                            with self._lock:
                                self.held += 1
                            self.hold.wait()
                        with self._lock:
                            breaking = self.cuts_left > 0
                            self.cuts_left -= breaking
                        if breaking and self.answer_status is not None:
                            with self._lock:
                                self.cuts_done += 1
                            # HTTP/1.1 waits for this answer before its next request.
                            client.sendall(
                                f"HTTP/1.1 {self.answer_status} Injected\r\n"
                                "Content-Length: 0\r\nRetry-After: 0\r\n\r\n".encode()
                            )
                            continue
                        if breaking:
                            cut_at[0] = sent[0] + self.cut_after
                    upstream.sendall(data)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

        threading.Thread(target=to_upstream, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                limit, done = cut_at[0], sent[0]
                if limit is not None and done <= limit < done + len(data):
                    cut_at[0] = None
                    with self._lock:
                        self.cuts_done += 1
                    if not self.flip_only:
                        client.sendall(data[: limit - done])
                        break
                    at = limit - done
                    data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
                client.sendall(data)
                sent[0] += len(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _upload_forwarded(
        self, data: bytes, upstream: socket.socket, request_cut: list[int | None]
    ) -> bool:
        """Forward request bytes; False once an upload has been cut."""
        sent, cut_at = request_cut
        assert sent is not None
        if cut_at is None and b"/blobs/uploads/" in data and data.startswith((b"PUT ", b"PATCH ")):
            with self._lock:
                if self.cuts_left > 0:
                    self.cuts_left -= 1
                    cut_at = request_cut[1] = sent + self.cut_after
        if cut_at is not None and sent + len(data) > cut_at:
            upstream.sendall(data[: cut_at - sent])
            with self._lock:
                self.cuts_done += 1
            return False
        upstream.sendall(data)
        request_cut[0] = sent + len(data)
        return True
