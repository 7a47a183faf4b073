"""A TCP proxy on loopback that makes real network faults, for the fault tests of every package.

``FaultProxy(target_port)`` forwards ``127.0.0.1:proxy.port`` (``proxy.url``) to the target and,
when told to, fails the way a network does:

- ``cut_after(nbytes, for_s, direction="down")``: once ``nbytes`` went that way (``"down"``: back
  to the clients, e.g. a download; ``"up"``: to the server, e.g. an upload), every connection is
  dropped and new ones are refused for ``for_s`` seconds (``None``: until :meth:`restore`).
  ``outages`` counts the cuts; ``fired`` is set when the first began.
- ``stall_on(pattern, nth=1)``: the ``nth`` request whose bytes contain ``pattern`` (e.g.
  ``b"POST /api/2.0/mlflow/model-versions/create"``) is held and never forwarded; ``stalled``
  is set, so a test knows its client is stuck exactly there (and can SIGKILL it).
- ``down(True)``: refuse and drop every connection (a server that went away); ``down(False)``
  or :meth:`restore` brings it back.

Accepting a connection and starting an outage are serialized by one lock, so no connection
opened just before an outage survives it.
"""

from __future__ import annotations

import socket
import threading

__all__ = ["FaultProxy"]


class FaultProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0  # bytes forwarded to the target
        self.received = 0  # bytes sent back to the clients
        self.outages = 0
        self.fired = threading.Event()
        self.stalled = threading.Event()
        self._trigger: tuple[bool, int, float | None] | None = None  # (upstream, at bytes, for_s)
        self._pattern: bytes | None = None
        self._left = 0
        self._up = threading.Event()
        self._up.set()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def to(cls, url: str) -> FaultProxy:
        """A proxy in front of ``http://127.0.0.1:PORT`` (use it as a context manager)."""
        return cls(int(url.rsplit(":", 1)[1].split("/", 1)[0]))

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ faults

    def cut_after(self, nbytes: int, for_s: float | None, direction: str = "down") -> None:
        if direction not in ("up", "down"):
            raise ValueError(f"direction {direction!r}: 'up' or 'down'")
        with self._lock:
            upstream = direction == "up"
            self._trigger = (upstream, (self.sent if upstream else self.received) + nbytes, for_s)

    def stall_on(self, pattern: bytes, nth: int = 1) -> None:
        with self._lock:
            self._pattern, self._left = pattern, nth
            self.stalled.clear()

    def down(self, down: bool = True) -> None:
        if down:
            self._drop_all()
        else:
            self.restore()

    def restore(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self._drop_all()
        self.restore()

    # ------------------------------------------------------------------ plumbing

    def _drop_all(self) -> None:
        with self._lock:
            self._up.clear()
            conns, self._conns = set(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _outage(self, for_s: float | None) -> None:
        with self._lock:
            self.outages += 1
        self._drop_all()
        self.fired.set()
        if for_s is not None:
            self._timer = threading.Timer(for_s, self._up.set)
            self._timer.daemon = True
            self._timer.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if not self._up.is_set():  # an outage began while this one was being connected
                    client.close()
                    upstream.close()
                    continue
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _stall(self, data: bytes) -> bool:
        with self._lock:
            if self._pattern is None or self._pattern not in data:
                return False
            self._left -= 1
            if self._left:
                return False
            self._pattern = None
            return True

    def _count(self, n: int, upstream: bool) -> tuple[bool, float | None]:
        with self._lock:
            if upstream:
                self.sent += n
            else:
                self.received += n
            trigger = self._trigger
            if trigger is None or trigger[0] != upstream or (self.sent if upstream else self.received) < trigger[1]:
                return False, None
            self._trigger = None
            return True, trigger[2]

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream and self._stall(data):
                    self.stalled.set()
                    while not self._closed and src.recv(65536):  # hold it until the client dies
                        pass
                    return
                dst.sendall(data)
                fire, for_s = self._count(len(data), upstream)
                if fire:
                    self._outage(for_s)
                    return
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass
