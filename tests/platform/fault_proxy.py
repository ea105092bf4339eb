"""A fault-injecting TCP proxy for tests: it stands between a client and a local server (the S3 server) on
127.0.0.1 and, per connection, forwards the request, resets the connection (RST) or stalls it.

Each connection carries one HTTP request: the proxy rewrites the request head to ``Connection: close``, so a
rule that looks at the request line (method and key) sees every request. Loaded by the tests that use it
(``tests/platform/conftest.py``); nothing in the product knows about it.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_HEAD_END = b"\r\n\r\n"


@dataclass
class FaultCounts:
    """What the proxy did: connections accepted, forwarded, reset, stalled; the request lines it saw."""

    connections: int = 0
    forwarded: int = 0
    resets: int = 0
    stalls: int = 0
    requests: list[str] = field(default_factory=list)


class FaultProxy:
    """127.0.0.1:<port> → 127.0.0.1:``target_port``, with faults chosen per request line.

    Attributes (set them any time; they apply to the next connection):
        reset_if: request line (e.g. ``"PUT /bucket/out/b.npy HTTP/1.1"``) → True: reset the connection.
        reset_every: reset every k-th connection (0: never), counted over all connections.
        stall_if: request line → True: accept the request, answer nothing for ``stall_s`` seconds, then close.
        stall_once: stall only the first connection ``stall_if`` matches.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.reset_if: Callable[[str], bool] = lambda line: False
        self.reset_every = 0
        self.stall_if: Callable[[str], bool] = lambda line: False
        self.stall_s = 5.0
        self.stall_once = True
        self.counts = FaultCounts()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def heal(self) -> None:
        """No more faults: forward every connection."""
        self.reset_if = lambda line: False
        self.stall_if = lambda line: False
        self.reset_every = 0

    def close(self) -> None:
        """Stop accepting connections."""
        self._stop.set()
        self._server.close()

    # ------------------------------------------------------------------ internals
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with self._lock:
            self.counts.connections += 1
            n = self.counts.connections
        try:
            head, rest = self._read_head(client)
            if head is None:
                client.close()
                return
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            with self._lock:
                self.counts.requests.append(line)
                reset = self.reset_if(line) or (self.reset_every and n % self.reset_every == 0)
                stall = not reset and self.stall_if(line)
                if stall and self.stall_once:
                    self.stall_if = lambda line: False
            if reset:
                with self._lock:
                    self.counts.resets += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close → RST
                client.close()
                return
            if stall:
                with self._lock:
                    self.counts.stalls += 1
                time.sleep(self.stall_s)
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            upstream.sendall(_connection_close(head) + rest)
            with self._lock:
                self.counts.forwarded += 1
            pump = threading.Thread(target=_pipe, args=(client, upstream), daemon=True)
            pump.start()
            _pipe(upstream, client)
            pump.join(timeout=30)
        except OSError:
            client.close()

    @staticmethod
    def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
        """The request head (through the blank line) and whatever body bytes came with it."""
        buf = b""
        sock.settimeout(30)
        while _HEAD_END not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return None, b""
            buf += chunk
        i = buf.index(_HEAD_END) + len(_HEAD_END)
        return buf[:i], buf[i:]


def _connection_close(head: bytes) -> bytes:
    """The request head with ``Connection: close`` (one request per connection)."""
    lines = [ln for ln in head[: -len(_HEAD_END)].split(b"\r\n") if not re.match(rb"(?i)connection:", ln)]
    return b"\r\n".join([*lines, b"Connection: close"]) + _HEAD_END


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` → ``dst`` until ``src`` closes, then close both directions."""
    try:
        src.settimeout(60)
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
